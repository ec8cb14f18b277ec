"""Generated training data in the train stage's input format, for tests and benchmarks.

Writes ``processed/images/<sha256>.png`` and ``processed/split.csv`` exactly as the preprocess
and split stages do. Each class is a stained "cell": a disc whose colour, size and texture
depend on the class, on a noisy pale background, at a random position. The classes are
learnable but not trivial (they overlap a little through noise and colour jitter).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ihcflow.files import sha256_bytes, write_bytes_atomic, write_csv_atomic
from ihcflow.images.codec import encode_png


def _class_style(k: int, n_classes: int) -> tuple[np.ndarray, float, float]:
    angle = 2 * np.pi * k / n_classes
    colour = np.array([0.55 + 0.3 * np.cos(angle), 0.35 + 0.25 * np.sin(angle), 0.6], np.float32)
    radius = 0.22 + 0.12 * ((k * 3) % n_classes) / max(1, n_classes - 1)
    texture = 0.15 * (k % 3)
    return colour, radius, texture


def toy_image(k: int, n_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 RGB image of class ``k``."""
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


def write_toy_split(
    root: str | os.PathLike[str],
    counts: Mapping[str, int],
    *,
    n_classes: int = 4,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write ``counts[split]`` images per split, classes round-robin; return split.csv's path.

    ``root`` plays the repository root: images go to ``root/processed/images``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root / "processed" / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = [f"class_{chr(ord('a') + k)}" for k in range(n_classes)]
    rows = []
    for split, n in counts.items():
        for i in range(n):
            k = i % n_classes
            png = encode_png(toy_image(k, n_classes, size, rng))
            digest = sha256_bytes(png)
            write_bytes_atomic(images / f"{digest}.png", png)
            rows.append(
                {
                    "path": f"{names[k]}/{split}_{i:05d}.png",
                    "sha256": digest,
                    "class": names[k],
                    "split": split,
                    "group": f"{split}_{i:05d}",
                    "image": f"processed/images/{digest}.png",
                }
            )
    frame = pd.DataFrame(rows).sort_values("path", kind="stable").reset_index(drop=True)
    split_csv = root / "processed" / "split.csv"
    write_csv_atomic(split_csv, frame)
    return split_csv
