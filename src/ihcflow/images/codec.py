"""Decode any supported image file into the one array convention the pipeline uses.

Convention: ``numpy.ndarray`` of shape (H, W, 3), dtype ``uint8``, channel order RGB.
Grayscale, RGBA/LA, palette and 16-bit images are converted (with a note saying so);
other inputs are rejected with an :class:`ImageError` that names the file and the reason.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, TiffImagePlugin, UnidentifiedImageError

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
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA"})
_TRANSPARENT_NOTE = "transparent colour composited on white"


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


_SUFFIXES = {"JPEG": ".jpg", "TIFF": ".tif"}  # the others: the format's name


def file_suffix(image_format: str) -> str:
    """The file suffix for a PIL format name: PNG -> .png, JPEG -> .jpg, TIFF -> .tif."""
    fmt = image_format.upper()
    return _SUFFIXES.get(fmt, f".{fmt.lower()}")


_MODE_CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "LA": 2, "PA": 2, "RGB": 3, "RGBA": 4}


def _mode_depth(mode: str) -> int:
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in {"I", "F"}:
        return 32
    return 8


# File signatures: a file that starts like an image but cannot be opened is corrupt or of an
# unsupported variant, not "not an image".
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
_SAMPLE_FORMATS = {1: "unsigned int", 2: "signed int", 3: "float", 4: "undefined"}


@contextlib.contextmanager
def _pil_guard() -> Iterator[None]:
    """Silence PIL's warnings (corrupt EXIF, bomb warning): errors are ours to raise.

    The pixel limit is enforced by :func:`probe` with ``max_pixels``; PIL's own
    ``DecompressionBombError`` (above twice ``Image.MAX_IMAGE_PIXELS``) is still caught.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _sniff(data: bytes) -> str | None:
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _tiff_layout(data: bytes) -> str:
    """Describe a TIFF's sample layout from its first IFD, for error messages."""
    try:
        fp = io.BytesIO(data)
        ifd = TiffImagePlugin.ImageFileDirectory_v2(fp.read(8))
        fp.seek(ifd.next)
        ifd.load(fp)
        fmt = ifd.get(339)
        fmt = fmt[0] if isinstance(fmt, tuple) and fmt else fmt
        return (
            f"samples per pixel {ifd.get(277, 1)}, bits per sample {ifd.get(258)}, "
            f"sample format {_SAMPLE_FORMATS.get(fmt or 1, fmt)}, photometric {ifd.get(262)}"
        )
    except Exception:  # a broken IFD: the caller reports the file as corrupt anyway
        return "unreadable tags"


def _unidentified(data: bytes, source: str) -> ImageError:
    """Say why PIL could not open ``data``: not an image, corrupt, or an unsupported variant."""
    fmt = _sniff(data)
    if fmt is None:
        return ImageError(source, "not_an_image", "not an image (no known image header)")
    try:
        with _pil_guard():
            Image.OPEN[fmt][0](io.BytesIO(data), "")
    except Exception as exc:  # the plugin's own error names the problem
        msg = str(exc) or type(exc).__name__
    else:
        msg = "unknown error"
    if re.search(r"mode|unsupported", msg, re.IGNORECASE):
        layout = f" ({_tiff_layout(data)})" if fmt == "TIFF" else ""
        return ImageError(
            source, "unsupported_mode", f"unsupported {fmt} pixel format: {msg}{layout}"
        )
    return ImageError(source, "corrupt", f"corrupt {fmt} header: {msg}")


def _raw_mode(img: Image.Image) -> str:
    """The sample layout stored in the file (e.g. ``RGB;16B``), which PIL's mode hides."""
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str):
            return raw
    return ""


def probe(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read the header only: format, size and mode. Refuses decompression bombs early."""
    if not data:
        raise ImageError(source, "empty", "file is empty (0 bytes)")
    try:
        with _pil_guard(), Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            mode = img.mode
            fmt = str(img.format)
            raw_mode = _raw_mode(img)
            n_frames = getattr(img, "n_frames", 1) if width * height <= max_pixels else 1
            has_transparency = "transparency" in img.info
    except UnidentifiedImageError:
        raise _unidentified(data, source) from None
    except Image.DecompressionBombError as exc:
        raise _bomb(source, exc, max_pixels) from None
    except Exception as exc:  # PIL raises many types on malformed headers
        raise ImageError(source, "corrupt", f"corrupt image header: {exc}") from None
    if width * height > max_pixels:
        raise ImageError(
            source,
            "too_large",
            f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}",
        )
    if width == 0 or height == 0:
        raise ImageError(source, "corrupt", f"image has zero size {width}x{height}")
    if mode not in _SUPPORTED_MODES:
        raise ImageError(
            source, "unsupported_mode", f"unsupported image mode {mode!r} ({fmt}): convert to RGB"
        )
    # 48/64-bit RGB(A) and 16-bit LA open in PIL as 8-bit modes; the raw mode tells the truth.
    wide = ";16" in raw_mode and not mode.startswith("I")
    bit_depth = 16 if wide else _mode_depth(mode)
    notes = [f"{n_frames} frames/pages: only the first is used"] if n_frames > 1 else []
    if mode in _CONVERTED_MODES:
        notes.append(_CONVERTED_MODES[mode])
    if wide:
        notes.append("16-bit samples scaled to 8-bit")
    if has_transparency and mode in {"L", "P", "RGB", "1"}:
        notes.append(_TRANSPARENT_NOTE)
    return ImageInfo(
        width=width,
        height=height,
        channels=_MODE_CHANNELS.get(mode, 1),
        bit_depth=bit_depth,
        mode=mode,
        format=fmt,
        notes=notes,
    )


def _bomb(source: str, exc: Image.DecompressionBombError, max_pixels: int) -> ImageError:
    """PIL refused the header before we could read the size: say so with *our* limit (PIL's
    own, ``2 x Image.MAX_IMAGE_PIXELS``, means nothing to the caller)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{found.group(1)} pixels" if found else "more pixels than PIL opens"
    return ImageError(source, "too_large", f"image too large: {size} > limit {max_pixels}")


def verify_decodes(data: bytes, source: str) -> None:
    """Fully decode with PIL to catch truncated or corrupt pixel data (cv2 only warns).

    Call :func:`probe` first: it enforces the pixel limit before anything is decoded.
    """
    try:
        with _pil_guard(), Image.open(io.BytesIO(data)) as img:
            img.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(source, "too_large", f"image too large: {exc}") from None
    except MemoryError:
        raise ImageError(
            source, "too_large", "image too large: out of memory decoding it"
        ) from None
    except Exception as exc:  # OSError, SyntaxError, ValueError, struct.error, ...
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


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray, source: str) -> np.ndarray:
    if not alpha.any():  # blank white once composited: nothing to measure or classify
        raise ImageError(source, "no_content", "image is fully transparent (alpha 0 everywhere)")
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# libjpeg decodes at 1/2, 1/4 or 1/8 scale by a smaller inverse DCT: a fraction of the work of
# a full decode, and the result is already low-pass filtered like an area shrink.
_REDUCED_JPEG = {
    8: cv2.IMREAD_REDUCED_COLOR_8,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    2: cv2.IMREAD_REDUCED_COLOR_2,
}


