"""The registered model as the server uses it: ``model.json`` + ``model.onnx`` on ONNX Runtime.

The files are read and checked by :mod:`ihcflow.model_format` (which also turns prepared
images into the graph's input); uploads are prepared by
:func:`ihcflow.images.prepare.prepare_image` with the ``preprocess`` params recorded in
``model.json`` (the preprocess stage's own code path). No torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ihcflow.config import ConfigError
from ihcflow.images.codec import ImageError, probe
from ihcflow.images.prepare import ImageParams, Prepared, check_params, prepare_image
from ihcflow.model_format import (
    ModelFormatError,
    OnnxModel,
    model_files,
    model_input,
    read_model_info,
)
from ihcflow.ood import Assessment, OodError, OodScorer

SERVED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # the formats the pipeline trains on
# (N, 3, S, S) float32 in [0, 1] -> (probs (N, K), embedding (N, D))
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# The model folder cannot be served; the message names the file and the problem.
ModelLoadError = ModelFormatError


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
        self.ood: OodScorer | None = None
        self.ood_note = (
            "model.json has no 'ood' section (registered before out-of-distribution scoring, "
            "or with too few validation images): predictions carry no ood score"
        )
        if info.get("ood") is not None:
            try:
                self.ood = OodScorer.from_info(info["ood"])
            except (OodError, AttributeError) as exc:
                raise ModelLoadError(f"model {self.name} {self.version}: {exc}") from None
            self.ood_note = ""
        probs, embedding = self.predict(
            np.zeros((1, self.input_size, self.input_size, 3), np.uint8)
        )
        if probs.shape != (1, len(self.class_names)):
            raise ModelLoadError(
                f"model {self.name} {self.version}: probs shape {probs.shape}, expected "
                f"(1, {len(self.class_names)}) for classes {self.class_names}"
            )
        self.embed_dim = int(embedding.shape[1])
        if self.ood is not None and self.ood.dim != self.embed_dim:
            raise ModelLoadError(
                f"model {self.name} {self.version}: ood is for {self.ood.dim}-d embeddings, "
                f"the model's are {self.embed_dim}-d"
            )

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
        out["ood"] = self.ood_summary()
        return out

    def ood_summary(self) -> dict[str, Any]:
        """What ``/model`` and the start-up log say about out-of-distribution scoring."""
        if self.ood is None:
            return {"available": False, "reason": self.ood_note}
        node = self.info["ood"]
        keys = (
            "method",
            "threshold",
            "quantile",
            "components",
            "framing",
            "calibrated_on",
            "val_flagged",
        )
        return {"available": True, **{k: node.get(k) for k in keys}}

    def prepare(self, data: bytes, source: str, *, max_pixels: int, min_side: int = 1) -> Prepared:
        """Decode one upload (format, pixel limit and ``min_side`` checked from the header
        first; a fully transparent image is refused when decoded)."""
        info = probe(data, source, max_pixels)
        if info.format not in SERVED_FORMATS:
            raise ImageError(
                source,
                "unsupported_format",
                f"{info.format} images are not accepted (send {', '.join(SERVED_FORMATS)})",
            )
        if min(info.width, info.height) < min_side:
            raise ImageError(
                source,
                "too_small",
                f"image is {info.width}x{info.height} px, below the minimum of {min_side} px "
                "per side (IHCFLOW_MIN_SIDE): too small to hold a cell",
            )
        zoom = None if self.ood is None else self.ood.zoom  # the framing check's second view
        return prepare_image(
            data, source, self.image_params, max_pixels=max_pixels, strict=True, zoom=zoom
        )

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) prepared images -> probs (N, K), embedding (N, D)."""
        probs, embedding = self.runner(model_input(images))
        return np.asarray(probs), np.asarray(embedding)

    def judge(self, prepared: Sequence[Prepared]) -> Judged:
        """Predict prepared uploads and score them out of distribution (both checks of
        :mod:`ihcflow.ood`; the zoomed centres go through the model in the same batch)."""
        images = [p.image for p in prepared]
        zoomed = [p.zoomed for p in prepared if p.zoomed is not None]
        probs, embedding = self.predict(np.stack(images + zoomed))
        n = len(images)
        if not np.isfinite(probs[:n]).all():
            raise RuntimeError(f"model {self.version} returned non-finite probabilities")
        ood = None
        if self.ood is not None:
            ood = self.ood.assess(embedding[:n], embedding[n:] if zoomed else None)
        return Judged(probs[:n], embedding[:n], ood)


@dataclass(frozen=True)
class Judged:
    """A batch's probabilities (N, K), embeddings (N, D) and OOD assessment (None: the model
    has no ``ood`` section)."""

    probs: np.ndarray
    embedding: np.ndarray
    ood: Assessment | None
