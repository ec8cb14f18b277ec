"""Simulated acquisition changes and prediction logs: to rehearse the monitoring loop, for tests
and for the benchmark.

- :func:`scale_brightness`: a darker or brighter scanner (exposure);
- :func:`scale_stain`: a stronger or weaker stain batch, applied in stain space by colour
  deconvolution (Ruifrok-Johnston H-E-DAB, the vectors :mod:`ihcflow.images.features` uses),
  so only that stain's optical density changes;
- :func:`log_record` / :func:`write_logs`: prediction log lines in the server's format
  (``<log_dir>/predictions-YYYY-MM-DD.jsonl``, one JSON object per line, UTC day files).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ihcflow.images.features import HED_FROM_RGB, RGB_FROM_HED
from ihcflow.images.ops import check_rgb

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


def iso_z(moment: dt.datetime) -> str:
    """``2026-05-01T12:00:00.123Z`` (the server's timestamp format)."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    """One prediction log record with the server's fields."""
    record: dict[str, Any] = {
        "ts": iso_z(ts),
        "request_id": uuid.uuid4().hex,
        "model_name": model_name,
        "model_version": model_version,
        "filename": filename,
        "predicted": predicted,
        "probs": dict(probs) if probs is not None else {predicted: 1.0},
        "features": {k: float(v) for k, v in features.items()},
        "latency_ms": 12.5,
    }
    if embedding is not None:
        record["embedding"] = [float(v) for v in embedding]
    return record


def write_logs(log_dir: str | Path, records: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Append ``records`` to ``<log_dir>/predictions-<UTC day of ts>.jsonl``; returns the files."""
    by_day: dict[str, list[str]] = defaultdict(list)
    for record in records:
        moment = dt.datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))
        by_day[moment.astimezone(dt.UTC).date().isoformat()].append(
            json.dumps(record, separators=(",", ":"))
        )
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for day, lines in sorted(by_day.items()):
        path = log_dir / f"predictions-{day}.jsonl"
        with path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        paths.append(path)
    return paths
