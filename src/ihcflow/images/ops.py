"""Image operations on the pipeline's one array convention: (H, W, 3) ``uint8`` RGB.

Each operation is a small function that checks its input, never modifies it in place, and
returns a new (H, W, 3) ``uint8`` RGB array (or the input itself when it changes nothing).
Those that may decline to act return ``(image, applied)``. Their parameters are explicit;
:mod:`ihcflow.images.prepare` composes them from the ``preprocess`` params.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

DENOISE_METHODS = ("none", "median", "gaussian", "bilateral")
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}

# Stain normalisation needs enough stained pixels to estimate anything; below this share of
# the image (or this many pixels) the image is treated as blank and passed through unchanged.
MIN_TISSUE_FRACTION = 0.01
MIN_TISSUE_PIXELS = 64

# Macenko references: unit stain vectors in optical-density space (columns: hematoxylin, second
# stain) and the 99th-percentile concentration of each stain in a reference slide.
# "he": the reference of Macenko et al. 2009 as used by most implementations (natural-log OD).
# "hdab": hematoxylin and DAB vectors of Ruifrok & Johnston 2001 (skimage's rgb_from_hed rows),
# with the same reference concentrations as "he" (there is no published H-DAB standard).
_MACENKO_MAX_CONC = np.array([1.9705, 1.0308])
_HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
_HDAB_REF = np.array([[0.65, 0.27], [0.70, 0.57], [0.29, 0.78]])
MACENKO_REFERENCES = {
    "he": (_HE_REF / np.linalg.norm(_HE_REF, axis=0), _MACENKO_MAX_CONC),
    "hdab": (_HDAB_REF / np.linalg.norm(_HDAB_REF, axis=0), _MACENKO_MAX_CONC),
}
# Optical density of each 8-bit value: -ln((v + 1) / 256), so white is ~0 and never negative.
_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
_MACENKO_MAX_SAMPLES = 65_536  # stain vectors are estimated on a strided subsample of tissue


def check_rgb(rgb: Any, name: str = "image") -> np.ndarray:
    """Return ``rgb`` if it is an (H, W, 3) uint8 array, else raise a clear error."""
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"{name} is a {type(rgb).__name__}, expected a numpy array (H, W, 3)")
    if rgb.ndim == 2:
        raise ValueError(f"{name} has shape {rgb.shape} (1 channel), expected 3 (RGB)")
    if rgb.ndim != 3:
        raise ValueError(f"{name} has shape {rgb.shape}, expected (H, W, 3) RGB")
    if rgb.shape[2] != 3:
        raise ValueError(f"{name} has {rgb.shape[2]} channels, expected 3 (RGB)")
    if rgb.dtype != np.uint8:
        raise ValueError(f"{name} has dtype {rgb.dtype}, expected uint8")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {rgb.shape}")
    return rgb


def _odd_ksize(ksize: int, what: str) -> int:
    ksize = int(ksize)
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"{what}: ksize must be an odd integer >= 1, got {ksize}")
    return ksize


def denoise(
    rgb: np.ndarray,
    method: str = "median",
    ksize: int = 3,
    sigma_color: float = 40.0,
    sigma_space: float = 5.0,
) -> np.ndarray:
    """Remove sensor/JPEG noise. ``ksize`` is the kernel size (the diameter for bilateral)."""
    check_rgb(rgb)
    if method not in DENOISE_METHODS:
        raise ValueError(f"denoise method {method!r} unknown, expected one of {DENOISE_METHODS}")
    if method == "none":
        return rgb
    ksize = _odd_ksize(ksize, f"denoise {method}")
    if ksize == 1:
        return rgb
    if method == "median":
        return cv2.medianBlur(rgb, ksize)
    if method == "gaussian":
        return cv2.GaussianBlur(rgb, (ksize, ksize), 0)
    return cv2.bilateralFilter(rgb, ksize, float(sigma_color), float(sigma_space))


def histogram_stats(
    hist: np.ndarray, percentiles: Sequence[float] = ()
) -> tuple[float, float, list[int]]:
    """Mean, std and nearest-rank percentiles of 8-bit values from their 256-bin histogram."""
    values = np.arange(256, dtype=np.float64)
    n = float(hist.sum())
    mean = float(hist @ values) / n
    std = float(np.sqrt(max(float(hist @ (values - mean) ** 2) / n, 0.0)))
    cdf = np.cumsum(hist)
    ranks = [max(1.0, np.ceil(float(p) / 100.0 * n)) for p in percentiles]
    return mean, std, [int(np.searchsorted(cdf, r)) for r in ranks]


def auto_correct(
    rgb: np.ndarray,
    min_brightness: float = 0.45,
    max_brightness: float = 0.92,
    min_contrast: float = 0.10,
    percentiles: Sequence[float] = (1, 99),
    clahe_clip: float = 0.0,
    clahe_tiles: int = 8,
) -> tuple[np.ndarray, bool]:
    """Brightness/contrast correction on the L channel of Lab, driven by thresholds.

    brightness = mean(L) / 255 and contrast = std(L) / 255. When brightness is outside
    ``[min_brightness, max_brightness]`` or contrast is below ``min_contrast``, L is stretched
    so that its ``percentiles`` map to 0 and 255 (a flat image, where they coincide, is left
    alone). CLAHE on L follows when ``clahe_clip > 0``. Colour (a, b) is kept. Returns
    ``(image, applied)``; an image within the thresholds is returned as it is.
    """
    check_rgb(rgb)
    if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ValueError(
            f"auto_correct percentiles must be [low, high] in 0..100, got {percentiles}"
        )
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    lum = lab[..., 0]
    hist = cv2.calcHist([lum], [0], None, [256], [0, 256]).ravel()
    mean, std, (lo, hi) = histogram_stats(hist, percentiles)
    brightness, contrast = mean / 255.0, std / 255.0
    changed = False
    outside = not min_brightness <= brightness <= max_brightness or contrast < min_contrast
    if outside and hi > lo:
        lut = np.clip((np.arange(256) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
        lum = cv2.LUT(lum, lut)
        changed = True
    if clahe_clip > 0:
        tiles = int(clahe_tiles)
        lum = cv2.createCLAHE(clipLimit=float(clahe_clip), tileGridSize=(tiles, tiles)).apply(lum)
        changed = True
    if not changed:
        return rgb, False
    lab[..., 0] = lum
    return cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), True


def _enough_tissue(n_tissue: int, n_total: int) -> bool:
    return n_tissue >= max(MIN_TISSUE_PIXELS, MIN_TISSUE_FRACTION * n_total)


def reinhard_normalize(
    rgb: np.ndarray,
    target_means: Sequence[float],
    target_stds: Sequence[float],
    background_l: float = 230.0,
) -> tuple[np.ndarray, bool]:
    """Reinhard colour transfer: match the mean and std of L, a, b (OpenCV 8-bit Lab).

    Background-aware: the statistics come from tissue pixels only (L < ``background_l``), so
    the share of empty glass in a patch does not shift the colours; the same per-channel
    linear map is then applied to every pixel. An image with almost no tissue is returned
    unchanged with ``applied=False``.
    """
    check_rgb(rgb)
    if len(target_means) != 3 or len(target_stds) != 3:
        raise ValueError(
            f"reinhard targets need 3 values (L, a, b), got means {list(target_means)} "
            f"and stds {list(target_stds)}"
        )
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    tissue = lab[lab[..., 0] < background_l]
    if not _enough_tissue(len(tissue), rgb.shape[0] * rgb.shape[1]):
        return rgb, False
    tissue = tissue.astype(np.float32)
    means = tissue.mean(axis=0)
    stds = np.maximum(tissue.std(axis=0), 1.0)  # one 8-bit level: a flat channel stays flat
    scale = np.asarray(target_stds, np.float32) / stds
    shift = np.asarray(target_means, np.float32) - means * scale
    out = lab.astype(np.float32) * scale + shift
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_Lab2RGB), True


def estimate_stains_macenko(
    rgb: np.ndarray, alpha: float = 1.0, beta: float = 0.15
) -> np.ndarray | None:
    """Macenko et al. 2009: the two stain vectors of an image, or ``None`` if it is blank.

    Returns a (3, 2) matrix of unit optical-density vectors, hematoxylin first (the one that
    absorbs more red). Pixels whose OD is below ``beta`` in any channel are background;
    ``alpha`` is the percentile of the angle distribution taken as each stain's extreme.
    """
    od = cv2.LUT(check_rgb(rgb), _OD_LUT).reshape(-1, 3)
    tissue = od[(od >= beta).all(axis=1)]
    if not _enough_tissue(len(tissue), len(od)):
        return None
    if len(tissue) > _MACENKO_MAX_SAMPLES:
        tissue = tissue[:: len(tissue) // _MACENKO_MAX_SAMPLES + 1]
    tissue = tissue.astype(np.float64)
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1], axis=1)
    stains = stains * np.where(stains.sum(axis=0) < 0, -1.0, 1.0)
    norms = np.linalg.norm(stains, axis=0)
    if np.any(norms < 1e-6):
        return None
    stains = stains / norms
    if abs(float(stains[:, 0] @ stains[:, 1])) > 0.995:  # one stain only: cannot separate
        return None
    return stains


def macenko_normalize(
    rgb: np.ndarray,
    reference: str = "hdab",
    alpha: float = 1.0,
    beta: float = 0.15,
    max_gain: float = 2.0,
) -> tuple[np.ndarray, bool]:
    """Macenko stain normalisation to a reference (``"hdab"`` for IHC, ``"he"`` for H&E).

    Each pixel is unmixed into the image's own two stains, each stain's concentration is
    scaled so its 99th percentile matches the reference, and the pixel is rebuilt with the
    reference stain colours. The gain per stain is capped at ``max_gain`` so a slide with
    almost no DAB is not made to look positive (in IHC the DAB amount is the signal).
    A blank or single-stain image is returned unchanged with ``applied=False``.
    """
    check_rgb(rgb)
    if reference not in MACENKO_REFERENCES:
        raise ValueError(
            f"macenko reference {reference!r} unknown, expected one of {sorted(MACENKO_REFERENCES)}"
        )
    stains = estimate_stains_macenko(rgb, alpha, beta)
    if stains is None:
        return rgb, False
    ref_stains, ref_max = MACENKO_REFERENCES[reference]
    od = cv2.LUT(rgb, _OD_LUT)  # (H, W, 3) float32
    conc = cv2.transform(od, np.linalg.pinv(stains).astype(np.float32))  # least-squares unmixing
    sample = conc.reshape(-1, 2)[:: max(1, conc.shape[0] * conc.shape[1] // _MACENKO_MAX_SAMPLES)]
    conc_max = np.percentile(sample, 99, axis=0)
    gain = np.minimum(ref_max / np.maximum(conc_max, 1e-6), float(max_gain))
    out_od = cv2.transform(conc, (ref_stains * gain).astype(np.float32))  # reference colours
    out = 256.0 * np.exp(-out_od) - 0.5  # inverse of the OD table, rounded
    return np.clip(out, 0, 255).astype(np.uint8), True


def _exact(rgb: np.ndarray, width: int, height: int, fx: float, fy: float, flag: int) -> np.ndarray:
    """``cv2.resize`` by the factors ``fx``, ``fy`` themselves (not ``width / columns``), cut
    or edge-padded to ``height x width`` (the output's size is rounded by OpenCV)."""
    out = cv2.resize(rgb, (0, 0), fx=fx, fy=fy, interpolation=flag)
    short_y, short_x = max(0, height - out.shape[0]), max(0, width - out.shape[1])
    if short_y or short_x:
        out = cv2.copyMakeBorder(out, 0, short_y, 0, short_x, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out[:height, :width])


def resize(
    rgb: np.ndarray,
    size: int | tuple[int, int],
    interpolation: str = "area",
    *,
    scale: int = 1,
    source_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resize to ``size x size`` (or ``(height, width)``); the aspect ratio is not kept.

    ``scale``/``source_hw``: ``rgb`` is a ``source_hw`` image decoded at 1/``scale`` (a JPEG's
    reduced-scale decode, ``ceil(H/scale) x ceil(W/scale)`` px); the output then covers the
    source exactly as a resize of the full-size image would.
    """
    check_rgb(rgb)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation {interpolation!r} unknown, expected one of {sorted(INTERPOLATIONS)}"
        )
    height, width = (size, size) if isinstance(size, int | np.integer) else size
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"resize size must be positive, got {size}")
    source = source_hw if scale > 1 and source_hw is not None else rgb.shape[:2]
    scale = scale if source is source_hw else 1
    if scale == 1 and rgb.shape[:2] == (height, width):
        return rgb
    # one cv2.resize: INTER_AREA's box filter is then exact for any factor (averaging k x k
    # blocks first and area-resizing the rest, 5x faster, was 3.75 grey levels off a true box
    # filter at 200 -> 28 px)
    if scale == 1:
        return cv2.resize(rgb, (width, height), interpolation=INTERPOLATIONS[interpolation])
    fx, fy = width * scale / source[1], height * scale / source[0]
    return _exact(rgb, width, height, fx, fy, INTERPOLATIONS[interpolation])


def centre_zoom(rgb: np.ndarray, share: float) -> np.ndarray:
    """The centre of ``rgb`` holding ``share`` of each side (at least 1 px): what a camera
    zoomed in by ``1 / share`` on the same spot would frame. A view, not a copy."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"zoom share must be in (0, 1], got {share}")
    h, w = rgb.shape[:2]
    ch, cw = max(1, round(h * share)), max(1, round(w * share))
    y, x = (h - ch) // 2, (w - cw) // 2
    return rgb[y : y + ch, x : x + cw]
