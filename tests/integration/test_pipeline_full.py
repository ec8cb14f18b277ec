"""The whole graph under the real DVC, on the built-in sample: validate -> ... -> register.

Small settings (32 px, a few epochs, gate thresholds at 0) keep it to about a minute; what is
checked is the wiring: every stage runs, the model is registered, a second `dvc repro` is a
no-op, and a `dvc repro` killed during training resumes from last.ckpt when rerun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import _env, run_cmd
from tests.integration.test_pipeline_data import DVC, IHCFLOW, ran_stages, set_param

STAGES = ["validate", "preprocess", "split", "train", "evaluate", "register"]
GATE = ("min_accuracy", "min_balanced_accuracy", "min_f1_macro", "min_auroc_macro")


def sample_project(project, epochs: int) -> Path:
    """A temporary clone of the pipeline on the built-in sample, sized to run in seconds."""
    root = project()
    run_cmd([IHCFLOW, "data", "synth"], root)  # the built-in sample, as `ihcflow data get`
    run_cmd([DVC, "add", "-q", "data"], root)
    set_param(root, "preprocess.size", 32)
    set_param(root, "train.epochs", epochs)
    set_param(root, "train.early_stopping.patience", None)
    for key in GATE:  # a few epochs do not make a good model: this tests the wiring
        set_param(root, f"gate.{key}", 0.0)
    set_param(root, "gate.min_class_recall", 0.0)
    set_param(root, "gate.verify_images", 4)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "sample"], root)
    return root


@pytest.mark.slow
def test_repro_runs_the_whole_graph_then_is_a_noop(project) -> None:
    root = sample_project(project, epochs=2)
    first = run_cmd([DVC, "repro"], root)
    assert ran_stages(first.stdout) == STAGES
    model = yaml.safe_load((root / "models/model.json").read_text())
    assert model["version"] == "1.0.0" and (root / "models/model.onnx").is_file()
    assert model["class_names"] == ["Er", "Her2neu", "Histology", "Ki-67", "Pr"]
    metrics = yaml.safe_load((root / "reports/metrics.json").read_text())
    assert metrics["n_test"] == 50 and 0 <= metrics["accuracy"] <= 1

    second = run_cmd([DVC, "repro"], root)
    assert ran_stages(second.stdout) == []
    assert run_cmd([DVC, "status"], root).stdout.strip().endswith("up to date.")


def _kill_when(root: Path, proc: subprocess.Popen[str], done: Path, timeout: float) -> None:
    """SIGKILL ``proc``'s whole process group (dvc and the stage) once ``done`` exists."""
    deadline = time.monotonic() + timeout
    while not done.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"training ended or hung before {done.name} appeared:\n{out}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


@pytest.mark.slow
def test_repro_killed_during_training_resumes_and_keeps_the_history(project) -> None:
    epochs = 10
    root = sample_project(project, epochs=epochs)
    proc = subprocess.Popen(
        [DVC, "repro"],
        cwd=root,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal job
    )
    # last.ckpt is first written at the end of epoch 0: the run dies with 9 epochs to go
    _kill_when(root, proc, root / "models/checkpoints/last.ckpt", timeout=600)

    rerun = run_cmd([DVC, "repro"], root)
    assert ran_stages(rerun.stdout) == ["train", "evaluate", "register"]
    assert "resumed at epoch" in rerun.stdout
    summary = yaml.safe_load((root / "reports/train/summary.json").read_text())
    assert summary["resumed_from_epoch"] >= 1 and summary["epochs_run"] == epochs
    # persist: the dvclive history from before the kill is still there, one row per epoch
    history = pd.read_csv(root / "reports/train/plots/metrics/val/acc.tsv", sep="\t")
    assert history["step"].is_monotonic_increasing
    assert len(history) == epochs
    assert run_cmd([DVC, "status"], root).stdout.strip().endswith("up to date.")
