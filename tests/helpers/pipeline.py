"""Throwaway git + DVC projects with this repository's pipeline (the ``project`` fixture of
tests/conftest.py makes the empty one), on the built-in sample."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from tests.helpers import BIN, run_cmd

IHCFLOW = str(BIN / "ihcflow")
DVC = str(BIN / "dvc")
STAGES = ["validate", "preprocess", "split", "train", "evaluate", "register"]
TINY_SAMPLE = ("--per-class", "10", "--patients", "5", "--size", "96")  # 50 images
SMALL_SAMPLE = ("--per-class", "60", "--patients", "12")  # 300 images, 50 of them test
# A few epochs do not make a good model: the gate is opened, these tests are about the wiring.
GATE_OPEN = {
    f"gate.{key}": 0.0
    for key in (
        "min_accuracy",
        "min_balanced_accuracy",
        "min_f1_macro",
        "min_auroc_macro",
        "min_class_recall",
    )
}
SMALL = {"preprocess.size": 32, "train.early_stopping.patience": None, "gate.verify_images": 4}


def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` / `dvc exp run` printed as running."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def set_param(root: Path, dotted: str, value: object) -> None:
    """Set ``dotted`` in ``root``'s params.yaml (what plain `dvc repro` reads)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def overrides(**params: object) -> list[str]:
    """``-S key=value`` arguments for `dvc exp run` (Hydra override syntax): the small settings,
    the gate opened, and ``params``."""
    args = []
    for key, value in {**SMALL, **GATE_OPEN, **params}.items():
        args += ["-S", f"{key}={'null' if value is None else value}"]
    return args


def sample_project(
    project: Callable[..., Path], synth: Sequence[str] = SMALL_SAMPLE, **params: object
) -> Path:
    """A temporary project on the built-in sample (``ihcflow data synth`` with ``synth``, then
    `dvc add`), committed; with ``params`` (and the small settings, the gate opened) written into
    params.yaml, for plain `dvc repro`."""
    root = project()
    run_cmd([IHCFLOW, "data", "synth", *synth], root)
    run_cmd([DVC, "add", "-q", "data"], root)
    if params:
        for key, value in {**SMALL, **GATE_OPEN, **params}.items():
            set_param(root, key, value)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "sample"], root)
    return root
