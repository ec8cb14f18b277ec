"""Per-image out-of-distribution score: how far an image's embedding lies from every class the
model was trained on. The one definition of ``model.json``'s ``ood`` section, written at
registration (:func:`fit_ood` on the training split, the threshold calibrated on the
validation split) and read by the server (:meth:`OodScorer.from_info`), which returns, logs
and exports ``{"score", "flag"}`` for every image.

Method: the Mahalanobis distance to the nearest class centroid in the model's embedding (the
ONNX ``embedding`` output, its penultimate layer) with one covariance shared by the classes
(Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples").
The shared within-class covariance is kept as its ``components`` leading principal axes plus
one variance for the rest (probabilistic PCA), so ``model.json`` holds a (D x k) basis
instead of a (D x D) inverse and the rare directions are neither ignored nor amplified.
An image that lies where no class does (a full frame instead of a centred cell, another
magnification, another tissue) is far from every centroid even when the softmax is confident.

The threshold is the ``quantile`` of the validation images' scores: by construction about
``1 - quantile`` of in-distribution images are flagged (the validation split is not trained
on, so its scores are those of new images of the same distribution).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METHOD = "mahalanobis_nearest_class"
MIN_CALIBRATION = 20  # validation images needed to set a threshold at all


class OodError(ValueError):
    """The ``ood`` section cannot be used or made; the message says why."""


def _encode(array: np.ndarray) -> dict[str, Any]:
    """A float32 array as JSON: its shape and its little-endian bytes in base64 (a 256 x 32
    basis is 44 KB this way; as a JSON list with indent it would be 8,000 lines)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    return {
        "dtype": "float32",
        "shape": list(data.shape),
        "base64": base64.b64encode(data.tobytes()).decode(),
    }


def _decode(node: Any, name: str) -> np.ndarray:
    try:
        shape = tuple(int(v) for v in node["shape"])
        raw = base64.b64decode(node["base64"], validate=True)
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise OodError(f"ood.{name}: not an encoded float32 array ({exc})") from None


@dataclass(frozen=True)
class OodScorer:
    """Scores embeddings; ``flag`` is ``score > threshold``."""

    centroids: np.ndarray  # (K, D) class means of the training embeddings
    basis: np.ndarray  # (D, k) orthonormal leading axes of the shared within-class covariance
    variances: np.ndarray  # (k,) the covariance's variance along each axis
    residual_variance: float  # the mean variance of the other D - k directions
    threshold: float = float("inf")
    quantile: float = 1.0

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N,) distances to the nearest class (in standard deviations
        of the shared covariance)."""
        emb = np.asarray(embedding, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise OodError(f"embedding shape {emb.shape}, expected (N, {self.dim})")
        diff = emb[:, None, :] - self.centroids[None, :, :]  # (N, K, D)
        along = diff @ self.basis  # (N, K, k)
        inside = np.sum(along**2 / self.variances, axis=-1)
        rest = np.maximum(np.sum(diff**2, axis=-1) - np.sum(along**2, axis=-1), 0.0)
        squared = inside + rest / self.residual_variance
        return np.sqrt(squared.min(axis=1))

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def calibrated(self, validation: np.ndarray, quantile: float) -> OodScorer:
        """This scorer with the threshold at ``quantile`` of the validation embeddings'
        scores."""
        if not 0.5 <= quantile < 1.0:
            raise OodError(f"ood quantile must be in [0.5, 1), got {quantile}")
        if len(validation) < MIN_CALIBRATION:
            raise OodError(
                f"{len(validation)} validation images: at least {MIN_CALIBRATION} are needed to "
                "calibrate the out-of-distribution threshold"
            )
        threshold = float(np.quantile(self.scores(validation), quantile, method="higher"))
        return OodScorer(
            self.centroids,
            self.basis,
            self.variances,
            self.residual_variance,
            threshold,
            float(quantile),
        )

    def to_info(self, **extra: Any) -> dict[str, Any]:
        """``model.json``'s ``ood`` section (``extra``: counts for people)."""
        return {
            "method": METHOD,
            "threshold": self.threshold,
            "quantile": self.quantile,
            "embedding_dim": self.dim,
            "components": int(self.basis.shape[1]),
            **extra,
            "residual_variance": self.residual_variance,
            "variances": _encode(self.variances),
            "basis": _encode(self.basis),
            "centroids": _encode(self.centroids),
        }

    @classmethod
    def from_info(cls, node: Mapping[str, Any]) -> OodScorer:
        """Read ``model.json``'s ``ood`` section (checked)."""
        if node.get("method") != METHOD:
            raise OodError(f"ood.method {node.get('method')!r} unknown, expected {METHOD!r}")
        centroids = _decode(node.get("centroids"), "centroids")
        basis = _decode(node.get("basis"), "basis")
        variances = _decode(node.get("variances"), "variances")
        try:
            residual = float(node["residual_variance"])
            threshold, quantile = float(node["threshold"]), float(node["quantile"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OodError(f"ood: missing or non-numeric {exc}") from None
        if centroids.ndim != 2 or basis.shape != (centroids.shape[1], len(variances)):
            raise OodError(
                f"ood: centroids {centroids.shape}, basis {basis.shape} and variances "
                f"{variances.shape} do not fit together"
            )
        if residual <= 0 or (variances <= 0).any():
            raise OodError("ood: variances must be positive")
        return cls(centroids, basis, variances, residual, threshold, quantile)


def fit_ood(
    embedding: np.ndarray, labels: Sequence[int] | np.ndarray, n_classes: int, components: int
) -> OodScorer:
    """Fit the class centroids and the shared covariance on the training embeddings
    (uncalibrated: :meth:`OodScorer.calibrated` sets the threshold). The parameters are rounded
    to float32 here, as ``model.json`` stores them, so the threshold is calibrated on exactly
    the scores the server will compute."""
    emb = np.asarray(embedding, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if emb.ndim != 2 or len(emb) != len(y):
        raise OodError(f"embedding {emb.shape} for {len(y)} labels")
    present = np.unique(y)
    if len(present) < 2:
        raise OodError("the training embeddings have fewer than 2 classes")
    dim = emb.shape[1]
    centroids = np.zeros((n_classes, dim))
    for k in range(n_classes):
        rows = emb[y == k]
        # a class absent from training has no centroid: keep it unreachable
        centroids[k] = rows.mean(axis=0) if len(rows) else np.full(dim, 1e6)
    within = emb - centroids[y]
    cov = within.T @ within / max(1, len(emb) - len(present))
    values, vectors = np.linalg.eigh(cov)  # ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    k = int(max(1, min(components, dim, len(emb) - len(present))))
    floor = max(float(values[0]) * 1e-6, 1e-12)  # a flat direction must not divide by 0
    variances = np.maximum(values[:k], floor)
    rest = values[k:]
    residual = max(float(rest.mean()) if len(rest) else floor, floor)
    as32 = [
        np.asarray(a, dtype=np.float32).astype(np.float64)
        for a in (centroids, vectors[:, :k], variances)
    ]
    return OodScorer(as32[0], as32[1], as32[2], float(np.float32(residual)))
