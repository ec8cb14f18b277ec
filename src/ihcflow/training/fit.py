"""One training run from params: data, model, Lightning Trainer (or a baseline), checkpoints.

``fit(params, ...)`` is what ``stages/train.py`` calls. It resumes from ``last.ckpt`` when that
checkpoint belongs to the same config and data and its run did not finish; otherwise it clears
the checkpoint folder and starts from scratch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from dvclive import Live
from dvclive.lightning import DVCLiveLogger
from hydra.utils import instantiate
from lightning_fabric.utilities.seed import seed_everything
from omegaconf import DictConfig
from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
)
from pytorch_lightning.utilities.warnings import PossibleUserWarning

from ihcflow.files import write_json_atomic
from ihcflow.training import TrainError
from ihcflow.training import checkpoints as ckpts
from ihcflow.training.baselines import fit_baseline
from ihcflow.training.datamodule import ImageDataModule
from ihcflow.training.module import CKPT_KEY, ImageClassifier
from ihcflow.training.params import TrainRun

SUMMARY = "summary.json"


class StepTimer(Callback):
    """Training throughput, and the share of each step spent waiting for the next batch.

    The wait is the time from the end of one step to the start of the next (fetching,
    transferring and augmenting the batch); busy is the step itself (forward, backward, update).
    """

    def __init__(self) -> None:
        self.images = 0
        self.wait = 0.0
        self.busy = 0.0
        self._mark = 0.0
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._start = time.perf_counter()
        self.wait += self._start - self._mark

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._mark = time.perf_counter()
        self.busy += self._mark - self._start
        self.images += len(batch[1])

    def stats(self) -> dict[str, float | None]:
        total = self.wait + self.busy
        return {
            "train_images_per_s": self.images / total if total else None,
            "data_wait_share": self.wait / total if total else None,
        }


def _live_kwargs(live_dir: Path, resume: bool) -> dict[str, Any]:
    # save_dvc_exp=False: outside `dvc exp run` dvclive must not create experiments or touch
    # git (inside it, DVC saves the experiment). dvcyaml=False: dvc.yaml declares the metrics
    # and plots itself; dvclive must not rewrite the pipeline file.
    return {"dir": str(live_dir), "save_dvc_exp": False, "dvcyaml": False, "resume": resume}


@contextlib.contextmanager
def _expected_warnings(in_memory: bool, resuming: bool) -> Iterator[None]:
    with warnings.catch_warnings():
        if in_memory:
            # Images decoded in memory make a batch one tensor index: worker processes would
            # only add start-up and IPC cost, so num_workers=0 is deliberate here.
            warnings.filterwarnings(
                "ignore", r"The '\w+' does not have many workers", PossibleUserWarning
            )
        if resuming:
            # Resuming needs the previous run's checkpoints in the folder; that is the point.
            warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty")
        yield


def check_accelerator(trainer: Mapping[str, Any]) -> None:
    """Fail early, in one line, when ``trainer=gpu``/``ddp`` meets a torch that sees no GPU."""
    accelerator = str(trainer.get("accelerator", "cpu")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        why = (
            "a CPU-only build"
            if torch.version.cuda is None
            else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
        )
        raise TrainError(
            f"trainer.accelerator is {accelerator!r} but torch {torch.__version__} is {why}: "
            "train with trainer=cpu, or install the CUDA build of torch into .venv (README)"
        )


def build_datamodule(run: TrainRun, split_csv: Path, root: Path) -> ImageDataModule:
    train = run.train
    return ImageDataModule(
        split_csv,
        root,
        batch_size=train.batch_size,
        eval_batch_size=train.eval_batch_size,
        num_workers=train.num_workers,
        augment=train.augment,
        imbalance=train.imbalance,
        seed=run.seed,
        image_size=run.image_size,
        in_memory_max_bytes=train.in_memory_max_bytes,
    )


def build_module(run: TrainRun, dm: ImageDataModule, meta: Mapping[str, Any]) -> ImageClassifier:
    train = run.train
    assert dm.image_size is not None
    net = instantiate(run.model.net, num_classes=len(dm.class_names), input_size=dm.image_size)
    return ImageClassifier(
        net,
        num_classes=len(dm.class_names),
        mean=dm.mean.tolist(),
        std=dm.std.tolist(),
        optimizer=instantiate(train.optimizer),
        scheduler=instantiate(train.scheduler) if train.scheduler is not None else None,
        scheduler_interval=train.scheduler_interval,
        class_weights=dm.class_weights() if train.imbalance == "class_weights" else None,
        label_smoothing=train.label_smoothing,
        seed=run.seed,
        channels_last=train.channels_last,
        meta=meta,
    )


def _checkpoint_state(ckpt: Mapping[str, Any]) -> tuple[float | None, bool]:
    """Best monitored score and whether early stopping fired, from Lightning's callback state."""
    best, stopped = None, False
    for key, state in dict(ckpt.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            best = float(state["best_model_score"])
        if key.startswith("EarlyStopping"):
            stopped = int(state.get("stopped_epoch", 0)) > 0
    return best, stopped


def fit(
    cfg: DictConfig,
    *,
    split_csv: str | os.PathLike[str],
    root: str | os.PathLike[str],
    ckpt_dir: str | os.PathLike[str],
    live_dir: str | os.PathLike[str],
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train the model ``cfg.model`` describes; return (and write) ``summary.json``.

    ``cfg`` is the whole params; the checkpoint records its sections as given
    (:func:`~ihcflow.training.checkpoints.run_config`), the run reads them typed
    (:class:`~ihcflow.training.params.TrainRun`)."""
    split_csv, root = Path(split_csv), Path(root)
    ckpt_dir, live_dir = Path(ckpt_dir), Path(live_dir)
    config = ckpts.run_config(cfg)
    run = TrainRun.from_params(cfg)
    kind = run.model.kind
    if kind == "lightning":
        check_accelerator(run.trainer)
    t0 = time.perf_counter()
    dm = build_datamodule(run, split_csv, root)  # checks split.csv first: clear errors early
    fp = ckpts.fingerprint(config, split_csv)
    dm.setup("fit")
    load_time = time.perf_counter() - t0
    resume = ckpts.resumable(ckpt_dir, fp) if kind == "lightning" else None
    if resume is None:
        ckpts.clear(ckpt_dir)
    seed_everything(run.seed, workers=True, verbose=False)
    meta: dict[str, Any] = {
        "kind": kind,
        "config": config,
        "class_names": dm.class_names,
        "input_size": dm.image_size,
        "mean": dm.mean.tolist(),
        "std": dm.std.tolist(),
        "train_counts": dm.counts("train"),
        "fingerprint": fp,
        "finished": False,
    }
    summary: dict[str, Any] = {
        "model": run.model.name,
        "kind": kind,
        "classes": dm.class_names,
        "input_size": dm.image_size,
        "n_train": len(dm.sets["train"]),
        "n_val": len(dm.sets["val"]),
        "in_memory": dm.in_memory,
        "load_time_s": round(load_time, 3),
    }
    if kind == "sklearn":
        summary.update(_fit_sklearn(run, dm, meta, ckpt_dir, live_dir))
    else:
        summary.update(_fit_lightning(run, dm, meta, ckpt_dir, live_dir, resume, callbacks))
    live_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(live_dir / SUMMARY, summary)
    return summary


def _fit_lightning(
    run: TrainRun,
    dm: ImageDataModule,
    meta: dict[str, Any],
    ckpt_dir: Path,
    live_dir: Path,
    resume: Path | None,
    callbacks: Sequence[Callback],
) -> dict[str, Any]:
    train = run.train
    module = build_module(run, dm, meta)
    monitor, mode = train.monitor, train.mode
    # Two callbacks: since Lightning 2.6 `save_last` only writes when a top-k checkpoint was
    # written in the same step, so a separate one keeps last.ckpt at the latest epoch.
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=Path(ckpts.BEST).stem,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_on_train_epoch_end=True,  # after validation: the saved epoch is complete
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(  # listed after `best`, so last.ckpt holds the updated best score
        dirpath=ckpt_dir,
        filename=Path(ckpts.LAST).stem,
        monitor=None,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    timer = StepTimer()
    cbs: list[Callback] = [best, last, timer, *callbacks]
    if train.ema_decay is not None:
        # validation and every checkpoint's state_dict use the average (Lightning swaps it in;
        # the live weights are kept in the checkpoint to resume from), so best.ckpt, evaluate
        # and register see the averaged model
        cbs.append(EMAWeightAveraging(decay=train.ema_decay, use_buffers=True))
    stopping = train.early_stopping
    if stopping.patience:
        cbs.append(
            EarlyStopping(
                monitor=monitor, mode=mode, patience=stopping.patience, min_delta=stopping.min_delta
            )
        )
    kwargs = dict(run.trainer)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    resumed_from = None
    if resume is not None:
        resumed_from = int(ckpts.load_checkpoint(resume).get("epoch", -1)) + 1
    trainer = pl.Trainer(
        **kwargs,
        max_epochs=train.epochs,
        callbacks=cbs,
        logger=DVCLiveLogger(**_live_kwargs(live_dir, resume is not None)),
        default_root_dir=str(ckpt_dir),
    )
    # Lightning warns when an epoch has fewer batches than the logging interval (we log per
    # epoch anyway): clamp it to the batches each device really runs.
    every = min(trainer.log_every_n_steps, _batches_per_epoch(trainer, dm))  # type: ignore[attr-defined]
    trainer.log_every_n_steps = every  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    try:
        with _expected_warnings(dm.in_memory, resume is not None):
            trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    finally:
        # Trainer(deterministic=...) switches a process-wide torch flag: put it back
        torch.use_deterministic_algorithms(deterministic_before)
    elapsed = time.perf_counter() - t0
    if trainer.interrupted:
        raise RuntimeError("training was interrupted; rerun to resume from last.ckpt")

    best_path, last_path = ckpt_dir / ckpts.BEST, ckpt_dir / ckpts.LAST
    saved_after_fit = not last_path.is_file()
    if saved_after_fit:  # fast_dev_run saves no checkpoints: write one at the end
        trainer.save_checkpoint(last_path, weights_only=False)
    if not best_path.is_file():
        shutil.copyfile(last_path, best_path)
    ckpts.mark_finished(last_path)
    final = ckpts.load_checkpoint(last_path)
    best_score, stopped = _checkpoint_state(final)
    # a checkpoint written at an epoch's end holds that epoch; one written after fit the next
    epochs_run = int(final.get("epoch", 0)) + (0 if saved_after_fit else 1)
    stats = timer.stats()
    if stats["train_images_per_s"] is None:  # the steps ran in other processes (ddp_spawn)
        done = epochs_run - (resumed_from or 0)
        stats["train_images_per_s"] = done * len(dm.sets["train"]) / elapsed if elapsed else None
    best_epoch = int(ckpts.load_checkpoint(best_path).get("epoch", 0)) + 1
    return {
        "epochs_run": epochs_run,
        "max_epochs": train.epochs,
        "best_epoch": best_epoch,
        "stopped_early": stopped,
        "resumed_from_epoch": resumed_from,
        "monitor": monitor,
        "mode": mode,
        "best_score": best_score,
        "train_time_s": round(elapsed, 3),
        "train_images_per_s": _round(stats["train_images_per_s"]),
        "data_wait_share": _round(stats["data_wait_share"], 4),
        "accelerator": str(trainer.accelerator.__class__.__name__),
        "devices": trainer.num_devices,
        "fast_dev_run": bool(kwargs.get("fast_dev_run")),
        "torch_threads": torch.get_num_threads(),
    }


def _batches_per_epoch(trainer: pl.Trainer, dm: ImageDataModule) -> int:
    n = len(dm.sets["train"]) // (dm.batch_size * max(1, trainer.world_size))
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        n = min(n, limit)
    elif isinstance(limit, float):
        n = int(n * limit)
    return max(1, n)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _fit_sklearn(
    run: TrainRun, dm: ImageDataModule, meta: dict[str, Any], ckpt_dir: Path, live_dir: Path
) -> dict[str, Any]:
    t0 = time.perf_counter()
    _, metrics, entries = fit_baseline(
        dm,
        run.model.estimator,
        run.model.features or {},
        seed=run.seed,
        imbalance=run.train.imbalance,
    )
    elapsed = time.perf_counter() - t0
    ckpt = {
        CKPT_KEY: {**meta, "features": entries["features"], "finished": True},
        "estimator": entries["estimator"],
        "metrics": metrics,
    }
    ckpts.save_checkpoint(ckpt_dir / ckpts.BEST, ckpt)
    ckpts.save_checkpoint(ckpt_dir / ckpts.LAST, ckpt)
    with Live(**_live_kwargs(live_dir, resume=False)) as live:
        for name, value in metrics.items():  # one step: dvc.yaml declares plots/metrics for all
            live.log_metric(name, value)
    monitor = run.train.monitor
    return {
        "epochs_run": 1,
        "monitor": monitor,
        "mode": run.train.mode,
        "best_score": metrics.get(monitor),
        "train_time_s": round(elapsed, 3),
        "train_images_per_s": _round(len(dm.sets["train"]) / elapsed if elapsed else None),
    }