def jpeg_reduction(info: ImageInfo, min_side: int | None) -> int:
    """The largest k in 8, 4, 2 such that the JPEG decoded at 1/k scale is still at least
    ``min_side`` px on both sides (1: decode at full size; also for anything but an 8-bit
    RGB or grey JPEG, or ``min_side`` None)."""
    if min_side is None or info.format != "JPEG" or info.mode not in {"RGB", "L"}:
        return 1
    short = min(info.width, info.height)
    return next((k for k in _REDUCED_JPEG if -(-short // k) >= min_side), 1)


def decode_rgb8(
    data: bytes,
    source: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    strict: bool = True,
    min_side: int | None = None,
) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``data`` to an (H, W, 3) uint8 RGB array.

    ``strict`` also runs a full PIL decode to reject truncated or damaged pixel data that
    OpenCV may accept with only a message on stderr. Stages after ``validate`` pass
    ``strict=False`` because validation already did it.

    ``min_side``: the caller only needs this many px on each side, so a JPEG may be decoded at
    1/2, 1/4 or 1/8 scale (:func:`jpeg_reduction`; the array is then ``ceil(H/k) x ceil(W/k)``,
    and ``info`` still gives the file's own size). Other formats decode at full size.
    """
    info = probe(data, source, max_pixels)
    if strict:
        verify_decodes(data, source)
    k = jpeg_reduction(info, min_side)
    flags = _REDUCED_JPEG[k] | cv2.IMREAD_IGNORE_ORIENTATION if k > 1 else cv2.IMREAD_UNCHANGED
    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        arr = None
    if arr is None:
        arr, k = _decode_with_pil(data, source), 1
    else:
        # A 4th channel is alpha only if the file says so (an RGBX TIFF's extra sample is not).
        has_alpha = info.mode in _ALPHA_MODES or _TRANSPARENT_NOTE in info.notes
        arr = _cv2_to_rgb(arr, source, has_alpha=has_alpha)
    expected = (-(-info.height // k), -(-info.width // k))
    if arr.shape[:2] != expected:
        raise ImageError(
            source,
            "corrupt",
            f"decoded size {arr.shape[1]}x{arr.shape[0]} differs from header "
            f"{info.width}x{info.height}" + (f" at 1/{k} scale" if k > 1 else ""),
        )
    return np.ascontiguousarray(arr), info


def _cv2_to_rgb(arr: np.ndarray, source: str, *, has_alpha: bool) -> np.ndarray:
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
        return _composite_on_white(rgb, arr[..., 3], source) if has_alpha else rgb
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def _decode_with_pil(data: bytes, source: str) -> np.ndarray:
    try:
        with _pil_guard(), Image.open(io.BytesIO(data)) as img:
            img.load()
            transparent = "transparency" in img.info and img.mode in {"L", "RGB", "1"}
            if transparent or img.mode in {"LA", "PA", "RGBA", "P"}:
                rgba = np.asarray(img.convert("RGBA"))
                return _composite_on_white(rgba[..., :3], rgba[..., 3], source)
            if img.mode.startswith("I"):
                gray = _to_uint8(np.asarray(img).astype(np.uint32), source)
                return np.repeat(gray[..., None], 3, axis=2)
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise ImageError(source, "too_large", f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(source, "corrupt", f"cannot decode image: {exc}") from None


def read_rgb8(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, strict: bool = True
) -> tuple[np.ndarray, ImageInfo]:
    path = Path(path)
    return decode_rgb8(path.read_bytes(), str(path), max_pixels=max_pixels, strict=strict)


def png_params(compression: int = 1, *, fast: bool = False) -> list[int]:
    """OpenCV's PNG flags: zlib ``compression`` level; ``fast`` adds the SUB filter and
    Huffman-only coding, 2-3x faster to write than libpng's adaptive filters at about the same
    size on stained images (measured with benchmarks/preprocess.py)."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    if fast:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
        params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    return params


def encode_png(rgb: np.ndarray, compression: int = 1, *, fast: bool = False) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB array (:func:`png_params`); deterministic."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    params = png_params(compression, fast=fast)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {rgb.shape}")
    return buf.tobytes()
