"""Generated test data: images as PNG bytes, split tables with their preprocessed images (as
the preprocess and split stages write them), and a pool of drift features.

Two image families: :func:`colour_image` (a flat colour with noise: a model on the mean colour
separates the classes) and :func:`toy_image` (a stained "cell" whose colour, size and texture
depend on the class: learnable by a CNN, not trivially). The benchmarks use :func:`toy_image`
and :func:`write_toy_split` too.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ihcflow.data.synth import DEFAULT_CLASSES, render_image
from ihcflow.files import sha256_bytes, sha256_file
from ihcflow.images.codec import encode_png
from ihcflow.images.features import image_features
from ihcflow.monitoring.sources import Table
from ihcflow.tables import IMAGES_DIR, SPLIT, image_file
from tests.helpers import conf_section

# --- images ----------------------------------------------------------------------------------


def png(colour: tuple[int, int, int], size: tuple[int, int] = (20, 30), fmt: str = "PNG") -> bytes:
    """A one-colour image (``size`` is width, height) in ``fmt``."""
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB array, as a client would upload them (PIL)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def colour_image(
    colour: tuple[int, int, int], rng: np.random.Generator, noise: float, size: int
) -> np.ndarray:
    """``colour`` shifted by ``noise`` (per image) plus pixel noise: (size, size, 3) uint8."""
    base = np.array(colour, dtype=float) + rng.normal(0, noise, size=3)
    pixels = base + rng.normal(0, 8, size=(size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _class_style(k: int, n_classes: int) -> tuple[np.ndarray, float, float]:
    angle = 2 * np.pi * k / n_classes
    colour = np.array([0.55 + 0.3 * np.cos(angle), 0.35 + 0.25 * np.sin(angle), 0.6], np.float32)
    radius = 0.22 + 0.12 * ((k * 3) % n_classes) / max(1, n_classes - 1)
    texture = 0.15 * (k % 3)
    return colour, radius, texture


def toy_image(k: int, n_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) uint8 "cell" of class ``k``: a disc whose colour, size and texture
    depend on the class, on a noisy pale background, at a random position."""
    colour, radius, texture = _class_style(k, n_classes)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = rng.uniform(0.35, 0.65, 2)
    r = radius * rng.uniform(0.85, 1.15)
    dist = np.hypot(yy - cy, xx - cx)
    mask = np.clip((r - dist) * size / 1.5, 0, 1)[..., None]
    stripes = 1 - texture * (np.sin(xx * size * 1.3 + rng.uniform(0, 6)) > 0)[..., None]
    cell = colour * rng.uniform(0.9, 1.1, 3).astype(np.float32) * stripes
    background = np.array([0.93, 0.88, 0.90], np.float32)
    img = mask * cell + (1 - mask) * background
    img = img + rng.normal(0, 0.04, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_tissue(path: Path, seed: int, shape: tuple[int, int] = (40, 56)) -> None:
    """A raw stained-tissue-like file (PNG or JPEG by the suffix); every third one, by
    ``seed``, is too dark, so automatic correction applies to it."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2)[..., None]
    t = np.clip((t - t.min()) / (t.max() - t.min()) * 2 - 0.5, 0, 1)  # contrast ~0.2
    scale = 0.4 if seed % 3 == 0 else 1.0
    bgr = (np.array([230.0, 190.0, 235.0]) * (1 - t) + np.array([120, 40, 80]) * t) * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), bgr.astype(np.uint8))


def write_tissue_folder(root: Path) -> Path:
    """``root`` as a raw data folder (layout 1): 10 :func:`write_tissue` files, PNG and JPEG,
    in two classes."""
    for i in range(10):
        suffix = ".jpg" if i % 2 else ".png"
        write_tissue(root / ("ki67" if i < 5 else "her2") / f"img{i}{suffix}", seed=i)
    return root


def preprocess_conf(size: int) -> DictConfig:
    """conf/preprocess/default.yaml at ``size`` px, as the params section a stage reads."""
    return OmegaConf.create({**conf_section("preprocess"), "size": size})


def manifest_of(data: Path) -> pd.DataFrame:
    """Every file under ``data`` as a manifest row, unvalidated: so that a test can hand the
    preprocess stage the duplicates and damaged files that the validate stage would drop."""
    rows = [
        {
            "path": p.relative_to(data).as_posix(),
            "class": p.parent.name,
            "given_split": "",
            "sha256": sha256_file(p),
        }
        for p in sorted(data.rglob("*.*"))
    ]
    return pd.DataFrame(rows)


# --- split inputs ----------------------------------------------------------------------------


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def split_inputs(paths: list[str], given: list[str] | None = None) -> pd.DataFrame:
    """What the split stage reads, a manifest joined with features, for ``paths``: class = the
    first folder (after the split folder in layout 2, when ``given``)."""
    given = given or [""] * len(paths)
    return pd.DataFrame(
        {
            "path": paths,
            "class": [p.split("/")[1 if g else 0] for p, g in zip(paths, given, strict=True)],
            "given_split": given,
            "sha256": [_hash("raw" + p) for p in paths],
            "processed_sha256": [_hash("png" + p) for p in paths],
        }
    )


def layout1_paths(per_class: dict[str, int], patients: int | None = None) -> list[str]:
    """Layout 1 file names, with a ``P###_`` patient prefix of ``patients`` patients."""
    rng = np.random.default_rng(7)
    paths = []
    for cls, n in per_class.items():
        for i in range(n):
            prefix = f"P{rng.integers(patients):03d}_" if patients else ""
            paths.append(f"{cls}/{prefix}img{i:04d}.png")
    return sorted(paths)


def splits_per_group(groups: Sequence[str], split: Sequence[str]) -> pd.Series:
    """How many splits each group's rows are in (1 everywhere: no group straddles two)."""
    return pd.DataFrame({"g": groups, "s": split}).groupby("g")["s"].nunique()


# --- split tables ----------------------------------------------------------------------------


def write_split(
    root: str | os.PathLike[str], rows: Sequence[tuple[str, str, str, np.ndarray]]
) -> pd.DataFrame:
    """processed/split.csv and processed/images/ under ``root`` (the repository root) as the
    split and preprocess stages write them, from (path, class, split, image) rows; each row is
    its own group. Returns the table."""
    root = Path(root)
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    table = []
    for path, cls, split, rgb in rows:
        data = encode_png(rgb)
        digest = sha256_bytes(data)
        image = image_file(IMAGES_DIR, digest)
        (root / image).write_bytes(data)
        table.append([path, digest, cls, split, path, image])
    frame = pd.DataFrame(table, columns=list(SPLIT.columns))
    frame = frame.sort_values("path", kind="stable").reset_index(drop=True)
    frame.to_csv(root / SPLIT.path, index=False)
    return frame


# the colour data set: three classes a mean-colour model tells apart, 12 px
COLOURS = {"DAB": (150, 90, 40), "Hematoxylin": (70, 80, 160), "Mixed": (110, 85, 100)}
CLASSES = list(COLOURS)
SIZE = 12


def write_colour_dataset(
    root: Path, per_class: int, noise: float, *, seed: int = 0, size: int = SIZE, val: bool = False
) -> pd.DataFrame:
    """:data:`COLOURS` images, ``per_class`` each: every third image of a class is test; with
    ``val`` every sixth (from the second) is val, the rest train."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, colour in COLOURS.items():
        for j in range(per_class):
            split = "test" if j % 3 == 0 else "val" if val and j % 6 == 1 else "train"
            rows.append(
                (f"{name}/{name}{j:03d}.png", name, split, colour_image(colour, rng, noise, size))
            )
    return write_split(root, rows)


def write_toy_split(
    root: str | os.PathLike[str],
    counts: Mapping[str, int],
    *,
    n_classes: int = 4,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """``counts[split]`` :func:`toy_image` s per split, classes round-robin; returns the split
    table's path."""
    rng = np.random.default_rng(seed)
    names = [f"class_{chr(ord('a') + k)}" for k in range(n_classes)]
    rows = [
        (f"{names[i % n_classes]}/{split}_{i:05d}.png", names[i % n_classes], split,
         toy_image(i % n_classes, n_classes, size, rng))
        for split, n in counts.items()
        for i in range(n)
    ]  # fmt: skip
    write_split(root, rows)
    return Path(root) / SPLIT.path


# --- drift features --------------------------------------------------------------------------

POOL_PER_CLASS = 100
POOL_SIZE = 96
N_REFERENCE = 250


@functools.cache
def pool() -> tuple[list[np.ndarray], list[str], pd.DataFrame]:
    """500 synthetic IHC patches (5 classes, 12 patients), their classes and features."""
    images, classes = [], []
    for name in DEFAULT_CLASSES:
        for index in range(POOL_PER_CLASS):
            images.append(render_image(name, index, size=POOL_SIZE))
            classes.append(name)
    return images, classes, features(images, classes, range(len(images)))


def features(
    images: list[np.ndarray],
    classes: list[str],
    rows: range | np.ndarray,
    change: Callable[[np.ndarray], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Feature rows (and the class as ``predicted``: a perfect model) of ``images[rows]``."""
    frame = pd.DataFrame(
        [
            image_features(images[i] if change is None else change(images[i]), POOL_SIZE)
            for i in rows
        ]
    )
    frame["predicted"] = [classes[i] for i in rows]
    return frame


def draw(
    seed: int, n_current: int, change: Callable[[np.ndarray], np.ndarray] | None = None
) -> tuple[Table, Table]:
    """Reference and current from one population (a random split of the pool); ``change``
    is applied to the current images (a new scanner or stain batch)."""
    images, classes, base = pool()
    order = np.random.default_rng(seed).permutation(len(images))
    ref_rows, cur_rows = order[:N_REFERENCE], order[N_REFERENCE : N_REFERENCE + n_current]
    reference = Table(base.iloc[ref_rows].reset_index(drop=True), None, "ref", "reference")
    if change is None:
        current = base.iloc[cur_rows].reset_index(drop=True)
    else:
        current = features(images, classes, cur_rows, change)
    return reference, Table(current, None, "cur", "logs")
