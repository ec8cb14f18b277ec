"""Test-split evaluation: metrics, ROC points and per-image predictions for any predictor.

Model-agnostic: a predictor is anything with ``class_names`` (label order), ``input_size``
and ``predict_proba(images uint8 (N, H, W, 3) RGB) -> (N, K) probabilities`` (:class:`Predictor`).
Metrics are computed with torchmetrics.

Macro averages (balanced accuracy, F1, AUROC) run over the classes present in the evaluated
split: a class with no test image has no recall and no ROC curve, and counting it as 0 would
punish the model for the split, not for its predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_roc,
    multiclass_accuracy,
    multiclass_cohen_kappa,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from ihcflow.dataset import load_images, read_split, split_rows
from ihcflow.errors import PipelineError
from ihcflow.tables import PREDICTIONS, prob_column

PROB_TOLERANCE = 1e-3  # rows of `probs` must sum to 1 within this (softmax in float32)


@dataclass
class Misclassified:
    max_images: int  # the grid shows the most confidently wrong test images first
    columns: int


@dataclass
class EvaluateParams:
    """The ``evaluate`` params section (conf/evaluate/default.yaml)."""

    split: str  # the split scored
    batch_size: int  # images per predict_proba call (memory, not results)
    tta: bool  # dihedral test-time augmentation, here and in the registered ONNX model
    misclassified: Misclassified


class EvaluationError(PipelineError):
    """The split, its images or the model's outputs cannot be evaluated."""


class Predictor(Protocol):
    """What evaluation (and registration) needs of a model: ``predict_proba`` takes uint8
    (N, S, S, 3) RGB images, S = ``input_size``, and returns (N, K) probabilities in
    ``class_names`` order. :class:`ihcflow.training.predictor.CheckpointPredictor` is one."""

    class_names: list[str]
    input_size: int

    def predict_proba(self, images: np.ndarray) -> np.ndarray: ...


def _number(value: float) -> float | None:
    """A JSON-safe float to 6 decimals (torchmetrics computes in float32); NaN becomes None."""
    value = float(value)
    return None if math.isnan(value) else round(value, 6)


