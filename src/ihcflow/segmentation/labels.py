"""The annotation contract: instance masks, class maps, ``classes.csv``, and training targets.

A mask is a single-channel image the size of its image, in one of two kinds:

- **instance mask** (16-bit PNG or TIFF, or a 32-bit TIFF with values up to 65535):
  0 background, 1..K one id per nucleus (a 1000x1000 tile at 40x holds 250-800 nuclei, so
  8 bits are not enough). The class of each nucleus comes from ``classes.csv`` (optional).
- **class map** (8-bit PNG or TIFF, grey or palette): 0 background, 1 negative nucleus,
  2 positive nucleus. Nuclei are its connected components (4-connectivity, per class), so
  touching nuclei of one class merge: prefer instance masks.

``classes.csv`` (beside ``images/`` and ``masks/``): columns ``image`` (the mask's name without
extension), ``instance`` (id in that mask), ``class`` (``negative``/``positive``/``unclassified``,
or 1/2/0). An image it names must list every nucleus of its mask; images it does not name have
unclassified nuclei (segmentation is learnt from them, the positive/negative class is not).

In memory an :class:`Annotation` holds ``instances`` (uint16, ids 1..K consecutive) and
``classes`` ((K+1,) uint8: ``classes[k]`` for nucleus k; ``classes[0]`` is unused).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from ihcflow.images.codec import DEFAULT_MAX_PIXELS, ImageError, probe

if TYPE_CHECKING:  # the server imports this module, and not pandas
    import pandas as pd

UNCLASSIFIED, NEGATIVE, POSITIVE = 0, 1, 2  # nucleus classes (class map values 1 and 2)
CLASS_NAMES = {UNCLASSIFIED: "unclassified", NEGATIVE: "negative", POSITIVE: "positive"}
MAX_INSTANCES = 65_535  # uint16
CLASSES_FILE = "classes.csv"
CLASSES_COLUMNS = ("image", "instance", "class")

# Training targets: one class per pixel for the nucleus shape, one bit for DAB positivity.
SEG_BACKGROUND, SEG_INTERIOR, SEG_BOUNDARY = 0, 1, 2
SEG_CLASSES = 3
IGNORE = 255  # positivity of background and unclassified nuclei: not learnt

_LABEL_MODES = {"L": "class", "P": "class", "I;16": "instance", "I;16B": "instance"}
_LABEL_MODES |= {"I;16L": "instance", "I;16N": "instance", "I": "instance"}


class MaskError(ImageError):
    """A mask (or its classes) that cannot be used; ``reason`` is a short code."""


@dataclass(frozen=True)
class Annotation:
    instances: np.ndarray  # (H, W) uint16, 0 background, 1..K
    classes: np.ndarray  # (K + 1,) uint8: UNCLASSIFIED, NEGATIVE or POSITIVE per nucleus

    @property
    def count(self) -> int:
        return len(self.classes) - 1

    @property
    def positive(self) -> int:
        return int((self.classes[1:] == POSITIVE).sum())

    @property
    def classified(self) -> int:
        return int((self.classes[1:] != UNCLASSIFIED).sum())

    def ki67_index(self) -> float | None:
        """Positive / classified nuclei; None without classified nuclei."""
        n = self.classified
        return self.positive / n if n else None

    def class_map(self) -> np.ndarray:
        """(H, W) uint8: 0 background, 1 negative, 2 positive (unclassified nuclei count as 0)."""
        return self.classes[self.instances]


def relabel(instances: np.ndarray, classes: np.ndarray | None = None) -> Annotation:
    """Renumber ``instances`` to 1..K in order of first id (absent ids dropped)."""
    ids = np.unique(instances)
    ids = ids[ids != 0]
    if len(ids) > MAX_INSTANCES:
        raise ValueError(f"{len(ids)} nuclei, at most {MAX_INSTANCES} fit a 16-bit mask")
    lut = np.zeros(int(instances.max(initial=0)) + 1, np.uint16)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint16)
    new_classes = np.zeros(len(ids) + 1, np.uint8)
    if classes is not None:
        new_classes[1:] = classes[ids]
    return Annotation(lut[instances], new_classes)


def from_class_map(class_map: np.ndarray) -> Annotation:
    """Nuclei of a class map: connected components of each class (4-connectivity)."""
    instances = np.zeros(class_map.shape, np.int32)
    classes = [UNCLASSIFIED]
    for value in (NEGATIVE, POSITIVE):
        n, comp = cv2.connectedComponents((class_map == value).astype(np.uint8), connectivity=4)
        if n > 1:
            inside = comp > 0
            instances[inside] = comp[inside] + len(classes) - 1
            classes += [value] * (n - 1)
    return relabel(instances, np.asarray(classes, np.uint8))


def decode_mask(data: bytes, source: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask file's labels: uint8 for a class map, uint16 for an instance mask."""
    info = probe(data, source, max_pixels)  # empty, not an image, corrupt, too large
    kind = _LABEL_MODES.get(info.mode)
    if kind is None:
        raise MaskError(
            source,
            "not_a_label_image",
            f"mask is a {info.mode} {info.format} image, expected one channel of labels "
            "(16-bit instance ids, or 8-bit classes 0/1/2)",
        )
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as img:
            warnings.simplefilter("ignore")
            arr = np.asarray(img)
    except Exception as exc:  # PIL raises many types on damaged pixel data
        raise MaskError(source, "corrupt", f"cannot decode mask: {exc}") from None
    if arr.ndim != 2:
        raise MaskError(source, "not_a_label_image", f"mask has shape {arr.shape}, expected 2-D")
    if kind == "class":
        return arr.astype(np.uint8, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > MAX_INSTANCES:
        raise MaskError(
            source,
            "labels_out_of_range",
            f"instance ids span {lo}..{hi}, expected 0..{MAX_INSTANCES}",
        )
    return arr.astype(np.uint16)


def read_classes_table(path: str, frame: pd.DataFrame) -> dict[str, dict[int, int]]:
    """``classes.csv`` as {image: {instance: NEGATIVE | POSITIVE}}; errors name file and line."""
    missing = [c for c in CLASSES_COLUMNS if c not in frame.columns]
    if missing:
        raise MaskError(path, "classes_mismatch", f"missing column(s) {missing}")
    names = {name: code for code, name in CLASS_NAMES.items()} | {
        str(code): code for code in CLASS_NAMES
    }
    table: dict[str, dict[int, int]] = {}
    for line, (image, instance, cls) in enumerate(
        frame[list(CLASSES_COLUMNS)].itertuples(index=False), start=2
    ):
        value = names.get(str(cls).strip().lower())
        if value is None:
            raise MaskError(
                path,
                "classes_mismatch",
                f"line {line}: class {cls!r}, expected one of {sorted(names)}",
            )
        try:
            inst = int(str(instance))
        except ValueError:
            inst = 0
        if not 1 <= inst <= MAX_INSTANCES:
            raise MaskError(
                path, "classes_mismatch", f"line {line}: instance {instance!r} is not in 1..65535"
            )
        per_image = table.setdefault(str(image), {})
        if inst in per_image:
            raise MaskError(
                path, "classes_mismatch", f"line {line}: {image} instance {inst} listed twice"
            )
        per_image[inst] = value
    return table


def to_annotation(
    labels: np.ndarray, source: str, classes: Mapping[int, int] | None = None
) -> Annotation:
    """Check a decoded mask (and its ``classes.csv`` rows) and make it an :class:`Annotation`."""
    if labels.dtype == np.uint8:
        bad = np.setdiff1d(np.unique(labels), [0, NEGATIVE, POSITIVE])
        if len(bad):
            raise MaskError(
                source,
                "labels_out_of_range",
                f"8-bit mask (a class map) has values {bad[:10].tolist()}, expected 0 "
                "background, 1 negative, 2 positive (save instance ids as 16-bit)",
            )
        if classes:
            raise MaskError(
                source,
                "classes_mismatch",
                "classes.csv lists nuclei of a class map (its values already are the classes)",
            )
        return from_class_map(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    table = np.zeros(int(labels.max(initial=0)) + 1, np.uint8)
    if classes:
        unlisted = sorted(set(ids.tolist()) - set(classes))
        absent = sorted(set(classes) - set(ids.tolist()))
        if unlisted or absent:
            parts = []
            if unlisted:
                parts.append(f"nuclei {unlisted[:10]} have no class in classes.csv")
            if absent:
                parts.append(f"classes.csv lists ids {absent[:10]} that are not in the mask")
            raise MaskError(source, "classes_mismatch", "; ".join(parts))
        for inst, value in classes.items():
            table[inst] = value
    return relabel(labels, table)


def targets(ann: Annotation, boundary_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel training targets: ``seg`` (uint8: 0 background, 1 nucleus interior,
    2 boundary: nucleus pixels within ``boundary_px`` of another label) and ``pos``
    (uint8: 1 positive, 0 negative nucleus, IGNORE elsewhere and for unclassified nuclei).

    The boundary class is what separates touching nuclei at inference (see ``instances``).
    """
    inst = ann.instances
    seg = (inst > 0).astype(np.uint8)
    if boundary_px > 0:
        kernel = cv2.getStructuringElement(
            cv2.MORPH_ELLIPSE, (2 * boundary_px + 1, 2 * boundary_px + 1)
        )
        high = cv2.dilate(inst, kernel, borderType=cv2.BORDER_REPLICATE)
        low = cv2.erode(inst, kernel, borderType=cv2.BORDER_REPLICATE)
        seg[(inst > 0) & ((high != inst) | (low != inst))] = SEG_BOUNDARY
    cls = ann.classes[inst]
    pos = np.full(inst.shape, IGNORE, np.uint8)
    pos[cls == NEGATIVE] = 0
    pos[cls == POSITIVE] = 1
    return seg, pos


def encode_instances(instances: np.ndarray) -> bytes:
    """An instance mask as a 16-bit greyscale PNG."""
    if instances.ndim != 2:
        raise ValueError(f"expected an (H, W) instance mask, got shape {instances.shape}")
    if instances.max(initial=0) > MAX_INSTANCES or instances.min(initial=0) < 0:
        raise ValueError(f"instance ids must be in 0..{MAX_INSTANCES}")
    ok, buf = cv2.imencode(".png", instances.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def classes_rows(name: str, ann: Annotation) -> list[dict[str, object]]:
    """``classes.csv`` rows for one mask: every nucleus, or none when none is classified."""
    if not ann.classified:
        return []
    return [
        {"image": name, "instance": k, "class": CLASS_NAMES[int(c)]}
        for k, c in enumerate(ann.classes)
        if k
    ]
