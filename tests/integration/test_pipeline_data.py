"""The data half of the graph under the real DVC: validate -> preprocess -> split."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import yaml

from tests.helpers import REPO, run_cmd
from tests.helpers.pipeline import DVC, IHCFLOW, TINY_SAMPLE, ran_stages, set_param


@pytest.mark.slow
def test_repro_split_then_noop_then_preprocess_param_reruns_only_downstream(project) -> None:
    root = project()
    set_param(root, "preprocess.size", 64)
    run_cmd([IHCFLOW, "data", "synth", *TINY_SAMPLE], root)
    run_cmd([DVC, "add", "-q", "data"], root)

    first = run_cmd([DVC, "repro", "split"], root)
    assert ran_stages(first.stdout) == ["validate", "preprocess", "split"]

    split = pd.read_csv(root / "processed/split.csv")
    assert len(split) == 50
    assert set(split["split"]) == {"train", "val", "test"}
    assert all((root / p).is_file() for p in split["image"])
    # group-aware: a patient never straddles two splits
    assert split.groupby("group")["split"].nunique().max() == 1
    features = pd.read_csv(root / "reports/data/features.csv")
    assert len(features) == 50 and {"brightness", "dab_mean", "sharpness"} <= set(features.columns)

    second = run_cmd([DVC, "repro", "split"], root)
    assert ran_stages(second.stdout) == []
    assert run_cmd([DVC, "status", "split"], root).stdout.strip().endswith("up to date.")

    set_param(root, "preprocess.size", 48)
    third = run_cmd([DVC, "repro", "split"], root)
    assert ran_stages(third.stdout) == ["preprocess", "split"]


@pytest.mark.slow
def test_validate_reports_bad_files_and_pipeline_continues(project) -> None:
    root = project()
    run_cmd([IHCFLOW, "data", "synth", *TINY_SAMPLE], root)
    (root / "data/Er/broken.png").write_bytes(b"not a png at all")
    (root / "data/Pr/empty.jpg").write_bytes(b"")
    run_cmd([DVC, "repro", "split"], root)
    report = yaml.safe_load((root / "reports/data/validation.json").read_text())
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert reasons == {"Er/broken.png": "not_an_image", "Pr/empty.jpg": "empty"}
    manifest = pd.read_csv(root / "processed/manifest.csv")
    assert len(manifest) == 50
    assert (root / "data/Er/broken.png").exists()  # reported, never deleted


def test_params_yaml_is_composed_from_conf() -> None:
    proc = run_cmd([sys.executable, "-m", "ihcflow.cli", "params", "--check"], REPO)
    assert "matches" in proc.stdout
