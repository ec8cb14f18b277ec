"""The registered segmentation model: ``models/segmentation/`` holds ``model.onnx``,
``model.json`` and ``MODEL_CARD.md`` (the file names of ``ihcflow.model_format``), written by
the seg_register stage and read by the server's ``POST /segment``.

``model.json`` says everything needed to use the graph (the ONNX contract is in
``inference``): the window side and overlap of the sliding window, the post-processing
thresholds evaluation chose, what H and W must be multiples of, the magnification. No torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ihcflow.model_format import ModelFormatError, model_files, onnx_session, read_model_info
from ihcflow.segmentation.inference import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxSessionRunner,
    Segmentation,
    TilingConfig,
    segment,
)
from ihcflow.segmentation.instances import PostprocessConfig

MODELS_DIR = "models/segmentation"
TASK = "segmentation"
REQUIRED = ("name", "version", "task", "size_multiple", "tiling", "postprocess")


def check_info(info: Mapping[str, Any], path: Path) -> None:
    missing = [k for k in REQUIRED if k not in info]
    if missing:
        raise ModelFormatError(f"{path}: lacks {missing}: not written by the seg_register stage?")
    if info["task"] != TASK:
        raise ModelFormatError(f"{path}: task {info['task']!r}, expected {TASK!r}")
    try:
        TilingConfig(**info["tiling"])
        PostprocessConfig(**info["postprocess"])
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{path}: {exc}") from None


def input_spec(multiple: int) -> dict[str, Any]:
    return {
        "name": INPUT_NAME,
        "dtype": "float32",
        "shape": ["N", 3, "H", "W"],
        "layout": "NCHW RGB, uint8 / 255; H and W multiples of size_multiple",
        "size_multiple": int(multiple),
    }


def output_spec() -> dict[str, Any]:
    return {OUTPUT_NAME: ["N", 4, "H", "W"]}


@dataclass
class SegModel:
    """The registered model ready to segment any image size."""

    info: dict[str, Any]
    runner: OnnxSessionRunner
    tiling: TilingConfig
    post: PostprocessConfig

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> SegModel:
        info = read_model_info(path, missing_hint="run the seg_register stage", check=check_info)
        onnx_path, _ = model_files(path)
        session = onnx_session(onnx_path, threads=threads)
        try:
            runner = OnnxSessionRunner(session)
        except ValueError as exc:
            raise ModelFormatError(f"{onnx_path}: {exc}") from None
        return cls(
            info, runner, TilingConfig(**info["tiling"]), PostprocessConfig(**info["postprocess"])
        )

    def segment(self, image: np.ndarray) -> Segmentation:
        """(H, W, 3) uint8 RGB of any size -> nuclei (sliding windows, then instances)."""
        return segment(image, self.runner, self.tiling, self.post)
