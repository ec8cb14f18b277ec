"""One image, from file bytes to the model's input: the preprocessing the pipeline trains on.

:func:`prepare_image` is the one path from a file to what the model sees, shared by the
``preprocess`` stage (every training image), the server (every upload) and drift monitoring
(a folder of new images): decode, measure the drift features on the decoded image (before any
correction), then :func:`preprocess_image`, which composes the operations of
:mod:`ihcflow.images.ops` in the pipeline's order from the ``preprocess`` params.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

import numpy as np

from ihcflow.images.codec import DEFAULT_MAX_PIXELS, decode_rgb8
from ihcflow.images.features import image_features
from ihcflow.images.ops import (
    auto_correct,
    check_rgb,
    denoise,
    macenko_normalize,
    reinhard_normalize,
    resize,
)

STAIN_METHODS = ("none", "reinhard", "macenko")
PREPROCESS_KEYS = ("size", "interpolation", "denoise", "auto_correct", "stain_norm")


def preprocess_image(rgb: np.ndarray, cfg: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, bool]]:
    """Prepare one image for the model: denoise -> auto_correct -> stain_norm -> resize.

    ``cfg`` is the ``preprocess`` params section (a dict or DictConfig). With
    ``resize_early`` (the default) an image that is being shrunk is resized right after
    denoising: auto_correct and stain_norm are global colour maps, so they give nearly the
    same result on the small image at a fraction of the cost, and their thresholds are then
    judged on the image the model sees. Denoising always runs at native resolution (a median
    removes single-pixel specks there; after shrinking they would be smeared instead).
    Returns the ``size x size`` RGB image and what was applied: ``denoised``, ``corrected``,
    ``stain_normalized``, ``resized_early``.
    """
    check_rgb(rgb)
    missing = [key for key in PREPROCESS_KEYS if key not in cfg]
    if missing:
        raise ValueError(f"preprocess params lack {missing} (have {sorted(cfg)})")
    size, interpolation = int(cfg["size"]), str(cfg["interpolation"])
    shrinking = rgb.shape[0] * rgb.shape[1] > size * size
    dn = cfg["denoise"]
    out = denoise(rgb, dn["method"], dn["ksize"], dn["sigma_color"], dn["sigma_space"])
    applied = {
        "denoised": out is not rgb,
        "corrected": False,
        "stain_normalized": False,
        "resized_early": shrinking and bool(cfg.get("resize_early", True)),
    }
    if applied["resized_early"]:
        out = resize(out, size, interpolation)
    ac = cfg["auto_correct"]
    if ac["enabled"]:
        out, applied["corrected"] = auto_correct(
            out,
            min_brightness=float(ac["min_brightness"]),
            max_brightness=float(ac["max_brightness"]),
            min_contrast=float(ac["min_contrast"]),
            percentiles=[float(p) for p in ac["percentiles"]],
            clahe_clip=float(ac["clahe_clip"]),
            clahe_tiles=int(ac["clahe_tiles"]),
        )
    sn = cfg["stain_norm"]
    method = sn["method"]
    if method == "reinhard":
        out, applied["stain_normalized"] = reinhard_normalize(
            out,
            [float(v) for v in sn["target_means"]],
            [float(v) for v in sn["target_stds"]],
            background_l=float(sn.get("background_l", 230.0)),
        )
    elif method == "macenko":
        out, applied["stain_normalized"] = macenko_normalize(
            out,
            reference=str(sn.get("reference", "hdab")),
            alpha=float(sn.get("alpha", 1.0)),
            beta=float(sn.get("beta", 0.15)),
            max_gain=float(sn.get("max_gain", 2.0)),
        )
    elif method != "none":
        raise ValueError(f"stain_norm method {method!r} unknown, expected one of {STAIN_METHODS}")
    return resize(out, size, interpolation), applied


def check_params(cfg: Mapping[str, Any]) -> None:
    """Fail early, naming the problem, if ``preprocess_image`` cannot run with ``cfg``."""
    try:
        preprocess_image(np.full((64, 64, 3), 128, np.uint8), cfg)
    except KeyError as exc:
        raise ValueError(f"preprocess params: missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"preprocess params: {exc}") from None


def prepare_image(
    data: bytes,
    source: str,
    params: Mapping[str, Any],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    strict: bool = False,
) -> tuple[np.ndarray, dict[str, float], dict[str, bool]]:
    """Raw file bytes -> (model-ready RGB image, drift features, what was applied).

    Decode, measure :data:`~ihcflow.images.features.FEATURE_COLUMNS` on the decoded image
    (before any correction), then :func:`preprocess_image`. ``strict`` also rejects damaged
    pixel data (the server has no validate stage before it).
    """
    rgb, _ = decode_rgb8(data, source, max_pixels=max_pixels, strict=strict)
    features = image_features(rgb)
    out, applied = preprocess_image(rgb, params)
    return out, features, applied


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
