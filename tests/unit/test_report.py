"""The pull-request report's pure parts: deltas, data changes, gate verdict, Markdown."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ihcflow.registry.gate import evaluate_gate
from ihcflow.reporting.pr import (
    COMMENT_LIMIT,
    MARKER,
    Change,
    DataChanges,
    PrReport,
    changes_from_diff,
    demote_headings,
    dvc_file_summary,
    dvc_problems,
    fmt_delta,
    manifest_changes,
    parse_manifest,
    render,
    with_nulls,
)

METRICS = {
    "accuracy": 0.9,
    "balanced_accuracy": 0.85,
    "per_class": {"Er": {"recall": 0.9}, "Ki-67": {"recall": 0.4}},
}


def _manifest(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["path", "class", "sha256"])


def _report(**overrides: object) -> PrReport:
    fields: dict[str, object] = {
        "base": "main",
        "base_sha": "a" * 40,
        "head": "b" * 7,
        "metrics": {
            "reports/metrics.json": [
                Change("accuracy", 0.8, 0.9),
                Change("balanced_accuracy", 0.85, 0.85),
                Change("per_class.Er.recall", 0.8, 0.9),
                Change("per_class.Ki-67.recall", 0.4, 0.4),
            ]
        },
        "params": [Change("train.lr", 0.001, 0.0003)],
        "gate": evaluate_gate(METRICS, {"min_accuracy": 0.8, "min_class_recall": 0.5}),
        "base_gate": evaluate_gate(METRICS, {"min_accuracy": 0.8}),
        "model": None,
        "model_current": False,
        "stale": [],
        "data": DataChanges([], "nothing"),
        "data_source": "the built-in synthetic sample",
        "images": [],
        "missing_images": [],
        "drift": None,
    }
    fields.update(overrides)
    return PrReport(**fields)  # type: ignore[arg-type]


def test_deltas_are_signed_with_direction() -> None:
    assert fmt_delta(0.8, 0.9) == "+0.1000 ▲"
    assert fmt_delta(0.9, 0.8) == "-0.1000 ▼"
    assert fmt_delta(0.5, 0.5) == "="
    assert fmt_delta(100, 97) == "-3 ▼"
    assert fmt_delta(0.5, 0.50001) == "+1.00e-05 ▲"
    assert fmt_delta(None, 0.7) == "new"
    assert fmt_delta(0.7, None) == "n/a now"


def test_changes_from_dvc_diff_keep_old_and_new() -> None:
    diff = {"reports/metrics.json": {"accuracy": {"old": 0.6, "new": 0.7, "diff": 0.1}}}
    (change,) = changes_from_diff(diff)["reports/metrics.json"]
    assert change == Change("accuracy", 0.6, 0.7)
    assert change.changed
    assert not Change("x", 1, 1).changed


def test_null_metrics_dvc_leaves_out_are_added_back() -> None:
    old = {"accuracy": 0.9, "auroc_macro": 0.8, "per_class": {"Er": {"auroc": None}}}
    new = {"accuracy": 0.8, "auroc_macro": None, "per_class": {"Er": {"auroc": None}}}
    from_dvc = [Change("accuracy", 0.9, 0.8)]
    assert with_nulls(from_dvc, old, new) == [
        Change("accuracy", 0.9, 0.8),
        Change("auroc_macro", 0.8, None),
        Change("per_class.Er.auroc", None, None),
    ]


def test_manifest_changes_count_added_removed_and_rewritten_per_class() -> None:
    base = _manifest([("a/1.png", "a", "h1"), ("a/2.png", "a", "h2"), ("b/1.png", "b", "h3")])
    new = _manifest(
        [
            ("a/1.png", "a", "h1"),
            ("a/2.png", "a", "CHANGED"),
            ("a/3.png", "a", "h4"),
            ("c/1.png", "c", "h5"),
        ]
    )
    rows = {r.name: r for r in manifest_changes(base, new)}
    assert (rows["a"].base, rows["a"].new, rows["a"].added, rows["a"].modified) == (2, 3, 1, 1)
    assert (rows["b"].base, rows["b"].new, rows["b"].removed) == (1, 0, 1)
    assert (rows["c"].base, rows["c"].new, rows["c"].added) == (0, 1, 1)


def test_manifest_without_required_columns_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"manifest\.csv at abc: missing column.*sha256"):
        parse_manifest("path,class\na/1.png,a\n", "manifest.csv at abc")


def test_dvc_file_summary_reads_the_recorded_directory() -> None:
    text = "outs:\n- md5: abc.dir\n  size: 120\n  nfiles: 3\n  path: data\n"
    assert dvc_file_summary(text) == {"md5": "abc.dir", "nfiles": 3, "size": 120}
    assert dvc_file_summary(None) == {}


def test_markdown_starts_with_the_marker_and_shows_deltas_params_and_failed_gate() -> None:
    text = render(_report(), notes=["Fork PR: ran on the built-in sample."])
    assert text.startswith(MARKER + "\n")
    assert "> Fork PR: ran on the built-in sample." in text
    assert "| **accuracy** | 0.8000 | 0.9000 | +0.1000 ▲ |" in text
    assert "| **balanced_accuracy** | 0.8500 | 0.8500 | = |" in text
    assert "| Er | 0.9000 (+0.1000 ▲) |" in text  # per-class cell with its change
    assert "| `train.lr` | 0.001 | 0.0003 |" in text  # params exactly as written
    # Ki-67 recall 0.4 < 0.5: this PR fails; the base (no class threshold) passed
    assert "**Registration gate: ❌ failed (2/3 checks hold)**" in text
    assert "at `main`: ✅ passed (1/1 checks hold)" in text
    assert "| per_class.Ki-67.recall | 0.4000 | >= 0.5 | **FAIL** |" in text


def test_images_are_relative_to_the_markdown_or_under_the_base_url(tmp_path: Path) -> None:
    png = tmp_path / "reports" / "plots" / "roc.png"
    report = _report(images=[("ROC", png)])
    local = render(report, images_relative_to=tmp_path / "out")
    assert "![ROC](../reports/plots/roc.png)" in local
    hosted = render(report, image_base_url="https://example.invalid/pr-1/abc/")
    assert "![ROC](https://example.invalid/pr-1/abc/roc.png)" in hosted


def test_stale_pipeline_and_stale_model_are_called_out() -> None:
    model = {"name": "ihc-classifier", "version": "1.0.4"}
    text = render(_report(stale=["train"], model=model, model_current=False))
    assert "not reproduced: `train`" in text
    assert "`ihc-classifier` **1.0.4** (**not** from these metrics" in text
    assert "Pipeline: up to date" not in text


def test_a_report_longer_than_a_github_comment_is_cut() -> None:
    text = render(_report(drift="x" * (COMMENT_LIMIT + 10)))
    assert len(text) <= COMMENT_LIMIT
    assert text.rstrip().endswith("run the command locally for all of it)")


def test_dvc_read_errors_become_problems_but_missing_workspace_outputs_do_not() -> None:
    base = "a" * 40
    errors = {
        base: {"reports/train/metrics.json": FileNotFoundError("gone")},
        "workspace": {
            "reports/metrics.json": FileNotFoundError("not produced yet"),
            "reports/train/summary.json": ValueError("bad JSON"),
        },
    }
    assert dvc_problems(errors, base, "main") == [
        "reports/train/metrics.json is not at `main` (new in this PR?)",
        "reports/train/summary.json in the workspace: ValueError: bad JSON",
    ]


def test_included_drift_summary_nests_under_the_report_headings() -> None:
    assert demote_headings("# Drift report\n\n## Columns\ntext #1") == (
        "#### Drift report\n\n##### Columns\ntext #1"
    )
    text = render(_report(drift="# Drift report\n**drift: yes**\n"))
    assert "### Latest drift check" in text and "#### Drift report" in text
