"""Training data for segmentation: random patches of whole tiles, as a LightningDataModule.

Tiles (a folder in layout 1 of ``ihcflow.segmentation.layout``, PNG images and masks, and a
split table naming each tile's split) are decoded once into memory with their targets
(``labels.targets``). An epoch is ``patches_per_epoch`` random square patches: tile chosen in
proportion to its area, position uniform, drawn from a generator seeded by (seed, epoch,
index), so a resumed run sees the same patches. Validation uses a fixed grid of patches.

Batches leave the DataLoader as uint8 ``(x (N, 3, P, P), seg (N, P, P), pos (N, P, P))``;
:meth:`NucleiDataModule.on_after_batch_transfer` makes ``x`` float in [0, 1] and, while
training, flips/rotates image and targets together and jitters stains and colours (the
classifier's transforms, ``ihcflow.training.augment``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ihcflow.images.codec import ImageError
from ihcflow.segmentation import layout
from ihcflow.segmentation.labels import targets
from ihcflow.segmentation.tiling import starts
from ihcflow.tables import NUCLEI_SPLIT, read_table
from ihcflow.training import TrainError
from ihcflow.training.augment import Augment, AugmentParams, RandFlipRot90


class SegDataError(TrainError):
    """The split table or a tile it names cannot be used for training."""


@dataclass(frozen=True)
class Tile:
    image: np.ndarray  # (3, H, W) uint8
    seg: np.ndarray  # (H, W) uint8: labels.SEG_*
    pos: np.ndarray  # (H, W) uint8: 0/1, IGNORE


def load_tiles(root: Path, names: Sequence[str], boundary_px: int, min_size: int) -> list[Tile]:
    """Decode tiles and build their targets; tiles smaller than ``min_size`` are mirrored
    out to it (image and targets alike)."""
    tiles = []
    loaded = layout.load_tiles(root, names)
    for name in names:
        try:
            _, got = next(loaded)
        except (ImageError, OSError) as exc:
            raise SegDataError(f"{root}: tile {name!r}: {exc}") from None
        seg, pos = targets(got.annotation, boundary_px)
        rgb = got.rgb
        h, w = seg.shape
        if h < min_size or w < min_size:
            pad = (0, max(0, min_size - h), 0, max(0, min_size - w))
            border = cv2.BORDER_REFLECT_101 if min(h, w) > 1 else cv2.BORDER_REPLICATE
            rgb = cv2.copyMakeBorder(rgb, *pad, border)
            seg = cv2.copyMakeBorder(seg, *pad, border)
            pos = cv2.copyMakeBorder(pos, *pad, border)
        tiles.append(Tile(np.ascontiguousarray(rgb.transpose(2, 0, 1)), seg, pos))
    return tiles


def _stack(
    tiles: Sequence[Tile], crops: Sequence[tuple[int, int, int]], size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, segs, poss = [], [], []
    for t, y, x in crops:
        tile = tiles[t]
        xs.append(tile.image[:, y : y + size, x : x + size])
        segs.append(tile.seg[y : y + size, x : x + size])
        poss.append(tile.pos[y : y + size, x : x + size])
    return (
        torch.from_numpy(np.stack(xs)),
        torch.from_numpy(np.stack(segs)),
        torch.from_numpy(np.stack(poss)),
    )


def _passthrough(batch: Any) -> Any:
    return batch


class PatchSampler(Sampler[int]):
    """Yields ``epoch * length + i``: every patch index is unique over the whole run."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        base = self.epoch * self.length
        return iter(range(base, base + self.length))


class RandomPatches(Dataset):
    """Patch ``index`` is a crop drawn by a generator seeded with (seed, index)."""

    def __init__(self, tiles: Sequence[Tile], size: int, seed: int, length: int) -> None:
        if not tiles:
            raise SegDataError("no training tiles")
        self.tiles, self.size, self.seed, self.length = list(tiles), size, seed, length
        area = np.array([t.seg.size for t in self.tiles], np.float64)
        self.weights = area / area.sum()

    def __len__(self) -> int:
        return self.length

    def crop(self, index: int) -> tuple[int, int, int]:
        rng = np.random.default_rng([self.seed, index])
        t = int(rng.choice(len(self.tiles), p=self.weights))
        h, w = self.tiles[t].seg.shape
        return t, int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))

    def __getitems__(self, indices: Sequence[int]):
        return _stack(self.tiles, [self.crop(int(i)) for i in indices], self.size)

    def __getitem__(self, index: int):
        x, seg, pos = self.__getitems__([index])
        return x[0], seg[0], pos[0]


class GridPatches(Dataset):
    """A fixed grid of patches over every tile (for validation), at most ``limit``, spread
    evenly over the list."""

    def __init__(self, tiles: Sequence[Tile], size: int, limit: int) -> None:
        self.tiles, self.size = list(tiles), size
        crops = [
            (t, y, x)
            for t, tile in enumerate(self.tiles)
            for y in starts(tile.seg.shape[0], size, 0.0)
            for x in starts(tile.seg.shape[1], size, 0.0)
        ]
        if len(crops) > limit:
            keep = np.unique(np.linspace(0, len(crops) - 1, limit).round().astype(int))
            crops = [crops[i] for i in keep]
        self.crops = crops

    def __len__(self) -> int:
        return len(self.crops)

    def __getitems__(self, indices: Sequence[int]):
        return _stack(self.tiles, [self.crops[int(i)] for i in indices], self.size)

    def __getitem__(self, index: int):
        x, seg, pos = self.__getitems__([index])
        return x[0], seg[0], pos[0]


