"""evaluate -> register with a real (tiny) torch model: outputs, ONNX export, the gate, the swap."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from ihcflow import model_format
from ihcflow.dataset import load_images
from ihcflow.files import sha256_file
from ihcflow.images.codec import read_rgb8
from ihcflow.images.ops import centre_zoom, resize
from ihcflow.model_format import OnnxModel, model_input
from ihcflow.ood import OodScorer
from ihcflow.registry.gate import GateFailed
from ihcflow.registry.install import install_set, recover_interrupted_swap
from tests.helpers import REPO, compose, run_cmd
from tests.helpers.data import CLASSES, SIZE, write_colour_dataset
from tests.helpers.models import PASSING, TinyPredictor, evaluate_tiny, register_tiny, train_tiny


class SharperExportPredictor(TinyPredictor):
    """Exports a model that differs from the one it predicts with (a broken export)."""

    def export_onnx(self, path: str | Path) -> None:
        with torch.no_grad():
            self.net.fc.weight.mul_(1.5)
        try:
            super().export_onnx(path)
        finally:
            with torch.no_grad():
                self.net.fc.weight.div_(1.5)


@pytest.fixture
def evaluated(tmp_path: Path) -> dict[str, Any]:
    """A project folder with data, a trained tiny model, its checkpoint and evaluate's outputs."""
    write_colour_dataset(tmp_path, per_class=18, noise=25.0)
    return evaluate_tiny(tmp_path, TinyPredictor(train_tiny(tmp_path)))


def snapshot(models: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(models.glob("*"))
        if p.is_file()
    }


def test_evaluate_writes_metrics_plots_and_predictions(evaluated: dict[str, Any]) -> None:
    root = evaluated["root"]
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["n_test"] == 18 and list(metrics["per_class"]) == CLASSES
    predictions = pd.read_csv(root / "reports/predictions.csv")
    confusion = pd.read_csv(root / "reports/plots/confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"]
    assert confusion["actual"].tolist() == predictions["class"].tolist()
    assert metrics["accuracy"] == pytest.approx(
        (confusion["actual"] == confusion["predicted"]).mean()
    )
    roc = pd.read_csv(root / "reports/plots/roc.csv")
    assert list(roc.columns) == ["class", "fpr", "tpr", "threshold"]
    assert set(roc["class"]) == set(CLASSES)
    wrong = int((confusion["actual"] != confusion["predicted"]).sum())
    assert evaluated["shown"] == min(wrong, 4)
    for name in ("confusion.png", "roc.png", "misclassified.png"):
        image, info = read_rgb8(root / "reports/plots" / name)
        assert info.format == "PNG" and image.shape[0] > 100 and image.std() > 0


