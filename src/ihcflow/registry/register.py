"""Register a candidate: gate, verify, export, describe, install (one function per step).

:func:`register` is what the register stage runs. Any error before the final swap leaves
``models/`` as it was; a candidate that fails the gate raises :class:`GateFailed` and touches
nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ihcflow.data.provenance import read_dvc_file, recorded_md5
from ihcflow.dataset import load_images, read_split
from ihcflow.errors import PipelineError
from ihcflow.evaluation import Predictor, probs_from_predictions
from ihcflow.files import sha256_file
from ihcflow.images.features import feature_contract
from ihcflow.images.ops import centre_zoom, resize
from ihcflow.model_format import (
    CARD_NAME,
    JSON_NAME,
    ONNX_NAME,
    ModelFormatError,
    OnnxModel,
    input_spec,
    output_spec,
)
from ihcflow.ood import MIN_CALIBRATION, OodError, fit_ood
from ihcflow.registry.card import model_card
from ihcflow.registry.gate import (
    ClassifierGateSettings,
    GateFailed,
    GateParams,
    GateResult,
    GateSettings,
    evaluate_gate,
)
from ihcflow.registry.install import (
    install_set,
    next_version,
    read_registered,
    recover_interrupted_swap,
)
from ihcflow.reporting.format import number
from ihcflow.tables import MANIFEST, SPLIT, read_table


class RegisterError(PipelineError):
    """The candidate cannot be registered (stale metrics, a broken export, ...)."""


class ExportablePredictor(Predictor, Protocol):
    """A :class:`~ihcflow.evaluation.Predictor` that also exports itself to the registered
    format and carries the config it was trained with."""

    config: dict[str, Any]

    def export_onnx(self, path: str | Path) -> None: ...


@dataclass(frozen=True)
class Candidate:
    """The trained model and where it came from."""

    predictor: ExportablePredictor
    checkpoint: Path
    # identifies the model for versioning (the same digest keeps the registered version):
    # ihcflow.training.checkpoints.model_digest, a hash of the weights; None: the file's sha256
    digest: str | None = None


@dataclass(frozen=True)
class Evaluated:
    """What the evaluate (and train) stages left about the candidate."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    source: str  # where the predictions came from, for messages
    train_summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class Registered:
    info: dict[str, Any]  # the new model.json
    gate: GateResult
    rolled_back: bool  # an interrupted earlier swap was rolled back first


def register(
    candidate: Candidate,
    evaluated: Evaluated,
    gate: GateParams[ClassifierGateSettings],
    *,
    root: str | Path,
    split_csv: str | Path,
    models_dir: str | Path,
) -> Registered:
    """Gate, verify, export and register the candidate into ``models_dir``."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    rolled_back = recover_interrupted_swap(models_dir)
    result = evaluate_gate(evaluated.metrics, gate.thresholds)
    if not result.passed:
        raise GateFailed(result)
    check_classes(candidate.predictor, evaluated)
    images, probs = verify_predictions(candidate.predictor, evaluated, gate.settings, root)
    checkpoint_sha = sha256_file(candidate.checkpoint)
    digest = candidate.digest or checkpoint_sha
    version = gate.settings.version or next_version(read_registered(models_dir), digest)
    with staging_dir(models_dir) as staging:
        onnx = export_verified(candidate.predictor, staging, images, probs, gate.settings)
        ood = calibrate_ood(
            staging / ONNX_NAME, candidate.predictor, gate.settings, Path(root), Path(split_csv)
        )
        info = describe(
            candidate,
            evaluated.metrics,
            result,
            onnx,
            name=gate.settings.model_name,
            version=str(version),
            checkpoint_sha=checkpoint_sha,
            digest=digest,
            root=Path(root),
            split_csv=Path(split_csv),
        )
        if ood is not None:
            info["ood"] = ood
        text = json.dumps(info, indent=2, default=str) + "\n"
        (staging / JSON_NAME).write_text(text)
        (staging / CARD_NAME).write_text(model_card(info, result, evaluated.train_summary))
        install_set(staging, models_dir)
    return Registered(json.loads(text), result, rolled_back)


def check_classes(predictor: Predictor, evaluated: Evaluated) -> None:
    """The metrics and predictions are for this candidate's classes, and there are some."""
    evaluated_classes = list(evaluated.metrics.get("per_class", {}))
    if evaluated_classes != list(predictor.class_names):
        raise RegisterError(
            f"metrics are for classes {evaluated_classes}, the checkpoint has "
            f"{list(predictor.class_names)}: run the evaluate stage again"
        )
    if evaluated.predictions.empty:
        raise RegisterError(f"{evaluated.source}: no predictions (run the evaluate stage)")