def read_seg_split(split_csv: str | os.PathLike[str]) -> pd.DataFrame:
    frame = read_table(split_csv, NUCLEI_SPLIT, columns=("name", "split"), error=SegDataError)
    for split in ("train", "val"):
        if not (frame["split"] == split).any():
            raise SegDataError(f"{split_csv}: no {split!r} tiles; training needs both")
    return frame


class NucleiDataModule(pl.LightningDataModule):
    def __init__(
        self,
        split_csv: str | os.PathLike[str],
        root: str | os.PathLike[str],
        *,
        patch: int,
        batch_size: int,
        patches_per_epoch: int,
        val_patches: int,
        boundary_px: int,
        augment: AugmentParams | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if patch < 8:
            raise ValueError(f"patch is {patch} px, expected at least 8")
        if batch_size < 1 or patches_per_epoch < batch_size or val_patches < 1:
            raise ValueError(
                f"batch_size {batch_size}, patches_per_epoch {patches_per_epoch}, val_patches "
                f"{val_patches}: need 1 <= batch_size <= patches_per_epoch and val_patches >= 1"
            )
        self.split_csv, self.root = Path(split_csv), Path(root)
        self.patch, self.batch_size = patch, batch_size
        self.patches_per_epoch, self.val_patches = patches_per_epoch, val_patches
        self.boundary_px, self.seed = boundary_px, seed
        # image and targets flip and rotate together; only the image's colours are jittered
        a = augment or AugmentParams(0.0, 0.0, False, 0.0, 0.0, 0.0, 0.0, 0.0)
        self.flips = RandFlipRot90(a.hflip, a.vflip, a.rot90)
        self.colour = Augment(replace(a, hflip=0.0, vflip=0.0, rot90=False))
        self.frame = read_seg_split(self.split_csv)
        self.sets: dict[str, Dataset] = {}
        self.counts: dict[str, int] = {}
        self.mean = torch.zeros(3)
        self.std = torch.ones(3)
        self._gen: torch.Generator | None = None
        self._gen_key: tuple[int, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # torch.Generator does not survive pickling into ddp_spawn workers: rebuild it there
        state = dict(self.__dict__)
        state["_gen"], state["_gen_key"] = None, None
        return state

    def names(self, split: str) -> list[str]:
        return self.frame.loc[self.frame["split"] == split, "name"].tolist()

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        train = load_tiles(self.root, self.names("train"), self.boundary_px, self.patch)
        val = load_tiles(self.root, self.names("val"), self.boundary_px, self.patch)
        self.sets["train"] = RandomPatches(train, self.patch, self.seed, self.patches_per_epoch)
        self.sets["val"] = GridPatches(val, self.patch, self.val_patches)
        self.counts = {"train": len(train), "val": len(val)}
        total = torch.zeros(3, dtype=torch.float64)
        total_sq = torch.zeros(3, dtype=torch.float64)
        n = 0
        for tile in train:
            x = torch.from_numpy(tile.image).to(torch.float64) / 255.0
            total += x.sum(dim=(1, 2))
            total_sq += (x * x).sum(dim=(1, 2))
            n += x.shape[1] * x.shape[2]
        mean = total / n
        self.mean = mean.to(torch.float32)
        std = (total_sq / n - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
        self.std = std.to(torch.float32)

    def _loader(self, split: str, train: bool) -> DataLoader:
        data = self.sets[split]
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=PatchSampler(self.patches_per_epoch) if train else None,
            shuffle=False,
            drop_last=train,
            collate_fn=_passthrough,
            num_workers=0,  # patches are slices of tiles in memory: workers would only add IPC
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def prepare_batch(
        self, batch: Sequence[torch.Tensor], *, train: bool, epoch: int, rank: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 batch -> float image in [0, 1], int64 seg, uint8 pos; augmented if ``train``."""
        x, seg, pos = batch
        x = x.to(torch.float32) / 255.0
        if train:
            key = (epoch, rank)
            if self._gen is None or key != self._gen_key:
                self._gen = torch.Generator()
                self._gen.manual_seed((self.seed * 100_003 + epoch) * 1_009 + rank)
                self._gen_key = key
            both = torch.cat([x, seg[:, None].to(x.dtype), pos[:, None].to(x.dtype)], dim=1)
            both = self.flips(both, self._gen)
            x, seg, pos = both[:, :3], both[:, 3].round(), both[:, 4].round()
            if self.colour:
                x = self.colour(x.contiguous(), self._gen)
        return x.contiguous(), seg.to(torch.int64), pos.to(torch.uint8)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        train = bool(trainer is not None and trainer.training)
        epoch = trainer.current_epoch if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        return self.prepare_batch(batch, train=train, epoch=epoch, rank=rank)
