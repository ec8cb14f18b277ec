"""Throwaway git + DVC projects with this repository's pipeline (the ``project`` fixture of
tests/conftest.py makes the empty one), on the built-in sample."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from tests.helpers import BIN, run_cmd

IHCFLOW = str(BIN / "ihcflow")
DVC = str(BIN / "dvc")
CLASSIFIER_STAGES = ["validate", "preprocess", "split", "train", "evaluate", "register"]
SEG_STAGES = ["seg_prepare", "seg_split", "seg_train", "seg_evaluate", "seg_register"]
STAGES = CLASSIFIER_STAGES + SEG_STAGES  # the order `dvc repro` runs them in
NUCLEI_SAMPLE = {"images": 8, "patients": 4, "size": 96}  # the nuclei sample, small
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
GATE_OPEN.update(
    {
        f"segmentation.gate.{key}": None
        for key in ("min_dice", "min_aji", "min_pq", "min_f1", "max_ki67_error_mean")
    }
)
SMALL = {
    "preprocess.size": 32,
    "train.early_stopping.patience": None,
    "gate.verify_images": 4,
    # a U-Net that trains in seconds (tests/helpers/models.SEG_TINY)
    "segmentation.model.net.channels": [8, 16, 32],
    "segmentation.model.net.strides": [2, 2],
    "segmentation.train.epochs": 2,
    "segmentation.train.patches_per_epoch": 8,
    "segmentation.train.batch_size": 4,
    "segmentation.train.patch": 64,
    "segmentation.train.val_patches": 2,
    "segmentation.tiling.roi": 64,
    "segmentation.split.val": 0.25,
    "segmentation.split.test": 0.25,
    "segmentation.gate.verify_images": 2,
}


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
        text = "null" if value is None else str(value).replace(" ", "")
        args += ["-S", f"{key}={text}"]
    return args


def sample_project(
    project: Callable[..., Path], synth: Sequence[str] = SMALL_SAMPLE, **params: object
) -> Path:
    """A temporary project on the built-in samples (``ihcflow data synth`` with ``synth``, and
    a small nuclei sample, then `dvc add`), committed; with ``params`` (and the small settings,
    the gates opened) written into params.yaml, for plain `dvc repro`."""
    from ihcflow.segmentation.sample import generate

    root = project()
    run_cmd([IHCFLOW, "data", "synth", *synth], root)
    run_cmd([DVC, "add", "-q", "data"], root)
    generate(root / "nuclei", **NUCLEI_SAMPLE)
    run_cmd([DVC, "add", "-q", "nuclei"], root)
    if params:
        for key, value in {**SMALL, **GATE_OPEN, **params}.items():
            set_param(root, key, value)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "sample"], root)
    return root


def experiments(root: Path) -> dict[str, dict]:
    """``dvc exp show --json`` as {experiment name: {"params": ..., "metrics": ...}}."""
    shown = json.loads(run_cmd([DVC, "exp", "show", "--json"], root).stdout)
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                found[rev["name"] or rev["rev"]] = {
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "metrics": data.get("metrics", {}).get("reports/metrics.json", {}).get("data"),
                }
    return found
