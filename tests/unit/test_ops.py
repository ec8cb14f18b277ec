"""Image operations on generated (H, W, 3) uint8 RGB arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from skimage.color import hed2rgb, rgb_from_hed

from ihcflow.config import ConfigError
from ihcflow.images.features import stain_concentrations
from ihcflow.images.ops import (
    auto_correct,
    check_rgb,
    denoise,
    estimate_stains_macenko,
    macenko_normalize,
    reinhard_normalize,
    resize,
)
from ihcflow.images.prepare import ImageParams, preprocess_image

CONF = Path(__file__).resolve().parents[2] / "conf" / "preprocess" / "default.yaml"


def _lightness(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)[..., 0].astype(np.float64)


def _texture(shape: tuple[int, int], sigma: float, seed: int) -> np.ndarray:
    """Smooth random field in 0..1 (blob-like, as stained tissue)."""
    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), sigma)
    return (field - field.min()) / (field.max() - field.min())


def _tissue(shape: tuple[int, int] = (96, 128), seed: int = 0) -> np.ndarray:
    """A pinkish-purple textured image with mid brightness (L ~0.55) and contrast (~0.16)."""
    t = np.clip(_texture(shape, 3 * shape[0] / 96, seed) * 2 - 0.5, 0, 1)[..., None]
    light = np.array([240.0, 215.0, 235.0])
    dark = np.array([70.0, 30.0, 110.0])
    return np.clip(light * (1 - t) + dark * t + 0.5, 0, 255).astype(np.uint8)


def _hdab(shape: tuple[int, int] = (128, 128), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic H-DAB image (skimage hed2rgb) and its DAB concentration map."""
    h = np.clip(_texture(shape, 3, seed) - 0.3, 0, None) * 0.15
    dab = np.clip(_texture(shape, 5, seed + 1) - 0.5, 0, None) * 0.2
    stains = np.stack([h, np.zeros(shape), dab], axis=-1)
    return (hed2rgb(stains) * 255 + 0.5).astype(np.uint8), dab


@pytest.fixture
def cfg() -> ImageParams:
    cfg = ImageParams.from_section(OmegaConf.load(CONF))
    cfg.size = 32
    return cfg


@pytest.mark.parametrize(
    "op",
    [
        lambda x: denoise(x, "median", 3),
        lambda x: denoise(x, "gaussian", 5),
        lambda x: denoise(x, "bilateral", 5, 40, 5),
        lambda x: auto_correct(x, min_brightness=0.99)[0],
        lambda x: auto_correct(x, clahe_clip=2.0)[0],
        lambda x: reinhard_normalize(x, [160, 140, 120], [30, 8, 8])[0],
        lambda x: macenko_normalize(_hdab((96, 128))[0])[0],
    ],
    ids=["median", "gaussian", "bilateral", "stretch", "clahe", "reinhard", "macenko"],
)
def test_ops_keep_shape_and_dtype_and_leave_input_alone(op) -> None:
    image = _tissue((96, 128))
    before = image.copy()
    out = op(image)
    assert out.shape == (96, 128, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 4), np.uint8), "image has 4 channels, expected 3 (RGB)"),
        (np.zeros((8, 8), np.uint8), "1 channel), expected 3 (RGB)"),
        (np.zeros((8, 8, 3), np.float32), "image has dtype float32, expected uint8"),
        (np.zeros((0, 8, 3), np.uint8), "image is empty"),
    ],
)
def test_bad_arrays_are_refused_with_a_clear_message(image, message, cfg) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_rgb(image)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        preprocess_image(image, cfg)


def test_median_removes_salt_noise() -> None:
    image = np.full((64, 64, 3), 120, np.uint8)
    rng = np.random.default_rng(0)
    specks = rng.random((64, 64)) < 0.03
    image[specks] = 255
    out = denoise(image, "median", 3)
    assert (out != 120).any(axis=2).mean() < 0.002
    assert denoise(image, "none") is image


def test_denoise_rejects_even_kernel_and_unknown_method() -> None:
    image = _tissue()
    with pytest.raises(ValueError, match="ksize must be an odd integer >= 1, got 4"):
        denoise(image, "median", 4)
    with pytest.raises(ValueError, match="denoise method 'wavelet' unknown"):
        denoise(image, "wavelet")


def test_dark_image_gets_brighter_and_more_contrast() -> None:
    dark = (_tissue().astype(np.float32) * 0.3).astype(np.uint8)
    out, applied = auto_correct(dark)
    assert applied
    assert _lightness(out).mean() > _lightness(dark).mean() + 40
    assert _lightness(out).std() > 2 * _lightness(dark).std()


def test_flat_low_contrast_image_is_stretched() -> None:
    t = _texture((64, 64), 3, 1)[..., None]
    flat = (150 + 20 * t * np.ones(3)).astype(np.uint8)  # L std well below 0.10
    out, applied = auto_correct(flat)
    assert applied
    assert _lightness(out).std() > 3 * _lightness(flat).std()


def test_image_within_thresholds_is_untouched() -> None:
    good = _tissue()
    brightness, contrast = _lightness(good).mean() / 255, _lightness(good).std() / 255
    assert 0.45 < brightness < 0.92 and contrast > 0.10
    out, applied = auto_correct(good)
    assert not applied
    assert out is good


def test_uniform_image_cannot_be_stretched_and_is_kept() -> None:
    black = np.zeros((32, 32, 3), np.uint8)
    out, applied = auto_correct(black)
    assert not applied
    np.testing.assert_array_equal(out, black)


