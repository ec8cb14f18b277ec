"""One image, from file bytes to the model's input: the preprocessing the pipeline trains on.

:func:`prepare_image` is the one path from a file to what the model sees, shared by the
``preprocess`` stage (every training image), the server (every upload) and drift monitoring
(a folder of new images): decode, measure the drift features on the decoded image (before any
correction, at the model's input size: :mod:`ihcflow.images.features`) and the file's
acquisition properties, then :func:`preprocess_image`, which composes the operations of
:mod:`ihcflow.images.ops` in the pipeline's order from the ``preprocess`` params.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ihcflow.config import ConfigError, plain, typed
from ihcflow.images.codec import DEFAULT_MAX_PIXELS, decode_rgb8, jpeg_reduction
from ihcflow.images.features import acquisition, image_features
from ihcflow.images.ops import (
    auto_correct,
    centre_zoom,
    check_rgb,
    denoise,
    macenko_normalize,
    reinhard_normalize,
    resize,
)

STAIN_METHODS = ("none", "reinhard", "macenko")
NON_PIXEL_PARAMS = ("workers", "cache_dir")  # how the preprocess stage runs, not what it makes
# A JPEG is decoded at reduced scale only while that keeps >= this x the model size per side,
# so the final area resize still averages >= 4x4 decoded px into each model px. libjpeg's
# scaled IDCT is a sharper low-pass than a box average, and the texture features see it
# (benchmarks/preprocess.py, vs a full-size decode): with a margin of 2, PBC cells (360 px, 1/4
# scale) at 28 px moved sharpness by 0.28 of its spread over the images and generated tissue
# (~512 px, 1/2 and 1/4) at 64 px hematoxylin_std by 1.06; with 4, 0.06 and 0.08 (tolerance
# 0.1), pixels 0.11 and 0.13 grey levels on average. 1/2 scale already saves most of what
# scaling can: a 360 px PBC JPEG took 0.28 ms at 1/2, 0.25 at 1/4, 0.22 at 1/8 and 0.38 at
# full size (one thread; entropy decoding remains at any scale).
REDUCED_DECODE_MARGIN = 4


@dataclass
class Denoise:
    method: str  # none | median | gaussian | bilateral
    ksize: int
    sigma_color: float  # bilateral only
    sigma_space: float


@dataclass
class AutoCorrect:
    enabled: bool
    min_brightness: float
    max_brightness: float
    min_contrast: float
    percentiles: list[float]
    clahe_clip: float
    clahe_tiles: int


@dataclass
class StainNorm:
    method: str  # none | reinhard | macenko
    target_means: list[float]  # Reinhard
    target_stds: list[float]
    background_l: float
    reference: str  # Macenko
    alpha: float
    beta: float
    max_gain: float


@dataclass
class ImageParams:
    """The part of the ``preprocess`` params that decides the pixels (conf/preprocess/ says
    what each value does); ``model.json`` records them for the server."""

    size: int
    interpolation: str
    resize_early: bool
    denoise: Denoise
    auto_correct: AutoCorrect
    stain_norm: StainNorm

    @classmethod
    def from_section(cls, node: Any, where: str = "preprocess") -> ImageParams:
        """From a ``preprocess`` section (``workers`` and ``cache_dir`` are ignored)."""
        data = plain(node)
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k not in NON_PIXEL_PARAMS}
        return typed(data, cls, where)


def preprocess_image(
    rgb: np.ndarray,
    params: ImageParams,
    *,
    resized: np.ndarray | None = None,
    scale: int = 1,
    source_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, dict[str, bool]]:
    """Prepare one image for the model: denoise -> auto_correct -> stain_norm -> resize.

    With ``resize_early`` an image that is being shrunk is resized right after denoising:
    auto_correct and stain_norm are global colour maps, so they give nearly the same result on
    the small image at a fraction of the cost, and their thresholds are then judged on the
    image the model sees. Denoising runs at native resolution (a median removes single-pixel
    specks there; after shrinking they would be smeared instead). ``rgb`` may be a JPEG
    decoded at reduced scale (``scale``, ``source_hw``: :func:`~ihcflow.images.ops.resize`);
    ``resized``: ``rgb`` resized to the model size if the caller already has it (used when
    there is nothing to denoise). Returns the ``size x size`` RGB image and what was
    applied: ``denoised``, ``corrected``, ``stain_normalized``, ``resized_early``.
    """
    check_rgb(rgb)
    size, interpolation = params.size, params.interpolation
    shrinking = rgb.shape[0] * rgb.shape[1] > size * size
    dn = params.denoise
    out = denoise(rgb, dn.method, dn.ksize, dn.sigma_color, dn.sigma_space)
    applied = {
        "denoised": out is not rgb,
        "corrected": False,
        "stain_normalized": False,
        "resized_early": shrinking and params.resize_early,
    }
    if applied["resized_early"]:
        if resized is None or out is not rgb:  # denoised: resize that
            resized = resize(out, size, interpolation, scale=scale, source_hw=source_hw)
        out = resized
    ac = params.auto_correct
    if ac.enabled:
        out, applied["corrected"] = auto_correct(
            out,
            min_brightness=ac.min_brightness,
            max_brightness=ac.max_brightness,
            min_contrast=ac.min_contrast,
            percentiles=ac.percentiles,
            clahe_clip=ac.clahe_clip,
            clahe_tiles=ac.clahe_tiles,
        )
    sn = params.stain_norm
    if sn.method == "reinhard":
        out, applied["stain_normalized"] = reinhard_normalize(
            out, sn.target_means, sn.target_stds, background_l=sn.background_l
        )
    elif sn.method == "macenko":
        out, applied["stain_normalized"] = macenko_normalize(
            out, reference=sn.reference, alpha=sn.alpha, beta=sn.beta, max_gain=sn.max_gain
        )
    elif sn.method != "none":
        raise ValueError(
            f"stain_norm method {sn.method!r} unknown, expected one of {STAIN_METHODS}"
        )
    if out.shape[:2] == (size, size) and applied["resized_early"]:
        return out, applied
    return resize(out, size, interpolation, scale=scale, source_hw=source_hw), applied


def check_params(params: ImageParams) -> None:
    """Fail early, naming the problem, if ``preprocess_image`` cannot run with ``params``
    (the types are checked when they are read; this catches the values)."""
    try:
        preprocess_image(np.full((64, 64, 3), 128, np.uint8), params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params `preprocess`: {exc}") from None


def decode_min_side(params: ImageParams) -> int | None:
    """The px per side :func:`prepare_image` asks of the decoder (a JPEG may then be decoded
    at reduced scale), or None: full size. A median at native resolution is not a median at
    1/k scale, so with ``denoise`` the decode stays full size."""
    if params.denoise.method != "none":
        return None
    return REDUCED_DECODE_MARGIN * params.size


@dataclass(frozen=True)
class Prepared:
    """One image ready for the model, and what drift monitoring records about it."""

    image: np.ndarray  # (S, S, 3) uint8 RGB, what the model sees
    features: dict[str, float]  # FEATURE_COLUMNS: the decoded image at the model's input size
    acquisition: dict[str, int | str]  # ACQUISITION_COLUMNS: the file's size, depth, format
    applied: dict[str, bool]  # what preprocess_image applied
    zoomed: np.ndarray | None = None  # (S, S, 3): the centre zoomed in (prepare_image's zoom)

    @property
    def format(self) -> str:
        return str(self.acquisition["format"])


def prepare_image(
    data: bytes,
    source: str,
    params: ImageParams,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    strict: bool = False,
    full_decode: bool = False,
    zoom: float | None = None,
) -> Prepared:
    """Raw file bytes -> the model-ready image, its drift features and acquisition properties.

    Decode, measure :data:`~ihcflow.images.features.FEATURE_COLUMNS` on the decoded image
    (before any correction) at ``params.size`` with ``params.interpolation``, then
    :func:`preprocess_image`. ``strict`` also rejects damaged pixel data (the server has no
    validate stage before it).

    Less work for the same result: with nothing to denoise, a JPEG is decoded at 1/2, 1/4 or
    1/8 scale while that keeps >= 4x ``params.size`` px per side
    (:func:`~ihcflow.images.codec.jpeg_reduction`; ``full_decode`` turns it off, for
    comparison: benchmarks/preprocess.py measures the difference), and the one resize to the
    model size serves both the features and the preprocessing. (A median at 1/k scale is
    another filter than at full size, so with ``denoise`` the decode stays full size.)

    ``zoom``: also prepare the image's centre holding this share of each side
    (:func:`~ihcflow.images.ops.centre_zoom`, then :func:`preprocess_image`), for the
    out-of-distribution framing check (:mod:`ihcflow.ood`).
    """
    min_side = None if full_decode else decode_min_side(params)
    rgb, info = decode_rgb8(data, source, max_pixels=max_pixels, strict=strict, min_side=min_side)
    scale, source_hw = jpeg_reduction(info, min_side), (info.height, info.width)
    small = resize(rgb, params.size, params.interpolation, scale=scale, source_hw=source_hw)
    features = image_features(small, params.size, params.interpolation)
    out, applied = preprocess_image(rgb, params, resized=small, scale=scale, source_hw=source_hw)
    zoomed = None if zoom is None else preprocess_image(centre_zoom(rgb, zoom), params)[0]
    return Prepared(out, features, acquisition(info, len(data)), applied, zoomed)


def tune_malloc(max_reused: int = 32 << 20) -> bool:
    """Let glibc keep freed buffers up to ``max_reused`` bytes instead of unmapping them.

    By default each buffer over ~128 KiB (every decoded image and every intermediate array)
    is mmapped on allocation and unmapped on free, so every image pays page faults for all its
    arrays again; on a VM that doubled the cost of both decoding and the operations (see
    benchmarks/preprocess.py). For a process that handles one image after another.
    Returns whether it applied (glibc only).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, max_reused)) and bool(
        mallopt(m_trim_threshold, 2 * max_reused)
    )
