"""`ihcflow report pr`: what a change did to the model, as Markdown for a pull-request comment.

Compares the workspace (what ``dvc repro`` left) with a base revision, using DVC itself:
``Repo.metrics.diff`` / ``Repo.params.diff`` (what ``dvc metrics diff`` / ``dvc params diff``
print), ``dvc.api.read`` for files at the base (git-tracked, or from the DVC cache or remote)
and ``Repo.status`` for stages not reproduced. The same command runs locally and in CI.

Images: a comment cannot embed local files, so the PNGs are referenced by path relative to the
Markdown file, or under ``image_base_url`` where CI publishes them (docs/ci.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ihcflow import tables
from ihcflow.data.provenance import describe, parse_dvc_file
from ihcflow.files import parse_json
from ihcflow.model_format import JSON_NAME
from ihcflow.registry.gate import GateResult, evaluate_gate
from ihcflow.reporting.format import MISSING, markdown_table, number
from ihcflow.tables import HEADLINE_METRICS, METRICS, PER_CLASS_METRICS

MARKER = "<!-- ihcflow-report -->"  # CI finds the comment to update by this line
COMMENT_LIMIT = 65536  # GitHub rejects longer comment bodies

PARAMS = "params.yaml"
MANIFEST = tables.MANIFEST.path
DATA_DVC = "data.dvc"
MODEL_JSON = f"models/{JSON_NAME}"
DRIFT_SUMMARY = "reports/drift/summary.md"
PLOTS = (("confusion matrix", "reports/plots/confusion.png"), ("ROC", "reports/plots/roc.png"))
PER_CLASS = "per_class."


@dataclass(frozen=True)
class Change:
    """One metric or param at the base and in the workspace (None: absent there)."""

    name: str
    old: Any
    new: Any

    @property
    def changed(self) -> bool:
        return self.old != self.new


@dataclass(frozen=True)
class ClassDelta:
    name: str
    base: int
    new: int
    added: int
    removed: int
    modified: int  # same path, different content (sha256)


@dataclass
class DataChanges:
    classes: list[ClassDelta]  # empty when the manifests could not be compared
    method: str  # how the change was measured, shown in the report
    dvc_file: tuple[dict[str, Any], dict[str, Any]] | None = None  # data.dvc base / now


@dataclass
class PrReport:
    base: str  # label shown, e.g. "main"
    base_sha: str
    head: str  # what the workspace is based on, e.g. "a1b2c3d" or "a1b2c3d + changes"
    metrics: dict[str, list[Change]]  # metrics file -> every metric (changed or not)
    params: list[Change]  # changed params only
    gate: GateResult | None
    base_gate: GateResult | None
    model: dict[str, Any] | None  # models/model.json
    model_current: bool  # model.json holds this workspace's metrics
    stale: list[str]  # `dvc status`: stages / files not reproduced
    data: DataChanges
    data_source: str
    images: list[tuple[str, Path]]  # (title, absolute path) that exist
    missing_images: list[str]
    drift: str | None
    problems: list[str] = field(default_factory=list)  # what could not be read, and why
    dvc_version: str = ""


# ---------------------------------------------------------------------------------------------
# Pure helpers


def changes_from_diff(
    diff: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, list[Change]]:
    """``{file: [Change]}`` from the ``diff`` part of ``Repo.metrics.diff`` / ``params.diff``."""
    return {
        path: [Change(name, d.get("old"), d.get("new")) for name, d in sorted(entries.items())]
        for path, entries in diff.items()
    }


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, numbers and nulls only (as DVC names metrics)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif value is None or _number(value):
            flat[f"{prefix}{key}"] = value
    return flat


def with_nulls(
    changes: Sequence[Change], old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> list[Change]:
    """DVC's diff leaves out null metrics (e.g. an AUROC that became undefined): add them."""
    old_flat, new_flat = flatten(old or {}), flatten(new or {})
    known = {c.name for c in changes}
    extra = [
        Change(name, old_flat.get(name), new_flat.get(name))
        for name in sorted((old_flat.keys() | new_flat.keys()) - known)
    ]
    return [*changes, *extra]


