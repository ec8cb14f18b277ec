"""Sliding-window inference over an image of any size, for any runner (torch or ONNX Runtime).

The image is covered by square windows of ``roi`` px that overlap by ``overlap`` of their
side; each window's output is weighted by a Gaussian importance map (sigma = 0.125 roi, as
MONAI's ``sliding_window_inference(mode="gaussian")``), so window borders, where a network
sees least context, count least, and the blend has no seams. Images smaller than a window are
padded by reflection.

Memory is bounded by the window, not the image: windows run one row at a time and the float
accumulator holds ``roi`` rows; finished rows are stored as uint8 probabilities (1/255 steps),
so a 4000x4000 image needs 4 bytes per pixel for four output channels. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

# float32 (B, 3, roi, roi) RGB in [0, 1] -> float32 (B, C, roi, roi) probabilities
Runner = Callable[[np.ndarray], np.ndarray]
SIGMA_SCALE = 0.125
MODES = ("gaussian", "constant")


def starts(length: int, roi: int, overlap: float) -> list[int]:
    """Window offsets along one axis: a stride of ``roi * (1 - overlap)``, the last window
    flush with the end (``length >= roi``)."""
    if length < roi:
        raise ValueError(f"length {length} < window {roi}: pad first")
    stride = max(1, int(roi * (1.0 - overlap)))
    out = list(range(0, length - roi + 1, stride))
    if out[-1] != length - roi:
        out.append(length - roi)
    return out


def importance(roi: int, mode: str = "gaussian") -> np.ndarray:
    """(roi, roi) float32 weights: a Gaussian with peak 1 (or ones for ``constant``)."""
    if mode == "constant":
        return np.ones((roi, roi), np.float32)
    if mode != "gaussian":
        raise ValueError(f"blend mode {mode!r}, expected one of {MODES}")
    x = np.arange(roi, dtype=np.float64) - (roi - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * (SIGMA_SCALE * roi) ** 2))
    w = np.outer(g, g)
    return np.maximum(w / w.max(), 1e-6).astype(np.float32)


def check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")


def predict_tiled(
    image: np.ndarray,
    runner: Runner,
    *,
    roi: int,
    overlap: float = 0.25,
    batch: int = 4,
    mode: str = "gaussian",
) -> np.ndarray:
    """Run ``runner`` over ``image`` (H, W, 3) uint8 RGB; returns (C, H, W) uint8
    probabilities (value / 255)."""
    check_image(image)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap {overlap}, expected a value in [0, 1)")
    if roi < 1 or batch < 1:
        raise ValueError(f"roi {roi} and batch {batch} must be >= 1")
    h, w = image.shape[:2]
    ph, pw = max(0, roi - h), max(0, roi - w)
    if ph or pw:
        # reflection needs at least 2 px; a 1-px image is replicated instead
        border = cv2.BORDER_REFLECT_101 if min(h, w) > 1 else cv2.BORDER_REPLICATE
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, border)
    height, width = image.shape[:2]
    weight = importance(roi, mode)
    ys, xs = starts(height, roi, overlap), starts(width, roi, overlap)
    out: np.ndarray | None = None
    acc: np.ndarray | None = None
    norm = np.zeros((roi, width), np.float32)
    top = 0  # image row of acc[:, 0]

    def flush(rows: int) -> None:  # rows [top, top + rows) are complete: store them
        assert out is not None and acc is not None
        block = acc[:, :rows] / norm[None, :rows]
        end = min(top + rows, h)
        if end > top:
            out[:, top:end] = np.rint(np.clip(block[:, : end - top, :w], 0, 1) * 255)

    for y in ys:
        if acc is not None and y > top:
            shift = y - top
            flush(shift)
            acc[:, : roi - shift] = acc[:, shift:].copy()
            acc[:, roi - shift :] = 0
            norm[: roi - shift] = norm[shift:].copy()
            norm[roi - shift :] = 0
            top = y
        for i in range(0, len(xs), batch):
            cols = xs[i : i + batch]
            x = np.stack([image[y : y + roi, c : c + roi] for c in cols])
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
            probs = np.asarray(runner(x), dtype=np.float32)
            if probs.ndim != 4 or probs.shape[0] != len(cols) or probs.shape[2:] != (roi, roi):
                raise ValueError(
                    f"runner returned shape {probs.shape} for input {x.shape}: expected "
                    f"({len(cols)}, C, {roi}, {roi})"
                )
            if acc is None:
                acc = np.zeros((probs.shape[1], roi, width), np.float32)
                out = np.zeros((probs.shape[1], h, w), np.uint8)
            for j, c in enumerate(cols):
                acc[:, :, c : c + roi] += probs[j] * weight
                norm[:, c : c + roi] += weight
    flush(roi)
    assert out is not None
    return out
