"""One training run from params: data, model, Lightning Trainer (or a baseline), checkpoints.

``fit(params, ...)`` is what ``stages/train.py`` calls. It resumes from ``last.ckpt`` when that
checkpoint belongs to the same config and data and its run did not finish; otherwise it clears
the checkpoint folder and starts from scratch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dvclive import Live
from hydra.utils import instantiate
from lightning_fabric.utilities.seed import seed_everything
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from ihcflow.files import write_json_atomic
from ihcflow.training import checkpoints as ckpts
from ihcflow.training.baselines import fit_baseline
from ihcflow.training.datamodule import ImageDataModule
from ihcflow.training.lightning import (
    SUMMARY,
    check_accelerator,
    live_kwargs,
    rounded,
    train_lightning,
)
from ihcflow.training.module import CKPT_KEY, ImageClassifier
from ihcflow.training.params import TrainRun


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
        summary.update(
            train_lightning(
                build_module(run, dm, meta),
                dm,
                trainer_kwargs=run.trainer,
                epochs=run.train.epochs,
                monitor=run.train.monitor,
                mode=run.train.mode,
                early_stopping=run.train.early_stopping,
                ema_decay=run.train.ema_decay,
                ckpt_dir=ckpt_dir,
                live_dir=live_dir,
                resume=resume,
                callbacks=callbacks,
            )
        )
    live_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(live_dir / SUMMARY, summary)
    return summary


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
    with Live(**live_kwargs(live_dir, resume=False)) as live:
        for name, value in metrics.items():  # one step: dvc.yaml declares plots/metrics for all
            live.log_metric(name, value)
    monitor = run.train.monitor
    return {
        "epochs_run": 1,
        "monitor": monitor,
        "mode": run.train.mode,
        "best_score": metrics.get(monitor),
        "train_time_s": round(elapsed, 3),
        "train_images_per_s": rounded(len(dm.sets["train"]) / elapsed if elapsed else None),
    }
