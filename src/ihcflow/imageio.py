"""Decode any supported image file into the one array convention the pipeline uses.

Convention: ``numpy.ndarray`` of shape (H, W, 3), dtype ``uint8``, channel order RGB.
Grayscale, RGBA/LA, palette and 16-bit images are converted (with a note saying so);
other inputs are rejected with an :class:`ImageError` that names the file and the reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000; larger files are refused before decoding

# PIL modes we convert to 8-bit RGB, with the note recorded in the manifest.
_CONVERTED_MODES = {
    "L": "grayscale converted to RGB",
    "LA": "grayscale+alpha composited on white and converted to RGB",
    "P": "palette converted to RGB",
    "PA": "palette+alpha composited on white and converted to RGB",
    "RGBA": "alpha composited on white",
    "I;16": "16-bit grayscale scaled to 8-bit RGB",
    "I;16B": "16-bit grayscale scaled to 8-bit RGB",
    "I;16L": "16-bit grayscale scaled to 8-bit RGB",
    "I;16N": "16-bit grayscale scaled to 8-bit RGB",
    "I": "32-bit integer grayscale scaled to 8-bit RGB",
    "1": "1-bit image converted to RGB",
}
_SUPPORTED_MODES = frozenset({"RGB", *_CONVERTED_MODES})


class ImageError(ValueError):
    """An image that cannot enter the pipeline. ``reason`` is a short machine-readable code."""

    def __init__(self, source: str, reason: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.reason = reason
        self.detail = detail


@dataclass
class ImageInfo:
    width: int
    height: int
    channels: int  # channels in the file (1, 2, 3 or 4)
    bit_depth: int  # bits per channel in the file (1, 8, 16, 32)
    mode: str  # PIL mode as read from the header
    format: str  # PIL format name (PNG, JPEG, TIFF, BMP)
    notes: list[str] = field(default_factory=list)


_MODE_CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "LA": 2, "PA": 2, "RGB": 3, "RGBA": 4}


def _mode_depth(mode: str) -> int:
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in {"I", "F"}:
        return 32
    return 8


def probe(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read the header only: format, size and mode. Refuses decompression bombs early."""
    if not data:
        raise ImageError(source, "empty", "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(source, "not_an_image", "not an image (no known image header)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(source, "too_large", f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(source, "corrupt", f"corrupt image header: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            source,
            "too_large",
            f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}",
        )
    if width == 0 or height == 0:
        raise ImageError(source, "corrupt", f"image has zero size {width}x{height}")
    mode = img.mode
    # 48/64-bit RGB(A) PNG and TIFF open in PIL as 8-bit modes; the raw mode tells the truth.
    raw_mode = str(getattr(img, "_raw_mode", "") or img.info.get("mode", "") or "")
    bit_depth = 16 if ("16" in raw_mode and mode in {"RGB", "RGBA"}) else _mode_depth(mode)
    if getattr(img, "n_frames", 1) > 1:
        notes = [f"{img.n_frames} frames/pages: only the first is used"]
    else:
        notes = []
    if mode not in _SUPPORTED_MODES:
        raise ImageError(
            source, "unsupported_mode", f"unsupported image mode {mode!r} ({img.format})"
        )
    if mode in _CONVERTED_MODES:
        notes.append(_CONVERTED_MODES[mode])
    if bit_depth == 16 and mode in {"RGB", "RGBA"}:
        notes.append("16-bit colour scaled to 8-bit")
    return ImageInfo(
        width=width,
        height=height,
        channels=_MODE_CHANNELS.get(mode, 1),
        bit_depth=bit_depth,
        mode=mode,
        format=str(img.format),
        notes=notes,
    )


def verify_decodes(data: bytes, source: str) -> None:
    """Fully decode with PIL to catch truncated or corrupt pixel data (cv2 only warns)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(source, "too_large", f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(source, "corrupt", f"truncated or corrupt image data: {exc}") from None


def _to_uint8(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if arr.dtype == np.int32 or arr.dtype == np.uint32:
        hi = float(arr.max()) or 1.0
        return np.clip(arr.astype(np.float64) * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
    raise ImageError(source, "unsupported_mode", f"unsupported sample type {arr.dtype}")


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def decode_rgb8(
    data: bytes,
    source: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    strict: bool = True,
) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``data`` to an (H, W, 3) uint8 RGB array.

    ``strict`` also runs a full PIL decode to reject truncated files (OpenCV decodes a
    truncated JPEG with a grey tail and only a warning). Stages after ``validate`` pass
    ``strict=False`` because validation already did it.
    """
    info = probe(data, source, max_pixels)
    if strict:
        verify_decodes(data, source)
    buf = np.frombuffer(data, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        arr = _decode_with_pil(data, source)
    else:
        arr = _cv2_to_rgb(arr, source)
    if arr.shape[:2] != (info.height, info.width):
        raise ImageError(
            source,
            "corrupt",
            f"decoded size {arr.shape[1]}x{arr.shape[0]} differs from header "
            f"{info.width}x{info.height}",
        )
    return np.ascontiguousarray(arr), info


def _cv2_to_rgb(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return cv2.cvtColor(_to_uint8(arr, source), cv2.COLOR_GRAY2RGB)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageError(
            source, "unsupported_mode", f"image has shape {arr.shape}, expected 1, 3 or 4 channels"
        )
    arr = _to_uint8(arr, source)
    if arr.shape[2] == 4:
        rgb = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
        return _composite_on_white(rgb, arr[..., 3])
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def _decode_with_pil(data: bytes, source: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in {"LA", "PA", "RGBA", "P"}:
                rgba = np.asarray(img.convert("RGBA"))
                return _composite_on_white(rgba[..., :3], rgba[..., 3])
            if img.mode.startswith("I"):
                gray = _to_uint8(np.asarray(img).astype(np.uint32), source)
                return np.repeat(gray[..., None], 3, axis=2)
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(source, "corrupt", f"cannot decode image: {exc}") from None


def read_rgb8(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, strict: bool = True
) -> tuple[np.ndarray, ImageInfo]:
    path = Path(path)
    return decode_rgb8(path.read_bytes(), str(path), max_pixels=max_pixels, strict=strict)


def encode_png(rgb: np.ndarray, compression: int = 1) -> bytes:
    """Encode an RGB uint8 array as PNG bytes (fast compression level by default)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
