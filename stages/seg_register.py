"""Stage `seg_register`: the gate for the nuclei model; export and register it if it passes.

Reads reports/segmentation/metrics.json, the best checkpoint and the test tiles; on pass writes
models/segmentation/{model.onnx, model.json, MODEL_CARD.md} as one set. On fail it exits 1
with each metric against its threshold (params ``segmentation.gate``), leaving them untouched.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ihcflow.config import load_params
from ihcflow.errors import PipelineError
from ihcflow.files import read_json
from ihcflow.registry.gate import GateFailed, GateParams, GateSettings
from ihcflow.registry.register import RegisterError
from ihcflow.segmentation.evaluation import tiles_of
from ihcflow.segmentation.inference import TilingConfig
from ihcflow.segmentation.model_format import MODELS_DIR
from ihcflow.segmentation.params import gate_params, tiling_params
from ihcflow.segmentation.predictor import load_seg_predictor
from ihcflow.segmentation.register import SegRegistered, register_segmentation
from ihcflow.tables import NUCLEI_DIR, NUCLEI_SPLIT, NUCLEI_TILES, SEG_METRICS

UNCHANGED = "the registered segmentation model is unchanged"


def run(
    params: GateParams[GateSettings],
    *,
    tiling: TilingConfig,
    checkpoint: Path,
    metrics: Path,
    split: Path,
    tiles: Path,
    train_summary: Path,
    root: Path,
    models: Path,
) -> SegRegistered:
    predictor = load_seg_predictor(checkpoint)
    test = [image for _, image, _ in tiles_of(split, tiles, "test")]
    return register_segmentation(
        predictor,
        checkpoint=checkpoint,
        metrics=read_json(metrics, "segmentation metrics (run seg_evaluate)", error=RegisterError),
        gate=params,
        tiling=tiling,
        test_images=test,
        split_csv=split,
        tiles_csv=tiles / Path(NUCLEI_TILES.path).name,
        train_summary=(
            read_json(train_summary, "training summary", error=RegisterError)
            if train_summary.is_file()
            else None
        ),
        root=root,
        models_dir=models,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("models/segmentation/checkpoints/best.ckpt")
    )
    parser.add_argument("--metrics", type=Path, default=Path(SEG_METRICS))
    parser.add_argument("--split", type=Path, default=Path(NUCLEI_SPLIT.path))
    parser.add_argument("--tiles", type=Path, default=Path(NUCLEI_DIR))
    parser.add_argument(
        "--train-summary", type=Path, default=Path("reports/segmentation/train/summary.json")
    )
    parser.add_argument("--models", type=Path, default=Path(MODELS_DIR))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        result = run(
            gate_params(params),
            tiling=tiling_params(params),
            checkpoint=args.checkpoint,
            metrics=args.metrics,
            split=args.split,
            tiles=args.tiles,
            train_summary=args.train_summary,
            root=Path(),
            models=args.models,
        )
    except GateFailed as exc:
        head = f"seg_register: the candidate model failed the gate; {UNCHANGED}"
        raise SystemExit(f"{head}\n{exc.result.report()}") from None
    except PipelineError as exc:
        raise SystemExit(f"seg_register: {exc}; {UNCHANGED}") from None
    if result.rolled_back:
        print(f"seg_register: rolled back an interrupted swap in {args.models}")
    print(result.gate.report())
    info = result.info
    print(
        f"registered {info['name']} {info['version']} (aji {info['metrics']['aji']:.3f}, "
        f"dice {info['metrics']['dice']:.3f}, git {info['git_revision'][:12]})"
    )


if __name__ == "__main__":
    main()
