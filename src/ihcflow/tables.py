"""The pipeline's tables: where each one lives, its columns, and the one reader and writer.

docs/pipeline.md describes every file for people; this module is the code's copy of the same
contract, imported by every stage and tool that reads or writes a table (the paths are the
stages' defaults; dvc.yaml passes them explicitly). Tables are read as strings, an empty cell
as ``""``.

- ``processed/manifest.csv`` (validate): one row per accepted raw image;
- ``reports/data/features.csv`` (preprocess): the manifest's identity columns,
  ``processed_sha256``, the drift features of :mod:`ihcflow.images.features`, and
  :data:`FEATURE_FLAGS`;
- ``processed/split.csv`` (split): the image of each row is ``<images>/<sha256>.png``
  (:func:`image_file`), relative to the repository root;
- ``reports/predictions.csv`` (evaluate): one row per test image, then ``prob_<class>``
  (:func:`prob_column`) for every class;
- ``data/groups.csv`` (yours, optional): a patient or slide id per raw image;
- ``reports/metrics.json`` (evaluate): :data:`HEADLINE_METRICS`, ``n_test``,
  ``n_classes_in_test`` and ``per_class.<class>.<PER_CLASS_METRICS>``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ihcflow.errors import PipelineError
from ihcflow.files import atomic_path

SPLITS = ("train", "val", "test")  # split.csv's `split` values; also layout 2's folders


@dataclass(frozen=True)
class Table:
    name: str  # what the file is, in messages
    path: str  # where dvc.yaml has it, relative to the repository root
    stage: str  # who writes it ("" for an input you provide)
    columns: tuple[str, ...]  # in this order; a table may have more after them (see above)


MANIFEST = Table(
    "manifest",
    "processed/manifest.csv",
    "validate",
    ("path", "class", "given_split", "sha256", "width", "height", "channels", "bit_depth",
     "mode", "format", "bytes", "notes"),
)  # fmt: skip
FEATURES = Table(
    "feature table",
    "reports/data/features.csv",
    "preprocess",
    ("path", "class", "given_split", "sha256", "processed_sha256"),
)
FEATURE_FLAGS = ("corrected", "stain_normalized")  # the last columns of features.csv (0/1)
SPLIT = Table(
    "split table",
    "processed/split.csv",
    "split",
    ("path", "sha256", "class", "split", "group", "image"),
)
PREDICTIONS = Table(
    "predictions",
    "reports/predictions.csv",
    "evaluate",
    ("path", "image", "class", "predicted"),
)
GROUPS = Table("groups file", "data/groups.csv", "", ("path", "group"))
IMAGES_DIR = "processed/images"  # the preprocess stage's images, one per raw image's sha256

# The nuclei segmentation task (ihcflow.segmentation): its tables and reports.
NUCLEI_TILES = Table(
    "nuclei tile table",
    "processed/nuclei/tiles.csv",
    "seg_prepare",
    ("name", "given_split", "width", "height", "nuclei", "classified", "positive",
     "image_sha256", "mask_sha256"),
)  # fmt: skip
NUCLEI_SPLIT = Table(
    "nuclei split table", "processed/nuclei_split.csv", "seg_split", ("name", "split", "group")
)
NUCLEI_DIR = "processed/nuclei"  # seg_prepare's tiles: images/<name>.png, masks/<name>.png
SEG_METRICS = "reports/segmentation/metrics.json"
SEG_PER_IMAGE = "reports/segmentation/per_image.csv"
SEG_HEADLINE_METRICS = ("dice", "iou", "aji", "pq", "f1", "ki67_error_mean", "ki67_error_max")

METRICS = "reports/metrics.json"
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc_macro", "cohen_kappa")
PER_CLASS_METRICS = ("precision", "recall", "f1", "auroc", "support")


class TableError(PipelineError):
    """A table that cannot be used; the message names the file and what is wrong."""


def image_file(images_dir: str | os.PathLike[str], sha256: str) -> str:
    """The preprocessed image of the raw file with content hash ``sha256`` (posix path)."""
    return f"{Path(images_dir).as_posix()}/{sha256}.png"


def prob_column(class_name: str) -> str:
    """predictions.csv's column with the probability of ``class_name``."""
    return f"prob_{class_name}"


def _absent(table: Table) -> str:
    if table.stage:
        return f"{table.name} not found (run the {table.stage} stage first)"
    return f"{table.name} not found"


def _check_columns(
    frame: pd.DataFrame, columns: Sequence[str], source: object, error: type[Exception]
) -> pd.DataFrame:
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise error(f"{source}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame


def read_table(
    path: str | os.PathLike[str],
    table: Table,
    *,
    columns: Sequence[str] | None = None,
    error: type[Exception] = TableError,
    absent: str | None = None,
) -> pd.DataFrame:
    """``table`` from ``path``, as strings, checked to have ``columns`` (default: all of the
    table's). Raises ``error`` naming the file when it is absent (``absent`` says what to do
    then), cannot be read as CSV, or lacks a column."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {absent or _absent(table)}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read as CSV ({exc})") from None
    return _check_columns(frame, table.columns if columns is None else columns, path, error)


def parse_table(
    text: str,
    source: str,
    table: Table,
    *,
    columns: Sequence[str] | None = None,
    error: type[Exception] = TableError,
) -> pd.DataFrame:
    """:func:`read_table` for a table's text (e.g. as it was at another git revision)."""
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise error(f"{source}: cannot read as CSV ({exc})") from None
    return _check_columns(frame, table.columns if columns is None else columns, source, error)


def write_csv_atomic(path: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_table(path: str | os.PathLike[str], frame: pd.DataFrame, table: Table) -> None:
    """Write ``frame`` atomically; its first columns must be the table's, in order."""
    head = [str(c) for c in frame.columns[: len(table.columns)]]
    if head != list(table.columns):
        raise ValueError(f"{path}: columns {head} do not start with the {table.name}'s")
    write_csv_atomic(path, frame)
