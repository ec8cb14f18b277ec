"""The segmentation LightningModule: an injected network with four output channels, the loss,
metrics, and the probabilities the exported model returns.

Output channels (``instances.CHANNELS``): three logits for background / nucleus interior /
nucleus boundary (softmax; Dice + cross-entropy, MONAI's ``DiceCELoss``, Dice without the
background class, which would dominate it) and one logit for DAB positivity (sigmoid; binary
cross-entropy over the pixels of classified nuclei only).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score

from ihcflow.segmentation.labels import IGNORE, SEG_BACKGROUND, SEG_BOUNDARY, SEG_CLASSES
from ihcflow.training.module import Normalize, TrainableModule

with warnings.catch_warnings():
    # MONAI 1.6 imports all its networks, one of which uses torch.jit.interface (deprecated)
    warnings.filterwarnings("ignore", r"`torch\.jit\.interface` is deprecated", DeprecationWarning)
    from monai.losses import DiceCELoss

OUT_CHANNELS = SEG_CLASSES + 1


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(N, 4, H, W) logits -> softmax over the three shape classes, sigmoid of positivity."""
    return torch.cat(
        [torch.softmax(logits[:, :SEG_CLASSES], dim=1), torch.sigmoid(logits[:, SEG_CLASSES:])],
        dim=1,
    )


class SegmentationNet(nn.Module):
    """float [0, 1] RGB (N, 3, H, W) -> probabilities (N, 4, H, W): what is exported."""

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.net(self.normalize(x)))


class NucleiSegmenter(TrainableModule):
    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "step",
        positive_weight: float = 1.0,
        seed: int = 0,
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
        self.positive_weight = positive_weight
        self.shape_loss = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, batch=True
        )
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.train_metrics = MetricCollection({"dice": BinaryF1Score()}, prefix="train/")
        self.val_metrics = MetricCollection(
            {
                "dice": BinaryF1Score(),  # nucleus pixels vs background: pixel Dice
                "boundary_f1": BinaryF1Score(),  # the class that separates touching nuclei
                "positive_acc": BinaryAccuracy(ignore_index=IGNORE),
            },
            prefix="val/",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def loss(self, logits: torch.Tensor, seg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        shape = self.shape_loss(logits[:, :SEG_CLASSES], seg[:, None])
        known = pos != IGNORE
        if not known.any():
            return shape
        positivity = F.binary_cross_entropy_with_logits(
            logits[:, SEG_CLASSES][known], pos[known].to(logits.dtype)
        )
        return shape + self.positive_weight * positivity

    def _step(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, seg, pos = batch
        logits = self(x)
        return logits, self.loss(logits, seg, pos)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, loss = self._step(batch)
        nucleus = logits[:, :SEG_CLASSES].detach().argmax(dim=1) != SEG_BACKGROUND
        self.train_metrics.update(nucleus.ravel(), (batch[1] != SEG_BACKGROUND).ravel())
        self.train_loss.update(loss.detach(), weight=len(batch[0]))
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_epoch(self.train_metrics, self.train_loss, "train/loss")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        logits, loss = self._step(batch)
        _, seg, pos = batch
        shape = logits[:, :SEG_CLASSES].argmax(dim=1)
        self.val_metrics["dice"].update(
            (shape != SEG_BACKGROUND).ravel(), (seg != SEG_BACKGROUND).ravel()
        )
        self.val_metrics["boundary_f1"].update(
            (shape == SEG_BOUNDARY).ravel(), (seg == SEG_BOUNDARY).ravel()
        )
        positive = (logits[:, SEG_CLASSES] > 0).to(torch.uint8)
        self.val_metrics["positive_acc"].update(positive.ravel(), pos.ravel())
        self.val_loss.update(loss, weight=len(batch[0]))

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics, self.val_loss, "val/loss")
