"""One segmentation training run from params: tiles, U-Net, Lightning Trainer, checkpoints.

Params: ``segmentation.model`` (the injected network), ``segmentation.train`` (patches, loss,
optimiser, augmentation), ``segmentation.data.microns_per_pixel``, and the shared ``trainer``
and ``seed``. Like the classifier's run it resumes from ``last.ckpt`` when that checkpoint
belongs to the same config and split and its run did not finish.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from dvclive.lightning import DVCLiveLogger
from hydra.utils import instantiate
from lightning_fabric.utilities.seed import seed_everything
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint

from ihcflow.io import write_json_atomic
from ihcflow.segmentation.datamodule import NucleiDataModule
from ihcflow.segmentation.instances import CHANNELS
from ihcflow.segmentation.module import NucleiSegmenter
from ihcflow.segmentation.predictor import TASK, build_net, size_multiple
from ihcflow.training import checkpoints as ckpts
from ihcflow.training.fit import (
    SUMMARY,
    StepTimer,
    _batches_per_epoch,
    _checkpoint_state,
    _expected_warnings,
    _live_kwargs,
    _round,
    check_accelerator,
)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def run_config(params: DictConfig) -> dict[str, Any]:
    """What a segmentation run depends on, as plain data (stored in its checkpoints)."""
    seg = params.segmentation
    return {
        "model": _plain(seg.model),
        "train": _plain(seg.train),
        "trainer": _plain(params.trainer),
        "seed": int(params.seed),
        "microns_per_pixel": _plain(seg.data.microns_per_pixel),
    }


def fit_segmentation(
    params: DictConfig,
    *,
    split_csv: str | os.PathLike[str],
    root: str | os.PathLike[str],
    ckpt_dir: str | os.PathLike[str],
    live_dir: str | os.PathLike[str],
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train the segmentation model; return (and write to ``live_dir``) ``summary.json``."""
    split_csv, root = Path(split_csv), Path(root)
    ckpt_dir, live_dir = Path(ckpt_dir), Path(live_dir)
    config = run_config(params)
    train = config["train"]
    check_accelerator(config["trainer"])
    multiple = size_multiple(config["model"]["net"])
    if train["patch"] % multiple:
        raise ValueError(
            f"segmentation.train.patch {train['patch']} is not a multiple of the network's "
            f"total stride {multiple}"
        )
    t0 = time.perf_counter()
    dm = NucleiDataModule(
        split_csv,
        root,
        patch=int(train["patch"]),
        batch_size=int(train["batch_size"]),
        patches_per_epoch=int(train["patches_per_epoch"]),
        val_patches=int(train["val_patches"]),
        boundary_px=int(train["boundary_px"]),
        augment=train["augment"],
        seed=config["seed"],
    )
    fp = ckpts.fingerprint(config, split_csv)
    dm.setup("fit")
    load_time = time.perf_counter() - t0
    resume = ckpts.resumable(ckpt_dir, fp)
    if resume is None:
        ckpts.clear(ckpt_dir)
    seed_everything(config["seed"], workers=True, verbose=False)
    mean, std = dm.mean.tolist(), dm.std.tolist()
    meta = {
        "task": TASK,
        "config": config,
        "channels": list(CHANNELS),
        "size_multiple": multiple,
        "mean": mean,
        "std": std,
        "train_tiles": dm.counts["train"],
        "fingerprint": fp,
        "finished": False,
    }
    scheduler = params.segmentation.train.get("scheduler")
    module = NucleiSegmenter(
        build_net(config["model"]["net"]),
        mean=mean,
        std=std,
        optimizer=instantiate(params.segmentation.train.optimizer),
        scheduler=instantiate(scheduler) if scheduler is not None else None,
        scheduler_interval=str(train["scheduler_interval"]),
        positive_weight=float(train["positive_weight"]),
        seed=config["seed"],
        meta=meta,
    )
    summary: dict[str, Any] = {
        "task": TASK,
        "model": str(config["model"].get("name", config["model"]["net"]["_target_"])),
        "train_tiles": dm.counts["train"],
        "val_tiles": dm.counts["val"],
        "patch": int(train["patch"]),
        "patches_per_epoch": int(train["patches_per_epoch"]),
        "load_time_s": round(load_time, 3),
    }
    summary.update(
        train_lightning(
            module,
            dm,
            trainer_kwargs=config["trainer"],
            train=train,
            ckpt_dir=ckpt_dir,
            live_dir=live_dir,
            resume=resume,
            callbacks=callbacks,
        )
    )
    live_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(live_dir / SUMMARY, summary)
    return summary


def train_lightning(
    module: pl.LightningModule,
    dm: Any,
    *,
    trainer_kwargs: Mapping[str, Any],
    train: Mapping[str, Any],
    ckpt_dir: Path,
    live_dir: Path,
    resume: Path | None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Fit ``module`` on ``dm`` with best/last checkpoints, dvclive and optional early
    stopping; mark the run finished and describe it (the summary's training part)."""
    monitor, mode = str(train["monitor"]), str(train["mode"])
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=Path(ckpts.BEST).stem,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=Path(ckpts.LAST).stem,
        monitor=None,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    timer = StepTimer()
    cbs: list[Callback] = [best, last, timer, *callbacks]
    stopping = train.get("early_stopping") or {}
    if stopping.get("patience"):
        cbs.append(
            EarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=int(stopping["patience"]),
                min_delta=float(stopping.get("min_delta", 0.0)),
            )
        )
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    resumed_from = None
    if resume is not None:
        resumed_from = int(ckpts.load_checkpoint(resume).get("epoch", -1)) + 1
    trainer = pl.Trainer(
        **dict(trainer_kwargs),
        max_epochs=int(train["epochs"]),
        callbacks=cbs,
        logger=DVCLiveLogger(**_live_kwargs(live_dir, resume is not None)),
        default_root_dir=str(ckpt_dir),
    )
    every = min(trainer.log_every_n_steps, _batches_per_epoch(trainer, dm))  # type: ignore[attr-defined]
    trainer.log_every_n_steps = every  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    try:
        with _expected_warnings(True, resume is not None):
            trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    finally:
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
    epochs_run = int(final.get("epoch", 0)) + (0 if saved_after_fit else 1)
    stats = timer.stats()
    return {
        "epochs_run": epochs_run,
        "max_epochs": int(train["epochs"]),
        "best_epoch": int(ckpts.load_checkpoint(best_path).get("epoch", 0)) + 1,
        "stopped_early": stopped,
        "resumed_from_epoch": resumed_from,
        "monitor": monitor,
        "mode": mode,
        "best_score": best_score,
        "train_time_s": round(elapsed, 3),
        "train_images_per_s": _round(stats["train_images_per_s"], 2),
        "data_wait_share": _round(stats["data_wait_share"], 4),
        "accelerator": str(trainer.accelerator.__class__.__name__),
        "devices": trainer.num_devices,
        "fast_dev_run": bool(trainer_kwargs.get("fast_dev_run")),
        "torch_threads": torch.get_num_threads(),
    }
