"""The training data: ``processed/split.csv`` and the preprocessed PNGs, as a LightningDataModule.

Batches leave the DataLoader as ``(uint8 (N, 3, S, S) RGB, int64 labels)``: cheap to collate
and to move to a GPU. :meth:`ImageDataModule.on_after_batch_transfer` turns them into floats in
[0, 1] and, while training, augments them on the device. Normalisation (per-channel mean/std
of the training split) happens inside the model, so the checkpoint and the ONNX export carry it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ihcflow.dataset import load_image, read_split
from ihcflow.training import TrainError
from ihcflow.training.augment import Augment, AugmentParams
from ihcflow.training.module import scale_pixels

IMBALANCE_MODES = ("none", "class_weights", "balanced_sampler")


def read_training_split(split_csv: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[str]]:
    """The split table (:func:`ihcflow.dataset.read_split`), checked for what training needs;
    returns it and the sorted class names (their index is the label)."""
    frame = read_split(split_csv, error=TrainError)
    classes = sorted(frame["class"].unique())
    if len(classes) < 2:
        raise TrainError(f"{split_csv}: {len(classes)} class(es) {classes}, need at least 2")
    train_classes = set(frame.loc[frame["split"] == "train", "class"])
    absent = [c for c in classes if c not in train_classes]
    if absent:
        raise TrainError(f"{split_csv}: class(es) {absent} have no training images")
    if not (frame["split"] == "val").any():
        raise TrainError(
            f"{split_csv}: no 'val' rows; training needs a validation split to choose the best "
            "checkpoint and to stop early (set split.val > 0)"
        )
    return frame, classes


def _passthrough(batch: Any) -> Any:
    """collate_fn for datasets whose ``__getitems__`` already returns a stacked batch."""
    return batch


class ImageSet(Dataset):
    """Images and labels of one split; ``__getitems__`` returns a stacked uint8 batch.

    In memory (``images`` given, (N, 3, S, S) uint8) a batch is one tensor index; otherwise
    each image is decoded from ``paths`` when asked for (for sets too large for memory).
    """

    def __init__(
        self,
        labels: Sequence[int],
        *,
        images: torch.Tensor | None = None,
        paths: Sequence[Path] | None = None,
        size: int,
    ) -> None:
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if (images is None) == (paths is None):
            raise ValueError("give exactly one of images (in memory) or paths (lazy)")
        self.images = images
        self.paths = list(paths) if paths is not None else None
        self.size = size

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if self.images is not None:
            return self.images[idx], self.labels[idx]
        assert self.paths is not None
        arrays = [load_image(self.paths[i], self.size, error=TrainError) for i in idx.tolist()]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return batch, self.labels[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


class EpochSampler(Sampler[int]):
    """Shuffles (or, when ``balanced``, samples classes equally, with replacement) per epoch.

    The order depends only on ``seed`` and the epoch Lightning sets through ``set_epoch``, so a
    run resumed at epoch k sees the same batches as an uninterrupted one.
    """

    def __init__(self, labels: torch.Tensor, seed: int, balanced: bool = False) -> None:
        self.labels = labels
        self.seed = seed
        self.balanced = balanced
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        if self.balanced:
            counts = torch.bincount(self.labels).to(torch.float64)
            weights = 1.0 / counts[self.labels]
            order = torch.multinomial(weights, n, replacement=True, generator=gen)
        else:
            order = torch.randperm(n, generator=gen)
        return iter(order.tolist())


class ImageDataModule(pl.LightningDataModule):
    """Train/val/test sets from ``split.csv``; images decoded once into memory when they fit."""

    def __init__(
        self,
        split_csv: str | os.PathLike[str],
        root: str | os.PathLike[str],
        *,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int | str,
        augment: AugmentParams | None,
        imbalance: str,
        seed: int,
        image_size: int | None,
        in_memory_max_bytes: int,
    ) -> None:
        """Every argument is a ``train`` param (``fit.build_datamodule``), none has a default
        of its own."""
        super().__init__()
        if imbalance not in IMBALANCE_MODES:
            raise TrainError(f"train.imbalance is {imbalance!r}, expected one of {IMBALANCE_MODES}")
        if batch_size < 1 or eval_batch_size < 1:
            raise TrainError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        self.split_csv = Path(split_csv)
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers_cfg = num_workers
        self.augment = Augment(augment)
        self.imbalance = imbalance
        self.seed = seed
        self.image_size = image_size
        self.in_memory_max_bytes = in_memory_max_bytes
        self.frame, self.class_names = read_training_split(self.split_csv)
        self.sets: dict[str, ImageSet] = {}
        self.mean = torch.zeros(3)
        self.std = torch.ones(3)
        self._gen_key: tuple[int, int] | None = None
        self._gen: torch.Generator | None = None

    def __getstate__(self) -> dict[str, Any]:
        # torch.Generator does not survive pickling into ddp_spawn workers: rebuild it there
        state = dict(self.__dict__)
        state["_gen"], state["_gen_key"] = None, None
        return state

    # -- set-up --------------------------------------------------------------------------------

    def counts(self, split: str = "train") -> list[int]:
        labels = self.frame.loc[self.frame["split"] == split, "class"]
        return [int((labels == c).sum()) for c in self.class_names]

    def class_weights(self) -> torch.Tensor:
        """Inverse-frequency weights n / (K * n_c) of the training split (1.0 when balanced)."""
        counts = torch.tensor(self.counts("train"), dtype=torch.float32)
        return counts.sum() / (len(counts) * counts)

    @property
    def in_memory(self) -> bool:
        return all(s.in_memory for s in self.sets.values()) if self.sets else False

    def _size(self) -> int:
        if self.image_size is None:
            first = self.root / self.frame["image"].iloc[0]
            self.image_size = int(load_image(first, None, error=TrainError).shape[0])
        return self.image_size

    def setup(self, stage: str | None = None) -> None:
        wanted = ("train", "val") if stage in ("fit", None) else ("val",)
        if stage in ("test", "predict", None):
            wanted = (*wanted, "test")
        todo = [s for s in wanted if s not in self.sets]
        if not todo:
            return
        size = self._size()
        n_rows = int(self.frame["split"].isin(todo).sum())
        fits = n_rows * size * size * 3 <= self.in_memory_max_bytes
        index = {c: i for i, c in enumerate(self.class_names)}
        for split in todo:
            rows = self.frame[self.frame["split"] == split]
            labels = [index[c] for c in rows["class"]]
            paths = [self.root / p for p in rows["image"]]
            if fits:
                images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
                for i, path in enumerate(paths):
                    images[i] = torch.from_numpy(load_image(path, size, error=TrainError)).permute(
                        2, 0, 1
                    )
                self.sets[split] = ImageSet(labels, images=images, size=size)
            else:
                self.sets[split] = ImageSet(labels, paths=paths, size=size)
        if "train" in todo:
            self.mean, self.std = self._channel_stats(self.sets["train"])

    @staticmethod
    def _channel_stats(data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (images in [0, 1]) of a split, streamed in chunks."""
        total = torch.zeros(3, dtype=torch.float64)
        total_sq = torch.zeros(3, dtype=torch.float64)
        count = 0
        for start in range(0, len(data), 1024):
            x, _ = data.__getitems__(range(start, min(start + 1024, len(data))))
            x = scale_pixels(x, torch.float64)
            total += x.sum(dim=(0, 2, 3))
            total_sq += (x * x).sum(dim=(0, 2, 3))
            count += x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
        return mean.to(torch.float32), std.to(torch.float32)

    # -- loaders -------------------------------------------------------------------------------

    @property
    def num_workers(self) -> int:
        """``auto``: 0 when in memory (a batch is one index op), else up to 4 decoding workers."""
        if self.num_workers_cfg == "auto":
            return 0 if self.in_memory else max(1, min(4, (os.cpu_count() or 1) - 1))
        workers = int(self.num_workers_cfg)
        if workers < 0:
            raise TrainError(f"train.num_workers is {workers}, expected >= 0 or 'auto'")
        return workers

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.sets:
            raise RuntimeError(f"the {split!r} split is not set up; call setup() first")
        data = self.sets[split]
        sampler: Sampler[int] | None = None
        if train:
            sampler = EpochSampler(data.labels, self.seed, self.imbalance == "balanced_sampler")
        batch_size = self.batch_size if train else self.eval_batch_size
        workers = self.num_workers
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            # a last batch of one image would break BatchNorm in training mode
            drop_last=train and len(data) > batch_size,
            collate_fn=_passthrough,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # -- on the device -------------------------------------------------------------------------

    def prepare_batch(
        self, batch: tuple[torch.Tensor, torch.Tensor], *, train: bool, epoch: int, rank: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch -> float [0, 1], augmented when ``train`` (seeded by seed, epoch, rank)."""
        x, y = batch
        x = scale_pixels(x)
        if train and self.augment:
            key = (epoch, rank)
            if self._gen is None or key != self._gen_key:
                self._gen = torch.Generator()
                self._gen.manual_seed((self.seed * 100_003 + epoch) * 1_009 + rank)
                self._gen_key = key
            x = self.augment(x, self._gen)
        return x, y

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        train = bool(trainer is not None and trainer.training)
        epoch = trainer.current_epoch if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        return self.prepare_batch(batch, train=train, epoch=epoch, rank=rank)
