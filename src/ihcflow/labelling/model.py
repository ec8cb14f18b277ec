"""What labelling needs from the rest of the library, in one place.

- the registered model (``model.json`` + ``model.onnx``): images are prepared and predicted
  exactly as the server does it (:class:`ihcflow.serving.model.ServedModel`);
- the embeddings of the training images, for the out-of-distribution score (the drift
  monitor's reference: :func:`ihcflow.monitoring.sources.load_reference`, same cache);
- the content hashes of ``data/`` (:func:`ihcflow.data.layout.discover` lists the files), and
  the image files of a folder as the drift monitor finds them
  (:func:`ihcflow.monitoring.sources.image_files`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ihcflow.data.layout import Layout, discover
from ihcflow.files import sha256_file
from ihcflow.images.codec import DEFAULT_MAX_PIXELS, ImageError

BATCH = 32  # images per ONNX Runtime call


@dataclass
class Predicted:
    """The model's outputs for the images it could prepare, in input order."""

    keys: list[str]  # the caller's key of each predicted image
    probs: np.ndarray  # (N, K) float
    embeddings: np.ndarray  # (N, D) float32
    problems: dict[str, str] = field(default_factory=dict)  # key -> why it was not predicted


class RegisteredModel:
    """The registered model as the server runs it (ONNX Runtime, no torch)."""

    def __init__(self, served: Any, models_dir: Path) -> None:
        self.served = served
        self.models_dir = models_dir
        self.name: str = served.name
        self.version: str = served.version
        self.class_names: list[str] = list(served.class_names)
        self.onnx_sha256: str = (served.info.get("onnx") or {}).get("sha256") or ""

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def predict(self, items: Iterable[tuple[str, bytes]]) -> Predicted:
        """Prepare (decode, preprocess as in training) and predict ``(key, bytes)`` items."""
        keys: list[str] = []
        images: list[np.ndarray] = []
        problems: dict[str, str] = {}
        for key, data in items:
            try:
                prepared = self.served.prepare(data, key, max_pixels=DEFAULT_MAX_PIXELS)
            except (ImageError, ValueError) as exc:  # ImageError names the file and reason
                problems[key] = str(exc)
                continue
            keys.append(key)
            images.append(prepared.image)
        probs, embs = [], []
        for start in range(0, len(images), BATCH):
            p, e = self.served.predict(np.stack(images[start : start + BATCH]))
            probs.append(p)
            embs.append(e)
        k, d = len(self.class_names), self.served.embed_dim
        return Predicted(
            keys,
            np.concatenate(probs).astype(np.float64) if probs else np.zeros((0, k)),
            np.concatenate(embs).astype(np.float32) if embs else np.zeros((0, d), np.float32),
            problems,
        )

    def predict_files(self, paths: Sequence[Path]) -> Predicted:
        """:meth:`predict` on files, read one at a time; the keys are the paths as strings."""
        unreadable: dict[str, str] = {}

        def read() -> Iterable[tuple[str, bytes]]:
            for path in paths:
                try:
                    yield str(path), path.read_bytes()
                except OSError as exc:
                    unreadable[str(path)] = f"{path}: cannot read: {exc}"

        out = self.predict(read())
        out.problems.update(unreadable)
        return out


def load_model(models_dir: str | Path) -> RegisteredModel:
    """The registered model in ``models_dir``; a :class:`RuntimeError` naming the file when it
    cannot be used."""
    from ihcflow.serving.model import ServedModel

    return RegisteredModel(ServedModel.load(models_dir), Path(models_dir))


def load_model_bytes(model_json: bytes, model_onnx: bytes) -> RegisteredModel:
    """A registered model from the bytes of its two files (an older registration read from git
    and the DVC cache); the files live in a temporary folder only while the session loads."""
    with tempfile.TemporaryDirectory(prefix="ihcflow-model-") as tmp:
        folder = Path(tmp)
        (folder / "model.json").write_bytes(model_json)
        (folder / "model.onnx").write_bytes(model_onnx)
        return load_model(folder)


def training_embeddings(model: RegisteredModel, root: str | Path) -> tuple[np.ndarray | None, str]:
    """Embeddings of the training split's images (the drift monitor's reference), or None and
    why not (no pipeline outputs yet, or outputs of another run)."""
    from ihcflow.monitoring.sources import DriftInputError, load_reference
    from ihcflow.monitoring.sources import load_model as load_drift_model

    root = Path(root)
    features, split = root / "reports/data/features.csv", root / "processed/split.csv"
    missing = [str(p.relative_to(root)) for p in (features, split) if not p.is_file()]
    if missing:
        return None, f"no out-of-distribution score: {', '.join(missing)} missing (`dvc repro`)"
    try:
        reference = load_reference(
            features,
            split_csv=split,
            model=load_drift_model(model.models_dir),
            root=root,
            cache_dir=root / ".cache/drift",
        )
    except DriftInputError as exc:
        return None, f"no out-of-distribution score: {exc}"
    emb = reference.embeddings
    assert emb is not None
    return emb, f"out-of-distribution score against the {len(emb)} training images"


def image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive, hidden entries skipped) and how many other
    files there are."""
    from ihcflow.monitoring.sources import image_files as found

    return found(folder)


def data_hashes(data_dir: str | Path) -> tuple[Layout, dict[str, str]]:
    """The layout of ``data_dir`` and ``{sha256: path}`` of its files (the first path of equal
    files), as the validator hashes them."""
    layout = discover(data_dir)
    hashes: dict[str, str] = {}
    for entry in layout.entries:
        hashes.setdefault(sha256_file(Path(data_dir) / entry.path), entry.path)
    return layout, hashes
