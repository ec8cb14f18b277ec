"""Score a segmentation model on annotated tiles, and choose its post-processing thresholds.

The network's probabilities are computed once per tile (``tiling``); post-processing is cheap
(OpenCV, ~0.1 s per megapixel), so the thresholds that turn probabilities into nuclei can be
chosen on the validation tiles by the metric that matters, AJI: how sure a network is of the
interiors that seed the nuclei depends on the data and on how long it trained. On the sample
the defaults (seed 0.5, 10 px) gave test AJI 0.52, the thresholds chosen on validation 0.64.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ihcflow.errors import PipelineError
from ihcflow.files import atomic_dir, write_json_atomic
from ihcflow.images.codec import encode_png
from ihcflow.segmentation import metrics as M
from ihcflow.segmentation.inference import TilingConfig
from ihcflow.segmentation.instances import PostprocessConfig, to_annotation
from ihcflow.segmentation.labels import Annotation
from ihcflow.segmentation.layout import load_tiles
from ihcflow.segmentation.overlay import draw
from ihcflow.segmentation.params import SegEvaluateParams
from ihcflow.segmentation.tiling import Runner, predict_tiled
from ihcflow.tables import NUCLEI_SPLIT, read_table, write_csv_atomic
from ihcflow.training.checkpoints import CheckpointError


class SegEvaluationError(PipelineError):
    """The segmentation model cannot be evaluated (no test tiles, a bad checkpoint, ...)."""


SEED_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)  # P(interior) of a seed pixel
MIN_SEED_GRID = (5, 10, 20, 40)  # px: smaller seeds are fragments (a 15 px nucleus: ~100 px)
FOREGROUND_GRID = (0.4, 0.5, 0.6)  # P(nucleus) of a nucleus pixel


@dataclass(frozen=True)
class Scored:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    truth: Annotation
    probs: np.ndarray  # (4, H, W) uint8


def predict_tiles(
    runner: Runner, tiles: Iterable[tuple[str, np.ndarray, Annotation]], tiling: TilingConfig
) -> list[Scored]:
    return [
        Scored(
            name,
            image,
            truth,
            predict_tiled(
                image,
                runner,
                roi=tiling.roi,
                overlap=tiling.overlap,
                batch=tiling.batch,
                mode=tiling.blend,
            ),
        )
        for name, image, truth in tiles
    ]


def score(items: Sequence[Scored], post: PostprocessConfig) -> list[dict[str, Any]]:
    """Per-tile metrics (``metrics.IMAGE_COLUMNS`` plus ``name``)."""
    return [
        {"name": item.name, **M.score_image(item.truth, to_annotation(item.probs, post))}
        for item in items
    ]


def tune_postprocess(
    items: Sequence[Scored], base: PostprocessConfig
) -> tuple[PostprocessConfig, list[dict[str, Any]]]:
    """The seed, minimum seed size and foreground thresholds of the grids with the best mean
    AJI on ``items`` (ties: the better PQ, then the grid order); returns it and every
    candidate's scores."""
    if not items:
        raise ValueError("no tiles to choose the post-processing thresholds on")
    table = []
    for seed, min_seed_px, foreground in product(SEED_GRID, MIN_SEED_GRID, FOREGROUND_GRID):
        post = replace(base, seed=seed, min_seed_px=min_seed_px, foreground=foreground)
        summary = M.summarize(score(items, post))
        table.append(
            {
                "seed": seed,
                "min_seed_px": min_seed_px,
                "foreground": foreground,
                "aji": summary["aji"],
                "pq": summary["pq"],
                "dice": summary["dice"],
            }
        )
    best = max(table, key=lambda r: (r["aji"] or 0.0, r["pq"] or 0.0))
    chosen = {k: best[k] for k in ("seed", "min_seed_px", "foreground")}
    return replace(base, **chosen), table


def tiles_of(
    split_csv: Path, tiles_dir: Path, split: str
) -> list[tuple[str, np.ndarray, Annotation]]:
    frame = read_table(split_csv, NUCLEI_SPLIT, error=SegEvaluationError)
    names = frame.loc[frame["split"] == split, "name"].tolist()
    return [(name, got.rgb, got.annotation) for name, got in load_tiles(tiles_dir, names)]


def evaluate_segmentation(
    predictor: Any,
    params: SegEvaluateParams,
    *,
    tiling: TilingConfig,
    post: PostprocessConfig,
    split_csv: Path,
    tiles_dir: Path,
    metrics_path: Path,
    per_image_path: Path,
    overlays_dir: Path,
) -> dict[str, Any]:
    """Score ``predictor`` (a ``predictor.SegPredictor``) on the test tiles with the
    post-processing chosen on the validation tiles (when ``params.tune_postprocess``); write
    metrics.json (with the chosen ``postprocess`` and the model's digest), the per-tile table
    and contour overlays of the first ``params.overlays`` test tiles. Returns the metrics."""
    runner = predictor.runner()
    test = tiles_of(split_csv, tiles_dir, "test")
    if not test:
        raise SegEvaluationError(f"{split_csv}: no test tiles")
    table: list[dict[str, Any]] = []
    if params.tune_postprocess:
        val = tiles_of(split_csv, tiles_dir, "val")
        post, table = tune_postprocess(predict_tiles(runner, val, tiling), post)
    scored = predict_tiles(runner, test, tiling)
    rows = score(scored, post)
    metrics = M.summarize(rows)
    metrics["postprocess"] = asdict(post)
    metrics["tuned_on_val"] = len(table) > 0
    metrics["model_digest"] = predictor.digest
    write_csv_atomic(per_image_path, pd.DataFrame(rows))
    with atomic_dir(overlays_dir) as tmp:
        for item in scored[: params.overlays]:
            image = draw(item.image, item.truth, to_annotation(item.probs, post))
            (tmp / f"{item.name}.png").write_bytes(encode_png(image))
    write_json_atomic(metrics_path, metrics)
    return metrics


def load_for_evaluation(checkpoint: Path) -> Any:
    from ihcflow.segmentation.predictor import load_seg_predictor

    try:
        return load_seg_predictor(checkpoint)
    except (CheckpointError, ValueError) as exc:
        raise SegEvaluationError(str(exc)) from None
