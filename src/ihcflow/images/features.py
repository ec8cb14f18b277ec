"""Cheap per-image features: the reference for drift monitoring (``reports/data/features.csv``).

They are computed on the decoded input image *before* any correction, by the ``preprocess``
stage for every training image and by the server for every request, so a darker scanner or a
weaker stain shows up as drift instead of being corrected away.

Scale: everything except ``width``/``height`` is measured on one working copy, the input
averaged over k x k pixel blocks with the smallest integer k that brings its longer side to
at most :data:`ANALYSIS_MAX_SIDE` px (never enlarged; a 512 px image is measured at 256 px, a
363 px one at 181 px). That keeps the cost at about a millisecond whatever the input size, and
``sharpness`` (which depends strongly on scale) is measured at the same scale for a training
image and a served image of the same size. Compare sharpness only between similar sizes.

Units: ``brightness``, ``contrast``, ``p01``, ``p99`` are L of CIE Lab scaled to 0..1 (the
same definition ``auto_correct`` uses); ``saturation`` is HSV saturation and ``mean_r/g/b``
are channel means, all 0..1; the stain features are Ruifrok-Johnston colour deconvolution
with skimage's H-E-DAB matrix (identical to ``skimage.color.rgb2hed``); ``sharpness`` is the
variance of the Laplacian of the 8-bit grey image; ``width``/``height`` are the input's px.
"""

from __future__ import annotations

import cv2
import numpy as np

from ihcflow.images.ops import check_rgb, histogram_stats

FEATURE_COLUMNS = [
    "brightness",
    "contrast",
    "p01",
    "p99",
    "saturation",
    "mean_r",
    "mean_g",
    "mean_b",
    "hematoxylin_mean",
    "hematoxylin_std",
    "dab_mean",
    "dab_std",
    "eosin_mean",
    "sharpness",
    "width",
    "height",
]
ANALYSIS_MAX_SIDE = 256

# skimage.color.rgb_from_hed (Ruifrok & Johnston 2001): rows are the OD colours of
# hematoxylin, eosin and DAB. Copied so the features do not depend on skimage at serve time.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_HED_TRANSFORM = np.ascontiguousarray(HED_FROM_RGB.T)  # cv2.transform multiplies column vectors
# skimage's optical density per 8-bit value: log(max(v / 255, 1e-6)) / log(1e-6).
_OD_LUT = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(np.float32)


def analysis_copy(rgb: np.ndarray, max_side: int = ANALYSIS_MAX_SIDE) -> np.ndarray:
    """``rgb`` averaged over k x k blocks, k the smallest integer that brings the longer side
    to at most ``max_side`` (the < k leftover rows/columns are cropped evenly). An integer
    factor keeps this to one fast pass and gives images of the same size the same scale."""
    height, width = rgb.shape[:2]
    k = -(-max(height, width) // max_side)
    if k == 1:
        return rgb
    if min(height, width) < k:  # a sliver: too thin for whole blocks
        size = (max(1, width // k), max(1, height // k))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    y0, x0 = (height % k) // 2, (width % k) // 2
    blocks = rgb[y0 : y0 + height // k * k, x0 : x0 + width // k * k]
    return cv2.resize(blocks, (width // k, height // k), interpolation=cv2.INTER_AREA)


def stain_concentrations(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 hematoxylin, eosin, DAB amounts, as ``skimage.color.rgb2hed``."""
    stains = cv2.transform(cv2.LUT(check_rgb(rgb), _OD_LUT), _HED_TRANSFORM)
    return np.maximum(stains, 0.0, out=stains)


def image_features(rgb: np.ndarray) -> dict[str, float]:
    """The :data:`FEATURE_COLUMNS` of one (H, W, 3) uint8 RGB image (OpenCV-vectorised)."""
    check_rgb(rgb)
    height, width = rgb.shape[:2]
    small = analysis_copy(rgb)
    lum = cv2.cvtColor(small, cv2.COLOR_RGB2Lab)[..., 0]
    hist = cv2.calcHist([lum], [0], None, [256], [0, 256]).ravel()
    mean, std, (p01, p99) = histogram_stats(hist, (1, 99))
    saturation = cv2.mean(cv2.cvtColor(small, cv2.COLOR_RGB2HSV))[1]
    mean_r, mean_g, mean_b, _ = cv2.mean(small)
    hed_mean, hed_std = (v.ravel() for v in cv2.meanStdDev(stain_concentrations(small)))
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    sharpness = cv2.Laplacian(gray, cv2.CV_64F).var()
    return {
        "brightness": mean / 255.0,
        "contrast": std / 255.0,
        "p01": p01 / 255.0,
        "p99": p99 / 255.0,
        "saturation": saturation / 255.0,
        "mean_r": mean_r / 255.0,
        "mean_g": mean_g / 255.0,
        "mean_b": mean_b / 255.0,
        "hematoxylin_mean": float(hed_mean[0]),
        "hematoxylin_std": float(hed_std[0]),
        "dab_mean": float(hed_mean[2]),
        "dab_std": float(hed_std[2]),
        "eosin_mean": float(hed_mean[1]),
        "sharpness": float(sharpness),
        "width": float(width),
        "height": float(height),
    }