def test_register_passes_and_writes_the_deployable_set(evaluated: dict[str, Any]) -> None:
    root = evaluated["root"]
    (root / "reports/train").mkdir(parents=True)
    (root / "reports/train/summary.json").write_text('{"train_time_s": 12.5, "epochs": 3}')
    info = register_tiny(evaluated, PASSING)
    models = root / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "MODEL_CARD.md",
        "checkpoints",
        "model.json",
        "model.onnx",
    ]  # no staging or backup folder left behind
    saved = json.loads((models / "model.json").read_text())
    assert saved == info
    assert saved["class_names"] == CLASSES and saved["input_size"] == SIZE
    assert saved["version"] == "1.0.0" and saved["name"] == "tiny"
    assert saved["metrics"] == evaluated["metrics"]
    assert saved["preprocess"] == {"size": SIZE}
    assert saved["input"]["name"] == "image" and saved["input"]["shape"] == ["N", 3, SIZE, SIZE]
    assert saved["outputs"] == {"probs": ["N", 3], "embedding": ["N", 3]}
    assert saved["onnx"]["sha256"] == sha256_file(models / "model.onnx")
    assert saved["checkpoint"]["sha256"] == sha256_file(evaluated["ckpt"])
    assert saved["git_revision"]  # "unknown" outside a git work tree
    assert saved["data"]["source"] == "processed/split.csv (sha256)"
    assert saved["data"]["counts"]["test"] == dict.fromkeys(CLASSES, 6)
    assert [g["metric"] for g in saved["gate"]][:2] == ["balanced_accuracy", "auroc_macro"]
    assert saved["features"]["analysis_size"] == SIZE and saved["features"]["content"][0] == (
        "brightness"
    )
    assert "ood" not in saved  # no validation split to calibrate on: served without OOD scores

    # the registered ONNX model alone reproduces the checkpoint's probabilities
    split = pd.read_csv(root / "processed/split.csv")
    images = load_images(split["image"].tolist(), root, SIZE)
    session = ort.InferenceSession(str(models / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, embedding = session.run(["probs", "embedding"], {"image": model_input(images)})
    np.testing.assert_allclose(probs, evaluated["predictor"].predict_proba(images), atol=1e-5)
    assert embedding.shape == (len(images), 3)

    card = (models / "MODEL_CARD.md").read_text()
    for text in (
        "# Model card: tiny 1.0.0",
        "## Intended use",
        "## Data",
        "## Training",
        "train_time_s: 12.5",
        "## Evaluation (test split, n=18)",
        "## Registration gate",
        "balanced_accuracy",
        "## Limitations",
        "Research use only",
    ):
        assert text in card


def test_registration_calibrates_the_ood_threshold_on_the_validation_split(
    tmp_path: Path,
) -> None:
    split = write_colour_dataset(tmp_path, per_class=45, noise=25.0, val=True)
    info = register_tiny(evaluate_tiny(tmp_path, TinyPredictor(train_tiny(tmp_path))), PASSING)
    ood = info["ood"]
    n_val, n_train = (int((split["split"] == s).sum()) for s in ("val", "train"))
    assert (ood["calibrated_on"], ood["fitted_on"]) == (n_val, n_train) and n_val >= 20
    assert ood["quantile"] == PASSING["ood_quantile"] and ood["embedding_dim"] == 3
    # the threshold is that quantile of the exported model's validation scores
    scorer = OodScorer.from_info(ood)
    val = split[split["split"] == "val"]
    _, emb = OnnxModel(tmp_path / "models/model.onnx").predict(
        load_images(val["image"].tolist(), tmp_path, SIZE)
    )
    scores = scorer.scores(emb)
    assert scorer.threshold == np.quantile(scores, 0.99, method="higher")
    assert ood["val_flagged"] == round(float((scores > scorer.threshold).mean()), 4) <= 0.05


def test_registration_with_the_framing_check_keeps_the_validation_flag_rate(
    tmp_path: Path,
) -> None:
    split = write_colour_dataset(tmp_path, per_class=45, noise=25.0, val=True)
    gate = {**PASSING, "ood_quantile": 0.95, "ood_framing_zoom": 0.5}
    info = register_tiny(evaluate_tiny(tmp_path, TinyPredictor(train_tiny(tmp_path))), gate)
    ood = info["ood"]
    assert ood["framing"]["zoom"] == 0.5 and ood["framing"]["threshold"] >= 0.0
    # both checks on the validation images, as the server runs them: <= 5% flagged
    scorer = OodScorer.from_info(ood)
    val = load_images(split[split["split"] == "val"]["image"].tolist(), tmp_path, SIZE)
    zoomed = np.stack([resize(centre_zoom(x, 0.5), SIZE, "linear") for x in val])
    model = OnnxModel(tmp_path / "models/model.onnx")
    flags = scorer.assess(model.predict(val)[1], model.predict(zoomed)[1]).flags
    assert ood["val_flagged"] == round(float(flags.mean()), 4) <= 0.05


def test_failed_gate_never_touches_the_registered_model(evaluated: dict[str, Any]) -> None:
    root = evaluated["root"]
    register_tiny(evaluated, PASSING)
    before = snapshot(root / "models")
    too_high = evaluated["metrics"]["balanced_accuracy"] + 0.01
    with pytest.raises(GateFailed) as info:
        register_tiny(evaluated, {**PASSING, "min_balanced_accuracy": too_high})
    message = info.value.result.report()
    assert "balanced_accuracy" in message and f"{too_high:g}" in message and "FAIL" in message
    assert "auroc_macro" in message and "ok" in message  # every metric, not just the failing one
    assert snapshot(root / "models") == before  # byte-identical, same mtime
    assert not list((root / "models").glob(".*"))


def test_failed_onnx_verification_keeps_the_registered_model(evaluated: dict[str, Any]) -> None:
    root = evaluated["root"]
    register_tiny(evaluated, PASSING)
    before = snapshot(root / "models")
    broken = SharperExportPredictor(evaluated["predictor"].net)
    with pytest.raises(ValueError, match=r"ONNX probabilities differ from the checkpoint's"):
        register_tiny(evaluated, PASSING, predictor=broken)
    assert snapshot(root / "models") == before
    assert not list((root / "models").glob(".*"))


def test_stale_metrics_from_another_model_are_refused(evaluated: dict[str, Any]) -> None:
    other = TinyPredictor(train_tiny(evaluated["root"], seed=1))
    with torch.no_grad():
        other.net.fc.weight.mul_(0.5)
    with pytest.raises(ValueError, match="computed with another model; run the evaluate stage"):
        register_tiny(evaluated, PASSING, predictor=other)
    assert not (evaluated["root"] / "models/model.onnx").exists()


@pytest.mark.slow
def test_version_follows_the_checkpoint(evaluated: dict[str, Any]) -> None:
    assert register_tiny(evaluated, PASSING)["version"] == "1.0.0"
    assert register_tiny(evaluated, PASSING)["version"] == "1.0.0"  # same checkpoint, same version
    ckpt = evaluated["ckpt"]
    ckpt.write_bytes(ckpt.read_bytes() + b"retrained")
    assert register_tiny(evaluated, PASSING)["version"] == "1.0.1"
    assert register_tiny(evaluated, {**PASSING, "version": "2.0.0"})["version"] == "2.0.0"


# --- the set swap ------------------------------------------------------------------------------


def _stage_set(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    for name in model_format.REGISTERED:
        (folder / name).write_text(f"{tag} {name}")
    return folder


def test_swap_interrupted_midway_rolls_back_to_the_previous_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    install_set(_stage_set(tmp_path / "a", "old"), models)
    before = snapshot(models)
    real_replace = os.replace

    def crash_on_json(src: Any, dst: Any) -> None:
        if Path(dst).name == model_format.JSON_NAME and Path(src).parent.name == "b":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_json)  # Path.replace calls it
    with pytest.raises(OSError, match="disk full"):
        install_set(_stage_set(tmp_path / "b", "new"), models)  # model.onnx already swapped
    assert snapshot(models) == before
    assert sorted(p.name for p in models.iterdir()) == sorted(model_format.REGISTERED)


def test_swap_killed_midway_is_rolled_back_on_the_next_run(tmp_path: Path) -> None:
    models = _stage_set(tmp_path / "models", "new")  # a mix: new onnx and json ...
    backup = _stage_set(models / ".previous", "old")
    (backup / model_format.CARD_NAME).unlink()  # ... and the old set had no model card
    (models / model_format.JSON_NAME).write_text("new model.json")
    assert recover_interrupted_swap(models)
    assert {p.name: p.read_text() for p in models.iterdir()} == {
        "model.onnx": "old model.onnx",
        "model.json": "old model.json",
    }
    assert not recover_interrupted_swap(models)


# --- end to end with the train stage's real models -------------------------------------------


def compose_params(overrides: list[str], gate: dict[str, float]) -> Any:
    cfg = compose(overrides)
    cfg.gate.update(gate)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        ["model=cnn", "model.net.channels=[8,16]", "model.net.hidden=32"],
        ["model=cnn", "model.net.channels=[8,16]", "model.net.hidden=32", "evaluate.tta=true"],
        ["model=logreg"],
    ],
)
def test_train_evaluate_register_from_the_command_line(tmp_path: Path, model: list[str]) -> None:
    from omegaconf import OmegaConf

    write_colour_dataset(tmp_path, per_class=24, noise=20.0, size=32, val=True)
    params = compose_params(
        [
            *model,
            "preprocess.size=32",
            "train.epochs=4",
            "train.batch_size=16",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ],
        # lenient: this test is about the plumbing (a few epochs on a tiny set); the gate's
        # logic is tested above and in tests/unit/test_gate.py
        {
            "min_accuracy": 0.0,
            "min_balanced_accuracy": 0.0,
            "min_f1_macro": None,
            "min_auroc_macro": 0.5,
            "min_class_recall": None,
        },
    )
    OmegaConf.save(params, tmp_path / "params.yaml")
    run_cmd(["git", "init", "-q", "-b", "main"], tmp_path)
    run_cmd([str(Path(sys.executable).parent / "dvc"), "init", "-q"], tmp_path)
    run_cmd(["git", "add", "params.yaml", ".dvc", ".dvcignore"], tmp_path)
    run_cmd(["git", "commit", "-qm", "params"], tmp_path)
    head = run_cmd(["git", "rev-parse", "HEAD"], tmp_path).stdout.strip()

    def stage(name: str, *args: str, check: bool = True) -> Any:
        return run_cmd(
            [sys.executable, str(REPO / "stages" / f"{name}.py"), *args], tmp_path, check=check
        )

    stage("train")
    evaluated = stage("evaluate")
    assert "balanced_accuracy" in evaluated.stdout
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert metrics["n_test"] == 24
    for name in ("confusion.csv", "roc.csv", "confusion.png", "roc.png", "misclassified.png"):
        assert (tmp_path / "reports/plots" / name).is_file()

    stage("register")
    models = tmp_path / "models"
    info = json.loads((models / "model.json").read_text())
    assert info["git_revision"] == head
    assert info["class_names"] == CLASSES and info["input_size"] == 32
    assert info["preprocess"]["size"] == 32
    assert info["training"]["model"]["kind"] in ("lightning", "sklearn")
    assert info["onnx"]["max_abs_diff"] <= 1e-4  # with TTA too: the served model is the evaluated
    assert info["tta"] is ("evaluate.tta=true" in model)
    assert info["checkpoint"]["model_digest"].endswith("+tta8") is info["tta"]
    assert (models / "MODEL_CARD.md").is_file()
    before = snapshot(models)

    # a stricter gate on the same candidate: the stage fails, listing every check
    strict = OmegaConf.load(tmp_path / "params.yaml")
    strict.gate.min_balanced_accuracy = 1.01  # unreachable
    OmegaConf.save(strict, tmp_path / "params.yaml")
    failed = stage("register", check=False)
    assert failed.returncode == 1
    assert "failed the gate" in failed.stderr and "balanced_accuracy" in failed.stderr
    assert ">= 1.01" in failed.stderr and "FAIL" in failed.stderr
    assert snapshot(models) == before
