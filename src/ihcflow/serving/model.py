"""The registered model as the server uses it: ``model.json`` + ``model.onnx`` on ONNX Runtime.

Inputs are prepared by :func:`ihcflow.images.prepare.prepare_image` with the ``preprocess``
params recorded in ``model.json`` (the preprocess stage's own code path), then fed to the
graph as :func:`ihcflow.registry.onnx_input` does for the registration check. No torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ihcflow.files import sha256_file
from ihcflow.images.codec import ImageError, probe
from ihcflow.images.prepare import PREPROCESS_KEYS, check_params, prepare_image
from ihcflow.registry import INPUT_NAME, JSON_NAME, ONNX_NAME, OUTPUT_NAMES, onnx_input

SERVED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # the formats the pipeline trains on
# (N, 3, S, S) float32 in [0, 1] -> (probs (N, K), embedding (N, D))
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class ModelLoadError(RuntimeError):
    """The model folder cannot be served; the message names the file and the problem."""


@dataclass(frozen=True)
class Prepared:
    image: np.ndarray  # (S, S, 3) uint8 RGB, what the model sees
    features: dict[str, float]  # FEATURE_COLUMNS of the decoded upload (drift reference)
    applied: dict[str, bool]  # corrections preprocess_image applied
    format: str


class OnnxRunner:
    """An ONNX Runtime CPU session; ``run`` is thread-safe (one session for all requests)."""

    def __init__(self, path: str | Path, threads: int = 1, spinning: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: warnings would land in the request log
        # Idle threads sleep instead of spinning: decoding and preprocessing share the cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for a bad graph
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {exc}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME]:
            raise ModelLoadError(f"{path}: inputs {inputs}, expected [{INPUT_NAME!r}]")
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        if missing:
            raise ModelLoadError(f"{path}: missing output(s) {missing} (has {outputs})")

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, embedding = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return probs, embedding


def read_model_info(model_dir: str | Path) -> dict[str, Any]:
    """``model.json``, checked for what serving needs; the ONNX file must match its hash."""
    model_dir = Path(model_dir)
    path = model_dir / JSON_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"{path}: no registered model (run the register stage, or set --model-dir / "
            "IHCFLOW_MODEL_DIR to the folder holding model.onnx and model.json)"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read model.json: {exc}") from None
    missing = [
        k for k in ("name", "version", "class_names", "input_size", "preprocess") if k not in info
    ]
    if missing:
        raise ModelLoadError(f"{path}: lacks {missing}: not written by the register stage?")
    preprocess = info["preprocess"]
    if not isinstance(preprocess, Mapping):
        raise ModelLoadError(f"{path}: 'preprocess' is {type(preprocess).__name__}, not a mapping")
    lacking = [k for k in PREPROCESS_KEYS if k not in preprocess]
    if lacking:
        raise ModelLoadError(
            f"{path}: the recorded preprocess params lack {lacking}, so uploads cannot be "
            "prepared like the training images; register a model trained by the pipeline"
        )
    if int(preprocess["size"]) != int(info["input_size"]):
        raise ModelLoadError(
            f"{path}: preprocess.size {preprocess['size']} differs from input_size "
            f"{info['input_size']}"
        )
    try:
        check_params(preprocess)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    onnx_path = model_dir / ONNX_NAME
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path}: model file missing (model.json is there)")
    expected = (info.get("onnx") or {}).get("sha256")
    if expected:
        actual = sha256_file(onnx_path)
        if actual != expected:
            raise ModelLoadError(
                f"{onnx_path}: sha256 {actual[:12]}... does not match model.json "
                f"({expected[:12]}...): the two files are from different registrations"
            )
    return info


class ServedModel:
    """Prepare uploads and predict them with the registered model."""

    def __init__(self, info: Mapping[str, Any], runner: Runner) -> None:
        self.info = dict(info)
        self.name = str(info["name"])
        self.version = str(info["version"])
        self.class_names = [str(c) for c in info["class_names"]]
        self.input_size = int(info["input_size"])
        self.preprocess = dict(info["preprocess"])
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
        info = read_model_info(model_dir)
        return cls(info, OnnxRunner(Path(model_dir) / ONNX_NAME, threads=threads))

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
            data, source, self.preprocess, max_pixels=max_pixels, strict=True
        )
        return Prepared(image, features, applied, info.format)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) prepared images -> probs (N, K), embedding (N, D)."""
        probs, embedding = self.runner(onnx_input(images))
        return np.asarray(probs), np.asarray(embedding)
