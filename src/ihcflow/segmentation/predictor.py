"""Rebuild a segmentation model from its checkpoint alone, run it, export it to ONNX.

ONNX contract: input ``image`` float32 (N, 3, H, W) RGB in [0, 1], with N, H and W dynamic
(H and W multiples of the network's total stride, ``size_multiple``); output ``probs`` float32
(N, 4, H, W) (``instances.CHANNELS``). Normalisation is inside the graph.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate

from ihcflow.segmentation.inference import INPUT_NAME, OUTPUT_NAME, OnnxSessionRunner
from ihcflow.segmentation.module import OUT_CHANNELS, SegmentationNet
from ihcflow.training.checkpoints import load_checkpoint, model_digest
from ihcflow.training.module import CKPT_KEY, Normalize

TASK = "segmentation"


def build_net(net_cfg: Mapping[str, Any]) -> torch.nn.Module:
    """The network of ``segmentation.model.net`` with the channels this task fixes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.interface` is deprecated")
        return instantiate(dict(net_cfg), spatial_dims=2, in_channels=3, out_channels=OUT_CHANNELS)


def size_multiple(net_cfg: Mapping[str, Any]) -> int:
    """What H and W must be multiples of: the product of the network's strides."""
    strides = net_cfg.get("strides")
    if not strides:
        raise ValueError(
            f"segmentation.model.net ({net_cfg.get('_target_')}) has no 'strides': cannot tell "
            "which image sizes it takes"
        )
    return int(math.prod(int(s) for s in strides))


class TorchRunner:
    """A ``tiling.Runner`` for a torch module (numpy in, numpy out, no gradients)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(x))).numpy()


class SegPredictor:
    """The network of a segmentation checkpoint, with what is needed to use it."""

    def __init__(self, ckpt: Mapping[str, Any], source: str) -> None:
        meta = ckpt[CKPT_KEY]
        if meta.get("task") != TASK:
            raise ValueError(f"{source}: not a segmentation checkpoint (task {meta.get('task')!r})")
        try:
            self.config: dict[str, Any] = dict(meta["config"])
            net_cfg = self.config["model"]["net"]
            mean, std = meta["mean"], meta["std"]
        except KeyError as exc:
            raise ValueError(f"{source}: checkpoint lacks {exc.args[0]!r}") from None
        self.meta = dict(meta)
        self.source = source
        self.size_multiple = size_multiple(net_cfg)
        self.model = SegmentationNet(Normalize(mean, std), build_net(net_cfg))
        state = {
            k: v for k, v in ckpt["state_dict"].items() if k.split(".")[0] in {"normalize", "net"}
        }
        self.model.load_state_dict(state)
        self.model.eval()
        self.digest = model_digest(ckpt)

    def runner(self) -> TorchRunner:
        return TorchRunner(self.model)

    def export_onnx(self, path: str | os.PathLike[str]) -> None:
        """Write a single-file ONNX model with dynamic batch, height and width."""
        import onnx

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        m = self.size_multiple
        example = torch.rand(2, 3, 4 * m, 6 * m, generator=torch.Generator().manual_seed(0))
        dims = {
            "x": {
                0: torch.export.Dim("batch", min=1, max=4096),
                2: m * torch.export.Dim("height_blocks", min=1, max=65_536 // m),
                3: m * torch.export.Dim("width_blocks", min=1, max=65_536 // m),
            }
        }
        registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registry_log.level
        registry_log.setLevel(logging.ERROR)  # one warning per torchvision op it cannot find
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates a pytree check the exporter itself still makes
                warnings.filterwarnings("ignore", r".*LeafSpec.*", FutureWarning)
                program = torch.onnx.export(
                    self.model.eval(),
                    (example,),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=dims,
                    external_data=False,
                    verbose=False,
                )
        finally:
            registry_log.setLevel(level)
        assert program is not None
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as tmp:
            part = Path(tmp) / "model.onnx"
            program.save(str(part), external_data=False)
            onnx.checker.check_model(onnx.load(str(part)))
            part.replace(path)


def verify_onnx(
    onnx_path: str | os.PathLike[str],
    predictor: SegPredictor,
    images: Sequence[np.ndarray],
    tolerance: float,
) -> dict[str, Any]:
    """Compare ONNX Runtime with the checkpoint on ``images`` ((H, W, 3) uint8 crops whose
    sides are multiples of ``size_multiple``, of at least two different sizes)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_runner = OnnxSessionRunner(session)
    torch_runner = predictor.runner()
    worst, shapes = 0.0, set()
    for image in images:
        h, w = image.shape[:2]
        if h % predictor.size_multiple or w % predictor.size_multiple:
            raise ValueError(f"verification crop {w}x{h} is not a multiple of the net's stride")
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255
        a, b = onnx_runner(x), torch_runner(x)
        if a.shape != b.shape:
            raise ValueError(f"{onnx_path}: output shape {a.shape}, the checkpoint's {b.shape}")
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))))
        shapes.add((h, w))
    if len(shapes) < 2:
        raise ValueError("verify the export on at least two image sizes (dynamic H and W)")
    if not worst <= tolerance:
        raise ValueError(
            f"{onnx_path}: ONNX probabilities differ from the checkpoint's by {worst:.2e} > "
            f"tolerance {tolerance:.0e} on {len(images)} images"
        )
    return {
        "max_abs_diff": worst,
        "verified_on": len(images),
        "sizes": sorted(f"{w}x{h}" for h, w in shapes),
    }


def load_seg_predictor(path: str | os.PathLike[str]) -> SegPredictor:
    return SegPredictor(load_checkpoint(path), str(path))
