"""The built-in synthetic IHC sample: layout, determinism and stain patterns per class."""

from __future__ import annotations

import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.color import hed_from_rgb

from ihcflow.data.layout import discover
from ihcflow.data.synth import DEFAULT_CLASSES, generate
from ihcflow.images.codec import read_rgb8

NAME = re.compile(r"^P(\d{3})_(\d{4})\.png$")


def _stains(rgb: np.ndarray) -> np.ndarray:
    """Optical density per stain (H, E, DAB) by colour deconvolution with the same vectors."""
    od = -np.log(np.maximum(rgb.astype(np.float64), 1.0) / 255.0)
    return od @ hed_from_rgb


def _bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_names_and_patients(tmp_path: Path) -> None:
    out = tmp_path / "data"
    paths = generate(out, per_class=5, patients=3, size=64)
    assert len(paths) == 5 * len(DEFAULT_CLASSES)
    assert paths == sorted(paths) and all(p.is_file() for p in paths)
    layout = discover(out)
    assert layout.kind == 1
    assert layout.classes == tuple(sorted(DEFAULT_CLASSES))
    assert {Path(e.path) for e in layout.entries} == {p.relative_to(out) for p in paths}
    for cls in DEFAULT_CLASSES:
        names = sorted(p.name for p in (out / cls).iterdir())
        indices = []
        for name in names:
            m = NAME.match(name)
            assert m, name
            patient, index = int(m[1]), int(m[2])
            assert patient == index % 3
            indices.append(index)
        assert sorted(indices) == list(range(5))
    # The split stage's default group pattern finds the same patients in every class.
    pattern = re.compile(r"^(P\d+)_")
    for cls in DEFAULT_CLASSES:
        assert {pattern.match(p.name)[1] for p in (out / cls).iterdir()} == {"P000", "P001", "P002"}
    rgb, info = read_rgb8(paths[0])
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert (info.format, info.mode, info.bit_depth, info.notes) == ("PNG", "RGB", 8, [])
    assert not list(tmp_path.glob(".data*")), "temporary folder left behind"


def test_same_args_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"classes": ("Er", "Histology"), "per_class": 4, "patients": 2, "size": 96}
    first = _bytes(generate(tmp_path / "a", **kwargs)[0].parents[1])
    again = _bytes(generate(tmp_path / "b", **kwargs)[0].parents[1])
    other = _bytes(generate(tmp_path / "c", seed=1, **kwargs)[0].parents[1])
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first)


def test_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(out, per_class=1, size=32)
    assert (out / "mine.txt").read_text() == "keep me"
    generate(out, per_class=1, size=32, overwrite=True)
    assert not (out / "mine.txt").exists()
    assert len(list(out.rglob("*.png"))) == len(DEFAULT_CLASSES)


def test_empty_existing_folder_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    assert len(generate(out, classes=["Er", "Pr"], per_class=2, size=32)) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ["Er", "CD20"]}, "unknown synthetic class 'CD20'"),
        ({"classes": ["Er", "Er"]}, "repeat"),
        ({"classes": "Er"}, "non-empty list"),
        ({"per_class": 0}, "per_class"),
        ({"patients": 0}, "patients"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "data", **kwargs)
    assert not (tmp_path / "data").exists()


def test_class_names_are_matched_loosely(tmp_path: Path) -> None:
    paths = generate(tmp_path / "data", classes=["ER", "ki67", "HER2"], per_class=1, size=32)
    assert sorted(p.parent.name for p in paths) == ["ER", "HER2", "ki67"]


def test_stain_patterns_differ_by_class(tmp_path: Path) -> None:
    """Histology is H&E (eosin, no DAB); Her2neu DAB is on thin membranes, the others on
    solid nuclei; Er has more and stronger DAB-positive nuclei than Ki-67 and Pr."""
    out = tmp_path / "data"
    generate(out, per_class=10, patients=5, size=256)
    kernel = np.ones((5, 5), np.uint8)
    stats: dict[str, dict[str, float]] = {}
    for cls in DEFAULT_CLASSES:
        rows = []
        for path in sorted((out / cls).iterdir()):
            hed = _stains(read_rgb8(path)[0])
            dab = hed[..., 2] - np.median(hed[..., 2])  # above the image's own background
            mask = (dab > 0.25).astype(np.uint8)
            solid = cv2.erode(mask, kernel).sum() / max(int(mask.sum()), 1)
            strength = float(dab[mask > 0].mean()) if mask.any() else 0.0
            rows.append((np.median(hed[..., 1]), mask.mean(), solid, strength))
        med = np.median(np.array(rows), axis=0)
        stats[cls] = dict(zip(("eosin", "dab_area", "solid", "dab_strength"), med, strict=True))
    ihc = [c for c in DEFAULT_CLASSES if c != "Histology"]
    hist = stats["Histology"]
    assert hist["eosin"] > max(stats[c]["eosin"] for c in ihc) + 0.15
    assert hist["dab_area"] < 0.01 < min(stats[c]["dab_area"] for c in ihc) / 3
    assert stats["Her2neu"]["solid"] < 0.15
    assert min(stats[c]["solid"] for c in ("Er", "Pr", "Ki-67")) > 2 * stats["Her2neu"]["solid"]
    assert stats["Er"]["dab_area"] > stats["Ki-67"]["dab_area"]
    assert stats["Er"]["dab_area"] > stats["Pr"]["dab_area"]
    assert stats["Er"]["dab_strength"] > stats["Pr"]["dab_strength"]


def test_some_images_need_exposure_correction(tmp_path: Path) -> None:
    """The sample exercises auto-correction: a share of images is too dark or washed out."""
    paths = generate(tmp_path / "data", per_class=20, size=64)
    light = []
    for path in paths:
        lum = cv2.cvtColor(read_rgb8(path)[0], cv2.COLOR_RGB2LAB)[..., 0] / 255.0
        light.append((lum.mean(), lum.std()))
    mean, std = np.array(light).T
    dark = mean < 0.45
    washed = ((mean > 0.92) | (std < 0.10)) & ~dark
    assert 0.05 < dark.mean() < 0.25
    assert 0.03 < washed.mean() < 0.35
    assert (~dark & ~washed).mean() > 0.5


@pytest.mark.slow
def test_default_sample(tmp_path: Path) -> None:
    start = time.perf_counter()
    paths = generate(tmp_path / "data")
    elapsed = time.perf_counter() - start
    print(f"generate() with default args: {len(paths)} images in {elapsed:.1f} s")
    assert len(paths) == 500
    assert discover(tmp_path / "data").classes == tuple(sorted(DEFAULT_CLASSES))
