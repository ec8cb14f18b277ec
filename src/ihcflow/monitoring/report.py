"""Run a drift check end to end and write its report folder.

``<out>/drift.html`` (Evidently's report, self-contained: its JavaScript and font are inlined;
a banner on top gives the verdict, the counts and the trend plot), ``drift.json`` (the summary,
the windows and Evidently's metrics and tests), ``summary.md`` (the short version for people and
PR comments), ``metrics.json`` (flat numbers for ``dvc metrics show``) and, with windows,
``windows.csv`` and ``drift_share.png``. The folder is replaced as a whole.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ihcflow.files import atomic_dir
from ihcflow.monitoring.drift import Comparison, DriftParams, Window, compare, compare_windows
from ihcflow.monitoring.quality import data_quality
from ihcflow.monitoring.sources import Table

EXIT_NO_DRIFT, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2


@dataclass
class DriftRun:
    """A finished check: the whole-selection comparison, the windows, and what was read."""

    reference: Table
    current: Table
    overall: Comparison
    windows: list[Window] = field(default_factory=list)
    window: str = "none"
    since: pd.Timestamp | None = None
    until: pd.Timestamp | None = None
    params: DriftParams = field(default_factory=DriftParams)
    model: str | None = None
    quality: dict[str, Any] = field(default_factory=dict)  # monitoring.quality.data_quality

    @property
    def exit_code(self) -> int:
        if self.overall.status == "not_enough_data":
            return EXIT_ERROR
        return EXIT_DRIFT if self.overall.status == "drift" else EXIT_NO_DRIFT

    def summary(self) -> dict[str, Any]:
        cur = self.current
        ts = cur.frame.get("ts")
        return {
            "status": self.overall.status,
            "dataset_drift": self.overall.dataset_drift,
            "exit_code": self.exit_code,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model": self.model,
            "window": self.window,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "reference": {
                "source": self.reference.source,
                "rows": len(self.reference),
                "embeddings": self.reference.embeddings is not None,
                "notes": self.reference.notes,
            },
            "current": {
                "source": cur.source,
                "kind": cur.kind,
                "rows": len(cur),
                "first": None if ts is None or ts.empty else _iso(ts.min()),
                "last": None if ts is None or ts.empty else _iso(ts.max()),
                "counts": cur.counts,
                "embeddings": cur.embeddings is not None,
                "problems": cur.problems,
                "notes": cur.notes,
            },
            "params": {k: v for k, v in vars(self.params).items() if k != "features"},
            "overall": self.overall.to_dict(),
            "data_quality": self.quality,
            "windows": [w.to_dict() for w in self.windows],
        }


def _iso(moment: pd.Timestamp | None) -> str | None:
    """``2026-05-01T12:00:00Z`` (UTC, whole seconds)."""
    if moment is None:
        return None
    return moment.tz_convert("UTC").isoformat(timespec="seconds").replace("+00:00", "Z")


def run_drift(
    reference: Table,
    current: Table,
    params: DriftParams,
    *,
    window: str = "none",
    since: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
    model: str | None = None,
) -> DriftRun:
    """Compare the whole selection (with the full Evidently report) and each window."""
    overall = compare(reference, current, params, html=True)
    windows = []
    if window != "none":
        windows = compare_windows(reference, current, params, window, since=since, until=until)
    quality = data_quality(reference.frame, current.frame, params.quality_share)
    return DriftRun(
        reference, current, overall, windows, window, since, until, params, model, quality
    )


# ------------------------------------------------------------------------------- the files


def write_report(result: DriftRun, out: str | Path) -> dict[str, Any]:
    """Write the report folder (replacing it); returns the summary."""
    summary = result.summary()
    plot = trend_png(result.windows, result.params.drift_share) if result.windows else None
    with atomic_dir(out) as tmp:
        report: dict[str, Any] = {}
        if result.overall.snapshot is not None:
            report = result.overall.snapshot.dict()
            page = result.overall.snapshot.get_html_str(as_iframe=False)
            (tmp / "drift.html").write_text(_with_banner(page, summary, plot), encoding="utf-8")
        doc = {"summary": summary, "evidently": report}
        (tmp / "drift.json").write_text(json.dumps(doc, indent=1, default=_json) + "\n")
        (tmp / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(flat_metrics(summary), indent=2) + "\n")
        if result.windows:
            windows_table(result.windows).to_csv(tmp / "windows.csv", index=False)
            assert plot is not None
            (tmp / "drift_share.png").write_bytes(plot)
    return summary


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp | dt.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def flat_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    o = summary["overall"]
    emb = o["embedding"] or {}
    return {
        "dataset_drift": o["dataset_drift"],
        "drift_share": o["share"],
        "drifted_columns": o["n_drifted"],
        "columns": o["n_columns"],
        "embedding_auc": emb.get("score"),
        "current_rows": summary["current"]["rows"],
        "reference_rows": summary["reference"]["rows"],
        "ood_flagged_share": o["ood"]["share"],
        "data_quality_warnings": len((summary.get("data_quality") or {}).get("warnings", [])),
        "windows_drifted": sum(bool(w["dataset_drift"]) for w in summary["windows"]),
        "windows_without_enough_data": sum(
            w["status"] == "not_enough_data" for w in summary["windows"]
        ),
    }


def windows_table(windows: Sequence[Window]) -> pd.DataFrame:
    rows = []
    for w in windows:
        d = w.to_dict()
        d["drifted_columns"] = ";".join(d["drifted_columns"])
        rows.append(d)
    return pd.DataFrame(rows)


def trend_png(windows: Sequence[Window], drift_share: float) -> bytes:
    """Drift share per window (line), the threshold (dashed), rows per window (bars);
    windows without enough data are shown as grey bars with no point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(windows))
    labels = [w.start.strftime("%Y-%m-%d") for w in windows]
    share = [np.nan if w.comparison.share is None else w.comparison.share for w in windows]
    rows = [w.comparison.n_current for w in windows]
    tested = [w.comparison.status != "not_enough_data" for w in windows]
    drift = [w.comparison.status == "drift" for w in windows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(windows) + 3), 4.2), dpi=110)
    try:
        bars = ax.twinx()
        bars.bar(x, rows, color=["#c9d6e8" if t else "#dddddd" for t in tested], zorder=0)
        bars.set_ylabel("rows per window")
        ax.set_zorder(bars.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(x, share, "-", color="#1f4e99", zorder=3)
        for i in x:
            if tested[i]:
                colour = "#c0392b" if drift[i] else "#1f4e99"
                ax.plot(i, share[i], "o", color=colour, markersize=7, zorder=4)
            else:
                ax.annotate("n/a", (i, 0.02), ha="center", fontsize=8, color="#777777")
        ax.axhline(drift_share, ls="--", color="#c0392b", lw=1)
        ax.text(
            len(windows) - 0.5, drift_share, "drift_share", va="bottom", ha="right",
            color="#c0392b", fontsize=8,
        )  # fmt: skip
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("share of drifted columns")
        ax.set_xticks(x, labels, rotation=45 if len(windows) > 6 else 0, ha="right")
        ax.set_title("Drift share per window (red: dataset drift; n/a: not enough data)")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _verdict(summary: Mapping[str, Any]) -> str:
    o = summary["overall"]
    if o["status"] == "not_enough_data":
        return f"NOT ENOUGH DATA ({o['reason']})"
    share = f"{o['n_drifted']}/{o['n_columns']} columns drifted (share {o['share']:.2f}"
    share += f" {'>=' if o['share'] >= o['drift_share'] else '<'} drift_share {o['drift_share']})"
    emb = o["embedding"]
    emb_text = ""
    if emb:
        emb_text = (
            f"; embedding {'DRIFTED' if emb['drifted'] else 'stable'} "
            f"(AUC {emb['score']:.3f} vs {emb['threshold']:.3f})"
        )
    return f"{'DRIFT' if o['dataset_drift'] else 'no drift'}: {share}{emb_text}"


def _period(summary: Mapping[str, Any]) -> str:
    cur = summary["current"]
    if cur["kind"] != "logs":
        return f"{cur['rows']} images from {cur['source']}"
    return (
        f"{cur['rows']} predictions of model {cur['counts'].get('model', '?')} from "
        f"{cur['first']} to {cur['last']} ({cur['source']})"
    )


def _excluded(counts: Mapping[str, Any]) -> list[str]:
    labels = {
        "bad_lines": "unusable log lines",
        "other_version_rows": "records of other model versions",
        "incomplete_rows": "records with missing features",
        "unreadable_images": "unreadable images",
        "other_files": "files that are not images",
    }
    out = [f"{counts[k]} {label}" for k, label in labels.items() if counts.get(k)]
    if counts.get("other_versions"):
        out.append(f"other versions: {counts['other_versions']}")
    return out


def summary_markdown(summary: Mapping[str, Any]) -> str:
    o = summary["overall"]
    lines = [
        "# Drift report",
        "",
        f"**{_verdict(summary)}** (exit code {summary['exit_code']})",
        "",
        f"- current: {_period(summary)}",
        f"- reference: {summary['reference']['rows']} rows, {summary['reference']['source']}",
    ]
    if summary["window"] != "none":
        lines.append(f"- window: {summary['window']} (since {summary['since'] or 'first record'})")
    excluded = _excluded(summary["current"]["counts"])
    if excluded:
        lines.append(f"- excluded: {'; '.join(excluded)}")
    for note in summary["reference"]["notes"] + summary["current"]["notes"]:
        lines.append(f"- {note}")
    if o["embedding_note"]:
        lines.append(f"- {o['embedding_note']}")
    if o["status"] != "not_enough_data":
        lines += ["", "| column | test | score | threshold | drift |", "|---|---|---:|---:|---|"]
        for c in o["columns"]:
            score = "n/a" if c["score"] is None else f"{c['score']:.4g}"
            mark = "**yes**" if c["drifted"] else "no"
            lines.append(
                f"| {c['column']} | {c['method']} | {score} | {c['threshold']:g} | {mark} |"
            )
        emb = o["embedding"]
        if emb:
            lines.append(
                f"| embedding ({emb['dim']}-d) | classifier ROC AUC | {emb['score']:.4f} | "
                f"{emb['threshold']:.4f} | {'**yes**' if emb['drifted'] else 'no'} |"
            )
        for name, why in o["skipped_columns"].items():
            lines.append(f"| {name} | not tested: {why} | | | |")
    ood = o.get("ood") or {}
    if ood.get("scored"):
        lines += ["", f"- out of distribution: {_ood(ood)} (flagged by the server per image)"]
    lines += _quality_lines(summary.get("data_quality") or {})
    if summary["windows"]:
        lines += [
            "",
            f"## Per {summary['window']}",
            "",
            "| window | rows | share | drift | drifted columns | OOD flagged |",
            "|---|---:|---:|---|---|---:|",
        ]
        for w in summary["windows"]:
            if w["status"] == "not_enough_data":
                verdict, share = "not enough data", "n/a"
            else:
                verdict = "**DRIFT**" if w["dataset_drift"] else "no"
                share = f"{w['share']:.2f}"
            cols = ", ".join(w["drifted_columns"])
            flagged = w.get("ood_flagged_share")
            flagged_text = "n/a" if flagged is None else f"{flagged:.1%}"
            lines.append(
                f"| {w['start'][:10]} | {w['rows']} | {share} | {verdict} | {cols} | "
                f"{flagged_text} |"
            )
    problems = summary["current"]["problems"]
    if problems:
        lines += ["", "## Left out (first examples)", ""] + [f"- `{p}`" for p in problems]
    return "\n".join(lines) + "\n"


def _ood(ood: Mapping[str, Any]) -> str:
    text = f"{ood['flagged']} of {ood['scored']} images ({ood['share']:.1%})"
    if ood.get("misframed"):
        text += f", {ood['misframed']} of them misframed (a wider field of view than in training)"
    return text


def _quality_lines(quality: Mapping[str, Any]) -> list[str]:
    """The data-quality section: acquisition properties, reported, never counted as drift."""
    if not quality.get("columns"):
        return []
    lines = [
        "",
        "## Data quality (acquisition: reported, not counted as drift)",
        "",
        "| property | reference | current | outside the reference | warning |",
        "|---|---|---|---:|---|",
    ]
    for c in quality["columns"]:
        if c["share"] is None:
            lines.append(f"| {c['column']} | {c['note']} | | | |")
            continue
        mark = "**yes**" if c["warn"] else "no"
        lines.append(
            f"| {c['column']} | {c['reference']} | {c['current']} | "
            f"{c['outside']} of {c['rows']} ({c['share']:.0%}) | {mark} |"
        )
    return lines


def _with_banner(page: str, summary: Mapping[str, Any], plot: bytes | None) -> str:
    """Evidently's page with our verdict, counts and trend plot on top (all inline)."""
    colour = {"drift": "#fbe9e7", "no_drift": "#e8f5e9"}.get(summary["status"], "#fff8e1")
    items = [f"<li>current: {html.escape(_period(summary))}</li>"]
    items.append(
        f"<li>reference: {summary['reference']['rows']} rows, "
        f"{html.escape(summary['reference']['source'])}</li>"
    )
    excluded = _excluded(summary["current"]["counts"])
    if excluded:
        items.append(f"<li>excluded: {html.escape('; '.join(excluded))}</li>")
    notes = summary["reference"]["notes"] + summary["current"]["notes"]
    if summary["overall"]["embedding_note"]:
        notes.append(summary["overall"]["embedding_note"])
    ood = summary["overall"].get("ood") or {}
    if ood.get("scored"):
        notes.append(f"out of distribution: {_ood(ood)}")
    warnings = (summary.get("data_quality") or {}).get("warnings", [])
    notes += [f"data quality warning: {w}" for w in warnings]
    items += [f"<li>{html.escape(n)}</li>" for n in notes]
    image = ""
    if plot is not None:
        data = base64.b64encode(plot).decode()
        image = f'<img alt="drift share per window" src="data:image/png;base64,{data}">'
    banner = (
        f'<div id="ihcflow-drift-summary" style="font-family:sans-serif;margin:16px;'
        f'padding:12px 16px;background:{colour};border-radius:6px">'
        f'<h2 style="margin:4px 0">ihcflow drift: {html.escape(_verdict(summary))}</h2>'
        f"<ul>{''.join(items)}</ul>{image}</div>"
    )
    head, sep, tail = page.partition("<body>")
    return head + sep + banner + tail if sep else banner + page
