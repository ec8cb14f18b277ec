"""Segmentation training on a tiny generated sample: checkpoints that rebuild their model
alone, determinism, and an ONNX export with dynamic height and width that matches them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from omegaconf import DictConfig

from ihcflow.segmentation.fit import fit_segmentation
from ihcflow.segmentation.inference import OnnxSessionRunner, TilingConfig, segment
from ihcflow.segmentation.instances import PostprocessConfig
from ihcflow.segmentation.predictor import load_seg_predictor, verify_onnx
from ihcflow.training import TrainError
from ihcflow.training import checkpoints as ckpts
from tests.helpers import compose
from tests.helpers.data import write_nuclei_split
from tests.helpers.models import SEG_TINY


def make_cfg(*overrides: str) -> DictConfig:
    return compose([*SEG_TINY, *overrides])


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    write_nuclei_split(root)
    return root


def _fit(tiles: Path, out: Path, *overrides: str) -> dict:
    return fit_segmentation(
        make_cfg(*overrides),
        split_csv=tiles / "split.csv",
        root=tiles / "nuclei",
        ckpt_dir=out / "ckpt",
        live_dir=out / "live",
    )


@pytest.mark.slow
def test_train_export_and_segment(tiles: Path, tmp_path: Path) -> None:
    summary = _fit(tiles, tmp_path / "a")
    assert summary["task"] == "segmentation" and summary["epochs_run"] == 2
    assert summary["train_tiles"] == 2 and summary["val_tiles"] == 1
    assert (tmp_path / "a" / "live" / "summary.json").is_file()
    assert (tmp_path / "a" / "live" / "metrics.json").is_file()
    best = tmp_path / "a" / "ckpt" / ckpts.BEST
    predictor = load_seg_predictor(best)
    assert predictor.size_multiple == 4

    # the same config and data give the same weights
    _fit(tiles, tmp_path / "b")
    assert predictor.digest == load_seg_predictor(tmp_path / "b" / "ckpt" / ckpts.BEST).digest

    onnx_path = tmp_path / "model.onnx"
    predictor.export_onnx(onnx_path)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((64, 64), (96, 68))]
    report = verify_onnx(onnx_path, predictor, crops, tolerance=1e-4)
    assert report["sizes"] == ["64x64", "68x96"] and report["max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="at least two image sizes"):
        verify_onnx(onnx_path, predictor, crops[:1], tolerance=1e-4)

    # the registered model and the checkpoint segment a tile (of any size) alike
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    image = rng.integers(0, 256, (150, 110, 3), dtype=np.uint8)
    tiling, post = TilingConfig(roi=64, overlap=0.25), PostprocessConfig()
    a = segment(image, OnnxSessionRunner(session), tiling, post)
    b = segment(image, predictor.runner(), tiling, post)
    assert np.abs(a.probs.astype(int) - b.probs).max() <= 1
    assert a.probs.shape == (4, 150, 110)
    with torch.inference_mode():
        probs = predictor.model(torch.rand(1, 3, 64, 64))
    assert torch.allclose(probs[:, :3].sum(dim=1), torch.ones(1, 64, 64), atol=1e-5)


@pytest.mark.slow
def test_patch_must_fit_the_network(tiles: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="66 is not a multiple of the network's total stride 4"):
        _fit(tiles, tmp_path, "segmentation.train.patch=66")