def verify_predictions(
    predictor: Predictor, evaluated: Evaluated, settings: GateSettings, root: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """Predict ``verify_images`` test images again: they must match the evaluated predictions
    (else the metrics are stale). Returns the images and the candidate's probabilities."""
    predictions = evaluated.predictions
    # spread over the split (it is sorted by path, so the head may be one class)
    n = max(1, settings.verify_images)
    picks = np.unique(np.linspace(0, len(predictions) - 1, n).round().astype(int))
    sample = predictions.iloc[picks].reset_index(drop=True)
    images = load_images(sample["image"].tolist(), root, predictor.input_size, error=RegisterError)
    probs = np.asarray(predictor.predict_proba(images), dtype=np.float64)
    recorded = probs_from_predictions(sample, predictor.class_names)
    diff = float(np.max(np.abs(recorded - probs)))
    if not diff <= settings.verify_tolerance:
        raise RegisterError(
            f"{evaluated.source}: the predictions differ from this checkpoint's by {diff:.2e}: "
            "the metrics were computed with another model; run the evaluate stage again"
        )
    return images, probs


def export_verified(
    predictor: ExportablePredictor,
    folder: Path,
    images: np.ndarray,
    expected: np.ndarray,
    settings: GateSettings,
) -> dict[str, Any]:
    """Export ``model.onnx`` into ``folder`` and check it with ONNX Runtime against the
    candidate's own ``expected`` probabilities; returns model.json's ``input``, ``outputs``
    and ``onnx`` entries."""
    path = folder / ONNX_NAME
    predictor.export_onnx(path)
    if not path.is_file():
        raise RegisterError(f"{path}: export_onnx wrote no file")
    try:
        probs, embedding = OnnxModel(path).predict(images)
    except ModelFormatError as exc:
        raise RegisterError(str(exc)) from None
    if probs.shape != expected.shape:
        raise RegisterError(f"{path}: probs shape {probs.shape}, expected {expected.shape}")
    diff = float(np.max(np.abs(probs.astype(np.float64) - expected)))
    if not diff <= settings.verify_tolerance:
        raise RegisterError(
            f"{path}: ONNX probabilities differ from the checkpoint's by {diff:.2e} "
            f"> tolerance {settings.verify_tolerance:.0e} on {len(images)} test images"
        )
    return {
        "input": input_spec(images.shape[1]),
        "outputs": output_spec(probs.shape[1], embedding.shape[1]),
        "onnx": {
            "file": ONNX_NAME,
            "sha256": sha256_file(path),
            "max_abs_diff": diff,
            "verified_on": len(images),
        },
    }


def calibrate_ood(
    onnx_path: Path,
    predictor: Predictor,
    settings: ClassifierGateSettings,
    root: Path,
    split_csv: Path,
) -> dict[str, Any] | None:
    """``model.json``'s ``ood`` (:mod:`ihcflow.ood`): fitted on the exported model's embeddings
    of the training images, the threshold at ``ood_quantile`` of the validation images'
    scores; with ``ood_framing_zoom`` also the framing check, calibrated on the validation
    images' centres zoomed in (cut from the prepared image and resized back up, linear). None
    when the split has fewer than ``MIN_CALIBRATION`` validation images (the server then
    serves without OOD scores and says so)."""
    split = read_split(split_csv, columns=("split", "class", "image"), error=RegisterError)
    train, val = split[split["split"] == "train"], split[split["split"] == "val"]
    if len(val) < MIN_CALIBRATION or train.empty:
        return None
    names = list(predictor.class_names)
    model = OnnxModel(onnx_path)
    size = int(predictor.input_size)

    zoom = settings.ood_framing_zoom

    def embeddings(rows: pd.DataFrame, zoomed: bool = False) -> np.ndarray:
        batch = load_images(rows["image"].tolist(), root, size, error=RegisterError)
        if zoomed and zoom is not None:
            batch = np.stack([resize(centre_zoom(x, zoom), size, "linear") for x in batch])
        return model.predict(batch, batch=256)[1]

    labels = [names.index(c) if c in names else -1 for c in train["class"]]
    known = np.array(labels) >= 0
    val_emb = embeddings(val)
    val_zoomed = None if zoom is None else embeddings(val, zoomed=True)
    try:
        scorer = fit_ood(
            embeddings(train)[known], np.array(labels)[known], len(names), settings.ood_components
        ).calibrated(val_emb, settings.ood_quantile, val_zoomed, zoom)
    except OodError as exc:
        raise RegisterError(f"{split_csv}: out-of-distribution calibration: {exc}") from None
    flagged = float(scorer.assess(val_emb, val_zoomed).flags.mean())
    return scorer.to_info(
        fitted_on=int(known.sum()), calibrated_on=len(val), val_flagged=round(flagged, 4)
    )


def describe(
    candidate: Candidate,
    metrics: Mapping[str, Any],
    gate: GateResult,
    onnx: Mapping[str, Any],
    *,
    name: str,
    version: str,
    checkpoint_sha: str,
    digest: str,
    root: Path,
    split_csv: Path,
) -> dict[str, Any]:
    """``model.json`` (:mod:`ihcflow.model_format`; every key in docs/pipeline.md)."""
    predictor = candidate.predictor
    config = json.loads(json.dumps(dict(predictor.config or {}), default=str))
    preprocess = dict(config.get("preprocess") or {})
    return {
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(root),
        "class_names": list(predictor.class_names),
        "input_size": int(predictor.input_size),
        "input": onnx["input"],
        "outputs": onnx["outputs"],
        "preprocess": preprocess,  # what uploads must be given
        # how drift features are measured on the reference and on uploads: at the input size
        "features": feature_contract(
            int(preprocess.get("size", predictor.input_size)),
            str(preprocess.get("interpolation", "area")),
        ),
        "metrics": dict(metrics),
        "gate": [
            {"metric": r.metric, "value": r.value, "op": r.op, "threshold": r.threshold}
            for r in gate.rows
        ],
        "data": {**data_hash(root), "counts": split_counts(split_csv)},
        "checkpoint": {
            "path": candidate.checkpoint.as_posix(),
            "sha256": checkpoint_sha,
            "model_digest": digest,
        },
        "onnx": onnx["onnx"],
        "tta": bool(getattr(predictor, "tta", False)),  # evaluate.tta: folded into the graph
        "training": config,
    }


@contextmanager
def staging_dir(models_dir: Path) -> Iterator[Path]:
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=models_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def git_revision(root: str | Path = ".") -> str:
    """``git rev-parse HEAD`` plus ``-dirty`` when tracked files changed; "unknown" without git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if status else head


def data_hash(root: str | Path = ".") -> dict[str, str]:
    """The data version: md5 of ``data/`` from data.dvc, else sha256 of the manifest."""
    root = Path(root)
    md5 = recorded_md5(read_dvc_file(root / "data.dvc"))
    if md5:
        return {"hash": str(md5), "source": "data.dvc (md5)"}
    for rel in (MANIFEST.path, SPLIT.path):
        if (root / rel).is_file():
            return {"hash": sha256_file(root / rel), "source": f"{rel} (sha256)"}
    return {"hash": "unknown", "source": "none"}


def split_counts(split_csv: str | Path) -> dict[str, dict[str, int]]:
    """Images per split and class: ``{split: {class: n}}``."""
    frame = read_table(split_csv, SPLIT, columns=("split", "class"), error=RegisterError)
    counts = frame.groupby(["split", "class"]).size()
    out: dict[str, dict[str, int]] = {}
    for (split, cls), n in counts.items():
        out.setdefault(str(split), {})[str(cls)] = int(n)
    return out


def summary_line(info: Mapping[str, Any]) -> str:
    return (
        f"registered {info['name']} {info['version']} ({len(info['class_names'])} classes, "
        f"balanced_accuracy {number(info['metrics'].get('balanced_accuracy'))}, "
        f"git {info['git_revision'][:12]})"
    )
