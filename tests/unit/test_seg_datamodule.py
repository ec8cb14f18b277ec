"""Training patches: deterministic per (seed, epoch, index); targets move with the image."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from ihcflow.segmentation.datamodule import NucleiDataModule, SegDataError
from ihcflow.segmentation.labels import IGNORE, SEG_BACKGROUND
from ihcflow.training.augment import AugmentParams
from tests.helpers.data import write_nuclei_split

AUGMENT = AugmentParams(0.5, 0.5, True, 0.1, 0.02, 0.0, 0.0, 0.0)
FLIPS = AugmentParams(0.5, 0.5, True, 0.0, 0.0, 0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nuclei")
    write_nuclei_split(root)
    return root


def _dm(root: Path, **kw) -> NucleiDataModule:
    args = {
        "patch": 64,
        "batch_size": 4,
        "patches_per_epoch": 8,
        "val_patches": 3,
        "boundary_px": 2,
        "augment": AUGMENT,
        "seed": 3,
    }
    dm = NucleiDataModule(root / "split.csv", root / "nuclei", **{**args, **kw})
    dm.setup("fit")
    return dm


def _epoch(dm: NucleiDataModule, epoch: int) -> list[tuple[torch.Tensor, ...]]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
    return [dm.prepare_batch(b, train=True, epoch=epoch) for b in loader]


def test_patches_depend_on_seed_and_epoch_only(tiles: Path) -> None:
    a, b = _dm(tiles), _dm(tiles)
    first, again = _epoch(a, 1), _epoch(b, 1)
    for x, y in zip(first, again, strict=True):
        for s, t in zip(x, y, strict=True):
            assert torch.equal(s, t)
    other = _epoch(b, 2)
    assert not torch.equal(first[0][0], other[0][0])
    x, seg, pos = first[0]
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert seg.dtype == torch.int64 and set(seg.unique().tolist()) <= {0, 1, 2}
    assert pos.dtype == torch.uint8 and set(pos.unique().tolist()) <= {0, 1, IGNORE}
    assert a.counts == {"train": 2, "val": 1}
    assert a.mean.shape == (3,) and (a.std > 0).all()


def test_targets_are_flipped_and_rotated_with_the_image(tiles: Path) -> None:
    """Without colour jitter an augmented patch is an exact flip/rotation of the plain one,
    and its targets are the same flip/rotation of the plain targets."""
    dm = _dm(tiles, augment=FLIPS)
    plain = _dm(tiles, augment=None)
    batch = next(iter(dm.train_dataloader()))
    x, seg, pos = dm.prepare_batch(batch, train=True, epoch=0)
    x0, seg0, pos0 = plain.prepare_batch(batch, train=True, epoch=0)
    moved = 0
    for i in range(len(x)):
        found = False
        for k in range(4):
            for flip in (False, True):
                img = torch.rot90(x0[i], k, dims=(-2, -1))
                s = torch.rot90(seg0[i], k, dims=(-2, -1))
                p = torch.rot90(pos0[i], k, dims=(-2, -1))
                if flip:
                    img, s, p = img.flip(-1), s.flip(-1), p.flip(-1)
                if torch.equal(img, x[i]):
                    assert torch.equal(s, seg[i]) and torch.equal(p, pos[i])
                    found = True
                    moved += int(k > 0 or flip)
        assert found
    assert moved > 0


def test_validation_is_a_fixed_grid_and_small_tiles_are_mirrored(tiles: Path) -> None:
    dm = _dm(tiles, patch=128, val_patches=10)  # tiles are 96 px: mirrored out to 128
    batches = list(dm.val_dataloader())
    assert sum(len(b[0]) for b in batches) == 1
    x, seg, _ = dm.prepare_batch(batches[0], train=False, epoch=0)
    assert x.shape[-2:] == (128, 128)
    assert (seg[0, 100:] != SEG_BACKGROUND).any()  # mirrored nuclei keep their labels


def test_bad_split_tables(tiles: Path, tmp_path: Path) -> None:
    pd.DataFrame({"name": ["a"], "split": ["train"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(SegDataError, match="no 'val' tiles"):
        NucleiDataModule(
            tmp_path / "s.csv", tiles, patch=64, batch_size=2, patches_per_epoch=4,
            val_patches=2, boundary_px=2,
        )  # fmt: skip
    pd.DataFrame({"name": ["nope", "x"], "split": ["train", "val"]}).to_csv(
        tmp_path / "s.csv", index=False
    )
    dm = NucleiDataModule(
        tmp_path / "s.csv", tiles / "nuclei", patch=64, batch_size=2, patches_per_epoch=4,
        val_patches=2, boundary_px=2,
    )  # fmt: skip
    with pytest.raises(SegDataError, match=r"nuclei: tile 'nope': .*nope.png"):
        dm.setup("fit")
