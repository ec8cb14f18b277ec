"""Augmentations, samplers and the split table reader of the train stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from ihcflow.config import ConfigError, typed
from ihcflow.training import TrainError
from ihcflow.training.augment import (
    Augment,
    AugmentParams,
    RandColorJitter,
    RandFlipRot90,
    RandStainJitter,
)
from ihcflow.training.datamodule import EpochSampler, read_training_split
from tests.helpers import conf_section


def _batch(n: int = 16, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_flips_and_rotations_only_move_pixels() -> None:
    x = _batch()
    out = RandFlipRot90(0.5, 0.5, rot90=True)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for a, b in zip(x, out, strict=True):
        # each output is one of the 8 symmetries of its input: exact, no interpolation
        variants = [torch.rot90(v, k, (-2, -1)) for v in (a, a.flip(-1)) for k in range(4)]
        assert any(torch.equal(b, v) for v in variants)
    assert not torch.equal(out, x)


def test_augmentation_is_reproducible_from_the_generator() -> None:
    aug = Augment(
        AugmentParams(
            hflip=0.5, vflip=0.5, rot90=True, stain_sigma=0.05, stain_bias=0.0,
            brightness=0.1, contrast=0.0, saturation=0.0,
        )
    )  # fmt: skip
    x = _batch()
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stain_jitter_without_jitter_is_identity_and_stays_in_range() -> None:
    x = _batch().clamp(0.01, 1.0)
    same = RandStainJitter(sigma=0.0, bias=0.0)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=1e-5)
    out = RandStainJitter(sigma=0.2, bias=0.05)(x, torch.Generator().manual_seed(0))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out - x).abs().max() > 0.01


def test_colour_jitter_keeps_range() -> None:
    out = RandColorJitter(0.3, 0.3, 0.3)(_batch(), torch.Generator().manual_seed(0))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_augment_rejects_unknown_keys_and_bad_values() -> None:
    augment = {**conf_section("train")["augment"], "hflp": 0.5}
    with pytest.raises(ConfigError, match=r"params `train.augment.hflp`: unknown key"):
        typed(augment, AugmentParams, "train.augment")
    with pytest.raises(ValueError, match="hflip probability is 1.5"):
        RandFlipRot90(hflip=1.5)
    with pytest.raises(ValueError, match=r"expected a batch \(N, C, H, W\)"):
        RandFlipRot90()(torch.rand(3, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match=r"expected a batch \(N, 3, H, W\)"):
        RandStainJitter()(torch.rand(2, 4, 8, 8), torch.Generator())


def test_epoch_sampler_depends_on_seed_and_epoch_only() -> None:
    labels = torch.tensor([0] * 30 + [1] * 10)
    a = EpochSampler(labels, seed=3)
    b = EpochSampler(labels, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert sorted(a) == list(range(40))  # a permutation: every image once per epoch
    b.set_epoch(3)
    assert list(a) != list(b)


def test_balanced_sampler_draws_classes_equally() -> None:
    labels = torch.tensor([0] * 900 + [1] * 100)
    sampler = EpochSampler(labels, seed=0, balanced=True)
    drawn = labels[list(sampler)]
    assert len(drawn) == 1000
    assert 0.4 < drawn.float().mean() < 0.6


def _write_split(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _row(cls: str, split: str, i: int) -> dict:
    return {
        "path": f"{cls}/{i}.png",
        "sha256": f"{i:064x}",
        "class": cls,
        "split": split,
        "group": "",
        "image": f"processed/images/{i:064x}.png",
    }


def test_read_split_sorted_classes_and_errors(tmp_path: Path) -> None:
    rows = [_row("b", "train", 1), _row("a", "train", 2), _row("a", "val", 3), _row("c", "test", 4)]
    with pytest.raises(TrainError, match=r"class\(es\) \['c'\] have no training images"):
        read_training_split(_write_split(tmp_path / "s.csv", rows))
    rows[-1] = _row("b", "test", 4)
    frame, classes = read_training_split(_write_split(tmp_path / "s.csv", rows))
    assert classes == ["a", "b"] and len(frame) == 4
    no_val = [r for r in rows if r["split"] != "val"]
    with pytest.raises(TrainError, match="no 'val' rows"):
        read_training_split(_write_split(tmp_path / "s.csv", no_val))
    bad = tmp_path / "bad.csv"
    pd.DataFrame(rows).drop(columns=["image"]).to_csv(bad, index=False)
    with pytest.raises(TrainError, match=r"bad.csv: missing column\(s\) \['image'\]"):
        read_training_split(bad)
    with pytest.raises(TrainError, match="split table not found"):
        read_training_split(tmp_path / "absent.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TrainError, match=r"empty.csv: cannot read as CSV"):
        read_training_split(empty)