def test_clahe_applies_to_every_image() -> None:
    good = _tissue()
    out, applied = auto_correct(good, clahe_clip=2.0, clahe_tiles=4)
    assert applied
    assert not np.array_equal(out, good)


def test_reinhard_moves_lab_statistics_to_the_target() -> None:
    image = _tissue((128, 128))
    means, stds = [150.0, 145.0, 118.0], [30.0, 8.0, 6.0]
    out, applied = reinhard_normalize(image, means, stds)
    assert applied
    lab = cv2.cvtColor(out, cv2.COLOR_RGB2Lab).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(lab.mean(axis=0), means, atol=3.0)
    np.testing.assert_allclose(lab.std(axis=0), stds, atol=2.0)


def test_reinhard_statistics_ignore_background_glass() -> None:
    tissue = _tissue((64, 64))
    with_glass = np.full((64, 256, 3), 250, np.uint8)
    with_glass[:, :64] = tissue
    a, _ = reinhard_normalize(tissue, [150, 145, 118], [30, 8, 6])
    b, _ = reinhard_normalize(with_glass, [150, 145, 118], [30, 8, 6])
    assert np.abs(a.astype(int) - b[:, :64].astype(int)).max() <= 1


def test_blank_image_passes_through_stain_normalisation() -> None:
    blank = np.full((64, 64, 3), 252, np.uint8)
    for out, applied in (
        macenko_normalize(blank),
        reinhard_normalize(blank, [150, 145, 118], [30, 8, 6]),
    ):
        assert not applied
        assert out is blank


def test_macenko_finds_the_hematoxylin_and_dab_vectors() -> None:
    image, _ = _hdab()
    stains = estimate_stains_macenko(image)
    assert stains is not None
    truth = rgb_from_hed[[0, 2]].T / np.linalg.norm(rgb_from_hed[[0, 2]].T, axis=0)
    cosines = (stains * truth).sum(axis=0)
    assert cosines.min() > 0.98  # column 0 hematoxylin, column 1 DAB


def test_macenko_output_keeps_where_the_dab_is() -> None:
    image, dab = _hdab()
    out, applied = macenko_normalize(image, reference="hdab")
    assert applied
    out_dab = stain_concentrations(out)[..., 2]
    assert np.corrcoef(out_dab.ravel(), dab.ravel())[0, 1] > 0.9
    assert 120 < out.mean() < 250  # plausible: stained, not black, not blank


def test_macenko_rejects_unknown_reference() -> None:
    with pytest.raises(ValueError, match="macenko reference 'xyz' unknown"):
        macenko_normalize(_hdab()[0], reference="xyz")


def test_resize_to_square_and_rectangle() -> None:
    image = _tissue((96, 128))
    assert resize(image, 32).shape == (32, 32, 3)
    assert resize(image, (20, 40), "linear").shape == (20, 40, 3)
    assert resize(image, (96, 128)) is image
    with pytest.raises(ValueError, match="interpolation 'bicubic' unknown"):
        resize(image, 32, "bicubic")


def test_preprocess_image_is_a_pure_function_of_image_and_params(cfg) -> None:
    image = (_tissue((96, 128)).astype(np.float32) * 0.35).astype(np.uint8)  # dark: corrected
    before = image.copy()
    out, applied = preprocess_image(image, cfg)
    again, _ = preprocess_image(image, cfg)
    np.testing.assert_array_equal(image, before)
    np.testing.assert_array_equal(out, again)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert applied == {
        "denoised": True,
        "corrected": True,
        "stain_normalized": False,
        "resized_early": True,
    }


@pytest.mark.parametrize("method", ["none", "reinhard", "macenko"])
def test_resizing_early_gives_nearly_the_same_image(cfg, method) -> None:
    """The default shortcut (correct after shrinking 256 -> 128) stays within ~2% of 255."""
    image = (_tissue((256, 256)).astype(np.float32) * 0.35).astype(np.uint8)  # dark: corrected
    cfg.size = 128
    cfg.stain_norm.method = method
    early, flags = preprocess_image(image, cfg)
    cfg.resize_early = False
    late, late_flags = preprocess_image(image, cfg)
    assert flags["resized_early"] and not late_flags["resized_early"]
    assert flags["corrected"] and late_flags["corrected"]
    assert flags["stain_normalized"] == late_flags["stain_normalized"]
    assert np.abs(early.astype(int) - late.astype(int)).mean() < 5.0


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_preprocess_image_applies_stain_normalisation(cfg, method) -> None:
    cfg.stain_norm.method = method
    out, applied = preprocess_image(_hdab((64, 64))[0], cfg)
    assert applied["stain_normalized"]
    assert out.shape == (32, 32, 3)


def test_preprocess_params_name_a_missing_or_misspelled_key() -> None:
    section = OmegaConf.to_container(OmegaConf.load(CONF))
    assert isinstance(section, dict)
    del section["denoise"]
    with pytest.raises(ConfigError, match=r"params `preprocess.denoise`: missing"):
        ImageParams.from_section(section)
    section = OmegaConf.to_container(OmegaConf.load(CONF))
    section["stain_norm"]["max_gian"] = 3.0  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"params `preprocess.stain_norm.max_gian`: unknown"):
        ImageParams.from_section(section)


def test_preprocess_image_rejects_unknown_stain_method(cfg) -> None:
    cfg.stain_norm.method = "vahadane"
    with pytest.raises(ValueError, match="stain_norm method 'vahadane' unknown"):
        preprocess_image(_tissue(), cfg)
