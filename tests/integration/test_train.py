"""The train stage on tiny generated data: every model config and CPU trainer preset, outputs,
checkpoints that rebuild their model alone, determinism, resuming and the stage's CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from ihcflow.dataset import load_image
from ihcflow.training import TrainError
from ihcflow.training import checkpoints as ckpts
from ihcflow.training.module import CKPT_KEY
from ihcflow.training.predictor import load_predictor
from tests.helpers import REPO, compose, load_stage
from tests.helpers.data import write_toy_split

stage = load_stage("train")
SIZE = 32
# Small and quick: no progress bar or model summary in the test log, tiny batches.
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
TINY = [f"preprocess.size={SIZE}", "train.batch_size=16", "train.epochs=2", *QUIET]


def make_cfg(*overrides: str) -> DictConfig:
    return compose([*TINY, *overrides])


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository-like root with processed/split.csv and processed/images/ (4 classes)."""
    root = tmp_path_factory.mktemp("toy")
    write_toy_split(root, {"train": 64, "val": 16, "test": 16}, n_classes=4, size=SIZE)
    return root


Train = Callable[..., dict]


@pytest.fixture
def train(toy_data: Path, tmp_path: Path) -> Train:
    """Run the stage into tmp_path/<name>; returns the summary."""

    def run(*overrides: str, name: str = "run", callbacks=(), root: Path = toy_data) -> dict:
        return stage.run(
            make_cfg(*overrides),
            split=root / "processed" / "split.csv",
            root=root,
            checkpoints=tmp_path / name / "checkpoints",
            live=tmp_path / name / "live",
            callbacks=callbacks,
        )

    return run


def test_imports_config_group_files() -> None:
    for group, names in {
        "model": {"cnn", "resnet", "logreg", "svm"},
        "trainer": {"cpu", "gpu", "ddp"},
        "experiment": {"pbc28"},
    }.items():
        assert names <= {p.stem for p in (REPO / "conf" / group).glob("*.yaml")}


def _test_images(root: Path, split: str = "test") -> tuple[np.ndarray, list[str]]:
    frame = pd.read_csv(root / "processed" / "split.csv")
    frame = frame[frame["split"] == split]
    return np.stack([load_image(root / p, SIZE) for p in frame["image"]]), list(frame["class"])


