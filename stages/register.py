"""Stage `register`: the gate. Export and register the model only if the metrics pass.

Reads reports/metrics.json, reports/predictions.csv, the checkpoint and params `gate`; on pass
writes models/model.onnx, models/model.json and models/MODEL_CARD.md (replaced as one set).
On fail it exits non-zero with each metric against its threshold, leaving models/ untouched.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ihcflow.files import load_params, read_json
from ihcflow.registry import ExportablePredictor, register, summary_line
from ihcflow.tables import METRICS, PREDICTIONS, SPLIT, read_table


def run(
    predictor: ExportablePredictor,
    gate: Mapping[str, Any],
    *,
    checkpoint: Path,
    metrics_path: Path,
    predictions_path: Path,
    split_csv: Path,
    root: Path,
    models_dir: Path,
    preprocess: Mapping[str, Any] | None = None,
    train_summary_path: Path | None = None,
    model_digest: str | None = None,
) -> dict[str, Any]:
    """Gate and register; returns model.json. Raises ``GateFailed`` (SystemExit) on fail."""
    metrics = read_json(metrics_path, "metrics (run the evaluate stage)")
    predictions = read_table(predictions_path, PREDICTIONS, error=ValueError)
    summary = None
    if train_summary_path is not None and train_summary_path.is_file():
        summary = read_json(train_summary_path, "training summary")
    return register(
        predictor,
        metrics,
        predictions,
        gate,
        checkpoint=checkpoint,
        root=root,
        split_csv=split_csv,
        models_dir=models_dir,
        preprocess=preprocess,
        train_summary=summary,
        predictions_source=str(predictions_path),
        model_digest=model_digest,
    )


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
    params = load_params(args.params)
    gate = OmegaConf.to_container(params.gate, resolve=True)
    preprocess = (
        OmegaConf.to_container(params.preprocess, resolve=True) if "preprocess" in params else None
    )
    from ihcflow.training.predictor import load_predictor

    try:
        predictor = load_predictor(args.checkpoint)
        info = run(
            predictor,
            gate,  # type: ignore[arg-type]
            checkpoint=args.checkpoint,
            metrics_path=args.metrics,
            predictions_path=args.predictions,
            split_csv=args.split,
            root=args.root,
            models_dir=args.models,
            preprocess=preprocess,  # type: ignore[arg-type]
            train_summary_path=args.train_summary,
            model_digest=predictor.digest,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"register: {exc}; the registered model is unchanged") from None
    print(summary_line(info))


if __name__ == "__main__":
    main()
