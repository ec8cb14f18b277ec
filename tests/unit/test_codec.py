"""Decoding every accepted kind of image file to (H, W, 3) uint8 RGB, and refusing the rest."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from ihcflow.images.codec import (
    ImageError,
    decode_rgb8,
    encode_png,
    probe,
    read_rgb8,
    verify_decodes,
)
from ihcflow.images.ops import resize


def pil_bytes(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_with_header(width: int, height: int) -> bytes:
    """A valid-looking RGB PNG header claiming ``width x height`` with a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def noise(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def reason_of(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ImageError) as info:
        decode_rgb8(data, "sample.img", **kwargs)  # type: ignore[arg-type]
    assert "sample.img" in str(info.value), "the error must name the file"
    return info.value.reason


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_decode_to_exact_rgb(fmt: str) -> None:
    rgb = noise()
    arr, info = decode_rgb8(pil_bytes(Image.fromarray(rgb), fmt), "x")
    assert arr.dtype == np.uint8 and arr.shape == (24, 32, 3)
    np.testing.assert_array_equal(arr, rgb)  # channel order is RGB, not OpenCV's BGR
    assert (info.width, info.height, info.channels, info.bit_depth) == (32, 24, 3, 8)
    assert info.mode == "RGB" and info.format == fmt and info.notes == []


def test_jpeg_keeps_channel_order() -> None:
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    arr, info = decode_rgb8(pil_bytes(Image.fromarray(red), "JPEG", quality=95), "x")
    assert info.format == "JPEG"
    assert arr[8, 8, 0] > 240 and arr[8, 8, 1] < 15 and arr[8, 8, 2] < 15


def test_extension_is_not_trusted(tmp_path) -> None:
    png_named_jpg = tmp_path / "really_a_png.jpg"
    png_named_jpg.write_bytes(pil_bytes(Image.fromarray(noise()), "PNG"))
    arr, info = read_rgb8(png_named_jpg)
    assert info.format == "PNG" and arr.shape == (24, 32, 3)
    text_named_png = tmp_path / "notes.png"
    text_named_png.write_text("hello, not an image\n" * 10)
    with pytest.raises(ImageError) as err:
        read_rgb8(text_named_png)
    assert err.value.reason == "not_an_image" and "notes.png" in str(err.value)


def test_empty_data() -> None:
    assert reason_of(b"") == "empty"


@pytest.mark.parametrize("min_side", [None, 8], ids=["full", "reduced"])
@pytest.mark.parametrize("strict", [True, False])
def test_truncated_jpeg_is_corrupt(strict: bool, min_side: int | None) -> None:
    jpg = pil_bytes(Image.fromarray(noise(64, 64)), "JPEG")
    cut = jpg[: len(jpg) * 2 // 3]
    assert probe(cut, "x").format == "JPEG"  # the header is intact
    assert reason_of(cut, strict=strict, min_side=min_side) == "corrupt"


def smooth(h: int, w: int) -> np.ndarray:
    """A stained-looking image: blurred colour blobs, as a microscope gives."""
    blobs = cv2.GaussianBlur(noise(h, w).astype(np.float32), (0, 0), 10)
    return cv2.normalize(blobs, None, 40, 230, cv2.NORM_MINMAX).astype(np.uint8)


@pytest.mark.parametrize(
    ("min_side", "shape"),
    [(None, (304, 400)), (150, (152, 200)), (70, (76, 100)), (38, (38, 50)), (305, (304, 400))],
)
def test_jpeg_decodes_at_the_smallest_scale_that_keeps_min_side(
    min_side: int | None, shape: tuple[int, int]
) -> None:
    jpeg = pil_bytes(Image.fromarray(smooth(304, 400)), "JPEG", quality=95)
    arr, info = decode_rgb8(jpeg, "x", min_side=min_side)
    assert arr.shape == (*shape, 3) and (info.width, info.height) == (400, 304)  # the file's
    # at half min_side (the model size, as prepare_image asks) it is the same picture
    size = (min_side or 304) // 2
    full, _ = decode_rgb8(jpeg, "x")
    assert np.abs(resize(arr, size).astype(int) - resize(full, size)).mean() < 2.5
    # sides that are no multiple of the scale: the last row/column is a partial block
    odd, _ = decode_rgb8(pil_bytes(Image.fromarray(smooth(301, 397)), "JPEG"), "x", min_side=70)
    assert odd.shape == (76, 100, 3)


def test_reduced_scale_is_for_jpeg_only() -> None:
    rgb = smooth(64, 80)
    for fmt in ("PNG", "TIFF"):
        arr, _ = decode_rgb8(pil_bytes(Image.fromarray(rgb), fmt), "x", min_side=8)
        np.testing.assert_array_equal(arr, rgb)
    gray = pil_bytes(Image.fromarray(rgb[..., 1]), "JPEG", quality=95)
    arr, info = decode_rgb8(gray, "x", min_side=16)
    assert info.mode == "L" and arr.shape == (16, 20, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_png_is_corrupt(keep: float) -> None:
    png = pil_bytes(Image.fromarray(noise(64, 64)), "PNG", compress_level=0)
    assert reason_of(png[: int(len(png) * keep)]) == "corrupt"


def test_corrupt_png_header_is_corrupt_not_unknown() -> None:
    png = pil_bytes(Image.fromarray(noise()), "PNG")
    broken = png[:16] + b"\xff" * 8 + png[24:]  # width/height overwritten, CRC now wrong
    with pytest.raises(ImageError) as err:
        probe(broken, "x.png")
    assert err.value.reason == "corrupt" and "PNG" in err.value.detail


def test_tiff_with_broken_directory_is_corrupt_without_warnings() -> None:
    tif = pil_bytes(Image.fromarray(noise()), "TIFF")
    assert reason_of(tif[:8]) == "corrupt"  # PIL warns "Corrupt EXIF data"; not our output


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_is_unsupported(fmt: str) -> None:
    data = pil_bytes(Image.new("CMYK", (8, 8), (0, 50, 100, 0)), fmt)
    with pytest.raises(ImageError) as err:
        decode_rgb8(data, "x")
    assert err.value.reason == "unsupported_mode" and "CMYK" in err.value.detail


def test_float_tiff_is_unsupported() -> None:
    data = pil_bytes(Image.fromarray(np.full((6, 5), 0.5, np.float32), mode="F"), "TIFF")
    with pytest.raises(ImageError) as err:
        decode_rgb8(data, "x")
    assert err.value.reason == "unsupported_mode" and "'F'" in err.value.detail


def test_tiff_layouts_pil_cannot_open_are_unsupported_not_unknown() -> None:
    tifffile = pytest.importorskip("tifffile")
    float_rgb, two_channel = io.BytesIO(), io.BytesIO()
    tifffile.imwrite(float_rgb, np.ones((4, 5, 3), np.float32), photometric="rgb")
    tifffile.imwrite(
        two_channel, np.ones((4, 5, 2), np.uint16), photometric="minisblack", planarconfig="contig"
    )
    with pytest.raises(ImageError) as err:
        probe(float_rgb.getvalue(), "x")
    assert err.value.reason == "unsupported_mode"
    assert "float" in err.value.detail and "(32, 32, 32)" in err.value.detail
    with pytest.raises(ImageError) as err:
        probe(two_channel.getvalue(), "x")
    assert err.value.reason == "unsupported_mode" and "samples per pixel 2" in err.value.detail


def test_huge_header_is_refused_before_decoding() -> None:
    bomb = png_with_header(100_000, 100_000)  # 1e10 pixels claimed in a 70-byte file
    assert len(bomb) < 100
    assert reason_of(bomb) == "too_large"
    # Even with a limit above PIL's own, PIL's DecompressionBombError is caught, not raised.
    assert reason_of(bomb, max_pixels=10**12) == "too_large"


def test_bomb_refusal_quotes_the_configured_limit() -> None:
    # PIL refuses this header itself (over 2 x its MAX_IMAGE_PIXELS) before we see the size;
    # the message must still give the size and the limit the caller configured, not PIL's.
    with pytest.raises(ImageError) as err:
        probe(png_with_header(100_000, 100_000), "x", max_pixels=1_000_000)
    detail = err.value.detail
    assert "10000000000 pixels" in detail and "limit 1000000" in detail, detail
    assert str(2 * Image.MAX_IMAGE_PIXELS) not in detail  # PIL's limit


def test_fully_transparent_image_has_no_content() -> None:
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., :3] = 90
    assert reason_of(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")) == "no_content"
    rgba[3, 4, 3] = 255  # one opaque pixel: an image, however faint
    arr, _ = decode_rgb8(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), "x")
    assert arr[3, 4].tolist() == [90, 90, 90] and arr[0, 0].tolist() == [255, 255, 255]


def test_pixel_limit_is_ours_not_pils() -> None:
    # 10000x10000 lies in PIL's warning band (89M..179M pixels); with warnings as errors
    # (pytest here) a leaked DecompressionBombWarning would crash instead of reporting.
    with pytest.raises(ImageError) as err:
        probe(png_with_header(10_000, 10_000), "x")
    assert err.value.reason == "too_large" and "10000x10000" in err.value.detail
    with pytest.raises(ImageError) as err:
        probe(png_with_header(80, 50), "x", max_pixels=3999)
    assert err.value.reason == "too_large" and "4000 pixels > limit 3999" in err.value.detail
    assert probe(png_with_header(80, 50), "x", max_pixels=4000).width == 80


def test_zero_size_image_is_corrupt() -> None:
    with pytest.raises(ImageError) as err:
        probe(png_with_header(0, 7), "x")
    assert err.value.reason == "corrupt"


def test_grayscale_is_replicated_with_note() -> None:
    arr, info = decode_rgb8(pil_bytes(Image.new("L", (5, 4), 77), "PNG"), "x")
    assert (arr == 77).all() and arr.shape == (4, 5, 3)
    assert (info.mode, info.channels) == ("L", 1)
    assert info.notes == ["grayscale converted to RGB"]


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :2] = (10, 20, 30, 0)  # fully transparent -> white
    rgba[:, 2:4] = (10, 20, 30, 255)  # opaque -> unchanged
    rgba[:, 4:] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    arr, info = decode_rgb8(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), "x")
    assert (arr[:, :2] == 255).all()
    assert (arr[:, 2:4] == (10, 20, 30)).all()
    assert np.abs(arr[:, 4:].astype(int) - 127).max() <= 1
    assert info.channels == 4 and info.notes == ["alpha composited on white"]