def manifest_changes(base: pd.DataFrame, new: pd.DataFrame) -> list[ClassDelta]:
    """Images per class at the base and now, with paths added, removed and re-written."""
    old_sha = dict(zip(base["path"], base["sha256"], strict=True))
    new_sha = dict(zip(new["path"], new["sha256"], strict=True))
    old_cls = dict(zip(base["path"], base["class"], strict=True))
    new_cls = dict(zip(new["path"], new["class"], strict=True))
    rows = []
    for cls in sorted(set(old_cls.values()) | set(new_cls.values())):
        before = {p for p, c in old_cls.items() if c == cls}
        after = {p for p, c in new_cls.items() if c == cls}
        kept = before & after
        rows.append(
            ClassDelta(
                name=cls,
                base=len(before),
                new=len(after),
                added=len(after - before),
                removed=len(before - after),
                modified=sum(old_sha[p] != new_sha[p] for p in kept),
            )
        )
    return rows


def parse_manifest(text: str, source: str) -> pd.DataFrame:
    return tables.parse_table(text, source, tables.MANIFEST, columns=("path", "class", "sha256"))


def dvc_file_summary(text: str | None, source: str = DATA_DVC) -> dict[str, Any]:
    """md5 / nfiles / size of the first output recorded in a ``.dvc`` file ({} if none)."""
    if not text:
        return {}
    outs = parse_dvc_file(text, source)["outs"] or [{}]
    return {k: outs[0][k] for k in ("md5", "nfiles", "size") if k in outs[0]}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def param_text(value: Any) -> str:
    """A param as written (a number in full, a list or mapping as JSON)."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return str(value)


def fmt_delta(old: Any, new: Any) -> str:
    """``+0.0123 ▲`` / ``-0.0100 ▼`` / ``=``; ``new`` / ``n/a now`` when a side is null."""
    if old is None and new is None:
        return ""
    if old is None:
        return "new"
    if new is None:
        return "n/a now"
    if not (_number(old) and _number(new)):
        return "=" if old == new else "changed"
    delta = new - old
    if delta == 0:
        return "="
    return f"{number(delta, signed=True)} {'▲' if delta > 0 else '▼'}"


def _cell(old: Any, new: Any) -> str:
    """A per-class table cell: the value, with the change when there is one."""
    if old == new:
        return number(new)
    return f"{number(new)} ({fmt_delta(old, new)})"


def _gate_line(result: GateResult | None) -> str:
    if result is None:
        return MISSING
    if not result.rows:
        return "no thresholds"
    word = "✅ passed" if result.passed else "❌ failed"
    return f"{word} ({result.summary()})"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


# ---------------------------------------------------------------------------------------------
# Reading the repository


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def resolve_rev(root: Path, rev: str) -> str:
    """The commit ``rev`` names; a clear error when it is not in this clone."""
    try:
        return _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RuntimeError:
        raise ValueError(
            f"base revision {rev!r} is not a commit in {root} (in CI, check out with "
            "fetch-depth: 0 or fetch the base branch first)"
        ) from None


def describe_head(root: Path) -> str:
    head = _git(root, "rev-parse", "--short", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    return f"{head} + uncommitted changes" if dirty else head


def read_at(root: Path, path: str, rev: str) -> tuple[str | None, str | None]:
    """(text of ``path`` at ``rev``, None) or (None, why not): git-tracked or a DVC output."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return dvc.api.read(path, repo=str(root), rev=rev, mode="r"), None
    except (DvcException, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _read_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _json(text: str | None, source: str) -> dict[str, Any] | None:
    return None if text is None else parse_json(text, source)


def _gate_params(text: str | None, source: str) -> Mapping[str, Any] | None:
    if text is None:
        return None
    params = yaml.safe_load(text) or {}
    gate = params.get("gate") if isinstance(params, dict) else None
    if gate is not None and not isinstance(gate, dict):
        raise ValueError(f"{source}: `gate` must be a mapping, got {type(gate).__name__}")
    return gate


def _gate(
    metrics: Mapping[str, Any] | None, gate: Mapping[str, Any] | None, where: str, problems: list
) -> GateResult | None:
    if metrics is None or gate is None:
        return None
    try:
        return evaluate_gate(metrics, gate)
    except (ValueError, KeyError, TypeError) as exc:
        problems.append(f"gate at {where}: {exc}")
        return None


def data_changes(root: Path, base_sha: str, problems: list[str]) -> DataChanges:
    """Per class from the manifests; else what ``data.dvc`` says changed."""
    new_text = _read_text(root / MANIFEST)
    base_text, why = read_at(root, MANIFEST, base_sha)
    if new_text is not None and base_text is not None:
        rows = manifest_changes(
            parse_manifest(base_text, f"{MANIFEST} at {base_sha[:7]}"),
            parse_manifest(new_text, str(root / MANIFEST)),
        )
        return DataChanges(rows, f"`{MANIFEST}` at the base vs the workspace")
    if new_text is None:
        reason = f"{MANIFEST} is not in the workspace (the validate stage did not run)"
    else:
        reason = f"{MANIFEST} at the base is not available ({why})"
    problems.append(reason)
    base_dvc, _ = read_at(root, DATA_DVC, base_sha)
    summaries = (dvc_file_summary(base_dvc), dvc_file_summary(_read_text(root / DATA_DVC)))
    if not any(summaries):
        return DataChanges([], "no manifests and no data.dvc to compare")
    return DataChanges([], f"`{DATA_DVC}` only (per-class counts need the manifests)", summaries)


def data_source(root: Path) -> str:
    """Where ``data/`` came from, as ``data.dvc``'s meta records it (ihcflow.data.provenance)."""
    text = _read_text(root / DATA_DVC)
    if text is None:
        return "`data/` as found (no data.dvc)"
    return describe(parse_dvc_file(text, str(root / DATA_DVC)), DATA_DVC)


def dvc_problems(errors: Mapping[str, Any], base_sha: str, base: str) -> list[str]:
    """Lines for the errors of a DVC metrics/params diff (``{rev: {path: exception}}``)."""
    lines = []
    for rev, by_path in errors.items():
        items = by_path.items() if isinstance(by_path, dict) else [("DVC", by_path)]
        for path, error in items:
            missing = isinstance(error, FileNotFoundError)
            if rev != base_sha:  # the workspace: `dvc status` names the stages not run
                if not missing:
                    lines.append(f"{path} in the workspace: {type(error).__name__}: {error}")
            elif missing:
                lines.append(f"{path} is not at `{base}` (new in this PR?)")
            else:
                lines.append(f"{path} at `{base}`: {type(error).__name__}: {error}")
    return lines


def collect(root: str | Path, base: str, base_label: str | None = None) -> PrReport:
    """Everything the report shows, read from the repository at ``root``."""
    import dvc
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root).resolve()
    base_sha = resolve_rev(root, base)
    problems: list[str] = []
    try:
        with Repo(str(root)) as repo:
            metrics_diff = repo.metrics.diff(a_rev=base_sha, b_rev="workspace", all=True)
            params_diff = repo.params.diff(a_rev=base_sha, b_rev="workspace")
            status = repo.status()
    except DvcException as exc:
        raise RuntimeError(f"{root}: DVC could not compare with {base!r}: {exc}") from exc
    for part in (metrics_diff, params_diff):
        problems += dvc_problems(part.get("errors") or {}, base_sha, base_label or base)

    metrics_text = _read_text(root / METRICS)
    metrics = _json(metrics_text, str(root / METRICS))
    base_metrics = _json(read_at(root, METRICS, base_sha)[0], f"{METRICS} at {base}")
    gate_params = _gate_params(_read_text(root / PARAMS), str(root / PARAMS))
    base_gate_params = _gate_params(read_at(root, PARAMS, base_sha)[0], f"{PARAMS} at {base}")
    if metrics is None:
        problems.append(f"{METRICS} is not in the workspace (the evaluate stage did not run)")
    elif gate_params is None:
        problems.append(f"{PARAMS} has no `gate` section: no registration gate to check")
    gate = _gate(metrics, gate_params, "this PR", problems)
    base_gate = _gate(base_metrics, base_gate_params, "the base", problems)

    metric_changes = changes_from_diff(metrics_diff.get("diff") or {})
    if metrics is not None or base_metrics is not None:
        metric_changes[METRICS] = with_nulls(metric_changes.get(METRICS, []), base_metrics, metrics)

    model = _json(_read_text(root / MODEL_JSON), str(root / MODEL_JSON))
    model_current = bool(model and metrics is not None and model.get("metrics") == metrics)

    plots = [(title, root / rel) for title, rel in PLOTS]
    return PrReport(
        base=base_label or base,
        base_sha=base_sha,
        head=describe_head(root),
        metrics=metric_changes,
        params=[c for cs in changes_from_diff(params_diff.get("diff") or {}).values() for c in cs],
        gate=gate,
        base_gate=base_gate,
        model=model,
        model_current=model_current,
        stale=sorted(status),
        data=data_changes(root, base_sha, problems),
        data_source=data_source(root),
        images=[(t, p) for t, p in plots if p.is_file()],
        missing_images=[os.path.relpath(p, root) for _, p in plots if not p.is_file()],
        drift=_read_text(root / DRIFT_SUMMARY),
        problems=problems,
        dvc_version=dvc.__version__,
    )


