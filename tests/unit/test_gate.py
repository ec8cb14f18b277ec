"""The registration gate: each metric against its threshold, pass/fail, and the exit message."""

from __future__ import annotations

import pytest

from ihcflow.registry import GateFailed, evaluate_gate, next_version

METRICS = {
    "accuracy": 0.91,
    "balanced_accuracy": 0.88,
    "f1_macro": 0.87,
    "auroc_macro": 0.97,
    "cohen_kappa": 0.85,
    "n_test": 90,
    "per_class": {
        "Er": {"precision": 0.9, "recall": 0.95, "f1": 0.92, "auroc": 0.99, "support": 30},
        "Ki-67": {"precision": 0.8, "recall": 0.62, "f1": 0.7, "auroc": 0.93, "support": 30},
        "Pr": {"precision": 0.92, "recall": 0.97, "f1": 0.94, "auroc": 0.98, "support": 30},
    },
}


def test_gate_passes_when_every_threshold_holds() -> None:
    result = evaluate_gate(
        METRICS, {"min_balanced_accuracy": 0.8, "min_auroc_macro": 0.97, "model_name": "x"}
    )
    assert result.passed
    assert [(r.metric, r.op, r.threshold, r.ok) for r in result.rows] == [
        ("balanced_accuracy", ">=", 0.8, True),
        ("auroc_macro", ">=", 0.97, True),  # equal to the threshold passes
    ]
    assert "gate PASSED: 2/2 checks hold" in result.table()


def test_gate_fails_on_one_metric_and_reports_each() -> None:
    gate = {"min_accuracy": 0.9, "min_f1_macro": 0.9, "min_cohen_kappa": None}
    result = evaluate_gate(METRICS, gate)
    assert not result.passed
    assert [(r.metric, r.ok) for r in result.rows] == [("accuracy", True), ("f1_macro", False)]
    table = result.table()
    assert "accuracy" in table and "0.9100  >=     0.9000  ok" in table
    assert "f1_macro" in table and "0.8700  >=     0.9000  FAIL" in table
    assert "cohen_kappa" not in table  # null switches a check off
    assert "gate FAILED: 1/2 checks hold" in table


def test_per_class_and_max_thresholds() -> None:
    result = evaluate_gate(METRICS, {"min_class_recall": 0.7, "max_n_test": 100})
    rows = {r.metric: r.ok for r in result.rows}
    assert rows == {
        "per_class.Er.recall": True,
        "per_class.Ki-67.recall": False,  # good averages, but one stain is missed too often
        "per_class.Pr.recall": True,
        "n_test": True,
    }
    assert not result.passed


def test_undefined_metric_fails_the_gate() -> None:
    result = evaluate_gate({**METRICS, "auroc_macro": None}, {"min_auroc_macro": 0.5})
    assert not result.passed
    assert "n/a" in result.table()


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ({"min_balanced_acc": 0.8}, r"gate\.min_balanced_acc: metric 'balanced_acc' not in"),
        ({"min_class_sensitivity": 0.8}, r"per-class metric 'sensitivity' not in metrics"),
        ({"min_accuracy": "high"}, r"gate\.min_accuracy: threshold must be a number"),
    ],
)
def test_bad_gate_params_are_errors(gate: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_gate(METRICS, gate)


def test_gate_failed_exits_non_zero_with_the_table() -> None:
    result = evaluate_gate(METRICS, {"min_balanced_accuracy": 0.95, "min_accuracy": 0.5})
    with pytest.raises(SystemExit) as info:
        raise GateFailed(result)
    message = str(info.value.code)
    assert "failed the gate" in message and "unchanged" in message
    assert "balanced_accuracy" in message and "0.9500" in message and "FAIL" in message
    assert "accuracy" in message and "0.5000" in message


def test_versions_bump_only_for_a_new_model() -> None:
    assert next_version(None, "a" * 64) == "1.0.0"
    previous = {"version": "1.0.4", "checkpoint": {"sha256": "f" * 64, "model_digest": "a" * 64}}
    assert next_version(previous, "a" * 64) == "1.0.4"
    assert next_version(previous, "b" * 64) == "1.0.5"
    with pytest.raises(ValueError, match="expected MAJOR.MINOR.PATCH"):
        next_version({"version": "v2", "checkpoint": {}}, "b" * 64)
