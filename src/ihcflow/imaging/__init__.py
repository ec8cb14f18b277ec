"""Image operations and features on (H, W, 3) uint8 RGB arrays, shared by stages and server."""

from ihcflow.imaging.features import FEATURE_COLUMNS, image_features
from ihcflow.imaging.ops import (
    auto_correct,
    check_rgb,
    denoise,
    macenko_normalize,
    preprocess_image,
    reinhard_normalize,
    resize,
)

__all__ = [
    "FEATURE_COLUMNS",
    "auto_correct",
    "check_rgb",
    "denoise",
    "image_features",
    "macenko_normalize",
    "preprocess_image",
    "reinhard_normalize",
    "resize",
]
