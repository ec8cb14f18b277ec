"""Stage `seg_evaluate`: score the nuclei model on the test tiles.

Reads the best checkpoint, processed/nuclei_split.csv and processed/nuclei/; runs the sliding
window over each whole tile, chooses the post-processing thresholds on the validation tiles
(best AJI) and writes reports/segmentation/metrics.json (Dice, IoU, AJI, PQ, F1, Ki-67 index
error; the chosen post-processing), per_image.csv and overlays/ (true contours green,
predicted cyan/red: negative/positive).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ihcflow.config import load_params
from ihcflow.errors import PipelineError
from ihcflow.reporting.format import number
from ihcflow.segmentation.evaluation import evaluate_segmentation, load_for_evaluation
from ihcflow.segmentation.inference import TilingConfig
from ihcflow.segmentation.instances import PostprocessConfig
from ihcflow.segmentation.params import (
    SegEvaluateParams,
    evaluate_params,
    postprocess_params,
    tiling_params,
)
from ihcflow.tables import (
    NUCLEI_DIR,
    NUCLEI_SPLIT,
    SEG_HEADLINE_METRICS,
    SEG_METRICS,
    SEG_PER_IMAGE,
)


def run(
    params: SegEvaluateParams,
    *,
    tiling: TilingConfig,
    post: PostprocessConfig,
    checkpoint: Path,
    split: Path,
    tiles: Path,
    metrics: Path,
    per_image: Path,
    overlays: Path,
) -> dict[str, Any]:
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.unlink(missing_ok=True)
    return evaluate_segmentation(
        load_for_evaluation(checkpoint),
        params,
        tiling=tiling,
        post=post,
        split_csv=split,
        tiles_dir=tiles,
        metrics_path=metrics,
        per_image_path=per_image,
        overlays_dir=overlays,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("models/segmentation/checkpoints/best.ckpt")
    )
    parser.add_argument("--split", type=Path, default=Path(NUCLEI_SPLIT.path))
    parser.add_argument("--tiles", type=Path, default=Path(NUCLEI_DIR))
    parser.add_argument("--metrics", type=Path, default=Path(SEG_METRICS))
    parser.add_argument("--per-image", type=Path, default=Path(SEG_PER_IMAGE))
    parser.add_argument("--overlays", type=Path, default=Path("reports/segmentation/overlays"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        result = run(
            evaluate_params(params),
            tiling=tiling_params(params),
            post=postprocess_params(params),
            checkpoint=args.checkpoint,
            split=args.split,
            tiles=args.tiles,
            metrics=args.metrics,
            per_image=args.per_image,
            overlays=args.overlays,
        )
    except PipelineError as exc:
        raise SystemExit(f"seg_evaluate: {exc}") from None
    shown = ", ".join(f"{k} {number(result.get(k), 3)}" for k in SEG_HEADLINE_METRICS)
    print(f"seg_evaluate: {result['n_images']} test tiles: {shown}")
    print(f"seg_evaluate: wrote {args.metrics}")


if __name__ == "__main__":
    main()
