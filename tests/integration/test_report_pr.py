"""`ihcflow report pr` on a real git + DVC repository with a base and a changed commit."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ihcflow.images.codec import encode_png
from ihcflow.reporting.pr import MARKER
from tests.helpers import run_cmd

pytestmark = pytest.mark.slow  # a git + DVC repository with two `dvc repro` runs (~20 s)

# A stand-in for the evaluate stage with the same file contracts (docs/pipeline.md): it writes
# the manifest (a DVC output), metrics.json (git-tracked metrics) and the two plots with the
# library's plotting code; quality is driven by params so a param change moves the metrics.
STAGE = """
import hashlib, json
from pathlib import Path
import numpy as np, pandas as pd, yaml
from ihcflow import plots

params = yaml.safe_load(Path("params.yaml").read_text())["train"]
files = sorted(p for p in Path("data").rglob("*.png"))
rows = [
    {"path": p.relative_to("data").as_posix(), "class": p.parent.name, "given_split": "",
     "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    for p in files
]
Path("processed").mkdir(exist_ok=True)
pd.DataFrame(rows).to_csv("processed/manifest.csv", index=False)
classes = sorted({r["class"] for r in rows})
q = params["quality"]
recall = {c: round(q - 0.1 * i, 4) for i, c in enumerate(classes)}
metrics = {
    "accuracy": q, "balanced_accuracy": round(float(np.mean(list(recall.values()))), 4),
    "n_test": len(rows),
    "per_class": {c: {"recall": r, "support": 2} for c, r in recall.items()},
}
Path("reports/plots").mkdir(parents=True, exist_ok=True)
Path("reports/metrics.json").write_text(json.dumps(metrics, indent=2))
counts = np.array([[8, 2], [1, 9]]) if q > 0.8 else np.array([[5, 5], [4, 6]])
plots.plot_confusion(counts, classes, "reports/plots/confusion.png")
roc = pd.DataFrame({"class": [classes[0]] * 3, "fpr": [0, 0.5, 1], "tpr": [0, q, 1]})
plots.plot_roc(roc, {classes[0]: q}, "reports/plots/roc.png")
"""

DVC_YAML = {
    "stages": {
        "evaluate": {
            "cmd": "python evaluate.py",
            "deps": ["evaluate.py", "data"],
            "params": ["train"],
            "outs": [
                "processed/manifest.csv",
                "reports/plots/confusion.png",
                "reports/plots/roc.png",
            ],
            "metrics": [{"reports/metrics.json": {"cache": False}}],
        }
    }
}


def _params(quality: float, lr: float) -> str:
    gate = {"min_accuracy": 0.8, "min_class_recall": 0.6, "verify_images": 4}
    return yaml.safe_dump({"train": {"quality": quality, "lr": lr, "epochs": 3}, "gate": gate})


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path.write_bytes(encode_png(rgb))


def report(root: Path, *args: str, check: bool = True) -> str:
    proc = run_cmd([sys.executable, "-m", "ihcflow.cli", "report", "pr", *args], root, check)
    return proc.stdout if check else proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: quality 0.9 (gate passes), 2+2 images; feature: quality 0.75, lr changed, +1 -1."""
    root = tmp_path_factory.mktemp("report") / "repo"
    root.mkdir()
    run_cmd(["git", "init", "-q", "-b", "main"], root)
    run_cmd(["dvc", "init", "-q"], root)
    (root / "evaluate.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "params.yaml").write_text(_params(0.9, 0.001))
    for i, name in enumerate(("Er/P1_0.png", "Er/P1_1.png", "Ki-67/P2_0.png", "Ki-67/P2_1.png")):
        _image(root / "data" / name, i)
    run_cmd(["dvc", "add", "-q", "data"], root)
    run_cmd(["dvc", "repro", "-q"], root)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "base"], root)

    run_cmd(["git", "checkout", "-q", "-b", "feature"], root)
    (root / "params.yaml").write_text(_params(0.75, 0.0003))
    _image(root / "data" / "Er" / "P3_0.png", 10)
    (root / "data" / "Ki-67" / "P2_1.png").unlink()
    run_cmd(["dvc", "add", "-q", "data"], root)
    run_cmd(["dvc", "repro", "-q"], root)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "lower quality, other data"], root)
    return root