def test_gray_alpha_is_composited_on_white() -> None:
    img = Image.new("LA", (3, 3), (40, 0))
    img.putpixel((0, 0), (40, 255))
    arr, info = decode_rgb8(pil_bytes(img, "PNG"), "x")
    assert (arr[0, 0] == 40).all() and (arr.reshape(-1, 3)[1:] == 255).all()
    assert info.channels == 2 and "grayscale+alpha" in info.notes[0]


def test_palette_is_expanded() -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    arr, info = decode_rgb8(pil_bytes(img, "PNG"), "x")
    assert (arr == (200, 100, 50)).all()
    assert info.mode == "P" and info.notes == ["palette converted to RGB"]


def test_palette_transparency_is_composited_with_note() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([9, 9, 9, 200, 100, 50] + [0] * 762)
    img.putpixel((0, 0), 1)
    arr, info = decode_rgb8(pil_bytes(img, "PNG", transparency=0), "x")
    assert (arr[0, 0] == (200, 100, 50)).all()
    assert (arr[1:, 1:] == 255).all()  # palette index 0 is transparent
    assert "transparent colour composited on white" in info.notes


def test_sixteen_bit_gray_scales_to_eight_bit() -> None:
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    arr, info = decode_rgb8(pil_bytes(Image.fromarray(values), "PNG"), "x")
    np.testing.assert_array_equal(arr[0, :, 0], [0, 100, 255])
    assert (arr[..., 0] == arr[..., 2]).all()
    assert info.bit_depth == 16 and info.mode.startswith("I;16")
    assert info.notes == ["16-bit grayscale scaled to 8-bit RGB"]


