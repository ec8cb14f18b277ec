"""Sliding-window inference: coverage, agreement with MONAI's, no seams, any image size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ihcflow.segmentation.tiling import importance, predict_tiled, starts

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", r"`torch\.jit\.interface` is deprecated", DeprecationWarning)
    from monai.inferers import sliding_window_inference


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pointwise(x: np.ndarray) -> np.ndarray:
    """A model whose output at a pixel depends on that pixel only: tiling must not show."""
    return np.stack([x[:, 0] * x[:, 1], 1.0 - x[:, 2]], axis=1).astype(np.float32)


def test_window_starts_cover_the_axis() -> None:
    assert starts(256, 256, 0.25) == [0]
    assert starts(300, 256, 0.25) == [0, 44]
    assert starts(1000, 256, 0.25) == [0, 192, 384, 576, 744]
    with pytest.raises(ValueError, match="pad first"):
        starts(100, 256, 0.25)


@pytest.mark.parametrize("shape", [(300, 520), (256, 256), (100, 70), (1, 1)])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_a_pointwise_model_gives_the_same_result_tiled(shape: tuple[int, int], mode: str) -> None:
    image = _image(*shape)
    x = image.transpose(2, 0, 1)[None].astype(np.float32) / 255
    whole = np.rint(np.clip(_pointwise(x)[0], 0, 1) * 255).astype(np.uint8)
    tiled = predict_tiled(image, _pointwise, roi=64, overlap=0.25, batch=3, mode=mode)
    assert tiled.shape == (2, *shape) and tiled.dtype == np.uint8
    assert np.abs(tiled.astype(int) - whole).max() <= 1  # float blending, then 1/255 steps


def test_agrees_with_monai_sliding_window_inference() -> None:
    """Constant blending is the plain mean of overlapping windows, as in MONAI."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, padding=2), torch.nn.Sigmoid()).eval()
    image = _image(200, 330, seed=1)
    x = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32) / 255)

    def runner(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    ours = predict_tiled(image, runner, roi=64, overlap=0.5, batch=4, mode="constant")
    with torch.no_grad():
        theirs = sliding_window_inference(x, 64, 4, net, overlap=0.5, mode="constant")
    expected = np.rint(theirs[0].numpy() * 255).astype(int)
    assert np.abs(ours.astype(int) - expected).max() <= 1


def test_gaussian_weights_favour_the_window_centre() -> None:
    w = importance(64)
    assert w.shape == (64, 64) and w.max() == pytest.approx(1.0)
    assert w[32, 32] > w[32, 8] > w[32, 0] > 0
    np.testing.assert_allclose(w, w.T)


def test_runner_output_is_checked_and_image_must_be_rgb8() -> None:
    with pytest.raises(ValueError, match="runner returned shape"):
        predict_tiled(_image(64, 64), lambda x: x[:, :, :10], roi=64)
    with pytest.raises(ValueError, match=r"uint8 RGB"):
        predict_tiled(np.zeros((64, 64), np.uint8), _pointwise, roi=64)


def test_the_runner_gets_at_most_batch_windows() -> None:
    """What bounds the network's memory on a large image (benchmarks/segmentation.py
    measures the whole process on 4000x4000)."""
    seen = []

    def runner(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape[0])
        return _pointwise(x)

    out = predict_tiled(_image(1000, 130), runner, roi=64, overlap=0.25, batch=2)
    assert out.shape == (2, 1000, 130) and max(seen) <= 2
