"""Drift features on generated images with known properties."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.color import hed2rgb, rgb2hed

from ihcflow.images.features import (
    ANALYSIS_MAX_SIDE,
    FEATURE_COLUMNS,
    image_features,
    stain_concentrations,
)

# the feature columns of reports/data/features.csv, as docs/pipeline.md lists them
PIPELINE_COLUMNS = [
    "brightness", "contrast", "p01", "p99", "saturation", "mean_r", "mean_g", "mean_b",
    "hematoxylin_mean", "hematoxylin_std", "dab_mean", "dab_std", "eosin_mean",
    "sharpness", "width", "height",
]  # fmt: skip


def _stained(h: float, e: float, dab: float, shape=(64, 64), seed: int = 0) -> np.ndarray:
    """A textured image of the given stain amounts (skimage's H-E-DAB model)."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2)
    t = (t - t.min()) / (t.max() - t.min())
    stains = np.stack([h * t, e * t, dab * t], axis=-1)
    return (hed2rgb(stains) * 255 + 0.5).astype(np.uint8)


def test_columns_are_the_documented_ones() -> None:
    assert FEATURE_COLUMNS == PIPELINE_COLUMNS
    features = image_features(_stained(0.1, 0, 0.05))
    assert list(features) == FEATURE_COLUMNS
    assert all(isinstance(v, float) for v in features.values())


def test_constant_images_have_known_values() -> None:
    white = image_features(np.full((40, 30, 3), 255, np.uint8))
    assert white["brightness"] == pytest.approx(1.0)
    assert white["contrast"] == 0.0
    assert white["p01"] == white["p99"] == pytest.approx(1.0)
    assert white["saturation"] == 0.0
    assert [white[c] for c in ("mean_r", "mean_g", "mean_b")] == pytest.approx([1, 1, 1])
    assert white["hematoxylin_mean"] == white["dab_mean"] == white["eosin_mean"] == 0.0
    assert white["sharpness"] == 0.0
    assert (white["width"], white["height"]) == (30.0, 40.0)

    red = image_features(np.full((8, 8, 3), (255, 0, 0), np.uint8))
    assert red["saturation"] == pytest.approx(1.0)
    assert [red[c] for c in ("mean_r", "mean_g", "mean_b")] == pytest.approx([1, 0, 0])
    black = image_features(np.zeros((8, 8, 3), np.uint8))
    assert black["brightness"] == 0.0 and black["p99"] == 0.0


def test_half_dark_half_bright_image_percentiles_and_contrast() -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, 10:] = 255
    features = image_features(image)
    assert features["brightness"] == pytest.approx(0.5)
    assert features["contrast"] == pytest.approx(0.5)
    assert [features["p01"], features["p99"]] == pytest.approx([0, 1])


def test_stain_features_tell_dab_from_hematoxylin() -> None:
    brown = image_features(_stained(0.0, 0.0, 0.15))
    blue = image_features(_stained(0.15, 0.0, 0.0))
    assert brown["dab_mean"] > 3 * blue["dab_mean"]
    assert blue["hematoxylin_mean"] > 3 * brown["hematoxylin_mean"]
    assert brown["dab_std"] > 0 and blue["hematoxylin_std"] > 0
    pink = image_features(_stained(0.0, 0.15, 0.0))
    assert pink["eosin_mean"] > 3 * max(brown["eosin_mean"], blue["eosin_mean"])


def test_stain_concentrations_match_skimage() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    np.testing.assert_allclose(stain_concentrations(image), rgb2hed(image), atol=1e-6)


def test_blurred_image_is_less_sharp() -> None:
    sharp = _stained(0.1, 0.0, 0.1, shape=(128, 128))
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2)
    assert image_features(blurred)["sharpness"] < 0.5 * image_features(sharp)["sharpness"]


def test_large_images_are_measured_at_the_analysis_scale() -> None:
    """A big image and its area-downsampled copy get the same features (width/height aside)."""
    big = _stained(0.1, 0.02, 0.08, shape=(4 * ANALYSIS_MAX_SIDE, 2 * ANALYSIS_MAX_SIDE))
    small = cv2.resize(
        big, (ANALYSIS_MAX_SIDE // 2, ANALYSIS_MAX_SIDE), interpolation=cv2.INTER_AREA
    )
    f_big, f_small = image_features(big), image_features(small)
    assert (f_big["width"], f_big["height"]) == (512.0, 1024.0)
    for name in FEATURE_COLUMNS[:-2]:
        assert f_big[name] == pytest.approx(f_small[name]), name


def test_features_do_not_modify_the_image() -> None:
    image = _stained(0.1, 0.0, 0.1)
    before = image.copy()
    image_features(image)
    np.testing.assert_array_equal(image, before)


def test_bad_array_is_refused() -> None:
    with pytest.raises(ValueError, match="image has 4 channels, expected 3"):
        image_features(np.zeros((8, 8, 4), np.uint8))
