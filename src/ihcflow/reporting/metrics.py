"""The test metrics as people read them: headline scores and a per-class table (plain text).

Printed by the evaluate stage after a run and by `ihcflow report metrics` (what `make repro`
ends with), so that an up-to-date pipeline, where no stage runs, still shows where it stands.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ihcflow.io import read_json

HEADLINE = ("accuracy", "balanced_accuracy", "f1_macro", "auroc_macro", "cohen_kappa")
PER_CLASS = ("precision", "recall", "f1", "support")


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and digits == 0):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """``reports/metrics.json`` (the evaluate stage's output) as a few lines of text."""
    lines = [f"test images: {metrics.get('n_test', 'n/a')}"]
    lines += [f"  {key:<18} {_cell(metrics.get(key), 4)}" for key in HEADLINE]
    per_class: Mapping[str, Mapping[str, Any]] = metrics.get("per_class") or {}
    if per_class:
        width = max(len(name) for name in per_class)
        lines.append(" " * width + "".join(f"{col:>10}" for col in PER_CLASS))
        for name, row in per_class.items():
            cells = [_cell(row.get(col), 0 if col == "support" else 3) for col in PER_CLASS]
            lines.append(f"{name:<{width}}" + "".join(f"{cell:>10}" for cell in cells))
        if metrics.get("n_classes_in_test", len(per_class)) < len(per_class):
            lines.append("warning: some classes have no test image; macro averages leave them out")
    return "\n".join(lines)


def registered_line(model_json: Path) -> str:
    """Which model is registered, or why none is."""
    if not model_json.is_file():
        return f"registered model: none ({model_json} absent: the gate has not passed yet)"
    info = read_json(model_json, "registered model")
    metric = (info.get("metrics") or {}).get("balanced_accuracy")
    return (
        f"registered model: {info.get('name')} {info.get('version')} "
        f"(balanced_accuracy {_cell(metric, 4)}, created {info.get('created')})"
    )
