"""validate_dataset: every bad file is found and named, duplicates cannot leak, the manifest
lists exactly the accepted images."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ihcflow import validation
from ihcflow.data.layout import DatasetError
from ihcflow.tables import MANIFEST
from ihcflow.validation import (
    ValidationFailed,
    check_file,
    summarize,
    validate_dataset,
)


def pil_bytes(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def rgb_png(seed: int, size: int = 16) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return pil_bytes(Image.fromarray(rgb), "PNG")


def rgb_jpeg(seed: int, size: int = 48) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return pil_bytes(Image.fromarray(rgb), "JPEG")


def png_with_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# The corpus: every kind of bad file, every accepted conversion, and duplicates.
GOOD = {
    "a/good1.png": rgb_png(1),
    "a/good2.jpg": rgb_jpeg(2),
    "a/png_named.jpg": rgb_png(3),  # the extension lies; the content is a fine PNG
    "b/good3.png": rgb_png(4),
    "b/good4.bmp": pil_bytes(Image.fromarray(np.full((8, 8, 3), 7, np.uint8)), "BMP"),
}
CONVERTED = {
    "a/gray.png": pil_bytes(Image.new("L", (6, 5), 77), "PNG"),
    "a/rgba.png": pil_bytes(Image.new("RGBA", (6, 5), (10, 20, 30, 128)), "PNG"),
    "b/palette.png": pil_bytes(Image.new("RGB", (6, 5), (200, 100, 50)).convert("P"), "PNG"),
    "b/gray16.png": pil_bytes(Image.fromarray(np.full((5, 6), 65535, np.uint16)), "PNG"),
}
BAD = {
    "a/empty.png": (b"", "empty"),
    "a/notes.png": (b"these are my notes, not an image\n" * 4, "not_an_image"),
    "a/truncated.jpg": (rgb_jpeg(5)[:900], "corrupt"),
    "b/truncated.png": (rgb_png(6, 64)[:2000], "corrupt"),
    "b/bad_header.png": (rgb_png(7)[:16] + b"\xff" * 8 + rgb_png(7)[24:], "corrupt"),
    "a/cmyk.jpg": (pil_bytes(Image.new("CMYK", (8, 8)), "JPEG"), "unsupported_mode"),
    "b/cmyk.tif": (pil_bytes(Image.new("CMYK", (8, 8)), "TIFF"), "unsupported_mode"),
    "b/float.tif": (
        pil_bytes(Image.fromarray(np.ones((4, 4), np.float32), mode="F"), "TIFF"),
        "unsupported_mode",
    ),
    "a/bomb.png": (png_with_header(100_000, 100_000), "too_large"),
    "b/clear.png": (pil_bytes(Image.new("RGBA", (6, 5), (10, 20, 30, 0)), "PNG"), "no_content"),
}
DUPLICATES = {
    "a/good1_copy.png": GOOD["a/good1.png"],  # same class: the copy goes, good1.png stays
    "a/shared.png": rgb_png(8),  # same bytes in two classes: ambiguous label, both go
    "b/shared_too.png": rgb_png(8),
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    files = {**GOOD, **CONVERTED, **{k: v[0] for k, v in BAD.items()}, **DUPLICATES}
    return write(tmp_path / "data", files)


def test_every_bad_file_is_rejected_with_its_reason(corpus: Path) -> None:
    report = validate_dataset(corpus, workers=1).report
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    expected = {path: reason for path, (_, reason) in BAD.items()}
    expected |= dict.fromkeys(["a/good1_copy.png", "a/shared.png", "b/shared_too.png"], "duplicate")
    assert reasons == expected
    assert [r["path"] for r in report["rejected"]] == sorted(expected)
    assert all(r["detail"] for r in report["rejected"])


def test_rejection_details_say_what_is_wrong(corpus: Path) -> None:
    details = {
        r["path"]: r["detail"] for r in validate_dataset(corpus, workers=1).report["rejected"]
    }
    assert "CMYK" in details["a/cmyk.jpg"] and "CMYK" in details["b/cmyk.tif"]
    assert "'F'" in details["b/float.tif"]
    assert "10000000000 pixels" in details["a/bomb.png"]
    assert "truncated" in details["a/truncated.jpg"]
    assert details["a/good1_copy.png"].startswith("same bytes as a/good1.png")
    assert (
        "b/shared_too.png" in details["a/shared.png"]
        and "ambiguous label" in details["a/shared.png"]
    )
    assert "a/shared.png" in details["b/shared_too.png"]


def test_manifest_lists_exactly_the_accepted_files(corpus: Path) -> None:
    result = validate_dataset(corpus, workers=1)
    manifest = result.manifest
    assert list(manifest.columns) == list(MANIFEST.columns)
    assert list(manifest["path"]) == sorted([*GOOD, *CONVERTED])
    assert manifest["path"].is_monotonic_increasing
    for row in manifest.to_dict("records"):
        data = (corpus / row["path"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["bytes"] == len(data)
        assert row["class"] == row["path"].split("/")[0]
        assert row["given_split"] == ""
    by_path = manifest.set_index("path")
    assert by_path.loc["a/png_named.jpg", "format"] == "PNG"
    assert by_path.loc["a/good2.jpg", "format"] == "JPEG"
    assert tuple(by_path.loc["a/gray.png", ["width", "height", "channels", "mode"]]) == (
        6,
        5,
        1,
        "L",
    )
    assert by_path.loc["b/gray16.png", "bit_depth"] == 16
    assert by_path.loc["a/good1.png", "notes"] == ""


def test_conversions_are_noted_in_manifest_and_report(corpus: Path) -> None:
    result = validate_dataset(corpus, workers=1)
    notes = result.manifest.set_index("path")["notes"]
    assert notes["a/gray.png"] == "grayscale converted to RGB"
    assert notes["a/rgba.png"] == "alpha composited on white"
    assert notes["b/palette.png"] == "palette converted to RGB"
    assert notes["b/gray16.png"] == "16-bit grayscale scaled to 8-bit RGB"
    converted = {c["path"]: c["notes"] for c in result.report["converted"]}
    assert converted == {p: notes[p] for p in CONVERTED}


def test_report_counts(corpus: Path) -> None:
    report = validate_dataset(corpus, workers=1).report
    n_files = len(GOOD) + len(CONVERTED) + len(BAD) + len(DUPLICATES)
    assert report["layout"] == 1 and report["policy"] == "skip"
    assert report["n_files"] == n_files
    assert report["n_valid"] == len(GOOD) + len(CONVERTED)
    assert report["n_rejected"] == n_files - report["n_valid"] == len(report["rejected"])
    assert report["classes"] == {"a": 5, "b": 4}
    assert "error" not in report


def test_workers_give_the_same_result(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = validate_dataset(corpus, workers=1)
    monkeypatch.setattr(validation, "MIN_FILES_FOR_WORKERS", 0)  # use the pool on a small set
    monkeypatch.setattr(validation, "MIN_BYTES_FOR_WORKERS", 0)
    parallel = validate_dataset(corpus, workers=2)
    assert parallel.report == serial.report
    assert parallel.manifest.equals(serial.manifest)


def test_file_over_max_bytes_is_too_large(tmp_path: Path) -> None:
    data = write(
        tmp_path / "data",
        {"a/big.png": rgb_png(1, 64), "a/1.png": rgb_png(2), "b/2.png": rgb_png(3)},
    )
    limit = (data / "a/1.png").stat().st_size
    report = validate_dataset(data, max_bytes=limit, workers=1).report
    assert [(r["path"], r["reason"]) for r in report["rejected"]] == [("a/big.png", "too_large")]
    assert f"> max_bytes {limit} (not read)" in report["rejected"][0]["detail"]


def test_max_pixels_is_applied(tmp_path: Path) -> None:
    data = write(
        tmp_path / "data",
        {"a/1.png": rgb_png(1, 32), "a/2.png": rgb_png(2, 8), "b/3.png": rgb_png(3, 8)},
    )
    report = validate_dataset(data, max_pixels=32 * 32 - 1, workers=1).report
    assert [(r["path"], r["reason"]) for r in report["rejected"]] == [("a/1.png", "too_large")]


def test_layout_two_duplicates(tmp_path: Path) -> None:
    leak = rgb_png(10)
    twin = rgb_png(11)
    data = write(
        tmp_path / "data",
        {
            "train/a/1.png": rgb_png(1),
            "train/a/leak.png": leak,  # same bytes in train and test: leakage, both go
            "test/a/leak.png": leak,
            "train/b/twin1.png": twin,  # same split and class: the first one stays
            "train/b/twin2.png": twin,
            "val/b/3.png": rgb_png(3),
            "test/b/4.png": rgb_png(4),
        },
    )
    result = validate_dataset(data, workers=1)
    assert result.report["layout"] == 2
    rejected = {r["path"]: r["detail"] for r in result.report["rejected"]}
    assert set(rejected) == {"train/a/leak.png", "test/a/leak.png", "train/b/twin2.png"}
    assert "leaks between splits" in rejected["test/a/leak.png"]
    assert "train/a/leak.png" in rejected["test/a/leak.png"]
    assert rejected["train/b/twin2.png"].startswith("same bytes as train/b/twin1.png")
    manifest = result.manifest.set_index("path")
    assert manifest["given_split"].to_dict() == {
        "test/b/4.png": "test",
        "train/a/1.png": "train",
        "train/b/twin1.png": "train",
        "val/b/3.png": "val",
    }
    assert manifest.loc["val/b/3.png", "class"] == "b"


def test_same_bytes_in_two_classes_of_two_splits(tmp_path: Path) -> None:
    shared = rgb_png(9)
    files = {"train/a/x.png": shared, "test/b/x.png": shared}
    files |= {"train/a/1.png": rgb_png(1), "test/b/2.png": rgb_png(2)}
    report = validate_dataset(write(tmp_path / "data", files), workers=1).report
    detail = {r["path"]: r["detail"] for r in report["rejected"]}["train/a/x.png"]
    assert "ambiguous label" in detail and "leaks between splits" in detail


def test_empty_class_is_a_dataset_error(tmp_path: Path) -> None:
    data = write(tmp_path / "data", {"a/1.png": rgb_png(1), "b/2.png": rgb_png(2)})
    (data / "c").mkdir()
    with pytest.raises(DatasetError, match=r"class 'c': empty folder"):
        validate_dataset(data, workers=1)


def test_class_with_every_file_rejected_names_the_reasons(tmp_path: Path) -> None:
    files = {"a/1.png": rgb_png(1), "b/broken.png": rgb_png(2)[:40], "b/empty.png": b""}
    with pytest.raises(ValidationFailed) as err:
        validate_dataset(write(tmp_path / "data", files), workers=1)
    message = str(err.value)
    assert "class 'b': 0 valid of 2 file(s), rejected: 1 corrupt, 1 empty" in message
    assert "'a'" not in message
    assert err.value.report["classes"] == {"a": 1, "b": 0}
    assert err.value.report["n_rejected"] == 2 and err.value.report["error"] == message


def test_min_per_class(tmp_path: Path) -> None:
    files = {"a/1.png": rgb_png(1), "a/2.png": rgb_png(2), "b/3.png": rgb_png(3)}
    data = write(tmp_path / "data", files)
    assert validate_dataset(data, min_per_class=1, workers=1).report["classes"] == {"a": 2, "b": 1}
    with pytest.raises(DatasetError, match=r"min_per_class=2[\s\S]*class 'b': 1 valid of 1"):
        validate_dataset(data, min_per_class=2, workers=1)


def test_single_class_is_a_dataset_error(tmp_path: Path) -> None:
    data = write(tmp_path / "data", {"a/1.png": rgb_png(1)})
    with pytest.raises(DatasetError, match="need at least 2"):
        validate_dataset(data, workers=1)


def test_fail_policy_lists_every_bad_file(corpus: Path) -> None:
    with pytest.raises(ValidationFailed) as err:
        validate_dataset(corpus, policy="fail", workers=1)
    message = str(err.value)
    assert "13 of 22 file(s) rejected (policy=fail)" in message
    for path, (_, reason) in BAD.items():
        assert f"{path}: {reason}: " in message
    assert "a/good1_copy.png: duplicate" in message
    report = err.value.report
    assert report["policy"] == "fail" and report["n_rejected"] == 13
    assert len(report["rejected"]) == 13


def test_fail_policy_passes_a_clean_data_set(tmp_path: Path) -> None:
    data = write(tmp_path / "data", {"a/1.png": rgb_png(1), "b/2.png": rgb_png(2)})
    result = validate_dataset(data, policy="fail", workers=1)
    assert result.report["n_valid"] == 2 and result.report["rejected"] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "ignore"}, "policy must be one of"),
        ({"max_pixels": 0}, "max_pixels must be > 0"),
        ({"max_bytes": -1}, "max_bytes must be > 0"),
        ({"min_per_class": 0}, "min_per_class must be >= 1"),
        ({"workers": -2}, "workers must be >= 0"),
    ],
)
def test_bad_arguments(corpus: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_dataset(corpus, **kwargs)  # type: ignore[arg-type]


def test_check_file_reports_unreadable_path(tmp_path: Path) -> None:
    check = check_file(tmp_path / "gone.png", "a/gone.png")
    assert check.reason == "corrupt" and "cannot read file" in check.detail
    assert check.path == "a/gone.png" and check.info is None


def test_summary_names_counts_and_files(corpus: Path) -> None:
    text = summarize(validate_dataset(corpus, workers=1).report, max_listed=2)
    first = text.splitlines()[0]
    assert first.startswith("layout 1, 2 classes, 22 files: 9 valid, 13 rejected (")
    assert (
        "empty 1, not_an_image 1, corrupt 3, unsupported_mode 3, too_large 1, no_content 1, "
        "duplicate 3" in first
    )
    assert first.endswith("4 converted")
    assert "a/bomb.png: too_large" in text
    assert "... and 11 more (see the report)" in text