# ---------------------------------------------------------------------------------------------
# Markdown


def _metric_table(changes: Sequence[Change], base: str) -> list[str]:
    order = {name: i for i, name in enumerate(HEADLINE_METRICS)}
    rows = [
        [f"**{c.name}**" if c.name in order else c.name, number(c.old), number(c.new),
         fmt_delta(c.old, c.new)]
        for c in sorted(changes, key=lambda c: (order.get(c.name, len(order)), c.name))
    ]  # fmt: skip
    return markdown_table(["metric", f"`{base}`", "this PR", "change"], rows, "lrrr")


def _per_class_table(changes: Sequence[Change]) -> list[str]:
    cells: dict[str, dict[str, Change]] = {}
    for c in changes:
        cls, metric = c.name[len(PER_CLASS) :].rsplit(".", 1)
        cells.setdefault(cls, {})[metric] = c
    columns = [m for m in PER_CLASS_METRICS if any(m in v for v in cells.values())]
    columns += sorted({m for v in cells.values() for m in v} - set(columns))
    rows = [
        [cls, *(_cell(by[m].old, by[m].new) if m in by else "" for m in columns)]
        for cls, by in cells.items()
    ]
    return markdown_table(["class", *columns], rows, "l" + "r" * len(columns))


def demote_headings(markdown: str, levels: int = 3) -> str:
    """``# Title`` -> ``#### Title``: an included document nests under the report's headings."""
    return re.sub(
        r"^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", markdown, flags=re.M
    )


