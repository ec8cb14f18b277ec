"""The registration gate: each metric against its threshold, pass/fail, and the exit message."""

from __future__ import annotations

import pytest

from ihcflow.config import ConfigError
from ihcflow.registry.gate import ClassifierGateSettings, GateFailed, GateParams, evaluate_gate
from ihcflow.registry.install import next_version

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
    assert "gate PASSED: 2/2 checks hold" in result.report()


def test_gate_fails_on_one_metric_and_reports_each() -> None:
    gate = {"min_accuracy": 0.9, "min_f1_macro": 0.9, "min_cohen_kappa": None}
    result = evaluate_gate(METRICS, gate)
    assert not result.passed
    assert [(r.metric, r.ok) for r in result.rows] == [("accuracy", True), ("f1_macro", False)]
    table = result.report()
    assert "accuracy  0.9100  >= 0.9  ok" in table
    assert "f1_macro  0.8700  >= 0.9  FAIL" in table
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
    assert "n/a" in result.report()


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


def test_gate_tables_list_every_check_as_text_and_markdown() -> None:
    result = evaluate_gate(METRICS, {"min_balanced_accuracy": 0.95, "min_accuracy": 0.5})
    assert str(GateFailed(result)) == "the candidate model failed the gate (1/2 checks hold)"
    assert result.table(markdown=True) == [
        "| metric | value | rule | result |",
        "|---|---:|---|---|",
        "| balanced_accuracy | 0.8800 | >= 0.95 | **FAIL** |",
        "| accuracy | 0.9100 | >= 0.5 | ok |",
    ]
    assert result.report().splitlines()[1:] == [
        "balanced_accuracy  0.8800  >= 0.95  FAIL",
        "accuracy           0.9100  >= 0.5   ok",
        "gate FAILED: 1/2 checks hold",
    ]


def test_gate_params_name_a_misspelled_setting() -> None:
    section = {"min_accuracy": 0.8, "verify_images": 16, "verify_tolerance": 1e-4,
               "model_name": "m", "version": None, "ood_quantile": 0.99,
               "ood_components": 32, "ood_framing_zoom": 0.55}  # fmt: skip
    params = GateParams.from_section(section, ClassifierGateSettings)
    assert params.thresholds == {"min_accuracy": 0.8} and params.settings.verify_images == 16
    with pytest.raises(ConfigError, match=r"params `gate.verfy_images`: unknown key"):
        GateParams.from_section({**section, "verfy_images": 8}, ClassifierGateSettings)
    with pytest.raises(ConfigError, match=r"params `gate.model_name`: missing"):
        GateParams.from_section(
            {k: v for k, v in section.items() if k != "model_name"}, ClassifierGateSettings
        )


def test_versions_bump_only_for_a_new_model() -> None:
    assert next_version(None, "a" * 64) == "1.0.0"
    previous = {"version": "1.0.4", "checkpoint": {"sha256": "f" * 64, "model_digest": "a" * 64}}
    assert next_version(previous, "a" * 64) == "1.0.4"
    assert next_version(previous, "b" * 64) == "1.0.5"
    with pytest.raises(ValueError, match="expected MAJOR.MINOR.PATCH"):
        next_version({"version": "v2", "checkpoint": {}}, "b" * 64)
