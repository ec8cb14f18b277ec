"""Stage `register`: the gate. Export and register the model only if the metrics pass.

Reads reports/metrics.json, reports/predictions.csv, the checkpoint and params `gate`; on pass
writes models/model.onnx, models/model.json and models/MODEL_CARD.md (replaced as one set).
On fail it exits 1 with each metric against its threshold, leaving models/ untouched.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ihcflow.config import load_params, section
from ihcflow.errors import PipelineError
from ihcflow.evaluation import EvaluateParams
from ihcflow.files import read_json
from ihcflow.registry.gate import ClassifierGateSettings, GateFailed, GateParams
from ihcflow.registry.register import (
    Candidate,
    Evaluated,
    ExportablePredictor,
    Registered,
    RegisterError,
    register,
    summary_line,
)
from ihcflow.tables import METRICS, PREDICTIONS, SPLIT, read_table

UNCHANGED = "the registered model is unchanged"


def run(
    params: GateParams[ClassifierGateSettings],
    *,
    checkpoint: Path,
    metrics: Path,
    predictions: Path,
    split: Path,
    train_summary: Path,
    root: Path,
    models: Path,
    predictor: ExportablePredictor | None = None,
    tta: bool = False,
) -> Registered:
    """Gate and register the model in ``checkpoint`` (``predictor``: that model, already
    loaded; else loaded with ``tta`` as the evaluate stage did). Raises :class:`GateFailed`
    when a threshold does not hold."""
    if predictor is None:
        from ihcflow.training.predictor import load_predictor

        predictor = load_predictor(checkpoint, tta=tta)
    evaluated = Evaluated(
        metrics=read_json(metrics, "metrics (run the evaluate stage)", error=RegisterError),
        predictions=read_table(predictions, PREDICTIONS, error=RegisterError),
        source=str(predictions),
        train_summary=(
            read_json(train_summary, "training summary", error=RegisterError)
            if train_summary.is_file()
            else None
        ),
    )
    candidate = Candidate(predictor, checkpoint, getattr(predictor, "digest", None))
    return register(candidate, evaluated, params, root=root, split_csv=split, models_dir=models)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("models/checkpoints/best.ckpt"))
    parser.add_argument("--metrics", type=Path, default=Path(METRICS))
    parser.add_argument("--predictions", type=Path, default=Path(PREDICTIONS.path))
    parser.add_argument("--split", type=Path, default=Path(SPLIT.path))
    parser.add_argument(
        "--root", type=Path, default=Path(), help="split.csv paths are relative to it"
    )
    parser.add_argument("--train-summary", type=Path, default=Path("reports/train/summary.json"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        result = run(
            GateParams.from_section(params.get("gate"), ClassifierGateSettings),
            checkpoint=args.checkpoint,
            metrics=args.metrics,
            predictions=args.predictions,
            split=args.split,
            train_summary=args.train_summary,
            root=args.root,
            models=args.models,
            # the model evaluate scored: the ONNX graph gets the same test-time augmentation
            tta=section(params, "evaluate", EvaluateParams).tta,
        )
    except GateFailed as exc:
        head = f"register: the candidate model failed the gate; {UNCHANGED}"
        raise SystemExit(f"{head}\n{exc.result.report()}") from None
    except PipelineError as exc:
        raise SystemExit(f"register: {exc}; {UNCHANGED}") from None
    if result.rolled_back:
        print(f"register: rolled back an interrupted swap in {args.models}")
    print(result.gate.report())
    print(summary_line(result.info))


if __name__ == "__main__":
    main()
