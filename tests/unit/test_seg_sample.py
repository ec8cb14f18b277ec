"""The built-in segmentation sample: masks match the drawn nuclei, 40x sizes, determinism, and
the classification sample's pixels are untouched by recording the nuclei."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from ihcflow.data import synth
from ihcflow.segmentation.layout import validate
from ihcflow.segmentation.sample import MICRONS_PER_PIXEL, generate, nuclei_annotation
from tests.conftest import REPO


@pytest.mark.parametrize("name", synth.DEFAULT_CLASSES)
def test_recording_nuclei_leaves_the_pixels_as_they_were(name: str) -> None:
    for index, size in ((0, 64), (7, 256)):
        rgb, nuclei = synth.render_with_nuclei(name, index, patients=5, size=size)
        np.testing.assert_array_equal(rgb, synth.render_image(name, index, patients=5, size=size))
        assert nuclei
        assert any(n.positive for n in nuclei) == (name in ("Er", "Pr", "Ki-67"))


def test_sample_layout_sizes_and_determinism(tmp_path: Path) -> None:
    paths = generate(tmp_path / "a", images=4, patients=2, size=448)
    generate(tmp_path / "b", images=4, patients=2, size=448)
    assert [p.name for p in paths] == [
        "P000_0000.png",
        "P000_0002.png",
        "P001_0001.png",
        "P001_0003.png",
    ]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 4 + 4 + 1  # images, masks, classes.csv
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    records, problems = validate(tmp_path / "a")
    assert problems == [] and len(records) == 4
    assert (records["mask_kind"] == "instance").all()
    assert (records["classified"] == records["nuclei"]).all()
    assert 0 < records["positive"].sum() < records["nuclei"].sum()
    # nuclei 15-30 px across at 40x (0.25 um/px): equivalent diameters of the unoccluded ones
    _, nuclei = synth.render_with_nuclei("Ki-67", 0, patients=2, size=448)
    diameters = np.array([2 * np.sqrt(n.axes[0] * n.axes[1]) for n in nuclei])
    assert np.percentile(diameters, 5) >= 15 and np.percentile(diameters, 95) <= 30
    assert 4 <= np.median(diameters) * MICRONS_PER_PIXEL <= 7.5


def test_touching_and_overlapping_nuclei_are_in_the_masks() -> None:
    _, nuclei = synth.render_with_nuclei("Ki-67", 0, patients=2, size=448)
    ann = nuclei_annotation(nuclei, 448)
    inst = ann.instances.astype(np.int64)
    right = (inst[:, 1:] != inst[:, :-1]) & (inst[:, 1:] > 0) & (inst[:, :-1] > 0)
    down = (inst[1:] != inst[:-1]) & (inst[1:] > 0) & (inst[:-1] > 0)
    pairs = {tuple(sorted(p)) for p in zip(inst[:, 1:][right], inst[:, :-1][right], strict=True)}
    pairs |= {tuple(sorted(p)) for p in zip(inst[1:][down], inst[:-1][down], strict=True)}
    assert len(pairs) >= 10, "nuclei that touch another one"
    drawn = np.pi * sum(n.axes[0] * n.axes[1] for n in nuclei)
    assert drawn > 1.05 * np.count_nonzero(inst), "nuclei overlapping others (drawn over)"
    drawn_positive = sum(n.positive for n in nuclei)
    assert 0 < ann.positive <= drawn_positive and ann.count <= len(nuclei)


@pytest.mark.slow
def test_the_classification_sample_still_hashes_to_data_dvc(tmp_path: Path) -> None:
    """data.dvc records the sample's DVC hash: generating it again gives those bytes."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    recorded = yaml.safe_load((REPO / "data.dvc").read_text())
    args = recorded["meta"]["args"]
    synth.generate(tmp_path / "data", **{**args, "classes": tuple(args["classes"])})
    repo = Repo.init(tmp_path, no_scm=True)
    _, _, obj = build(repo.cache.local, str(tmp_path / "data"), repo.fs, "md5", dry_run=True)
    assert obj.hash_info.value == recorded["outs"][0]["md5"]
