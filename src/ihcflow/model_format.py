"""The registered model's format: the files in ``models/`` and how every reader opens them.

The register stage writes the set; the server, drift monitoring and the registration check read
it through this module alone (numpy and, when a model is run, ONNX Runtime: no torch, pandas or
git), so a change to the format is made here once.

- ``model.onnx``: input ``image``, float32 (N, 3, S, S) RGB in [0, 1], that is the uint8 RGB
  image divided by :data:`PIXEL_MAX` (:func:`model_input`; normalisation is inside the graph);
  outputs ``probs`` (N, K), softmax over ``class_names``, and ``embedding`` (N, D).
- ``model.json``: at least :data:`REQUIRED` (``preprocess``: the params uploads are prepared
  with, :mod:`ihcflow.images.prepare`), and ``onnx.sha256``, the hash of the ``model.onnx`` it
  was registered with (docs/pipeline.md lists every key).
- ``MODEL_CARD.md``: for people (:mod:`ihcflow.registry.card`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ihcflow.errors import PipelineError
from ihcflow.files import sha256_file

ONNX_NAME = "model.onnx"
JSON_NAME = "model.json"
CARD_NAME = "MODEL_CARD.md"
REGISTERED = (ONNX_NAME, JSON_NAME, CARD_NAME)  # replaced as one set by the register stage
INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "embedding")
PIXEL_MAX = 255.0  # uint8 RGB / PIXEL_MAX is the model's input, in [0, 1]
REQUIRED = ("name", "version", "class_names", "input_size", "preprocess")


class ModelFormatError(PipelineError):
    """Model files that cannot be used; the message names the file and what is wrong."""


def model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) RGB -> the graph's input: float32 (N, 3, S, S) in [0, 1]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(
        PIXEL_MAX
    )


def input_spec(size: int) -> dict[str, Any]:
    """``model.json``'s ``input``: what :func:`model_input` makes of an S x S image."""
    return {
        "name": INPUT_NAME,
        "shape": ["N", 3, int(size), int(size)],
        "dtype": "float32",
        "layout": "NCHW",
        "channels": "RGB",
        "range": [0.0, 1.0],
    }


def output_spec(n_classes: int, embed_dim: int) -> dict[str, list[Any]]:
    """``model.json``'s ``outputs``."""
    return {"probs": ["N", int(n_classes)], "embedding": ["N", int(embed_dim)]}


def onnx_session(path: str | Path, *, threads: int | None = None, spinning: bool = False) -> Any:
    """An ONNX Runtime CPU session of ``path``; ``threads`` and ``spinning`` as in
    :class:`OnnxModel` (which, and the segmentation model, run on it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: warnings would land in the request log
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: decoding and preprocessing share the cores.
        spin = "1" if spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own types for a bad graph
        raise ModelFormatError(f"{path}: ONNX Runtime cannot load the model: {exc}") from None


class OnnxModel:
    """``model.onnx`` on ONNX Runtime's CPU provider, its inputs and outputs checked.

    ``threads`` sets the intra-op threads of a session run one request at a time (the server:
    one session shared by all requests, idle threads sleep unless ``spinning``); None keeps
    ONNX Runtime's defaults. Calling it runs the graph on its own input; :meth:`predict` takes
    uint8 images.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, spinning: bool = False):
        self.path = Path(path)
        self.session = onnx_session(path, threads=threads, spinning=spinning)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME]:
            raise ModelFormatError(f"{path}: inputs {inputs}, expected [{INPUT_NAME!r}]")
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        if missing:
            raise ModelFormatError(f"{path}: missing output(s) {missing} (has {outputs})")

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (N, 3, S, S) in [0, 1] -> (probs (N, K), embedding (N, D))."""
        probs, embedding = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return probs, embedding

    def predict(
        self, images: np.ndarray, batch: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) RGB -> (probs, embedding), ``batch`` images per run (None: all)."""
        step = batch or max(1, len(images))
        parts = [self(model_input(images[i : i + step])) for i in range(0, len(images), step)]
        return np.concatenate([p for p, _ in parts]), np.concatenate([e for _, e in parts])


def model_files(path: str | Path) -> tuple[Path, Path]:
    """(``model.onnx``, ``model.json``) of a model folder, or of a ``model.onnx`` and the
    ``model.json`` beside it."""
    path = Path(path)
    onnx_path = path / ONNX_NAME if path.is_dir() or not path.suffix else path
    return onnx_path, onnx_path.with_name(JSON_NAME)


def read_model_info(
    path: str | Path,
    *,
    missing_hint: str = "run the register stage",
    check: Callable[[Mapping[str, Any], Path], None] | None = None,
) -> dict:
    """``model.json`` of the model at ``path`` (see :func:`model_files`), checked: it has
    :data:`REQUIRED` with the right types, ``preprocess.size`` (when recorded) is the input
    size (``check`` replaces these checks for another task), and ``model.onnx`` is there
    with the sha256 ``model.json`` records."""
    onnx_path, json_path = model_files(path)
    if not json_path.is_file():
        raise ModelFormatError(f"{json_path}: no registered model ({missing_hint})")
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{json_path}: cannot read model.json: {exc}") from None
    if not isinstance(info, dict):
        raise ModelFormatError(f"{json_path}: expected a JSON object")
    (check or _check_info)(info, json_path)
    if not onnx_path.is_file():
        raise ModelFormatError(f"{onnx_path}: model file missing ({JSON_NAME} is there)")
    expected = (info.get("onnx") or {}).get("sha256")
    if expected:
        actual = sha256_file(onnx_path)
        if actual != expected:
            raise ModelFormatError(
                f"{onnx_path}: sha256 {actual[:12]}... does not match {JSON_NAME} "
                f"({expected[:12]}...): the two files are from different registrations"
            )
    return info


def _check_info(info: Mapping[str, Any], path: Path) -> None:
    missing = [k for k in REQUIRED if k not in info]
    if missing:
        raise ModelFormatError(f"{path}: lacks {missing}: not written by the register stage?")
    names = info["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise ModelFormatError(f"{path}: class_names must be a non-empty list of names")
    size = info["input_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ModelFormatError(f"{path}: input_size {size!r} is not a positive integer")
    preprocess = info["preprocess"]
    if not isinstance(preprocess, Mapping):
        raise ModelFormatError(
            f"{path}: 'preprocess' is {type(preprocess).__name__}, not a mapping"
        )
    if "size" in preprocess and preprocess["size"] != size:
        raise ModelFormatError(
            f"{path}: preprocess.size {preprocess['size']} differs from input_size {size}"
        )
