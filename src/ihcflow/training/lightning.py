"""The Lightning training loop the two tasks share: best/last checkpoints, resuming, dvclive,
early stopping, throughput. ``training.fit`` (the classifier) and ``segmentation.fit`` (the
nuclei segmenter) build their own data and module and call :func:`train_lightning`."""

from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from dvclive.lightning import DVCLiveLogger
from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
)
from pytorch_lightning.utilities.warnings import PossibleUserWarning

from ihcflow.training import TrainError
from ihcflow.training import checkpoints as ckpts
from ihcflow.training.params import EarlyStopping as EarlyStoppingParams

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


def live_kwargs(live_dir: Path, resume: bool) -> dict[str, Any]:
    # save_dvc_exp=False: outside `dvc exp run` dvclive must not create experiments or touch
    # git (inside it, DVC saves the experiment). dvcyaml=False: dvc.yaml declares the metrics
    # and plots itself; dvclive must not rewrite the pipeline file.
    return {"dir": str(live_dir), "save_dvc_exp": False, "dvcyaml": False, "resume": resume}


@contextlib.contextmanager
def expected_warnings(in_memory: bool, resuming: bool) -> Iterator[None]:
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


def checkpoint_state(ckpt: Mapping[str, Any]) -> tuple[float | None, bool]:
    """Best monitored score and whether early stopping fired, from Lightning's callback state."""
    best, stopped = None, False
    for key, state in dict(ckpt.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            best = float(state["best_model_score"])
        if key.startswith("EarlyStopping"):
            stopped = int(state.get("stopped_epoch", 0)) > 0
    return best, stopped


def train_lightning(
    module: pl.LightningModule,
    dm: pl.LightningDataModule,
    *,
    trainer_kwargs: Mapping[str, Any],
    epochs: int,
    monitor: str,
    mode: str,
    early_stopping: EarlyStoppingParams,
    ckpt_dir: Path,
    live_dir: Path,
    resume: Path | None,
    callbacks: Sequence[Callback] = (),
    ema_decay: float | None = None,
) -> dict[str, Any]:
    """Fit ``module`` on ``dm`` with best/last checkpoints, dvclive, optional early
    stopping and an optional exponential moving average of the weights (``ema_decay``); mark
    the run finished and return the training part of ``summary.json``.

    Shared by the classifier (``training.fit``) and the nuclei segmenter
    (``segmentation.fit``)."""
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
    if ema_decay is not None:
        # validation and every checkpoint's state_dict use the average (Lightning swaps it in;
        # the live weights are kept in the checkpoint to resume from), so best.ckpt, evaluate
        # and register see the averaged model
        cbs.append(EMAWeightAveraging(decay=ema_decay, use_buffers=True))
    if early_stopping.patience:
        cbs.append(
            EarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=early_stopping.patience,
                min_delta=early_stopping.min_delta,
            )
        )
    kwargs = dict(trainer_kwargs)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    resumed_from = None
    if resume is not None:
        resumed_from = int(ckpts.load_checkpoint(resume).get("epoch", -1)) + 1
    trainer = pl.Trainer(
        **kwargs,
        max_epochs=epochs,
        callbacks=cbs,
        logger=DVCLiveLogger(**live_kwargs(live_dir, resume is not None)),
        default_root_dir=str(ckpt_dir),
    )
    # Lightning warns when an epoch has fewer batches than the logging interval (we log per
    # epoch anyway): clamp it to the batches each device really runs.
    every = min(trainer.log_every_n_steps, batches_per_epoch(trainer, dm))  # type: ignore[attr-defined]
    trainer.log_every_n_steps = every  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    try:
        with expected_warnings(getattr(dm, "in_memory", True), resume is not None):
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
    best_score, stopped = checkpoint_state(final)
    # a checkpoint written at an epoch's end holds that epoch; one written after fit the next
    epochs_run = int(final.get("epoch", 0)) + (0 if saved_after_fit else 1)
    stats = timer.stats()
    if stats["train_images_per_s"] is None:  # the steps ran in other processes (ddp_spawn)
        done = epochs_run - (resumed_from or 0)
        per_epoch = len(dm.sets["train"])  # type: ignore[attr-defined]
        stats["train_images_per_s"] = done * per_epoch / elapsed if elapsed else None
    best_epoch = int(ckpts.load_checkpoint(best_path).get("epoch", 0)) + 1
    return {
        "epochs_run": epochs_run,
        "max_epochs": epochs,
        "best_epoch": best_epoch,
        "stopped_early": stopped,
        "resumed_from_epoch": resumed_from,
        "monitor": monitor,
        "mode": mode,
        "best_score": best_score,
        "train_time_s": round(elapsed, 3),
        "train_images_per_s": rounded(stats["train_images_per_s"]),
        "data_wait_share": rounded(stats["data_wait_share"], 4),
        "accelerator": str(trainer.accelerator.__class__.__name__),
        "devices": trainer.num_devices,
        "fast_dev_run": bool(kwargs.get("fast_dev_run")),
        "torch_threads": torch.get_num_threads(),
    }


def batches_per_epoch(trainer: pl.Trainer, dm: pl.LightningDataModule) -> int:
    # both data modules keep their training set in `sets` and their batch size as an attribute
    n = len(dm.sets["train"]) // (dm.batch_size * max(1, trainer.world_size))  # type: ignore[attr-defined]
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        n = min(n, limit)
    elif isinstance(limit, float):
        n = int(n * limit)
    return max(1, n)


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)
