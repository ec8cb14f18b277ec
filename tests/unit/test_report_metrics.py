"""`ihcflow report metrics`: the test metrics and the registered model as text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ihcflow.reporting.metrics import format_metrics
from tests.helpers import run_cmd

METRICS = {
    "accuracy": 0.9,
    "balanced_accuracy": 0.875,
    "f1_macro": 0.8995,
    "auroc_macro": 0.985,
    "cohen_kappa": None,
    "n_test": 50,
    "n_classes_in_test": 2,
    "per_class": {
        "Er": {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 10},
        "Ki-67": {"precision": 1.0, "recall": 0.75, "f1": 0.857, "support": 40},
        "Pr": {"precision": None, "recall": None, "f1": None, "support": 0},
    },
}


def test_headline_and_per_class_table() -> None:
    lines = format_metrics(METRICS).splitlines()
    assert lines[0] == "test images: 50"
    assert "  balanced_accuracy  0.8750" in lines
    assert "  cohen_kappa        n/a" in lines
    assert lines[6].split() == ["precision", "recall", "f1", "support"]
    assert lines[7].split() == ["Er", "0.667", "1.000", "0.800", "10"]
    assert lines[9].split() == ["Pr", "n/a", "n/a", "n/a", "0"]
    assert lines[-1].startswith("warning: some classes have no test image")


def _report(root: Path, *args: str, check: bool = True):
    return run_cmd([sys.executable, "-m", "ihcflow.cli", "report", "metrics", *args], root, check)


def test_cli_prints_metrics_and_the_registered_model(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/metrics.json").write_text(json.dumps(METRICS))
    out = _report(tmp_path).stdout
    assert "test images: 50" in out
    assert "registered model: none (models/model.json absent" in out
    (tmp_path / "models").mkdir()
    model = {"name": "ihc-classifier", "version": "1.0.2", "created": "2026-11-27T07:00:00+00:00",
             "metrics": {"balanced_accuracy": 0.875}}  # fmt: skip
    (tmp_path / "models/model.json").write_text(json.dumps(model))
    out = _report(tmp_path).stdout
    assert "registered model: ihc-classifier 1.0.2 (balanced_accuracy 0.8750" in out
    assert "segmentation" not in out  # the second task has not run
    (tmp_path / "reports/segmentation").mkdir()
    seg = {"n_images": 6, "true_nuclei": 654, "dice": 0.978, "aji": 0.64}
    (tmp_path / "reports/segmentation/metrics.json").write_text(json.dumps(seg))
    out = _report(tmp_path).stdout
    assert "segmentation test tiles: 6 (654 nuclei)" in out and "aji                0.6400" in out
    assert "registered model: none (models/segmentation/model.json absent" in out


def test_cli_names_a_missing_or_broken_file(tmp_path: Path) -> None:
    proc = _report(tmp_path, check=False)
    assert proc.returncode == 2
    assert "reports/metrics.json: metrics (run `dvc repro`) not found" in proc.stderr
    (tmp_path / "m.json").write_text("{broken")
    proc = _report(tmp_path, "--metrics", "m.json", check=False)
    assert proc.returncode == 2 and "m.json: not valid JSON" in proc.stderr


def _committed_repo(root: Path, metrics: dict) -> None:
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports/metrics.json").write_text(json.dumps(metrics))
    run_cmd(["git", "init", "-q", "-b", "main"], root)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "metrics"], root)


def _tolerance(root: Path, **spread: float) -> Path:
    path = root / "robustness.json"
    path.write_text(json.dumps({"summary": {"tolerance": spread}}))
    return path


def test_against_rev_shows_the_distance_and_the_tolerance(tmp_path: Path) -> None:
    _committed_repo(tmp_path, METRICS)
    rerun = {**METRICS, "accuracy": 0.88, "balanced_accuracy": 0.80, "f1_macro": 0.8995}
    (tmp_path / "reports/metrics.json").write_text(json.dumps(rerun))
    tol = _tolerance(tmp_path, accuracy=0.04, balanced_accuracy=0.04, f1_macro=0.05)
    out = _report(tmp_path, "--against", "HEAD", "--tolerance", str(tol)).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:2] == "  "}
    assert rows["accuracy"] == ["0.8800", "0.9000", "-0.0200", "0.0400", "inside"]
    assert rows["balanced_accuracy"] == ["0.8000", "0.8750", "-0.0750", "0.0400", "OUTSIDE"]
    assert rows["f1_macro"][-1] == "identical"
    assert rows["auroc_macro"] == ["0.9850", "0.9850", "+0.0000", "n/a", "identical"]
    assert rows["cohen_kappa"] == ["n/a", "n/a", "n/a", "n/a", "n/a"]
    assert "some metrics moved more than training on another CPU does" in out


def test_against_rev_identical_after_a_pull(tmp_path: Path) -> None:
    _committed_repo(tmp_path, METRICS)
    out = _report(tmp_path, "--against", "HEAD").stdout
    assert "tolerance: the spread of robustness" not in out  # no file: none measured
    assert "identical to HEAD" in out


def test_against_an_unknown_rev_or_path_is_named(tmp_path: Path) -> None:
    _committed_repo(tmp_path, METRICS)
    proc = _report(tmp_path, "--against", "no-such-branch", check=False)
    assert proc.returncode == 2 and "'no-such-branch' is not a commit" in proc.stderr
    (tmp_path / "other.json").write_text(json.dumps(METRICS))
    proc = _report(tmp_path, "--metrics", "other.json", "--against", "HEAD", check=False)
    assert proc.returncode == 2 and "other.json at HEAD: cannot read it" in proc.stderr
