"""The test metrics as people read them: headline scores and a per-class table (plain text).

Printed by the evaluate stage after a run and by `ihcflow report metrics` (what `make repro`
ends with), so that an up-to-date pipeline, where no stage runs, still shows where it stands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ihcflow.files import read_json
from ihcflow.reporting.format import MISSING, number
from ihcflow.tables import HEADLINE_METRICS, SEG_HEADLINE_METRICS

PER_CLASS = ("precision", "recall", "f1", "support")  # the columns printed


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """``reports/metrics.json`` (the evaluate stage's output) as a few lines of text."""
    lines = [f"test images: {metrics.get('n_test', 'n/a')}"]
    lines += [f"  {key:<18} {number(metrics.get(key), 4)}" for key in HEADLINE_METRICS]
    per_class: Mapping[str, Mapping[str, Any]] = metrics.get("per_class") or {}
    if per_class:
        width = max(len(name) for name in per_class)
        lines.append(" " * width + "".join(f"{col:>10}" for col in PER_CLASS))
        for name, row in per_class.items():
            cells = [number(row.get(col), 0 if col == "support" else 3) for col in PER_CLASS]
            lines.append(f"{name:<{width}}" + "".join(f"{cell:>10}" for cell in cells))
        if metrics.get("n_classes_in_test", len(per_class)) < len(per_class):
            lines.append("warning: some classes have no test image; macro averages leave them out")
    return "\n".join(lines)


def format_segmentation(metrics: Mapping[str, Any]) -> str:
    """``reports/segmentation/metrics.json`` (seg_evaluate's output) as a few lines of text."""
    lines = [
        f"segmentation test tiles: {metrics.get('n_images', 'n/a')} "
        f"({metrics.get('true_nuclei', 'n/a')} nuclei)"
    ]
    lines += [f"  {key:<18} {number(metrics.get(key), 4)}" for key in SEG_HEADLINE_METRICS]
    return "\n".join(lines)


def registered_line(model_json: Path, metric: str = "balanced_accuracy") -> str:
    """Which model is registered (with its ``metric``), or why none is."""
    if not model_json.is_file():
        return f"registered model: none ({model_json} absent: the gate has not passed yet)"
    info = read_json(model_json, "registered model")
    value = (info.get("metrics") or {}).get(metric)
    return (
        f"registered model: {info.get('name')} {info.get('version')} "
        f"({metric} {number(value, 4)}, created {info.get('created')})"
    )


# ---------------------------------------------------------------------------------------------
# How far a rerun is from the committed result

# benchmarks/robustness.py measures how much training on another CPU moves each metric (the
# spread over seeds and kernel sets) and writes it here; a rerun within it is as close as
# retraining elsewhere gets. Exact reproduction comes from `dvc pull`, not from retraining.
TOLERANCE_FILE = Path("benchmarks/results/robustness.json")


@dataclass(frozen=True)
class MetricDiff:
    metric: str
    here: float | None
    committed: float | None
    tolerance: float | None

    @property
    def diff(self) -> float | None:
        if self.here is None or self.committed is None:
            return None
        return self.here - self.committed

    @property
    def verdict(self) -> str:
        if self.diff is None:
            return MISSING
        if self.diff == 0:
            return "identical"
        if self.tolerance is None:
            return "no tolerance measured"
        return "inside" if abs(self.diff) <= self.tolerance + 1e-12 else "OUTSIDE"


def read_tolerance(path: Path) -> dict[str, float]:
    """Per-metric tolerance (``summary.tolerance``) from the robustness benchmark's JSON."""
    tolerance = (read_json(path, "robustness benchmark results").get("summary") or {}).get(
        "tolerance"
    )
    if not isinstance(tolerance, dict):
        raise ValueError(f"{path}: no summary.tolerance (write it with benchmarks/robustness.py)")
    return {str(k): float(v) for k, v in tolerance.items()}


def compare_metrics(
    here: Mapping[str, Any], committed: Mapping[str, Any], tolerance: Mapping[str, float]
) -> list[MetricDiff]:
    def value_of(metrics: Mapping[str, Any], key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, int | float) else None

    return [
        MetricDiff(key, value_of(here, key), value_of(committed, key), tolerance.get(key))
        for key in HEADLINE_METRICS
    ]


def format_comparison(rows: list[MetricDiff], against: str, tolerance_source: str) -> str:
    lines = [
        f"against {against} (tolerance: the spread of {tolerance_source})",
        f"  {'metric':<18} {'here':>8} {'committed':>10} {'diff':>8} {'tolerance':>10}",
    ]
    for row in rows:
        diff = number(row.diff, 4, signed=True)
        lines.append(
            f"  {row.metric:<18} {number(row.here, 4):>8} {number(row.committed, 4):>10} "
            f"{diff:>8} {number(row.tolerance, 4):>10}  {row.verdict}"
        )
    verdicts = {row.verdict for row in rows} - {MISSING}
    if verdicts <= {"identical"}:
        lines.append(f"identical to {against}: the same result (pulled or retrained on this CPU)")
    elif "OUTSIDE" in verdicts:
        lines.append(
            "some metrics moved more than training on another CPU does: the data, the params "
            "or the code differ from the committed run"
        )
    else:
        lines.append(
            "not identical, but as close as retraining on another CPU gets (`dvc pull` gives the "
            "committed model exactly)"
        )
    return "\n".join(lines)
