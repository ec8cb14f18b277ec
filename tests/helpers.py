"""Test support shared by the test modules (no test module imports another one)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ihcflow.prediction_log import PredictionLog


def write_logs(log_dir: Path, records: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Append ``records`` with the server's own writer; returns the day files written."""
    with PredictionLog(log_dir) as log:
        return log.write(records)
