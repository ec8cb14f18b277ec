"""Per-image out-of-distribution score: how far an image's embedding lies from every class the
model was trained on. The one definition of ``model.json``'s ``ood`` section, written at
registration (:func:`fit_ood` on the training split, the threshold calibrated on the
validation split) and read by the server (:meth:`OodScorer.from_info`), which returns, logs
and exports ``{"score", "flag"}`` for every image.

Method: the Mahalanobis distance to the nearest class in the model's embedding (the ONNX
``embedding`` output, its penultimate layer), each class with its own mean and covariance
(Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples";
class-conditional covariances caught three times more mis-framed images than one shared
covariance: benchmarks/drift_real.py). Each covariance is kept as its ``components`` leading
principal axes plus one variance for the other directions (probabilistic PCA), so
``model.json`` holds K (D x k) bases instead of K (D x D) inverses, and rare directions are
neither ignored nor amplified. An image that lies where no class does (a full frame instead of
a centred cell, another magnification, another stain) is far from every class even when the
softmax is confident.

The threshold is the ``quantile`` of the validation images' scores: by construction about
``1 - quantile`` of in-distribution images are flagged (the validation split is not trained
on, so its scores are those of new images of the same distribution).

Framing check (``zoom``): an image framed wider than the training images (a full microscope
field for a model trained on centre crops of one cell, 20x for 40x) is often only moderately
far from every class, but its centre, zoomed in, lies *closer* to them; a well-framed image's
centre zoomed in lies farther (its objects are now too big). The gain, the image's score minus
its zoomed centre's, is the second check: flagged as ``misframed`` above its own threshold
(never below 0: the centre must be closer).
With it, the two thresholds are set at one common quantile of the validation images, the
lowest that keeps the share flagged by either check at ``1 - quantile``, so switching the
framing check on does not raise the in-distribution flag rate (benchmarks/drift_real.py:
per-image flags on real mis-framed images 79% without it, over 90% with it).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

METHOD = "mahalanobis_nearest_class"
MIN_CALIBRATION = 20  # validation images needed to set a threshold at all
ZOOM_RANGE = (0.2, 0.9)  # the framing check's share of each side: a real zoom, not a sliver


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
    """Scores embeddings; ``flag`` is ``score > threshold``. Per class k: ``means[k]`` (D),
    ``bases[k]`` (D x c, orthonormal leading axes of its covariance), ``variances[k]`` (c) along
    them, ``residuals[k]`` the mean variance of the other D - c directions."""

    means: np.ndarray  # (K, D)
    bases: np.ndarray  # (K, D, c)
    variances: np.ndarray  # (K, c)
    residuals: np.ndarray  # (K,)
    threshold: float = float("inf")
    quantile: float = 1.0  # the share of validation images that passed (both checks)
    zoom: float | None = None  # framing check: the centre's share of each side (None: off)
    zoom_threshold: float = float("inf")  # ... flagged when score - zoomed score exceeds it

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N,) distances to the nearest class, each in standard
        deviations of that class's covariance."""
        emb = np.asarray(embedding, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise OodError(f"embedding shape {emb.shape}, expected (N, {self.dim})")
        squared = np.empty((len(emb), len(self.means)))
        for k in range(len(self.means)):
            diff = emb - self.means[k]
            along = diff @ self.bases[k]
            rest = np.maximum(np.sum(diff**2, axis=1) - np.sum(along**2, axis=1), 0.0)
            squared[:, k] = np.sum(along**2 / self.variances[k], axis=1) + rest / self.residuals[k]
        return np.sqrt(squared.min(axis=1))

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """The distance check alone (no framing check): ``score > threshold``."""
        return np.asarray(scores) > self.threshold

    def assess(self, embedding: np.ndarray, zoomed: np.ndarray | None = None) -> Assessment:
        """Both checks for (N, D) embeddings; ``zoomed``: the embeddings of their centres
        zoomed by :attr:`zoom` (:func:`ihcflow.images.ops.centre_zoom`), needed when the
        framing check is on."""
        scores = self.scores(embedding)
        flags = self.flags(scores)
        if self.zoom is None:
            return Assessment(scores, flags, None, None)
        if zoomed is None or len(zoomed) != len(scores):
            raise OodError("the framing check needs the zoomed centre of every image")
        gains = scores - self.scores(zoomed)
        misframed = gains > self.zoom_threshold
        return Assessment(scores, flags | misframed, gains, misframed)

    def calibrated(
        self,
        validation: np.ndarray,
        quantile: float,
        zoomed: np.ndarray | None = None,
        zoom: float | None = None,
    ) -> OodScorer:
        """This scorer with the threshold at ``quantile`` of the validation embeddings'
        scores; with ``zoom`` (and ``zoomed``, the validation images' centres zoomed by it)
        also the framing check, both thresholds at the common quantile that flags
        ``1 - quantile`` of the validation images by either check."""
        if not 0.5 <= quantile < 1.0:
            raise OodError(f"ood quantile must be in [0.5, 1), got {quantile}")
        if len(validation) < MIN_CALIBRATION:
            raise OodError(
                f"{len(validation)} validation images: at least {MIN_CALIBRATION} are needed to "
                "calibrate the out-of-distribution threshold"
            )
        scores = self.scores(validation)
        if zoom is None:
            threshold = float(np.quantile(scores, quantile, method="higher"))
            return replace(self, threshold=threshold, quantile=float(quantile), zoom=None)
        if not ZOOM_RANGE[0] <= zoom <= ZOOM_RANGE[1]:
            raise OodError(f"framing zoom must be in {list(ZOOM_RANGE)}, got {zoom}")
        if zoomed is None or len(zoomed) != len(scores):
            raise OodError("the framing check needs the zoomed centre of every validation image")
        gains = scores - self.scores(zoomed)
        threshold, zoom_threshold = _common_thresholds(scores, gains, 1.0 - quantile)
        # never below 0: mis-framed means the zoomed centre is *closer* to the classes; an image
        # that zooming does not change (a blank field, a scale-free texture) is not
        zoom_threshold = max(zoom_threshold, 0.0)
        return replace(
            self,
            threshold=threshold,
            quantile=float(quantile),
            zoom=float(zoom),
            zoom_threshold=zoom_threshold,
        )

    def to_info(self, **extra: Any) -> dict[str, Any]:
        """``model.json``'s ``ood`` section (``extra``: counts for people)."""
        return {
            "method": METHOD,
            "threshold": self.threshold,
            "quantile": self.quantile,
            "embedding_dim": self.dim,
            "components": int(self.bases.shape[2]),
            "framing": None
            if self.zoom is None
            else {"zoom": self.zoom, "threshold": self.zoom_threshold},
            **extra,
            "means": _encode(self.means),
            "bases": _encode(self.bases),
            "variances": _encode(self.variances),
            "residuals": _encode(self.residuals),
        }

    @classmethod
    def from_info(cls, node: Mapping[str, Any]) -> OodScorer:
        """Read ``model.json``'s ``ood`` section (checked)."""
        if node.get("method") != METHOD:
            raise OodError(f"ood.method {node.get('method')!r} unknown, expected {METHOD!r}")
        arrays = [_decode(node.get(n), n) for n in ("means", "bases", "variances", "residuals")]
        means, bases, variances, residuals = arrays
        try:
            threshold, quantile = float(node["threshold"]), float(node["quantile"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OodError(f"ood: missing or non-numeric {exc}") from None
        k, d = means.shape if means.ndim == 2 else (0, 0)
        c = bases.shape[-1] if bases.ndim == 3 else 0
        if (
            not k
            or bases.shape != (k, d, c)
            or variances.shape != (k, c)
            or residuals.shape != (k,)
        ):
            raise OodError(
                f"ood: means {means.shape}, bases {bases.shape}, variances {variances.shape} "
                f"and residuals {residuals.shape} do not fit together"
            )
        if (residuals <= 0).any() or (variances <= 0).any():
            raise OodError("ood: variances must be positive")
        zoom, zoom_threshold = _read_framing(node.get("framing"))
        return cls(means, bases, variances, residuals, threshold, quantile, zoom, zoom_threshold)


@dataclass(frozen=True)
class Assessment:
    """Per image: the distance ``scores``, ``flags`` (either check), and with the framing check
    the ``gains`` (score minus the zoomed centre's score) and ``misframed``."""

    scores: np.ndarray
    flags: np.ndarray
    gains: np.ndarray | None
    misframed: np.ndarray | None

    def records(self) -> list[dict[str, Any]]:
        """``{"score", "flag"}`` per image, plus ``"zoom_gain"`` and ``"misframed"`` with the
        framing check: what ``/predict`` returns and logs (7 significant digits)."""
        out = []
        for i, score in enumerate(self.scores.tolist()):
            row: dict[str, Any] = {"score": float(f"{score:.7g}"), "flag": bool(self.flags[i])}
            if self.gains is not None and self.misframed is not None:
                row["zoom_gain"] = float(f"{float(self.gains[i]):.7g}")
                row["misframed"] = bool(self.misframed[i])
            out.append(row)
        return out


def _read_framing(node: Any) -> tuple[float | None, float]:
    if node is None:
        return None, float("inf")
    try:
        zoom, threshold = float(node["zoom"]), float(node["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OodError(f"ood.framing: needs numeric zoom and threshold ({exc})") from None
    if not ZOOM_RANGE[0] <= zoom <= ZOOM_RANGE[1]:
        raise OodError(f"ood.framing.zoom {zoom} outside {list(ZOOM_RANGE)}")
    return zoom, threshold


def _common_thresholds(a: np.ndarray, b: np.ndarray, share: float) -> tuple[float, float]:
    """Thresholds for two scores at one common quantile q of their own values: the lowest q
    (most sensitive) that flags at most ``share`` of the rows by ``a > ta or b > tb``."""

    def flagged(q: float) -> tuple[float, float, float]:
        ta = float(np.quantile(a, q, method="higher"))
        tb = float(np.quantile(b, q, method="higher"))
        return float(np.mean((a > ta) | (b > tb))), ta, tb

    low, high = 1.0 - share, 1.0  # at low each check alone flags ~share: the union more
    best = flagged(high)
    for _ in range(40):
        middle = (low + high) / 2
        result = flagged(middle)
        if result[0] <= share:
            high, best = middle, result
        else:
            low = middle
    return best[1], best[2]


def _gaussian(rows: np.ndarray, components: int) -> tuple[np.ndarray, ...]:
    """Mean, leading axes, their variances and the residual variance of ``rows``."""
    mean = rows.mean(axis=0)
    centred = rows - mean
    cov = centred.T @ centred / max(1, len(rows) - 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    c = int(max(1, min(components, len(mean))))
    floor = max(float(values[0]) * 1e-6, 1e-12)  # a flat direction must not divide by 0
    rest = values[c:]
    residual = max(float(rest.mean()) if len(rest) else floor, floor)
    return mean, vectors[:, :c], np.maximum(values[:c], floor), np.array(residual)


def fit_ood(
    embedding: np.ndarray, labels: Sequence[int] | np.ndarray, n_classes: int, components: int
) -> OodScorer:
    """Fit each class's mean and covariance on the training embeddings (uncalibrated:
    :meth:`OodScorer.calibrated` sets the threshold). A class with fewer than 2 training
    images gets the covariance of all of them. The parameters are rounded to float32 here, as
    ``model.json`` stores them, so the threshold is calibrated on exactly the scores the
    server will compute."""
    emb = np.asarray(embedding, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if emb.ndim != 2 or len(emb) != len(y):
        raise OodError(f"embedding {emb.shape} for {len(y)} labels")
    if len(np.unique(y)) < 2:
        raise OodError("the training embeddings have fewer than 2 classes")
    everyone = _gaussian(emb, components)
    fitted = []
    for k in range(n_classes):
        rows = emb[y == k]
        if len(rows) >= 2:
            fitted.append(_gaussian(rows, components))
        else:  # too few to estimate a spread; an absent class is unreachable
            mean = rows.mean(axis=0) if len(rows) else np.full(emb.shape[1], 1e6)
            fitted.append((mean, *everyone[1:]))
    c = min(f[1].shape[1] for f in fitted)

    def stack(i: int, cut: bool = False) -> np.ndarray:
        parts = [f[i][..., :c] if cut else f[i] for f in fitted]
        return np.stack(parts).astype(np.float32).astype(np.float64)

    return OodScorer(stack(0), stack(1, cut=True), stack(2, cut=True), stack(3))
