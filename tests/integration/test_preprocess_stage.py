"""The preprocess stage as DVC runs it: params.yaml, the manifest and raw images in; processed
images, the feature table and the report out; a second run is all cached."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from ihcflow.images.codec import decode_rgb8
from ihcflow.images.features import (
    ACQUISITION_COLUMNS,
    FEATURE_COLUMNS,
    acquisition,
    image_features,
)
from ihcflow.images.prepare import ImageParams
from ihcflow.preprocess import OUTPUT_COLUMNS, PreprocessError, PreprocessParams
from ihcflow.tables import FEATURES, read_table
from tests.helpers import load_stage
from tests.helpers.data import manifest_of, preprocess_conf, write_tissue_folder

STAGE = load_stage("preprocess")
SIZE = 24


def test_stage_writes_the_documented_outputs(tmp_path: Path, capsys) -> None:
    data = write_tissue_folder(tmp_path / "data")
    cfg = preprocess_conf(SIZE)
    cfg.cache_dir = str(tmp_path / "cache")
    params = tmp_path / "params.yaml"
    OmegaConf.save(OmegaConf.create({"preprocess": cfg, "seed": 0}), params)
    manifest = tmp_path / "processed" / "manifest.csv"
    manifest.parent.mkdir()
    manifest_of(data).to_csv(manifest, index=False)
    features_csv = tmp_path / "reports" / "data" / "features.csv"
    report_json = tmp_path / "reports" / "data" / "preprocess.json"
    args = [
        f"--params={params}",
        f"--data={data}",
        f"--manifest={manifest}",
        f"--out={tmp_path / 'processed' / 'images'}",
        f"--features={features_csv}",
        f"--report={report_json}",
    ]
    STAGE.main(args)
    features = pd.read_csv(features_csv, keep_default_na=False)
    assert list(features.columns) == OUTPUT_COLUMNS and len(features) == 10
    # the drift reference: content features of the raw file at the input size, at full
    # precision (the float read back is the float computed), and the file's acquisition
    table = read_table(features_csv, FEATURES).set_index("path")
    image_params = ImageParams.from_section(cfg)
    for rel in table.index[:3]:
        raw = (data / rel).read_bytes()
        rgb, info = decode_rgb8(raw, rel)
        expected = image_features(rgb, SIZE, image_params.interpolation)
        assert [float(table.at[rel, c]) for c in FEATURE_COLUMNS] == list(expected.values())
        assert [table.at[rel, c] for c in ACQUISITION_COLUMNS] == [
            str(v) for v in acquisition(info, len(raw)).values()
        ]
    report = json.loads(report_json.read_text())
    assert report["n"] == 10 and report["params"]["size"] == SIZE
    assert "10 images, 0 cached, 10 processed" in capsys.readouterr().out
    STAGE.main(args)
    assert "10 images, 10 cached, 0 processed" in capsys.readouterr().out


def test_stage_without_manifest_says_what_to_run(tmp_path: Path) -> None:
    cfg = preprocess_conf(SIZE)
    with pytest.raises(PreprocessError, match=r"manifest not found \(run the validate stage"):
        STAGE.run(
            PreprocessParams.from_section(cfg),
            data=tmp_path / "data",
            manifest=tmp_path / "manifest.csv",
            images=tmp_path / "out",
            features=tmp_path / "features.csv",
            report=tmp_path / "report.json",
        )
