"""One segmentation training run from params: tiles, U-Net, and the Lightning loop the
classifier uses too (``training.lightning``: checkpoints, resuming, dvclive).

Params: ``segmentation.model`` (the injected network), ``segmentation.train`` (patches, loss,
optimiser, augmentation), ``segmentation.data.microns_per_pixel``, and the shared ``trainer``
and ``seed`` (read as :class:`~ihcflow.segmentation.params.SegTrainRun`). Like the classifier
it resumes from ``last.ckpt`` when that checkpoint belongs to the same config and split and its
run did not finish.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning_fabric.utilities.seed import seed_everything
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from ihcflow.config import plain
from ihcflow.files import write_json_atomic
from ihcflow.segmentation.datamodule import NucleiDataModule
from ihcflow.segmentation.instances import CHANNELS
from ihcflow.segmentation.module import NucleiSegmenter
from ihcflow.segmentation.params import SECTION, SegTrainRun
from ihcflow.segmentation.predictor import TASK, build_net, size_multiple
from ihcflow.training import TrainError
from ihcflow.training import checkpoints as ckpts
from ihcflow.training.lightning import SUMMARY, check_accelerator, train_lightning


def run_config(params: DictConfig) -> dict[str, Any]:
    """What a segmentation run depends on, as plain data (stored in its checkpoints)."""
    seg = params[SECTION]
    return {
        "model": plain(seg.model),
        "train": plain(seg.train),
        "trainer": plain(params.trainer),
        "seed": int(params.seed),
        "microns_per_pixel": plain(seg.data.microns_per_pixel),
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
    run = SegTrainRun.from_params(params)
    train = run.train
    check_accelerator(run.trainer)
    multiple = size_multiple(run.model.net)
    if train.patch % multiple:
        raise TrainError(
            f"params `segmentation.train.patch`: {train.patch} is not a multiple of the "
            f"network's total stride {multiple}"
        )
    t0 = time.perf_counter()
    dm = NucleiDataModule(
        split_csv,
        root,
        patch=train.patch,
        batch_size=train.batch_size,
        patches_per_epoch=train.patches_per_epoch,
        val_patches=train.val_patches,
        boundary_px=train.boundary_px,
        augment=train.augment,
        seed=run.seed,
    )
    fp = ckpts.fingerprint(config, split_csv)
    dm.setup("fit")
    load_time = time.perf_counter() - t0
    resume = ckpts.resumable(ckpt_dir, fp)
    if resume is None:
        ckpts.clear(ckpt_dir)
    seed_everything(run.seed, workers=True, verbose=False)
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
    module = NucleiSegmenter(
        build_net(run.model.net),
        mean=mean,
        std=std,
        optimizer=instantiate(train.optimizer),
        scheduler=instantiate(train.scheduler) if train.scheduler is not None else None,
        scheduler_interval=train.scheduler_interval,
        positive_weight=train.positive_weight,
        seed=run.seed,
        meta=meta,
    )
    summary: dict[str, Any] = {
        "task": TASK,
        "model": run.model.name,
        "train_tiles": dm.counts["train"],
        "val_tiles": dm.counts["val"],
        "patch": train.patch,
        "patches_per_epoch": train.patches_per_epoch,
        "load_time_s": round(load_time, 3),
    }
    summary.update(
        train_lightning(
            module,
            dm,
            trainer_kwargs=run.trainer,
            epochs=train.epochs,
            monitor=train.monitor,
            mode=train.mode,
            early_stopping=train.early_stopping,
            ckpt_dir=ckpt_dir,
            live_dir=live_dir,
            resume=resume,
            callbacks=callbacks,
        )
    )
    live_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(live_dir / SUMMARY, summary)
    return summary
