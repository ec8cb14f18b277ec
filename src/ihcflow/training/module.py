"""The LightningModule: an injected network, loss, metrics, optimiser and scheduler."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ihcflow.model_format import PIXEL_MAX

CKPT_KEY = "ihcflow"  # the checkpoint entry holding what is needed to rebuild the model alone


def scale_pixels(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 RGB -> floats in [0, 1], the model's input (:mod:`ihcflow.model_format`)."""
    return x.to(dtype) / PIXEL_MAX


class Normalize(nn.Module):
    """(x - mean) / std per channel; part of the model so checkpoints and ONNX carry it."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TrainableModule(pl.LightningModule):
    """What every ihcflow LightningModule shares: the optimiser and scheduler from Hydra
    partials, per-step reseeding, epoch-level logging, and ``meta`` in every checkpoint.

    ``optimizer`` is a partial (params -> Optimizer); ``scheduler`` a partial (optimizer ->
    LRScheduler) or None. Arguments of the scheduler that depend on the run length
    (``total_steps``, ``T_max``) and ``max_lr`` (taken from the optimiser's lr) are filled in
    here when the config leaves them out.
    """

    def __init__(
        self,
        *,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "step",
        seed: int = 0,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler interval {scheduler_interval!r}, expected step or epoch")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.seed = seed
        self.meta = dict(meta or {})

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout draws from the global RNG: reseed it per step (and rank) so that the masks
        # depend only on the step, and a run resumed at epoch k continues exactly like an
        # uninterrupted one whatever else consumed random numbers in between.
        torch.manual_seed((self.seed * 100_003 + self.global_step) * 1_009 + self.global_rank)

    def _log_epoch(self, metrics: MetricCollection, loss: MeanMetric, loss_name: str) -> None:
        values = {**metrics.compute(), loss_name: loss.compute()}  # synced across ranks here
        self.log_dict(values, sync_dist=True)  # identical on every rank: the mean changes nothing
        metrics.reset()
        loss.reset()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        fill = self._scheduler_fill(optimizer)
        scheduler = self.scheduler_factory(optimizer, **fill)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def _scheduler_fill(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        factory = self.scheduler_factory
        assert factory is not None
        given = factory.keywords if isinstance(factory, functools.partial) else {}
        func = factory.func if isinstance(factory, functools.partial) else factory
        wanted = inspect.signature(func).parameters
        if self.scheduler_interval == "step":
            length = int(self.trainer.estimated_stepping_batches)
        else:
            length = int(self.trainer.max_epochs or 1)
        fill: dict[str, Any] = {}
        for name, value in (
            # OneCycleLR divides by its phase lengths: smoke runs of a few steps need a floor
            ("total_steps", max(length, 10)),
            ("T_max", length),
            ("max_lr", optimizer.param_groups[0]["lr"]),
        ):
            if name in wanted and given.get(name) is None:
                fill[name] = value
        return fill

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = dict(self.meta)


class ImageClassifier(TrainableModule):
    """Classifies float images in [0, 1]; ``meta`` is stored in every checkpoint it writes."""

    class_weights: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "step",
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        channels_last: bool = False,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            seed=seed,
            meta=meta,
        )
        self.normalize = Normalize(mean, std)
        self.net = net
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        weights = class_weights if class_weights is not None else torch.ones(num_classes)
        self.register_buffer("class_weights", weights.to(torch.float32), persistent=False)
        self.train_metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro")}, prefix="train/"
        )
        self.val_metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
                "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            },
            prefix="val/",
        )
        # Losses are averaged by torchmetrics too, and everything is logged from the epoch-end
        # hooks that every rank runs: an epoch value logged from training_step would be
        # synchronised lazily, and the progress bar asks for it on rank 0 only (DDP deadlock).
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, y, weight=self.class_weights, label_smoothing=self.label_smoothing
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_metrics.update(logits.detach(), y)
        self.train_loss.update(loss.detach(), weight=len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_epoch(self.train_metrics, self.train_loss, "train/loss")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_metrics.update(logits, y)
        self.val_loss.update(self._loss(logits, y), weight=len(y))

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics, self.val_loss, "val/loss")
