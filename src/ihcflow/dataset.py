"""The processed data set: ``processed/split.csv`` and the preprocessed images it names.

Read the same way by training, evaluation, registration and drift monitoring. Errors name the
file; the ``error`` argument is the caller's error type (each stage reports its own).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ihcflow.images.codec import ImageError, read_rgb8
from ihcflow.tables import SPLIT, SPLITS, TableError, read_table


def read_split(
    split_csv: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    error: type[Exception] = TableError,
) -> pd.DataFrame:
    """The split table, checked: its columns, known ``split`` values, no empty class."""
    frame = read_table(split_csv, SPLIT, columns=columns, error=error)
    bad = sorted(set(frame["split"]) - set(SPLITS))
    if bad:
        raise error(f"{split_csv}: unknown split value(s) {bad}, expected {list(SPLITS)}")
    if "class" in frame and (frame["class"] == "").any():
        row = int(np.flatnonzero(frame["class"] == "")[0]) + 2
        raise error(f"{split_csv}: line {row} has an empty class")
    return frame


def split_rows(
    frame: pd.DataFrame, split: str, source: object, *, error: type[Exception] = TableError
) -> pd.DataFrame:
    """The rows of ``split`` (an error naming ``source`` when there are none)."""
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        found = sorted(set(frame["split"]))
        raise error(f"{source}: no rows with split={split!r} (splits present: {found})")
    return rows


def load_image(
    path: str | os.PathLike[str], size: int | None, *, error: type[Exception] = TableError
) -> np.ndarray:
    """Decode one preprocessed image to (H, W, 3) uint8 RGB and check it is ``size`` px."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: preprocessed image not found (run the preprocess stage)")
    try:
        rgb, _ = read_rgb8(path, strict=False)
    except ImageError as exc:
        raise error(str(exc)) from None
    h, w = rgb.shape[:2]
    if size is not None and (h, w) != (size, size):
        raise error(
            f"{path}: image is {w}x{h} px, the model expects {size}x{size} "
            "(preprocess.size is not the size these images were made with: rerun `dvc repro`)"
        )
    return rgb


def load_images(
    image_paths: Sequence[str],
    root: str | os.PathLike[str],
    size: int,
    *,
    error: type[Exception] = TableError,
) -> np.ndarray:
    """Preprocessed images (paths relative to ``root``) as (N, size, size, 3) uint8."""
    root = Path(root)
    batch = np.empty((len(image_paths), size, size, 3), dtype=np.uint8)
    for i, rel in enumerate(image_paths):
        batch[i] = load_image(root / rel, size, error=error)
    return batch