@pytest.mark.parametrize("fmt", [".png", ".tiff"])
def test_sixteen_bit_colour_scales_to_eight_bit(fmt: str) -> None:
    bgr = np.zeros((3, 4, 3), np.uint16)
    bgr[..., 2] = 65535  # red, in OpenCV's channel order
    bgr[..., 0] = 257 * 10  # a little blue
    ok, buf = cv2.imencode(fmt, bgr)
    assert ok
    arr, info = decode_rgb8(buf.tobytes(), "x")
    assert (arr == (255, 0, 10)).all()
    assert info.mode == "RGB" and info.bit_depth == 16
    assert info.notes == ["16-bit samples scaled to 8-bit"]


def test_one_bit_image() -> None:
    img = Image.new("1", (4, 2), 0)
    img.putpixel((0, 0), 1)
    arr, info = decode_rgb8(pil_bytes(img, "PNG"), "x")
    assert (arr[0, 0] == 255).all() and (arr[1, 1] == 0).all()
    assert info.bit_depth == 1 and info.notes == ["1-bit image converted to RGB"]


def test_extra_sample_without_alpha_meaning_is_not_treated_as_alpha() -> None:
    # RGBX TIFF: a 4th sample that is not alpha. Compositing would turn black into white.
    arr, info = decode_rgb8(pil_bytes(Image.new("RGBX", (4, 3), (0, 0, 0, 0)), "TIFF"), "x")
    assert info.mode == "RGB" and (arr == 0).all()


def test_multipage_tiff_uses_first_page_with_note() -> None:
    first, second = Image.new("RGB", (4, 3), (1, 2, 3)), Image.new("RGB", (4, 3), (9, 9, 9))
    data = pil_bytes(first, "TIFF", save_all=True, append_images=[second])
    arr, info = decode_rgb8(data, "x")
    assert (arr == (1, 2, 3)).all()
    assert info.notes == ["2 frames/pages: only the first is used"]


def test_verify_decodes_accepts_intact_and_rejects_truncated() -> None:
    png = pil_bytes(Image.fromarray(noise()), "PNG")
    verify_decodes(png, "x")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        verify_decodes(png[: len(png) // 2], "x")


def test_encode_png_round_trips() -> None:
    rgb = noise()
    arr, info = decode_rgb8(encode_png(rgb), "x")
    np.testing.assert_array_equal(arr, rgb)
    assert info.format == "PNG"
    with pytest.raises(ValueError, match="expected"):
        encode_png(rgb[..., 0])
