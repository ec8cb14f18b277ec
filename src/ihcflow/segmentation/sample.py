"""The built-in segmentation sample: synthetic IHC tiles with the nuclei they show as masks.

The tiles come from the classification sample's renderer (``ihcflow.data.synth``, which draws
nuclei as ellipses in stain optical density) at a larger size, so nuclei are about 15-30 px
across: 40x magnification at :data:`MICRONS_PER_PIXEL`. Each drawn nucleus becomes one instance
in ``masks/<name>.png`` (16-bit), drawn in the same order as in the image, so a nucleus partly
covered by a later one keeps only its visible part; touching and overlapping nuclei are
frequent (random placement, and the dense proliferating clusters of Ki-67). DAB-positive
nuclei are ``positive`` in ``classes.csv``.

Layout 1 of ``ihcflow.segmentation.layout``; file names ``P<patient>_<index>`` as in the
classification sample, so the split can keep one patient's tiles together. Deterministic:
the same arguments give the same bytes. The classification sample is not affected (its
renderer draws the same pixels whether or not it records the nuclei).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ihcflow.data import synth
from ihcflow.files import atomic_dir
from ihcflow.images.codec import encode_png
from ihcflow.segmentation.labels import (
    CLASSES_COLUMNS,
    CLASSES_FILE,
    NEGATIVE,
    POSITIVE,
    Annotation,
    classes_rows,
    encode_instances,
    relabel,
)
from ihcflow.segmentation.layout import IMAGES, MASKS

MICRONS_PER_PIXEL = 0.25  # 40x: nuclei of 4-7.5 um are 15-30 px across at the default size
DEFAULT_STAINS = ("Ki-67", "Er", "Pr")  # nuclear stains: low, high and mid positive fractions
DEFAULT_SIZE = 448  # px: the renderer's 256 px field at 1.75x, 60-160 nuclei per tile
MIN_VISIBLE_PX = 12  # a nucleus almost hidden under later ones is not annotated


def nuclei_annotation(nuclei: Sequence[synth.Nucleus], size: int) -> Annotation:
    """Rasterise drawn nuclei (in drawing order, later ones on top) into an annotation."""
    instances = np.zeros((size, size), np.uint16)
    classes = np.zeros(len(nuclei) + 1, np.uint8)
    for k, nucleus in enumerate(nuclei, start=1):
        synth._draw_ellipse(
            instances, np.asarray(nucleus.center), nucleus.axes, nucleus.angle, float(k), -1
        )
        classes[k] = POSITIVE if nucleus.positive else NEGATIVE
    areas = np.bincount(instances.ravel(), minlength=len(classes))
    hidden = np.flatnonzero(areas < MIN_VISIBLE_PX)
    instances[np.isin(instances, hidden[hidden > 0])] = 0
    return relabel(instances, classes)


def tile_name(index: int, patients: int) -> str:
    return Path(synth.file_name(index, patients)).stem


def generate(
    out_dir: str | Path,
    *,
    images: int = 30,
    patients: int = 10,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    stains: Sequence[str] = DEFAULT_STAINS,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``images`` tiles (stains taken in turn) with masks and ``classes.csv``.

    A non-empty ``out_dir`` is refused unless ``overwrite`` (it is then replaced whole); the
    folder is built beside it and renamed into place. Returns the image paths, sorted.
    """
    synth._check_args(stains, images, patients, size, seed)
    out = Path(out_dir)
    synth.check_out_dir(out, overwrite)
    rows: list[dict[str, object]] = []
    names = []
    with atomic_dir(out) as tmp:
        (tmp / IMAGES).mkdir()
        (tmp / MASKS).mkdir()
        for index in range(images):
            stain = stains[index % len(stains)]
            rgb, nuclei = synth.render_with_nuclei(
                stain, index, patients=patients, size=size, seed=seed
            )
            ann = nuclei_annotation(nuclei, size)
            name = tile_name(index, patients)
            (tmp / IMAGES / f"{name}.png").write_bytes(encode_png(rgb, synth.PNG_COMPRESSION))
            (tmp / MASKS / f"{name}.png").write_bytes(encode_instances(ann.instances))
            rows += classes_rows(name, ann)
            names.append(name)
        table = pd.DataFrame(rows, columns=list(CLASSES_COLUMNS))
        table.to_csv(tmp / CLASSES_FILE, index=False, lineterminator="\n")
    return sorted(out / IMAGES / f"{n}.png" for n in names)
