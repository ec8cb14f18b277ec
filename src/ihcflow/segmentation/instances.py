"""From the network's probabilities to nuclei: instances, classes, and the Ki-67 summary.

The network predicts per pixel P(background), P(nucleus interior), P(nucleus boundary)
(softmax) and P(DAB-positive) (sigmoid): the output channels, in this order, of every
segmentation model here. Touching nuclei share a band of boundary pixels, so:

1. nucleus pixels: P(background) < 1 - ``foreground``;
2. seeds: connected regions (4-connectivity) of P(interior) >= ``seed``, at least
   ``min_seed_px`` px: one per nucleus, separated by the boundary band;
3. each seed grows over nucleus pixels one px per step (a marker-controlled watershed on the
   distance, which is what the thin boundary band calls for), up to ``grow_px`` steps;
4. nucleus pixels no seed reached form nuclei of their own; nuclei under ``min_area_px`` are
   dropped;
5. a nucleus is positive when its mean P(positive) >= ``positive``.

OpenCV and numpy only (no scipy, no torch): the server runs this.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ihcflow.segmentation.labels import NEGATIVE, POSITIVE, Annotation, relabel

CHANNELS = ("background", "interior", "boundary", "positive")
BACKGROUND, INTERIOR, BOUNDARY, POSITIVITY = range(4)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass  # not frozen: ihcflow.config.typed reads it from params
class PostprocessConfig:
    foreground: float = 0.5  # P(nucleus) = 1 - P(background) a nucleus pixel needs
    seed: float = 0.5  # P(interior) of a seed pixel
    min_seed_px: int = 10  # smaller seeds are fragments (a 15 px nucleus has a ~80 px interior)
    grow_px: int = 8  # seeds grow at most this far: about twice the boundary band
    min_area_px: int = 25  # smaller nuclei are dropped (debris; ~6 px across)
    positive: float = 0.5  # mean P(positive) of a positive nucleus

    def __post_init__(self) -> None:
        for name in ("foreground", "seed", "positive"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"postprocess.{name} is {value}, expected a value in (0, 1)")
        for name in ("min_seed_px", "grow_px", "min_area_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"postprocess.{name} is {getattr(self, name)}, expected >= 0")


def _u8(p: float) -> int:
    return int(np.ceil(p * 255 - 1e-9))


def to_annotation(probs: np.ndarray, cfg: PostprocessConfig) -> Annotation:
    """(4, H, W) uint8 probabilities (value / 255, see ``tiling``) -> nuclei with classes."""
    if probs.ndim != 3 or probs.shape[0] != len(CHANNELS) or probs.dtype != np.uint8:
        raise ValueError(
            f"expected (4, H, W) uint8 probabilities {CHANNELS}, got {probs.dtype} {probs.shape}"
        )
    nucleus = probs[BACKGROUND] <= 255 - _u8(cfg.foreground)
    seeds = (probs[INTERIOR] >= _u8(cfg.seed)) & nucleus
    n, labels, stats, _ = cv2.connectedComponentsWithStats(seeds.astype(np.uint8), connectivity=4)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= cfg.min_seed_px
    if keep.sum() > 65_535:
        raise ValueError(f"{int(keep.sum())} nuclei in one image: more than 16 bits hold")
    lut = np.zeros(n, np.uint16)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint16)
    inst = lut[labels]
    for _ in range(cfg.grow_px):
        todo = nucleus & (inst == 0)
        grown = cv2.dilate(inst, _CROSS)
        step = todo & (grown > 0)
        if not step.any():
            break
        inst[step] = grown[step]
    rest = (nucleus & (inst == 0)).astype(np.uint8)
    n_rest, rest_labels, rest_stats, _ = cv2.connectedComponentsWithStats(rest, connectivity=4)
    big = np.flatnonzero(rest_stats[:, cv2.CC_STAT_AREA] >= cfg.min_area_px)
    big = big[big > 0]
    if len(big):
        offset = int(inst.max())
        if offset + len(big) > 65_535:
            raise ValueError(f"{offset + len(big)} nuclei in one image: more than 16 bits hold")
        rest_lut = np.zeros(n_rest, np.uint16)
        rest_lut[big] = np.arange(offset + 1, offset + 1 + len(big), dtype=np.uint16)
        new = rest_lut[rest_labels]
        inst = np.where(new > 0, new, inst)
    area = np.bincount(inst.ravel())
    small = area < cfg.min_area_px
    small[0] = False
    inst[small[inst]] = 0
    positivity = np.bincount(inst.ravel(), weights=probs[POSITIVITY].ravel(), minlength=len(area))
    mean_pos = positivity / np.maximum(area, 1) / 255.0
    classes = np.where(mean_pos >= cfg.positive, POSITIVE, NEGATIVE).astype(np.uint8)
    classes[0] = 0
    return relabel(inst, classes)


@dataclass(frozen=True)
class Summary:
    nuclei: int
    positive: int
    ki67_index: float | None  # positive / nuclei; None without nuclei
    mean_area_px: float | None
    mean_area_um2: float | None  # when the pixel size is known

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "nuclei": self.nuclei,
            "positive": self.positive,
            "ki67_index": self.ki67_index,
            "mean_area_px": self.mean_area_px,
            "mean_area_um2": self.mean_area_um2,
        }


def summarize(ann: Annotation, microns_per_pixel: float | None = None) -> Summary:
    n = ann.count
    if not n:
        return Summary(0, 0, None, None, None)
    area = float(np.count_nonzero(ann.instances)) / n
    um2 = area * microns_per_pixel**2 if microns_per_pixel else None
    return Summary(
        n,
        ann.positive,
        round(ann.positive / n, 6),
        round(area, 3),
        None if um2 is None else round(um2, 3),
    )
