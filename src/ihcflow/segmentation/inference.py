"""One image in, nuclei out: tiling + post-processing, the same in evaluation and the server.

A runner is any callable float32 (B, 3, roi, roi) RGB in [0, 1] -> float32 (B, 4, roi, roi)
probabilities (``instances.CHANNELS``): ``predictor.TorchRunner`` for a checkpoint, an ONNX
Runtime session for the registered model. Normalisation is inside the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ihcflow.segmentation.instances import PostprocessConfig, to_annotation
from ihcflow.segmentation.labels import Annotation
from ihcflow.segmentation.tiling import MODES, Runner, predict_tiled

INPUT_NAME = "image"  # float32 (N, 3, H, W) RGB in [0, 1]
OUTPUT_NAME = "probs"  # float32 (N, 4, H, W): instances.CHANNELS


@dataclass  # not frozen: ihcflow.config.typed reads it from params
class TilingConfig:
    roi: int = 256  # window side (px): a multiple of the network's total stride (16)
    overlap: float = 0.25  # of the window side: border pixels of a window see less context
    batch: int = 4  # windows per network call: bounds memory
    blend: str = "gaussian"  # or "constant" (plain mean of overlapping windows)

    def __post_init__(self) -> None:
        if self.roi < 16 or self.roi % 16:
            raise ValueError(f"tiling.roi is {self.roi}, expected a multiple of 16 (>= 16)")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"tiling.overlap is {self.overlap}, expected a value in [0, 1)")
        if self.batch < 1:
            raise ValueError(f"tiling.batch is {self.batch}, expected >= 1")
        if self.blend not in MODES:
            raise ValueError(f"tiling.blend is {self.blend!r}, expected one of {MODES}")


@dataclass(frozen=True)
class Segmentation:
    annotation: Annotation
    probs: np.ndarray  # (4, H, W) uint8, value / 255


def segment(
    image: np.ndarray, runner: Runner, tiling: TilingConfig, post: PostprocessConfig
) -> Segmentation:
    """Nuclei of ``image`` (H, W, 3) uint8 RGB, of any size."""
    probs = predict_tiled(
        image,
        runner,
        roi=tiling.roi,
        overlap=tiling.overlap,
        batch=tiling.batch,
        mode=tiling.blend,
    )
    return Segmentation(to_annotation(probs, post), probs)


class OnnxSessionRunner:
    """A ``tiling.Runner`` for an ONNX Runtime session of the exported model."""

    def __init__(self, session: Any) -> None:
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise ValueError(
                f"ONNX model has inputs {inputs} and outputs {outputs}; a segmentation model "
                f"has input {INPUT_NAME!r} and output {OUTPUT_NAME!r}"
            )
        self.session = session

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
