"""The registration gate: every metric of ``reports/metrics.json`` against its threshold.

The paper's gate: "if the results are as expected, the model is saved". The ``gate`` params
(conf/gate/default.yaml) hold thresholds, ``min_<metric>`` (metric >= value) and
``max_<metric>`` (metric <= value), where ``<metric>`` is a number in metrics.json and
``min_class_<m>`` applies to ``per_class.<every class>.<m>``; null switches a check off.
The rest of the section says how the candidate is verified and named (:class:`GateParams`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ihcflow.config import ConfigError, plain, typed
from ihcflow.reporting.format import markdown_table, number, text_table

THRESHOLD_KEY = re.compile(r"^(min|max)_(class_)?(.+)$")


@dataclass
class GateSettings:
    """How any registered model is verified and named (both tasks' ``gate`` sections)."""

    verify_images: int  # test images the exported ONNX model is checked on
    verify_tolerance: float  # max |ONNX - checkpoint| probability difference accepted
    model_name: str  # name in model.json and the model card
    version: str | None  # null: kept for the same weights, else previous + 1 patch


@dataclass
class ClassifierGateSettings(GateSettings):
    """The classifier's settings: also how its per-image OOD score is calibrated."""

    ood_quantile: float  # OOD threshold: this quantile of the validation images' scores
    ood_components: int  # axes of the shared covariance the OOD score keeps (ihcflow.ood)
    ood_framing_zoom: float | None  # the framing check's centre share of each side (None: off)


S = TypeVar("S", bound=GateSettings)


@dataclass
class GateParams(Generic[S]):
    """A ``gate`` params section: the thresholds and the settings (``S``)."""

    thresholds: dict[str, float | None]
    settings: S

    @classmethod
    def from_section(cls, node: Any, schema: type[S]) -> GateParams[S]:
        """Thresholds are the keys named like one; every other key must be a field of
        ``schema``."""
        data = plain(node)
        if not isinstance(data, Mapping):
            raise ConfigError(f"params `gate`: expected a mapping, got {type(data).__name__}")
        rest = {k: v for k, v in data.items() if not THRESHOLD_KEY.match(str(k))}
        return cls(thresholds(data), typed(rest, schema, "gate"))


def thresholds(gate: Mapping[str, Any]) -> dict[str, float | None]:
    """The threshold keys of a ``gate`` section (the others are ignored)."""
    return {str(k): v for k, v in gate.items() if THRESHOLD_KEY.match(str(k))}


@dataclass(frozen=True)
class GateRow:
    metric: str
    value: float | None  # None: the metric is undefined for this evaluation (fails the gate)
    op: str  # ">=" or "<="
    threshold: float
    ok: bool

    @property
    def rule(self) -> str:
        return f"{self.op} {self.threshold:g}"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    rows: list[GateRow]

    def summary(self) -> str:
        held = sum(r.ok for r in self.rows)
        return f"{held}/{len(self.rows)} checks hold"

    def table(self, *, markdown: bool = False) -> list[str]:
        """The one gate table (metric, value, rule, result): Markdown or aligned text."""
        rows = [
            [
                r.metric,
                number(r.value),
                r.rule,
                "ok" if r.ok else "**FAIL**" if markdown else "FAIL",
            ]
            for r in self.rows
        ]
        header = ("metric", "value", "rule", "result")
        if markdown:
            return markdown_table(header, rows, "lrll")
        return text_table(header, rows, "lrll")

    def report(self) -> str:
        """The table as the register stage prints it, with the verdict."""
        if not self.rows:
            return "gate: no thresholds set (params gate.min_*/max_*), the candidate passes"
        verdict = "PASSED" if self.passed else "FAILED"
        return "\n".join([*self.table(), f"gate {verdict}: {self.summary()}"])


class GateFailed(Exception):
    """The candidate did not pass the gate (``result`` has every check)."""

    def __init__(self, result: GateResult) -> None:
        super().__init__(f"the candidate model failed the gate ({result.summary()})")
        self.result = result


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def gate_checks(
    gate: Mapping[str, Any], metrics: Mapping[str, Any]
) -> list[tuple[str, str, float]]:
    """(metric, op, threshold) of the thresholds in ``gate`` (other keys are ignored).

    An unknown metric is an error (a typo must not silently disable a check).
    """
    per_class = metrics.get("per_class") or {}
    top = sorted(k for k, v in metrics.items() if _numeric(v) or v is None)
    class_keys = sorted({m for stats in per_class.values() for m in stats})
    checks: list[tuple[str, str, float]] = []
    for key, threshold in thresholds(gate).items():
        if threshold is None:
            continue
        if not _numeric(threshold):
            raise ValueError(f"gate.{key}: threshold must be a number, got {threshold!r}")
        match = THRESHOLD_KEY.match(key)
        assert match is not None
        op = ">=" if match.group(1) == "min" else "<="
        name = match.group(3)
        if match.group(2):
            if name not in class_keys:
                raise ValueError(
                    f"gate.{key}: per-class metric {name!r} not in metrics "
                    f"(per-class metrics: {', '.join(class_keys)})"
                )
            checks += [(f"per_class.{c}.{name}", op, float(threshold)) for c in per_class]
        else:
            if name not in metrics:
                raise ValueError(
                    f"gate.{key}: metric {name!r} not in metrics (metrics: {', '.join(top)})"
                )
            checks.append((name, op, float(threshold)))
    return checks


def _lookup(metrics: Mapping[str, Any], dotted: str) -> float | None:
    if dotted.startswith("per_class."):
        _, rest = dotted.split(".", 1)
        cls, name = rest.rsplit(".", 1)
        value = metrics["per_class"][cls].get(name)
    else:
        value = metrics.get(dotted)
    return float(value) if _numeric(value) else None


def evaluate_gate(metrics: Mapping[str, Any], gate: Mapping[str, Any]) -> GateResult:
    """Compare ``metrics`` (reports/metrics.json) with the thresholds in ``gate``."""
    rows = []
    for metric, op, threshold in gate_checks(gate, metrics):
        value = _lookup(metrics, metric)
        ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        rows.append(GateRow(metric, value, op, threshold, ok))
    return GateResult(all(r.ok for r in rows), rows)