def check_probs(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> None:
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise EvaluationError(f"probabilities have shape {probs.shape}, expected (N, {n_classes})")
    if y_true.ndim != 1 or len(y_true) != len(probs):
        raise EvaluationError(f"{len(y_true)} labels for {len(probs)} rows of probabilities")
    if len(y_true) == 0:
        raise EvaluationError("nothing to evaluate: 0 samples")
    if not np.all(np.isfinite(probs)):
        raise EvaluationError("probabilities contain NaN or infinite values")
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > PROB_TOLERANCE:
        raise EvaluationError(f"probabilities of row {worst} sum to {sums[worst]:.6f}, expected 1")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise EvaluationError(
            f"labels must be in 0..{n_classes - 1}, got {y_true.min()}..{y_true.max()}"
        )


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Classification metrics for integer labels ``y_true`` (N,) and probabilities (N, K).

    Returns accuracy (micro), balanced_accuracy (mean per-class recall), f1_macro,
    auroc_macro (one-vs-rest), cohen_kappa, n_test, and ``per_class`` precision, recall, f1,
    auroc and support. Undefined values (e.g. AUROC with a single class present) are None.
    """
    k = len(class_names)
    y_np = np.asarray(y_true).astype(np.int64)
    p_np = np.asarray(probs, dtype=np.float64)
    check_probs(y_np, p_np, k)
    y = torch.from_numpy(y_np)
    p = torch.from_numpy(p_np)
    support = np.bincount(y_np, minlength=k)
    present = support > 0

    precision = multiclass_precision(p, y, k, average=None).numpy()
    recall = multiclass_recall(p, y, k, average=None).numpy()
    f1 = multiclass_f1_score(p, y, k, average=None).numpy()
    auroc = np.full(k, np.nan)
    if present.sum() >= 2:  # one-vs-rest needs positives and negatives
        for i in np.flatnonzero(present).tolist():
            auroc[i] = binary_auroc(p[:, i], y.eq(i).long()).item()

    per_class = {
        name: {
            "precision": _number(precision[i]),
            "recall": _number(recall[i]),
            "f1": _number(f1[i]),
            "auroc": _number(auroc[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": _number(multiclass_accuracy(p, y, k, average="micro").item()),
        "balanced_accuracy": _number(recall[present].mean()),
        "f1_macro": _number(f1[present].mean()),
        "auroc_macro": _number(auroc[present].mean()) if present.sum() >= 2 else None,
        "cohen_kappa": _number(multiclass_cohen_kappa(p, y, k).item()),
        "n_test": len(y_np),
        "n_classes_in_test": int(present.sum()),
        "per_class": per_class,
    }


def roc_points(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One-vs-rest ROC curves: columns class, fpr, tpr, threshold (classes without test images
    or without negatives have no curve and are left out)."""
    y_np = np.asarray(y_true).astype(np.int64)
    p_np = np.asarray(probs, dtype=np.float64)
    check_probs(y_np, p_np, len(class_names))
    y = torch.from_numpy(y_np)
    p = torch.from_numpy(p_np)
    frames = []
    for i, name in enumerate(class_names):
        n_pos = int((y_np == i).sum())
        if n_pos == 0 or n_pos == len(y_np):
            continue
        fpr, tpr, thr = binary_roc(p[:, i], y.eq(i).long())
        frames.append(
            pd.DataFrame(
                {"class": name, "fpr": fpr.numpy(), "tpr": tpr.numpy(), "threshold": thr.numpy()}
            )
        )
    if not frames:
        return pd.DataFrame(columns=["class", "fpr", "tpr", "threshold"])
    return pd.concat(frames, ignore_index=True)


def label_indices(classes: Sequence[str], class_names: Sequence[str], source: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(classes) - set(index))
    if unknown:
        raise EvaluationError(
            f"{source}: class(es) {unknown} are not among the model's classes {list(class_names)}"
        )
    return np.array([index[c] for c in classes], dtype=np.int64)


def predict_images(
    predictor: Predictor, image_paths: Sequence[str], root: str | Path, batch_size: int = 64
) -> np.ndarray:
    """Probabilities (N, K) for the images, read and predicted ``batch_size`` at a time."""
    k = len(predictor.class_names)
    out = np.empty((len(image_paths), k), dtype=np.float64)
    for start in range(0, len(image_paths), batch_size):
        chunk = image_paths[start : start + batch_size]
        images = load_images(chunk, root, predictor.input_size, error=EvaluationError)
        probs = np.asarray(predictor.predict_proba(images))
        if probs.shape != (len(chunk), k):
            raise EvaluationError(
                f"predict_proba returned shape {probs.shape}, expected ({len(chunk)}, {k})"
            )
        out[start : start + len(chunk)] = probs
    return out


def predictions_frame(
    rows: pd.DataFrame, probs: np.ndarray, class_names: Sequence[str]
) -> pd.DataFrame:
    """Per-image predictions: path, image, class, predicted, prob_<class>..."""
    frame = pd.DataFrame(
        {
            "path": rows["path"].to_numpy(),
            "image": rows["image"].to_numpy(),
            "class": rows["class"].to_numpy(),
            "predicted": np.asarray(class_names, dtype=object)[probs.argmax(axis=1)],
        },
        columns=list(PREDICTIONS.columns),
    )
    for i, name in enumerate(class_names):
        frame[prob_column(name)] = probs[:, i]
    return frame


def evaluate_split(
    predictor: Predictor,
    split_csv: str | Path,
    root: str | Path,
    *,
    split: str = "test",
    batch_size: int = 64,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Predict every image of ``split`` and score it: (metrics, per-image predictions)."""
    frame = read_split(split_csv, error=EvaluationError)
    rows = split_rows(frame, split, split_csv, error=EvaluationError)
    class_names = list(predictor.class_names)
    y = label_indices(rows["class"].tolist(), class_names, str(split_csv))
    probs = predict_images(predictor, rows["image"].tolist(), root, batch_size)
    return compute_metrics(y, probs, class_names), predictions_frame(rows, probs, class_names)


def probs_from_predictions(frame: pd.DataFrame, class_names: Sequence[str]) -> np.ndarray:
    cols = [prob_column(name) for name in class_names]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise EvaluationError(
            f"predictions lack column(s) {missing} (model classes {list(class_names)})"
        )
    return frame[cols].to_numpy(dtype=np.float64)
