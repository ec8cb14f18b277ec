"""Per-image features for drift monitoring: the contract both sides of a comparison share.

**Content features** (:data:`FEATURE_COLUMNS`: colour, stain amounts, brightness, contrast,
sharpness) are measured on the decoded image *before* any correction, so a darker scanner or a
weaker stain shows up as drift instead of being corrected away, and at **one analysis
resolution**: the image resized to ``size`` x ``size`` px with ``interpolation``, the model's
input size and filter (``preprocess.size``/``interpolation``, recorded in ``model.json`` as
``features``: :func:`feature_contract`). The ``preprocess`` stage (every training image) and
the server (every upload) call :func:`image_features` through
:func:`ihcflow.images.prepare.prepare_image` with the same params, so a 200 px crop and the
28 px training image made from it are measured alike, while a full frame (other content)
is not. They are stored at full precision on both sides (features.csv and the log hold the
float's shortest round-trip repr): reading them back gives exactly what was computed.

**Acquisition properties** (:data:`ACQUISITION_COLUMNS`: width, height, bit depth, format,
file size) describe the file, not the cell: a drift report shows them in a separate
data-quality section (reported, can warn) and never counts them as content drift.

Units: ``brightness``, ``contrast``, ``p01``, ``p99`` are L of CIE Lab scaled to 0..1 (the
same definition ``auto_correct`` uses); ``saturation`` is HSV saturation and ``mean_r/g/b``
are channel means, all 0..1; the stain features are Ruifrok-Johnston colour deconvolution
with skimage's H-E-DAB matrix (identical to ``skimage.color.rgb2hed``); ``sharpness`` is the
variance of the Laplacian of the 8-bit grey image at the analysis size.
"""

from __future__ import annotations

import cv2
import numpy as np

from ihcflow.images.codec import ImageInfo
from ihcflow.images.ops import check_rgb, histogram_stats, resize

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
]
ACQUISITION_COLUMNS = ["width", "height", "bit_depth", "format", "bytes"]  # of the file
ACQUISITION_NUMERIC = ["width", "height", "bit_depth", "bytes"]  # "format" is a name

# skimage.color.rgb_from_hed (Ruifrok & Johnston 2001): rows are the OD colours of
# hematoxylin, eosin and DAB. Copied so the features do not depend on skimage at serve time.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_HED_TRANSFORM = np.ascontiguousarray(HED_FROM_RGB.T)  # cv2.transform multiplies column vectors
# skimage's optical density per 8-bit value: log(max(v / 255, 1e-6)) / log(1e-6).
_OD_LUT = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(np.float32)


def stain_concentrations(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 hematoxylin, eosin, DAB amounts, as ``skimage.color.rgb2hed``."""
    stains = cv2.transform(cv2.LUT(check_rgb(rgb), _OD_LUT), _HED_TRANSFORM)
    return np.maximum(stains, 0.0, out=stains)


def feature_contract(size: int, interpolation: str) -> dict[str, object]:
    """``model.json``'s ``features``: how the content features of this model's reference and
    of its uploads are measured, and which columns are which."""
    return {
        "analysis_size": int(size),
        "interpolation": str(interpolation),
        "content": list(FEATURE_COLUMNS),
        "acquisition": list(ACQUISITION_COLUMNS),
    }


def image_features(rgb: np.ndarray, size: int, interpolation: str = "area") -> dict[str, float]:
    """The :data:`FEATURE_COLUMNS` of one (H, W, 3) uint8 RGB image, measured on it resized to
    ``size`` x ``size`` px with ``interpolation`` (:func:`ihcflow.images.ops.resize`, the
    model's own resize), OpenCV-vectorised."""
    small = resize(check_rgb(rgb), size, interpolation)
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
    }


def acquisition(info: ImageInfo, n_bytes: int) -> dict[str, int | str]:
    """The :data:`ACQUISITION_COLUMNS` of a file from its header (:func:`~ihcflow.images.codec.
    probe`) and its size in bytes."""
    return {
        "width": int(info.width),
        "height": int(info.height),
        "bit_depth": int(info.bit_depth),
        "format": str(info.format),
        "bytes": int(n_bytes),
    }
