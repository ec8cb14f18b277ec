"""The segmentation data layout, and the check of every image/mask pair before use.

Layout 1 (the program splits)::

    <root>/images/<name>.<ext>      PNG, JPEG, TIFF or BMP
    <root>/masks/<name>.png|tif     see ``labels``: 16-bit instance ids or 8-bit classes
    <root>/classes.csv              optional: image,instance,class

Layout 2 (the given split is kept): the same under ``<root>/train/`` and ``<root>/test/``, and
optionally ``<root>/val/``; each split folder has its own ``classes.csv``.

A pair is rejected with one reason: the image's (``empty``, ``not_an_image``, ``corrupt``,
``unsupported_mode``, ``too_large``), ``missing_mask`` (an image without a mask),
``missing_image`` (a mask without an image), ``duplicate_name`` (two files with one name),
``size_mismatch``, ``not_a_label_image``, ``labels_out_of_range`` or ``classes_mismatch``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ihcflow.data.layout import GIVEN_SPLITS, DatasetError
from ihcflow.images.codec import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageError, decode_rgb8
from ihcflow.segmentation.labels import (
    CLASSES_FILE,
    Annotation,
    MaskError,
    decode_mask,
    read_classes_table,
    to_annotation,
)

IMAGES, MASKS = "images", "masks"
MASK_SUFFIXES = frozenset({".png", ".tif", ".tiff"})
REASONS = (
    "empty",
    "not_an_image",
    "corrupt",
    "unsupported_mode",
    "too_large",
    "missing_mask",
    "missing_image",
    "duplicate_name",
    "size_mismatch",
    "not_a_label_image",
    "labels_out_of_range",
    "classes_mismatch",
)
RECORD_COLUMNS = (
    "name",
    "image",
    "mask",
    "given_split",
    "width",
    "height",
    "mask_kind",
    "nuclei",
    "classified",
    "positive",
    "image_sha256",
    "mask_sha256",
)


@dataclass(frozen=True)
class Pair:
    name: str  # file name without extension; unique in its folder
    image: str | None  # posix paths relative to the root
    mask: str | None
    given_split: str  # "train" | "val" | "test" in layout 2, "" in layout 1


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str
    detail: str


@dataclass(frozen=True)
class SegLayout:
    kind: int  # 1 or 2
    folders: tuple[str, ...]  # folders holding images/ and masks/ ("" is the root)
    pairs: tuple[Pair, ...]  # sorted by (folder, name)


def _files(folder: Path, suffixes: Iterable[str]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes:
                found.setdefault(p.stem, []).append(p)
    return found


def discover(root: str | Path) -> SegLayout:
    """Find the image/mask folders under ``root`` and pair files by name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: segmentation data folder not found")
    splits = [s for s in GIVEN_SPLITS if (root / s).is_dir()]
    folders: tuple[str, ...]
    if (root / IMAGES).is_dir():
        if splits:
            raise DatasetError(
                f"{root}: has both images/ and split folders {splits}: use one layout"
            )
        kind, folders = 1, ("",)
    elif "train" in splits and "test" in splits:
        kind, folders = 2, tuple(splits)
    else:
        raise DatasetError(
            f"{root}: expected images/ and masks/ (layout 1) or train/ and test/ folders "
            f"holding them (layout 2); found {sorted(p.name for p in root.iterdir())}"
        )
    pairs = []
    for folder in folders:
        base = root / folder
        if not (base / IMAGES).is_dir():
            raise DatasetError(f"{base}: no {IMAGES}/ folder")
        images = _files(base / IMAGES, IMAGE_SUFFIXES)
        masks = _files(base / MASKS, MASK_SUFFIXES)
        for name in sorted(set(images) | set(masks)):
            img, msk = images.get(name, []), masks.get(name, [])
            pairs.append(Pair(name, _rel(img, root), _rel(msk, root), folder))
    return SegLayout(kind, folders, tuple(pairs))


def _rel(paths: list[Path], root: Path) -> str | None:
    """One path, or None; several files with one name are joined by '|' (a duplicate)."""
    return "|".join(p.relative_to(root).as_posix() for p in paths) or None


@dataclass
class PairCheck:
    record: dict[str, object] | None
    problem: Problem | None


def read_classes(root: Path, folder: str) -> dict[str, dict[int, int]]:
    path = root / folder / CLASSES_FILE
    if not path.is_file():
        return {}
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read as CSV ({exc})") from None
    try:
        return read_classes_table(str(path), frame)
    except MaskError as exc:
        raise DatasetError(str(exc)) from None


