"""Drift features on generated images with known properties."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.color import hed2rgb, rgb2hed

from ihcflow.images.codec import decode_rgb8
from ihcflow.images.features import (
    ACQUISITION_COLUMNS,
    FEATURE_COLUMNS,
    acquisition,
    feature_contract,
    image_features,
    stain_concentrations,
)
from tests.helpers.data import png_bytes

S = 32  # the analysis size (a model's input size) these tests measure at

# the feature columns of reports/data/features.csv, as docs/pipeline.md lists them
PIPELINE_COLUMNS = [
    "brightness", "contrast", "p01", "p99", "saturation", "mean_r", "mean_g", "mean_b",
    "hematoxylin_mean", "hematoxylin_std", "dab_mean", "dab_std", "eosin_mean",
    "sharpness",
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
    features = image_features(_stained(0.1, 0, 0.05), S)
    assert list(features) == FEATURE_COLUMNS
    assert all(isinstance(v, float) for v in features.values())
    assert ACQUISITION_COLUMNS == ["width", "height", "bit_depth", "format", "bytes"]
    assert feature_contract(28, "area") == {
        "analysis_size": 28,
        "interpolation": "area",
        "content": FEATURE_COLUMNS,
        "acquisition": ACQUISITION_COLUMNS,
    }


def test_acquisition_describes_the_file() -> None:
    data = png_bytes(np.zeros((30, 40, 3), np.uint8))
    _, info = decode_rgb8(data, "x.png")
    assert acquisition(info, len(data)) == {
        "width": 40, "height": 30, "bit_depth": 8, "format": "PNG", "bytes": len(data)
    }  # fmt: skip


def test_constant_images_have_known_values() -> None:
    white = image_features(np.full((40, 30, 3), 255, np.uint8), S)
    assert white["brightness"] == pytest.approx(1.0)
    assert white["contrast"] == 0.0
    assert white["p01"] == white["p99"] == pytest.approx(1.0)
    assert white["saturation"] == 0.0
    assert [white[c] for c in ("mean_r", "mean_g", "mean_b")] == pytest.approx([1, 1, 1])
    assert white["hematoxylin_mean"] == white["dab_mean"] == white["eosin_mean"] == 0.0
    assert white["sharpness"] == 0.0

    red = image_features(np.full((8, 8, 3), (255, 0, 0), np.uint8), S)
    assert red["saturation"] == pytest.approx(1.0)
    assert [red[c] for c in ("mean_r", "mean_g", "mean_b")] == pytest.approx([1, 0, 0])
    black = image_features(np.zeros((8, 8, 3), np.uint8), S)
    assert black["brightness"] == 0.0 and black["p99"] == 0.0


def test_half_dark_half_bright_image_percentiles_and_contrast() -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, 10:] = 255
    features = image_features(image, 20)
    assert features["brightness"] == pytest.approx(0.5)
    assert features["contrast"] == pytest.approx(0.5)
    assert [features["p01"], features["p99"]] == pytest.approx([0, 1])


def test_stain_features_tell_dab_from_hematoxylin() -> None:
    brown = image_features(_stained(0.0, 0.0, 0.15), S)
    blue = image_features(_stained(0.15, 0.0, 0.0), S)
    assert brown["dab_mean"] > 3 * blue["dab_mean"]
    assert blue["hematoxylin_mean"] > 3 * brown["hematoxylin_mean"]
    assert brown["dab_std"] > 0 and blue["hematoxylin_std"] > 0
    pink = image_features(_stained(0.0, 0.15, 0.0), S)
    assert pink["eosin_mean"] > 3 * max(brown["eosin_mean"], blue["eosin_mean"])


def test_stain_concentrations_match_skimage() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    np.testing.assert_allclose(stain_concentrations(image), rgb2hed(image), atol=1e-6)


def test_blurred_image_is_less_sharp() -> None:
    sharp = _stained(0.1, 0.0, 0.1, shape=(128, 128))
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2)
    assert image_features(blurred, 128)["sharpness"] < 0.5 * image_features(sharp, 128)["sharpness"]


def test_any_resolution_is_measured_at_the_analysis_size() -> None:
    """A 512 px image and the 32 px copy the pipeline would train on get the same content
    features (to float precision): a crop sent at a higher resolution is not drift."""
    big = _stained(0.1, 0.02, 0.08, shape=(512, 512))
    small = cv2.resize(big, (S, S), interpolation=cv2.INTER_AREA)
    f_big, f_small = image_features(big, S), image_features(small, S)
    assert f_big == f_small
    assert image_features(big, 2 * S) != f_small  # another analysis size, other values


def test_features_do_not_modify_the_image() -> None:
    image = _stained(0.1, 0.0, 0.1)
    before = image.copy()
    image_features(image, S)
    np.testing.assert_array_equal(image, before)


def test_bad_array_is_refused() -> None:
    with pytest.raises(ValueError, match="image has 4 channels, expected 3"):
        image_features(np.zeros((8, 8, 4), np.uint8), S)
