"""Every script in benchmarks/ runs end to end at a tiny size (the figures are not checked:
they are measured on a quiet machine, never asserted in tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cmd
from tests.helpers.pipeline import GATE_OPEN

BENCH = REPO / "benchmarks"


def bench(name: str, *args: str, cwd: Path) -> str:
    return run_cmd([sys.executable, str(BENCH / f"{name}.py"), *args], cwd).stdout


@pytest.mark.slow
def test_preprocess_benchmark(tmp_path: Path) -> None:
    out = bench("preprocess", "--n", "40", "--no-4n", cwd=tmp_path)
    assert "ratio preprocess / decode" in out and "incremental, +" in out
    assert "output vs full-size decode" in out and "features vs full-size decode" in out


@pytest.mark.slow
def test_train_benchmark(tmp_path: Path) -> None:
    args = ["--n-train", "256", "--size", "16", "--classes", "4", "--epochs", "1"]
    args += ["--rounds", "1", "--variant-steps", "1"]
    out = bench("train", *args, "--data", str(tmp_path / "data"), "--json", "r.json", cwd=tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lightning_over_plain"] > 0 and 0 <= report["plain"]["data_wait_share"] < 1
    options = report["cpu_options"]
    assert {"as configured", "no channels-last", "torch.compile"} <= set(options)
    assert ("bf16 autocast" in options) is ("skipped" not in report["cpu_options_note"])
    assert "plain loop, torch.compile" in out and "Lightning takes" in out


@pytest.mark.slow
def test_segmentation_benchmark(tmp_path: Path) -> None:
    args = ["--tiles", "3", "--patches", "16", "--image", "256", "--big", "1200", "--repeats", "1"]
    out = bench("segmentation", *args, "--out", str(tmp_path / "s.json"), cwd=tmp_path)
    assert out.startswith("training: ") and "\nmemory: " in out
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["inference"]["onnx_s_per_mp"] > 0 and report["memory"]["peak_1200px_mib"] > 0


@pytest.mark.slow
def test_drift_benchmark(tmp_path: Path) -> None:
    out = bench("drift", "--rows", "300", "600", "--days", "3", "--dim", "16", cwd=tmp_path)
    assert "scaling, 2x the rows" in out


@pytest.mark.slow
def test_serve_benchmark(tmp_path: Path) -> None:
    args = ["--size", "32", "--n", "10", "--load", "20", "--clients", "2", "--out", "s.json"]
    out = bench("serve", *args, cwd=tmp_path)
    assert "load onnxruntime" in out and "server errors 0" in out
    assert (tmp_path / "s.json").is_file()


@pytest.mark.slow
def test_experiment_benchmark(tmp_path: Path) -> None:
    opened = [arg for key, value in GATE_OPEN.items() for arg in ("-S", f"{key}={value}")]
    args = ["--scale", "0.003", "-S", "train.epochs=1", "-S", "gate.verify_images=4", *opened]
    bench("experiment", *args, "--json", "e.json", cwd=tmp_path)
    result = json.loads((tmp_path / "e.json").read_text())
    assert list(result["stages"]) == [
        "validate", "preprocess", "split", "train", "evaluate", "register"
    ]  # fmt: skip
    assert result["images"] == {"train": 36, "val": 8, "test": 10}
    assert result["seconds"]["total"] > 0 and result["registered"].startswith("ihc-classifier")


@pytest.mark.slow
def test_robustness_benchmark(tmp_path: Path) -> None:
    tiny = ["data.synth.per_class=6", "data.synth.patients=6", "data.synth.size=64",
            "preprocess.size=16", "train.epochs=1", "gate.verify_images=2"]  # fmt: skip
    args = [arg for item in tiny for arg in ("-S", item)]
    cmd = [sys.executable, str(BENCH / "robustness.py"), "--seeds", "3", "--kernels", "avx2"]
    proc = run_cmd([*cmd, *args, "--json", "r.json"], tmp_path, check=False)
    assert proc.returncode in (0, 1), proc.stderr  # 1: goals not met (one epoch at 16 px)
    result = json.loads((tmp_path / "r.json").read_text())
    assert [(r["kernels"], r["seed"]) for r in result["runs"]] == [("avx2", 3)]
    summary = result["summary"]
    assert summary["runs"] == 1 and set(summary["tolerance"]) >= {"accuracy", "f1_macro"}
    assert "gates passed:" in proc.stdout


def test_drift_real_benchmark_on_generated_images(tmp_path: Path) -> None:
    out = bench(
        "drift_real", "--synthetic", "120", "--draws", "3", "--json", "r.json", cwd=tmp_path
    )
    report = json.loads((tmp_path / "r.json").read_text())
    cells = {(c["window"], c["rows"]) for c in report["cells"]}
    assert ("same", 50) in cells and ("mis-framed", 50) in cells  # 60 per pool: 50 rows only
    assert "| synthetic | same distribution | 50 |" in out
    skipped = bench("drift_real", "--datasets", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert skipped.startswith("skipped: needs ") and not (tmp_path / "nowhere").exists()


SHARED = REPO.parent / "shared" / "datasets"


@pytest.mark.skipif(
    not (SHARED / "pbc28-trainval.npz").is_file() or not (SHARED / "pbc-sample").is_dir(),
    reason="needs ../shared/datasets (pbc28-trainval.npz, pbc-sample)",
)
def test_misframed_benchmark_leaves_the_measured_images_out_of_the_training_data(
    tmp_path: Path,
) -> None:
    import numpy as np

    out = bench("misframed", "--make-npz", str(tmp_path / "unseen.npz"), cwd=tmp_path)
    assert "wrote" in out
    with np.load(tmp_path / "unseen.npz") as made, np.load(SHARED / "pbc28-trainval.npz") as src:
        sizes = {s: len(made[f"{s}_labels"]) for s in ("train", "val", "test")}
        assert list(made["class_names"]) == list(src["class_names"])
        total = len(src["train_labels"]) + len(src["val_labels"])
    sample = len(list((SHARED / "pbc-sample").glob("*/*.jpg")))
    assert sum(sizes.values()) == total - sample  # every sample image is left out ...
    assert abs(sizes["test"] / (sizes["train"] + sizes["test"]) - 0.2) < 0.01  # ... 20% test
    skipped = bench("misframed", "--sample", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert skipped.startswith("skipped: needs ")