def _details(summary: str, body: Iterable[str]) -> list[str]:
    return ["<details>", f"<summary>{summary}</summary>", "", *body, "", "</details>"]


def _image_ref(path: Path, image_base_url: str | None, relative_to: Path) -> str:
    if image_base_url:
        return f"{image_base_url.rstrip('/')}/{path.name}"
    return Path(os.path.relpath(path, relative_to)).as_posix()


def render(
    report: PrReport,
    *,
    image_base_url: str | None = None,
    images_relative_to: str | Path = ".",
    notes: Sequence[str] = (),
    command: str = "",
) -> str:
    """The Markdown comment; it starts with :data:`MARKER`."""
    sections = [
        _section_summary(report, notes),
        _section_metrics(report),
        _section_params(report),
        _section_gate(report),
        _section_plots(report, image_base_url, Path(images_relative_to)),
        _section_data(report),
        _section_drift(report),
        _section_problems(report),
        [_section_footer(report, command)],
    ]
    text = "\n".join(line for section in sections for line in section) + "\n"
    if len(text) > COMMENT_LIMIT:
        cut = "\n\n… (truncated to fit a GitHub comment; run the command locally for all of it)\n"
        text = text[: COMMENT_LIMIT - len(cut)] + cut
    return text


def _section_summary(report: PrReport, notes: Sequence[str]) -> list[str]:
    """Title, notes, the gate at both ends, the registered model, the data, `dvc status`."""
    base = report.base
    out = [MARKER, f"## Model report: this PR vs `{base}`", ""]
    for note in notes:
        out += [f"> [!NOTE]\n> {note}", ""]
    gate = _gate_line(report.gate)
    out += [f"**Registration gate: {gate}** · at `{base}`: {_gate_line(report.base_gate)}", ""]
    if report.model:
        m = report.model
        state = (
            "registered from these metrics"
            if report.model_current
            else "**not** from these metrics: the candidate was not registered"
        )
        out.append(f"Registered model: `{m.get('name')}` **{m.get('version')}** ({state}).  ")
    out.append(f"Data: {report.data_source}.  ")
    if report.stale:
        out.append(
            f"⚠️ `dvc status`: not reproduced: {', '.join(f'`{s}`' for s in report.stale)}: "
            "their outputs below may be stale (a failed gate leaves `register` here)."
        )
    else:
        out.append("Pipeline: up to date (`dvc status` is clean).")
    return [*out, ""]