@pytest.mark.parametrize(
    "model",
    ["model=cnn", "model=resnet model.net.width=8", "model=logreg", "model=svm"],
)
def test_every_model_config_trains_and_rebuilds_from_its_checkpoint(
    model: str, train: Train, toy_data: Path, tmp_path: Path
) -> None:
    summary = train(*model.split(), "trainer.fast_dev_run=true")
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert best.is_file() and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "run" / "live" / "summary.json").read_text()) == summary
    predictor = load_predictor(best)
    assert predictor.class_names == ["class_a", "class_b", "class_c", "class_d"]
    assert predictor.input_size == SIZE
    images, _ = _test_images(toy_data)
    probs = predictor.predict_proba(images)
    assert probs.shape == (len(images), 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    emb = predictor.embed(images)
    assert emb.shape[0] == len(images) and emb.shape[1] == predictor.embed_dim
    with pytest.raises(ValueError, match=f"the model expects {SIZE}x{SIZE}"):
        predictor.predict_proba(np.zeros((1, SIZE + 1, SIZE + 1, 3), np.uint8))


def test_training_logs_to_dvclive_and_summarises(train: Train, tmp_path: Path) -> None:
    summary = train("train.epochs=3")
    live = tmp_path / "run" / "live"
    metrics = json.loads((live / "metrics.json").read_text())
    assert {"loss", "acc"} <= set(metrics["train"])
    assert {"loss", "acc", "balanced_acc", "f1_macro"} <= set(metrics["val"])
    acc_plot = pd.read_csv(live / "plots" / "metrics" / "val" / "acc.tsv", sep="\t")
    assert len(acc_plot) == 3  # one point per epoch
    assert not (live / "dvc.yaml").exists() and not (tmp_path / "dvc.yaml").exists()
    assert summary["epochs_run"] == 3 and summary["resumed_from_epoch"] is None
    assert summary["best_score"] == pytest.approx(acc_plot["acc"].max())
    assert summary["train_images_per_s"] > 0 and 0 <= summary["data_wait_share"] < 1
    assert summary["n_train"] == 64 and summary["n_val"] == 16


def test_checkpoint_holds_what_rebuilds_the_model(train: Train, tmp_path: Path) -> None:
    train()
    ckpt = ckpts.load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")  # no pickle
    meta = ckpt[CKPT_KEY]
    assert meta["class_names"] == ["class_a", "class_b", "class_c", "class_d"]
    assert meta["input_size"] == SIZE and meta["kind"] == "lightning"
    assert set(meta["config"]) == {"model", "train", "trainer", "preprocess", "seed"}
    assert meta["config"]["model"]["net"]["_target_"].endswith("CompactCNN")
    assert len(meta["mean"]) == 3 and all(0 < s < 1 for s in meta["std"])
    last = ckpts.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last[CKPT_KEY]["finished"] is True and last["epoch"] == 1


def test_two_runs_from_scratch_give_identical_metrics(train: Train, tmp_path: Path) -> None:
    train(name="a")
    train(name="b")
    a = (tmp_path / "a" / "live" / "metrics.json").read_text()
    b = (tmp_path / "b" / "live" / "metrics.json").read_text()
    assert a == b
    # the same model, so the same registry identity, though the files differ (absolute paths)
    ckpt_a, ckpt_b = (tmp_path / run / "checkpoints" / "best.ckpt" for run in ("a", "b"))
    assert ckpt_a.read_bytes() != ckpt_b.read_bytes()
    assert load_predictor(ckpt_a).digest == load_predictor(ckpt_b).digest
    other = ckpts.load_checkpoint(ckpt_a)
    weight = next(k for k in other["state_dict"] if k.endswith("weight"))
    other["state_dict"][weight] = other["state_dict"][weight] * 1.001
    assert ckpts.model_digest(other) != load_predictor(ckpt_a).digest


class Kill(pl.Callback):
    """Stands in for a killed process: dies at the start of the given epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(
    train: Train, tmp_path: Path
) -> None:
    full = train("train.epochs=4", name="full")
    with pytest.raises((KeyboardInterrupt, SystemExit, RuntimeError)):
        train("train.epochs=4", name="killed", callbacks=[Kill(epoch=2)])
    last = ckpts.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1 and not last[CKPT_KEY]["finished"]
    resumed = train("train.epochs=4", name="killed")
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["epochs_run"] == full["epochs_run"] == 4
    full_metrics = json.loads((tmp_path / "full" / "live" / "metrics.json").read_text())
    resumed_metrics = json.loads((tmp_path / "killed" / "live" / "metrics.json").read_text())
    assert resumed_metrics == full_metrics
    plot = pd.read_csv(
        tmp_path / "killed" / "live" / "plots" / "metrics" / "val" / "acc.tsv", sep="\t"
    )
    assert len(plot) == 4  # the dvclive history continues across the interruption


def test_rerun_after_a_finished_or_changed_run_starts_fresh(train: Train, tmp_path: Path) -> None:
    train(name="x")
    again = train(name="x")  # finished: same params rerun (dvc repro -f) trains from scratch
    assert again["resumed_from_epoch"] is None
    with pytest.raises((KeyboardInterrupt, SystemExit, RuntimeError)):
        train("train.epochs=3", name="x", callbacks=[Kill(epoch=1)])
    changed = train("train.epochs=3", "train.optimizer.lr=0.01", name="x")
    assert changed["resumed_from_epoch"] is None  # other params: the old checkpoint is not used
    meta = ckpts.load_checkpoint(tmp_path / "x" / "checkpoints" / "last.ckpt")[CKPT_KEY]
    assert meta["config"]["train"]["optimizer"]["lr"] == 0.01


def test_class_imbalance_options(train: Train) -> None:
    for mode in ("class_weights", "balanced_sampler", "none"):
        summary = train(f"train.imbalance={mode}", "trainer.fast_dev_run=true")
        assert summary["epochs_run"] == 1
    with pytest.raises(ValueError, match="train.imbalance is 'oversample'"):
        train("train.imbalance=oversample", "trainer.fast_dev_run=true")


@pytest.mark.parametrize("model", ["model=cnn", "model=logreg"])
def test_every_output_dvc_yaml_declares_for_train_is_written(
    model: str, train: Train, tmp_path: Path
) -> None:
    """`dvc repro` fails a stage whose declared output is missing (logreg wrote no plots once)."""
    stage_def = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    declared = [
        entry if isinstance(entry, str) else next(iter(entry))
        for key in ("outs", "metrics", "plots")
        for entry in stage_def.get(key, [])
    ]
    train(model, "train.epochs=1")
    where = {
        "reports/train": tmp_path / "run" / "live",
        "models/checkpoints": tmp_path / "run" / "checkpoints",
    }
    for path in declared:
        prefix = next(p for p in where if path == p or path.startswith(p + "/"))
        written = where[prefix] / path[len(prefix) :].lstrip("/")
        assert written.exists(), f"{path} (as {written}) was not written"
        if written.is_dir():
            assert any(f.is_file() for f in written.rglob("*")), f"{path} is empty"


@pytest.mark.parametrize("model", ["model=cnn", "model=logreg", "model=svm"])
def test_onnx_export_matches_predict_proba(
    model: str, train: Train, toy_data: Path, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    train(model, "trainer.fast_dev_run=true")
    predictor = load_predictor(tmp_path / "run" / "checkpoints" / "best.ckpt")
    path = tmp_path / "model.onnx"
    predictor.export_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probs", "embedding"]
    images, _ = _test_images(toy_data)
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    for batch in (x, x[:1]):  # dynamic batch size
        probs, emb = session.run(["probs", "embedding"], {"image": batch})
        n = len(batch)
        np.testing.assert_allclose(probs, predictor.predict_proba(images[:n]), atol=1e-4)
        np.testing.assert_allclose(emb, predictor.embed(images[:n]), atol=1e-4, rtol=1e-4)


def test_tta_is_the_mean_over_the_eight_views_in_torch_and_in_onnx(
    train: Train, toy_data: Path, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    train("trainer.fast_dev_run=true")
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    plain, tta = load_predictor(best), load_predictor(best, tta=True)
    assert tta.digest == plain.digest + "+tta8"  # another model for the registry
    images, _ = _test_images(toy_data)
    views = [np.rot90(im, k, axes=(1, 2)) for im in (images, images[:, :, ::-1]) for k in range(4)]
    expected = np.mean([plain.predict_proba(np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(tta.predict_proba(images), expected, atol=1e-5)
    assert not np.allclose(tta.predict_proba(images), plain.predict_proba(images), atol=1e-4)
    # a rotated or mirrored image gets the same answer
    turned = np.ascontiguousarray(np.rot90(images[:, ::-1], 1, axes=(1, 2)))
    np.testing.assert_allclose(tta.predict_proba(turned), tta.predict_proba(images), atol=1e-5)
    path = tmp_path / "tta.onnx"
    tta.export_onnx(path)  # the served model is the evaluated one
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    for batch in (x, x[:1]):
        probs, emb = session.run(["probs", "embedding"], {"image": batch})
        np.testing.assert_allclose(probs, tta.predict_proba(images[: len(batch)]), atol=1e-4)
        np.testing.assert_allclose(emb, tta.embed(images[: len(batch)]), atol=1e-4, rtol=1e-4)
    baseline = tmp_path / "svm"
    train("model=svm", name="svm")
    with pytest.raises(ckpts.CheckpointError, match="evaluate.tta.* needs a network"):
        load_predictor(baseline / "checkpoints" / "best.ckpt", tta=True)


def test_ema_checkpoints_hold_the_average_that_evaluation_uses(
    train: Train, toy_data: Path, tmp_path: Path
) -> None:
    train(name="plain")
    train("train.ema_decay=0.9", name="ema")
    plain, ema = (
        ckpts.load_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")
        for name in ("plain", "ema")
    )
    weight = next(k for k in plain["state_dict"] if k.startswith("net.") and "weight" in k)
    # the same training (EMA does not change the steps), other weights in the checkpoint: the
    # average; the live weights are kept for resuming, and equal the run without EMA
    live = ema["current_model_state"]
    torch.testing.assert_close(live[weight], plain["state_dict"][weight])
    assert not torch.allclose(ema["state_dict"][weight], plain["state_dict"][weight])
    predictor = load_predictor(tmp_path / "ema" / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(predictor.model.state_dict()[weight], ema["state_dict"][weight])
    images, _ = _test_images(toy_data)
    assert predictor.predict_proba(images).shape == (len(images), 4)


def test_bad_inputs_name_the_file(train: Train, toy_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    write_toy_split(root, {"train": 8, "val": 4}, n_classes=2, size=SIZE)
    frame = pd.read_csv(root / "processed" / "split.csv")
    victim = root / frame["image"].iloc[0]
    victim.unlink()
    with pytest.raises(TrainError, match=f"{victim}: preprocessed image not found"):
        train(root=root)
    victim.write_bytes(b"not a png")
    with pytest.raises(TrainError, match=str(victim)):
        train(root=root)
    write_toy_split(root, {"train": 8, "val": 4}, n_classes=2, size=SIZE + 4)
    expected = f"is {SIZE + 4}x{SIZE + 4} px, the model expects {SIZE}x{SIZE}"
    with pytest.raises(TrainError, match=expected):
        train(root=root)


def test_stage_main_reads_params_yaml(toy_data: Path, tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    OmegaConf.save(make_cfg("trainer.fast_dev_run=true"), params)
    out = tmp_path / "out"
    stage.main(
        [
            "--split",
            str(toy_data / "processed" / "split.csv"),
            "--root",
            str(toy_data),
            "--checkpoints",
            str(out / "models" / "checkpoints"),
            "--live",
            str(out / "reports" / "train"),
            "--params",
            str(params),
        ]
    )
    assert (out / "models" / "checkpoints" / "best.ckpt").is_file()
    assert (out / "reports" / "train" / "summary.json").is_file()
    assert "train: cnn on 64 images" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="split table not found"):
        stage.main(["--split", str(tmp_path / "nope.csv"), "--params", str(params)])


@pytest.mark.slow
def test_ddp_preset_trains_on_two_cpu_processes(train: Train, tmp_path: Path) -> None:
    # trainer=ddp, simulated on CPU: two processes (gloo) started with ddp_spawn.
    summary = train(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",
        "trainer.precision=32-true",
        "trainer.sync_batchnorm=false",
    )
    assert summary["devices"] == 2 and summary["epochs_run"] == 2
    predictor = load_predictor(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert predictor.config["trainer"]["strategy"] == "ddp_spawn"
    metrics = json.loads((tmp_path / "run" / "live" / "metrics.json").read_text())
    assert "acc" in metrics["val"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_preset_fast_dev_run(train: Train, toy_data: Path, tmp_path: Path) -> None:
    summary = train("trainer=gpu", "trainer.fast_dev_run=true")
    assert summary["accelerator"] == "CUDAAccelerator"
    predictor = load_predictor(tmp_path / "run" / "checkpoints" / "best.ckpt")  # loads on CPU
    images, _ = _test_images(toy_data)
    assert predictor.predict_proba(images).shape == (len(images), 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_preset_full_epochs(train: Train) -> None:
    summary = train("trainer=gpu", "train.epochs=3")
    assert summary["epochs_run"] == 3 and summary["best_score"] is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without CUDA says")
@pytest.mark.parametrize("preset", ["trainer=gpu", "trainer=ddp"])
def test_gpu_presets_without_cuda_fail_in_one_line(preset: str, train: Train) -> None:
    with pytest.raises(TrainError, match="train with trainer=cpu, or install the CUDA"):
        train(preset)


def test_lazy_decoding_trains_exactly_like_in_memory(train: Train, tmp_path: Path) -> None:
    memory = train(name="memory")
    lazy = train("train.in_memory_max_bytes=0", name="lazy")  # decode per batch, in workers
    assert memory["in_memory"] and not lazy["in_memory"]
    a = (tmp_path / "memory" / "live" / "metrics.json").read_text()
    b = (tmp_path / "lazy" / "live" / "metrics.json").read_text()
    assert a == b