def test_report_shows_metric_deltas_params_gate_and_data_changes(repo: Path) -> None:
    text = report(repo, "--base", "main")
    assert text.startswith(MARKER)
    assert "| **accuracy** | 0.9000 | 0.7500 | -0.1500 ▼ |" in text
    assert "| **balanced_accuracy** | 0.8500 | 0.7000 | -0.1500 ▼ |" in text
    assert "| n_test | 4 | 4 | = |" in text
    assert "| Ki-67 | 0.6500 (-0.1500 ▼) | 2 |" in text
    assert "| `train.lr` | 0.001 | 0.0003 |" in text
    assert "| `train.quality` | 0.9 | 0.75 |" in text
    assert "train.epochs" not in text  # unchanged params are left out
    # the gate from metrics.json + params gate: accuracy 0.75 < 0.8 fails, the base passed
    assert "**Registration gate: ❌ failed (2/3 checks hold)**" in text
    assert "at `main`: ✅ passed (3/3 checks hold)" in text
    assert "| accuracy | 0.7500 | >= 0.8 | **FAIL** |" in text
    # data: the base manifest comes out of the DVC cache
    assert "| Er | 2 | 3 | 1 | 0 | 0 |" in text
    assert "| Ki-67 | 2 | 1 | 0 | 1 | 0 |" in text
    assert "| **total** | 4 | 4 | 1 | 1 | 0 |" in text
    assert "Pipeline: up to date" in text
    assert "![confusion matrix](reports/plots/confusion.png)" in text
    assert "![ROC](reports/plots/roc.png)" in text
    assert "### Problems" not in text


def test_report_file_with_assets_for_ci(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "pr-report"
    url = "https://github.com/o/r/raw/ihcflow-report-assets/pr-7/abc"
    report(
        repo,
        "--base",
        "main",
        "--out",
        str(out / "report.md"),
        "--assets-dir",
        str(out),
        "--note",
        "Fork PR: the pipeline ran on the built-in sample.",
    )
    text = (out / "report.md").read_text()
    assert "![ROC](roc.png)" in text  # next to the Markdown: the artifact renders on its own
    for name in ("confusion.png", "roc.png"):
        copied = (out / name).read_bytes()
        assert copied.startswith(b"\x89PNG\r\n\x1a\n")
        assert copied == (repo / "reports" / "plots" / name).read_bytes()
    assert "> Fork PR: the pipeline ran on the built-in sample." in text
    hosted = report(repo, "--base", "main", "--image-base-url", url)
    assert f"![confusion matrix]({url}/confusion.png)" in hosted


def test_uncommitted_param_change_is_compared_and_flagged_as_not_reproduced(
    repo: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    shutil.copytree(repo, work, symlinks=True)
    (work / "params.yaml").write_text(_params(0.75, 0.01))
    (work / "reports" / "drift").mkdir(parents=True)
    (work / "reports" / "drift" / "summary.md").write_text("**Drift: no** (0 of 21 features)\n")
    text = report(work, "--base", "HEAD")
    assert "| `train.lr` | 0.0003 | 0.01 |" in text
    assert "not reproduced: `evaluate`" in text
    assert "| **accuracy** | 0.7500 | 0.7500 | = |" in text
    assert "### Latest drift check" in text
    assert "**Drift: no** (0 of 21 features)" in text


def test_base_manifest_missing_from_cache_falls_back_to_data_dvc(
    repo: Path, tmp_path: Path
) -> None:
    work = tmp_path / "nocache"
    shutil.copytree(repo, work, symlinks=True)
    shutil.rmtree(work / ".dvc" / "cache")
    text = report(work, "--base", "main")
    assert "| nfiles | 4 | 4 |" in text
    assert "`data.dvc` only (per-class counts need the manifests)" in text
    assert "processed/manifest.csv at the base is not available" in text
    assert "| **accuracy** | 0.9000 | 0.7500 | -0.1500 ▼ |" in text  # metrics are in git


def test_unknown_base_is_a_clear_error(repo: Path) -> None:
    stderr = report(repo, "--base", "no-such-branch", check=False)
    assert "base revision 'no-such-branch' is not a commit" in stderr
    assert "fetch-depth: 0" in stderr


def test_metrics_json_in_the_workspace_is_what_the_gate_reads(repo: Path) -> None:
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["accuracy"] == 0.75  # the fixture is what the assertions above assume