def _section_metrics(report: PrReport) -> list[str]:
    out = [f"### Metrics (`{METRICS}`)", ""]
    main = report.metrics.get(METRICS, [])
    top = [c for c in main if not c.name.startswith(PER_CLASS)]
    per_class = [c for c in main if c.name.startswith(PER_CLASS)]
    out += _metric_table(top, report.base) if top else ["No metrics to compare."]
    if per_class:
        changed = sum(c.changed for c in per_class)
        out += [""] + _details(
            f"Per-class metrics ({changed} of {len(per_class)} values changed)",
            _per_class_table(per_class),
        )
    for path, changes in report.metrics.items():
        if path != METRICS and changes:
            out += [""] + _details(
                f"Other metrics: <code>{path}</code>", _metric_table(changes, report.base)
            )
    return [*out, ""]


def _section_params(report: PrReport) -> list[str]:
    out = ["### Params changed", ""]
    if report.params:
        rows = [[f"`{c.name}`", param_text(c.old), param_text(c.new)] for c in report.params]
        out += markdown_table(["param", f"`{report.base}`", "this PR"], rows, "lll")
    else:
        out.append(f"No param differs from `{report.base}`.")
    return [*out, ""]


def _section_gate(report: PrReport) -> list[str]:
    out = ["### Registration gate", ""]
    if report.gate is None:
        out.append("Not evaluated (see the problems below).")
    elif not report.gate.rows:
        out.append("No thresholds are set (params `gate.min_*` / `gate.max_*`).")
    else:
        out += report.gate.table(markdown=True)
    return [*out, ""]


def _section_plots(report: PrReport, image_base_url: str | None, relative_to: Path) -> list[str]:
    out = ["### Plots", ""]
    if report.images:
        refs = [f"![{t}]({_image_ref(p, image_base_url, relative_to)})" for t, p in report.images]
        out += markdown_table([t for t, _ in report.images], [refs], "l" * len(refs))
    if report.missing_images:
        out.append(f"Not found: {', '.join(f'`{p}`' for p in report.missing_images)}.")
    return [*out, ""]


def _section_data(report: PrReport) -> list[str]:
    out = ["### Data changes", ""]
    data, base = report.data, report.base
    if data.classes:
        rows = [
            [r.name, *map(str, (r.base, r.new, r.added, r.removed, r.modified))]
            for r in data.classes
        ]
        totals = [sum(int(row[i]) for row in rows) for i in range(1, 6)]
        rows.append(["**total**", *map(str, totals)])
        header = ["class", f"`{base}`", "this PR", "added", "removed", "modified"]
        out += markdown_table(header, rows, "lrrrrr")
        out += ["", f"<sub>From {data.method}.</sub>"]
    elif data.dvc_file:
        old, new = data.dvc_file
        if old == new:
            out.append(f"`{DATA_DVC}` is unchanged ({new.get('nfiles', '?')} files).")
        else:
            rows = [[k, number(old.get(k)), number(new.get(k))] for k in ("nfiles", "size", "md5")]
            out += markdown_table([f"`{DATA_DVC}`", f"`{base}`", "this PR"], rows, "lll")
        out += ["", f"<sub>From {data.method}.</sub>"]
    else:
        out.append(f"Not measured: {data.method}.")
    return [*out, ""]


def _section_drift(report: PrReport) -> list[str]:
    if not report.drift:
        return []
    details = _details(f"<code>{DRIFT_SUMMARY}</code>", [demote_headings(report.drift.strip())])
    return ["### Latest drift check", "", *details, ""]


def _section_problems(report: PrReport) -> list[str]:
    if not report.problems:
        return []
    return ["### Problems", "", *(f"- {_md_escape(p)}" for p in report.problems), ""]


def _section_footer(report: PrReport, command: str) -> str:
    footer = f"<sub>`{command}` · " if command else "<sub>"
    return footer + (
        f"base `{report.base_sha[:7]}` · workspace of `{report.head}` · "
        f"DVC {report.dvc_version}</sub>"
    )
