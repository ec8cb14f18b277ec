"""validate on real stained-cell JPEGs (the PBC sample kept beside the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ihcflow.validation import validate_dataset

PBC = (Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "pbc-sample").resolve()
CLASSES = {
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
}


@pytest.mark.skipif(not PBC.is_dir(), reason=f"{PBC} not present")
def test_pbc_sample_is_all_valid() -> None:
    result = validate_dataset(PBC, workers=0)
    report = result.report
    assert report["layout"] == 1
    assert report["classes"] == dict.fromkeys(sorted(CLASSES), 100)
    assert (report["n_files"], report["n_valid"], report["n_rejected"]) == (800, 800, 0)
    assert report["converted"] == []
    manifest = result.manifest
    assert set(manifest["format"]) == {"JPEG"} and set(manifest["mode"]) == {"RGB"}
    assert manifest["sha256"].is_unique
    assert manifest["width"].between(360, 366).all() and manifest["height"].between(360, 369).all()
