"""Simulated acquisition changes and prediction logs: to rehearse the monitoring loop, for tests
and for the benchmark.

- :func:`scale_brightness`: a darker or brighter scanner (exposure);
- :func:`scale_stain`: a stronger or weaker stain batch, applied in stain space by colour
  deconvolution (Ruifrok-Johnston H-E-DAB, the vectors :mod:`ihcflow.images.features` uses),
  so only that stain's optical density changes;
- :func:`log_record`: a prediction log record in the server's format
  (:mod:`ihcflow.prediction_log`, whose writer the tests and the benchmark use).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ihcflow.images.features import HED_FROM_RGB, RGB_FROM_HED
from ihcflow.images.ops import check_rgb
from ihcflow.prediction_log import make_record

STAINS = {"hematoxylin": 0, "eosin": 1, "dab": 2}


def scale_brightness(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Every channel times ``factor`` (0.9: a 10% darker exposure), clipped to 0..255."""
    check_rgb(rgb)
    return np.clip(np.rint(rgb.astype(np.float32) * factor), 0, 255).astype(np.uint8)


def scale_stain(rgb: np.ndarray, stain: str, factor: float) -> np.ndarray:
    """Multiply one stain's concentration by ``factor`` (1.5: a 50% stronger DAB batch).

    RGB -> optical density -> stain amounts (colour deconvolution) -> scale one -> back. With
    ``factor`` 1 the image comes back unchanged (up to rounding).
    """
    check_rgb(rgb)
    if stain not in STAINS:
        raise ValueError(f"stain {stain!r} unknown, expected one of {sorted(STAINS)}")
    od = -np.log(np.maximum(rgb.astype(np.float64) / 255.0, 1e-6))
    amounts = od @ HED_FROM_RGB
    amounts[..., STAINS[stain]] *= factor
    out = 255.0 * np.exp(-(amounts @ RGB_FROM_HED))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def log_record(
    ts: dt.datetime,
    features: Mapping[str, float],
    predicted: str,
    *,
    model_name: str = "ihc-classifier",
    model_version: str = "1.0.0",
    probs: Mapping[str, float] | None = None,
    embedding: Sequence[float] | None = None,
    filename: str | None = None,
) -> dict[str, Any]:
    """A prediction log record as the server writes it (:func:`ihcflow.prediction_log.make_record`),
    for a prediction that was not made: a random request id, ``predicted`` certain unless
    ``probs`` says otherwise. Write it with :class:`ihcflow.prediction_log.PredictionLog`."""
    return make_record(
        ts=ts,
        request_id=uuid.uuid4().hex,
        model_name=model_name,
        model_version=model_version,
        filename=filename,
        predicted=predicted,
        probs=probs if probs is not None else {predicted: 1.0},
        features=features,
        latency_ms=12.5,
        embedding=embedding,
    )
