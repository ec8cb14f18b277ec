"""The registered model as the server uses it: ``model.json`` + ``model.onnx`` on ONNX Runtime.

The files are read and checked by :mod:`ihcflow.model_format` (which also turns prepared
images into the graph's input); uploads are prepared by
:func:`ihcflow.images.prepare.prepare_image` with the ``preprocess`` params recorded in
``model.json`` (the preprocess stage's own code path). No torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ihcflow.config import ConfigError
from ihcflow.images.codec import ImageError, probe
from ihcflow.images.prepare import ImageParams, check_params, prepare_image
from ihcflow.model_format import (
    ModelFormatError,
    OnnxModel,
    model_files,
    model_input,
    read_model_info,
)

SERVED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # the formats the pipeline trains on
# (N, 3, S, S) float32 in [0, 1] -> (probs (N, K), embedding (N, D))
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# The model folder cannot be served; the message names the file and the problem.
ModelLoadError = ModelFormatError


@dataclass(frozen=True)
class Prepared:
    image: np.ndarray  # (S, S, 3) uint8 RGB, what the model sees
    features: dict[str, float]  # FEATURE_COLUMNS of the decoded upload (drift reference)
    applied: dict[str, bool]  # corrections preprocess_image applied
    format: str


def read_servable(model_dir: str | Path) -> dict[str, Any]:
    """``model.json`` (:func:`~ihcflow.model_format.read_model_info`), and its ``preprocess``
    params checked: uploads must be prepared exactly like the training images."""
    info = read_model_info(
        model_dir,
        missing_hint="run the register stage, or set --model-dir / IHCFLOW_MODEL_DIR to the "
        "folder holding model.onnx and model.json",
    )
    try:
        check_params(ImageParams.from_section(info["preprocess"]))
    except ConfigError as exc:
        raise ModelLoadError(
            f"{model_files(model_dir)[1]}: {exc}: uploads cannot be prepared like the training "
            "images (register a model trained by the pipeline)"
        ) from None
    return info


class ServedModel:
    """Prepare uploads and predict them with the registered model."""

    def __init__(self, info: Mapping[str, Any], runner: Runner) -> None:
        self.info = dict(info)
        self.name = str(info["name"])
        self.version = str(info["version"])
        self.class_names = [str(c) for c in info["class_names"]]
        self.input_size = int(info["input_size"])
        self.image_params = ImageParams.from_section(info["preprocess"])
        self.runner = runner
        probs, embedding = self.predict(
            np.zeros((1, self.input_size, self.input_size, 3), np.uint8)
        )
        if probs.shape != (1, len(self.class_names)):
            raise ModelLoadError(
                f"model {self.name} {self.version}: probs shape {probs.shape}, expected "
                f"(1, {len(self.class_names)}) for classes {self.class_names}"
            )
        self.embed_dim = int(embedding.shape[1])

    @classmethod
    def load(cls, model_dir: str | Path, *, threads: int = 1) -> ServedModel:
        info = read_servable(model_dir)
        return cls(info, OnnxModel(model_files(model_dir)[0], threads=threads))

    def summary(self) -> dict[str, Any]:
        keys = ("name", "version", "created", "git_revision", "class_names", "input_size")
        out = {k: self.info.get(k) for k in keys}
        out["metrics"] = {
            k: v for k, v in (self.info.get("metrics") or {}).items() if not isinstance(v, dict)
        }
        out["onnx_sha256"] = (self.info.get("onnx") or {}).get("sha256")
        return out

    def prepare(self, data: bytes, source: str, *, max_pixels: int) -> Prepared:
        """Decode one upload (format and pixel limit checked from the header first)."""
        info = probe(data, source, max_pixels)
        if info.format not in SERVED_FORMATS:
            raise ImageError(
                source,
                "unsupported_format",
                f"{info.format} images are not accepted (send {', '.join(SERVED_FORMATS)})",
            )
        image, features, applied = prepare_image(
            data, source, self.image_params, max_pixels=max_pixels, strict=True
        )
        return Prepared(image, features, applied, info.format)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) prepared images -> probs (N, K), embedding (N, D)."""
        probs, embedding = self.runner(model_input(images))
        return np.asarray(probs), np.asarray(embedding)