@dataclass(frozen=True)
class Loaded:
    rgb: np.ndarray  # (H, W, 3) uint8
    annotation: Annotation
    mask_kind: str  # "instance" | "class"
    image_sha256: str
    mask_sha256: str


def load_pair(
    root: Path,
    pair: Pair,
    classes: dict[int, int] | None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Loaded:
    """Decode and check one pair.

    Raises :class:`ImageError` (a :class:`MaskError` for mask problems) with the reason.
    """
    where = pair.image or pair.mask or pair.name
    for path, what in ((pair.image, "images"), (pair.mask, "masks")):
        if path and "|" in path:
            raise MaskError(
                path, "duplicate_name", f"several {what} named {pair.name!r}: {path.split('|')}"
            )
    if pair.image is None:
        raise MaskError(str(where), "missing_image", f"mask without an image named {pair.name!r}")
    if pair.mask is None:
        raise MaskError(pair.image, "missing_mask", f"image without a mask named {pair.name!r}")
    image_bytes = (root / pair.image).read_bytes()
    mask_bytes = (root / pair.mask).read_bytes()
    rgb, _ = decode_rgb8(image_bytes, pair.image, max_pixels=max_pixels)
    labels = decode_mask(mask_bytes, pair.mask, max_pixels=max_pixels)
    if labels.shape != rgb.shape[:2]:
        raise MaskError(
            pair.mask,
            "size_mismatch",
            f"mask is {labels.shape[1]}x{labels.shape[0]} px, its image {pair.image} is "
            f"{rgb.shape[1]}x{rgb.shape[0]}",
        )
    return Loaded(
        rgb,
        to_annotation(labels, pair.mask, classes),
        "class" if labels.dtype == np.uint8 else "instance",
        hashlib.sha256(image_bytes).hexdigest(),
        hashlib.sha256(mask_bytes).hexdigest(),
    )


def load_tiles(root: Path, names: Iterable[str]) -> Iterator[tuple[str, Loaded]]:
    """Tiles of a folder in layout 1 with PNG files (what the seg_prepare stage writes)."""
    classes = read_classes(root, "")
    for name in names:
        pair = Pair(name, f"{IMAGES}/{name}.png", f"{MASKS}/{name}.png", "")
        yield name, load_pair(root, pair, classes.get(name))


def check_pair(
    root: Path, pair: Pair, classes: dict[int, int] | None, max_pixels: int
) -> PairCheck:
    """Like :func:`load_pair`, but returns the record or the problem instead of raising."""
    try:
        got = load_pair(root, pair, classes, max_pixels=max_pixels)
    except ImageError as exc:
        return PairCheck(None, Problem(exc.source, exc.reason, exc.detail))
    except OSError as exc:
        return PairCheck(None, Problem(pair.image or str(pair.mask), "corrupt", str(exc)))
    ann = got.annotation
    record: dict[str, object] = {
        "name": pair.name,
        "image": pair.image,
        "mask": pair.mask,
        "given_split": pair.given_split,
        "width": got.rgb.shape[1],
        "height": got.rgb.shape[0],
        "mask_kind": got.mask_kind,
        "nuclei": ann.count,
        "classified": ann.classified,
        "positive": ann.positive,
        "image_sha256": got.image_sha256,
        "mask_sha256": got.mask_sha256,
    }
    return PairCheck(record, None)


def validate(
    root: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[pd.DataFrame, list[Problem]]:
    """Check every pair under ``root``: the accepted pairs (``RECORD_COLUMNS``) and the
    rejected ones, each with its reason. Unusable ``classes.csv`` files raise DatasetError."""
    root = Path(root)
    layout = discover(root)
    tables = {folder: read_classes(root, folder) for folder in layout.folders}
    records, problems = [], []
    for pair in layout.pairs:
        table = tables[pair.given_split]
        check = check_pair(root, pair, table.get(pair.name), max_pixels)
        if check.record is not None:
            records.append(check.record)
        if check.problem is not None:
            problems.append(check.problem)
    for folder, table in tables.items():
        names = {p.name for p in layout.pairs if p.given_split == folder}
        stray = sorted(set(table) - names)
        if stray:
            path = (Path(folder) / CLASSES_FILE).as_posix()
            problems.append(
                Problem(path, "classes_mismatch", f"lists images without a mask: {stray[:10]}")
            )
    frame = pd.DataFrame(records, columns=list(RECORD_COLUMNS))
    return frame, problems


def problems_table(problems: Iterable[Problem]) -> list[dict[str, str]]:
    return [asdict(p) for p in problems]
