"""``ihcflow label pull``: annotations back from Label Studio into ``data/``.

Reads a project's tasks (through the API, or a JSON export file), decides each image's label by
majority vote (:mod:`ihcflow.labelling.votes`) and writes the accepted images into ``data/`` in
its layout: ``data/<class>/`` (layout 1) or ``data/<split>/<class>/`` (layout 2; ``train``
unless another split is asked for, and never ``test`` unless asked). Then ``dvc add data``.

- Left out and listed: tasks nobody annotated, tasks every annotator skipped (Label Studio's
  ``was_cancelled``), ties, images already in ``data/`` (same bytes: the validator would reject
  the copy as a duplicate, or both copies if the classes differ), files the validator rejects.
- Refused (nothing is written): a label that is not a known class (the classes of ``data/`` and
  of the model that chose the batch), or an annotation with several choices; the message names
  every such task id.
- Never overwritten: a new file is named ``label-<sha256[:12]>_<name>``; if that name is taken,
  a number is added.
- ``data/labelled.csv`` (:data:`PROVENANCE_COLUMNS`) gets one row per image written: where it
  came from (project, task, batch, why it was chosen), who labelled it, the votes, agreement.
  A file directly under ``data/`` is metadata to the pipeline (like ``groups.csv``), and DVC
  versions it with the images.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ihcflow.data.layout import GIVEN_SPLITS, Layout
from ihcflow.data.provenance import dvc_add as dvc_add_folder
from ihcflow.data.provenance import mark_labelled
from ihcflow.errors import PipelineError
from ihcflow.files import atomic_path, read_json, sha256_bytes, write_json_atomic
from ihcflow.images.codec import IMAGE_SUFFIXES, ImageError, file_suffix, probe
from ihcflow.labelling.model import data_hashes
from ihcflow.labelling.select import BATCH_JSON, read_batch
from ihcflow.labelling.tasks import (
    TO_NAME,
    UnreadableAnnotation,
    annotation_label,
    annotator_of,
    data_url_bytes,
)
from ihcflow.labelling.votes import Decision, Vote, agreement
from ihcflow.tables import Table, read_table, write_table

PROVENANCE = "labelled.csv"
PROVENANCE_COLUMNS = [
    "path",  # relative to data/
    "sha256",
    "class",  # the majority label
    "project",  # Label Studio project id, or the export file's name
    "task_id",
    "annotators",  # ';'-separated
    "votes",  # e.g. "Er 2; Pr 1"
    "agreement",  # share of votes for the label
    "annotated_at",  # the latest annotation's time (UTC)
    "pulled_at",
    "batch",  # the batch folder's name (ihcflow label select)
    "model",  # the model that chose it, and its guess
    "predicted",
    "reason_chosen",
]
PROVENANCE_TABLE = Table(
    "labelling provenance", f"data/{PROVENANCE}", "", tuple(PROVENANCE_COLUMNS)
)
PULL_JSON = "pull.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class LabelError(PipelineError):
    """Annotations that cannot be taken as they are; nothing was written."""


@dataclass
class Outcome:
    task_id: int
    sha256: str
    status: str  # accepted | tie | skipped | unannotated | duplicate | already_pulled | rejected
    decision: Decision | None = None
    detail: str = ""
    path: str = ""  # where it was written (accepted)


@dataclass
class PullResult:
    source: str
    layout: int
    outcomes: list[Outcome]
    agreement: dict[str, Any]
    provenance: Path
    dvc_file: Path | None = None
    notes: list[str] = field(default_factory=list)

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def added(self) -> dict[str, int]:
        counts = Counter(
            o.decision.label for o in self.by_status("accepted") if o.decision and o.decision.label
        )
        return dict(sorted(counts.items()))

    def summary(self) -> dict[str, Any]:
        statuses = Counter(o.status for o in self.outcomes)
        disagreements = [
            o for o in self.by_status("accepted") if o.decision and not o.decision.unanimous
        ]
        return {
            "source": self.source,
            "layout": self.layout,
            "tasks": len(self.outcomes),
            "statuses": dict(sorted(statuses.items())),
            "added": self.added(),
            "agreement": self.agreement,
            "ties": [_listed(o) for o in self.by_status("tie")],
            "disagreements": [_listed(o) for o in disagreements],
            "left_out": [
                _listed(o)
                for o in self.outcomes
                if o.status in ("duplicate", "already_pulled", "rejected")
            ],
            "written": [
                {"task_id": o.task_id, "path": o.path, "class": o.decision.label}
                for o in self.by_status("accepted")
                if o.decision
            ],
            "provenance": str(self.provenance),
            "dvc_file": None if self.dvc_file is None else str(self.dvc_file),
            "notes": self.notes,
        }

    def describe(self) -> str:
        s = self.summary()
        statuses = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in s["statuses"].items())
        lines = [f"{s['source']}: {s['tasks']} task(s): {statuses}"]
        added = ", ".join(f"{c} {n}" for c, n in s["added"].items()) or "nothing"
        lines.append(f"added to data/ (layout {self.layout}): {added}")
        a = s["agreement"]
        if a["images_with_2_or_more_votes"]:
            lines.append(
                f"agreement: Fleiss' kappa {_fmt(a['fleiss_kappa'])} over "
                f"{a['images_with_2_or_more_votes']} image(s) with 2+ votes; Cohen's kappa "
                + "; ".join(
                    f"{p['annotators'][0]} vs {p['annotators'][1]} {_fmt(p['kappa'])} "
                    f"({p['images']} images)"
                    for p in a["cohen_kappa"]
                )
            )
        sections = (
            ("ties (not added)", "ties"),
            ("disagreements (majority added)", "disagreements"),
            ("left out", "left_out"),
        )
        for title, key in sections:
            if s[key]:
                lines.append(f"{title}:")
                lines += [f"  task {x['task_id']}: {x['detail']}" for x in s[key]]
        lines += self.notes
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _listed(o: Outcome) -> dict[str, Any]:
    return {"task_id": o.task_id, "sha256": o.sha256, "detail": o.detail}


# ----------------------------------------------------------------------------------- reading


def read_export(path: Path) -> list[dict[str, Any]]:
    """A Label Studio JSON export (a list of tasks with their annotations)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: export file not found")
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "id" in t for t in tasks):
        raise ValueError(
            f"{path}: expected Label Studio's JSON export (a list of tasks with 'id' and "
            "'annotations'), not JSON_MIN, CSV or another format"
        )
    return tasks


def task_votes(
    task: Mapping[str, Any], names: Mapping[int, str]
) -> tuple[list[Vote], int, list[str]]:
    """(votes, skipped annotations, problems) of a task: one vote per annotator, their latest."""
    latest: dict[str, tuple[str, dict[str, Any]]] = {}
    cancelled, problems = 0, []
    for ann in task.get("annotations") or []:
        if ann.get("was_cancelled"):
            cancelled += 1
            continue
        who = annotator_of(ann, names)
        at = str(ann.get("updated_at") or ann.get("created_at") or "")
        if who not in latest or at >= latest[who][0]:
            latest[who] = (at, ann)
    votes = []
    for who, (at, ann) in sorted(latest.items()):
        try:
            label = annotation_label(ann)
        except UnreadableAnnotation as exc:
            problems.append(f"task {task['id']}: annotation {ann.get('id')} by {who}: {exc}")
            continue
        if label is not None:
            votes.append(Vote(who, label, at))
    return votes, cancelled, problems


def batch_rows(batches_dir: Path | None, name: str, cache: dict[str, Any]) -> dict[str, Any]:
    """``{sha256: manifest row}`` and the model of batch ``name`` (empty when not found)."""
    if name not in cache:
        rows: dict[str, Any] = {"rows": {}, "model": "", "folder": None}
        folder = batches_dir / name if batches_dir is not None and name else None
        if folder is not None and (folder / BATCH_JSON).is_file():
            info, manifest = read_batch(folder)
            rows["rows"] = {r["sha256"]: r for r in manifest.to_dict("records")}
            rows["model"] = f"{info['model']['name']} {info['model']['version']}"
            rows["classes"] = list(info["model"]["class_names"])
            rows["folder"] = folder
        cache[name] = rows
    return dict(cache[name])


# ----------------------------------------------------------------------------------- writing


def _file_name(sha256: str, name: str, data: bytes) -> str:
    base = _UNSAFE.sub("_", Path(name or "image").name).lstrip("._") or "image"
    if base.startswith(sha256[:12] + "_"):
        base = base[13:] or "image"
    if Path(base).suffix.lower() not in IMAGE_SUFFIXES:
        base += file_suffix(probe(data, base).format)
    return f"label-{sha256[:12]}_{base}"


def _free_path(folder: Path, name: str) -> Path:
    path, n = folder / name, 2
    while path.exists():
        path = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
        n += 1
    return path


class _Rejected(Exception):
    pass


def _write_checked(path: Path, data: bytes, source: str) -> None:
    """Write ``data`` at ``path`` (atomically) if the validator accepts it."""
    from ihcflow.validation import check_file

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        check = check_file(tmp, source)
        if check.reason:
            raise _Rejected(f"{check.reason}: {check.detail}")


def destination(layout: Layout, data_dir: Path, label: str, split: str | None) -> Path:
    if layout.kind == 1:
        return data_dir / label
    return data_dir / (split or "train") / label


def check_split(layout: Layout, data_dir: Path, split: str | None) -> None:
    if split is None:
        return
    if split not in GIVEN_SPLITS:
        raise ValueError(f"--split must be one of {GIVEN_SPLITS}, got {split!r}")
    if layout.kind == 1:
        raise ValueError(
            f"{data_dir} is layout 1 (data/<class>/): the pipeline splits it, so --split does "
            "not apply; omit it"
        )
    if not (data_dir / split).is_dir():
        raise ValueError(
            f"{data_dir}/{split} does not exist: creating it would change the data set's "
            "given splits; create it yourself if that is what you want"
        )


def dvc_add(data_dir: Path) -> Path | None:
    """``dvc add data_dir``; None when it is not inside a DVC project."""
    return dvc_add_folder(data_dir, "images written", "run it yourself once the problem is fixed")


def pull(
    tasks: Sequence[Mapping[str, Any]],
    *,
    source: str,
    project: str,
    data_dir: Path,
    names: Mapping[int, str] | None = None,
    batch: Path | None = None,
    batches_dir: Path | None = None,
    split: str | None = None,
    version: bool = True,
    now: dt.datetime | None = None,
) -> PullResult:
    """Decide every task, write the accepted images into ``data_dir``, record them."""
    names = names or {}
    layout, known_hashes = data_hashes(data_dir)
    check_split(layout, data_dir, split)
    provenance_path = data_dir / PROVENANCE
    previous = (
        read_table(provenance_path, PROVENANCE_TABLE, error=LabelError)
        if provenance_path.is_file()
        else pd.DataFrame(columns=PROVENANCE_COLUMNS)
    )
    pulled_before = set(previous["sha256"])
    cache: dict[str, Any] = {}
    only: set[str] | None = None
    if batch is not None:
        _, manifest = read_batch(batch)
        only = set(manifest["sha256"])
        batches_dir = batch.parent
        tasks = [t for t in tasks if (t.get("data") or {}).get("sha256") in only]
        if not tasks:
            raise LabelError(f"{source}: no task of batch {batch.name} (by image sha256)")

    # Votes first, and every unknown label, before anything is written.
    known = set(layout.classes)
    parsed = []
    problems: list[str] = []
    for task in sorted(tasks, key=lambda t: int(t["id"])):
        data = task.get("data") or {}
        info = batch_rows(batches_dir, str(data.get("batch") or ""), cache)
        known |= set(info.get("classes") or [])
        votes, cancelled, bad = task_votes(task, names)
        problems += bad
        parsed.append((task, data, info, votes, cancelled))
    for task, _, _, votes, _ in parsed:
        for vote in votes:
            if vote.label not in known:
                problems.append(
                    f"task {task['id']}: {vote.annotator} chose {vote.label!r}, not a known class"
                )
    if problems:
        raise LabelError(
            f"{source}: {len(problems)} annotation(s) cannot be taken (known classes: "
            f"{', '.join(sorted(known))}); fix them in Label Studio and pull again; nothing was "
            "written:\n" + "\n".join(f"  {p}" for p in problems)
        )

    now = now or dt.datetime.now(dt.UTC)
    stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    outcomes: list[Outcome] = []
    rows: list[dict[str, Any]] = []
    decisions: list[Decision] = []
    taken: dict[str, int] = {}
    for task, data, info, votes, cancelled in parsed:
        tid, sha = int(task["id"]), str(data.get("sha256") or "")
        decision = Decision(tid, tuple(votes))
        if votes:
            decisions.append(decision)
        if not votes:
            status = "skipped" if cancelled else "unannotated"
            detail = f"{cancelled} annotator(s) skipped it" if cancelled else "no annotation yet"
            outcomes.append(Outcome(tid, sha, status, None, detail))
            continue
        if decision.label is None:
            outcomes.append(Outcome(tid, sha, "tie", decision, f"tie: {decision.describe()}"))
            continue
        image = data_url_bytes(str(data.get(TO_NAME) or ""))
        if image is not None and sha and sha256_bytes(image) != sha:
            image = None  # a rendition (e.g. a TIFF shown as PNG): take the original
        row = (info.get("rows") or {}).get(sha)
        if image is None and row is not None and info.get("folder") is not None:
            image = (Path(info["folder"]) / str(row["file"])).read_bytes()
        out = Outcome(tid, sha, "accepted", decision, f"{decision.describe()} -> {decision.label}")
        if image is None:
            out.status = "rejected"
            out.detail = (
                f"no image: the task's image is not the original file and batch "
                f"{data.get('batch') or '?'} is not in {batches_dir} (pass --batch)"
            )
            outcomes.append(out)
            continue
        sha = sha or sha256_bytes(image)
        out.sha256 = sha
        if sha in pulled_before:
            out.status, out.detail = (
                "already_pulled",
                f"pulled before as {known_hashes.get(sha, '?')}",
            )
        elif sha in known_hashes:
            out.status = "duplicate"
            out.detail = f"same bytes as data/{known_hashes[sha]} (labelled {decision.label} here)"
        elif sha in taken:
            out.status, out.detail = "duplicate", f"same image as task {taken[sha]}"
        if out.status != "accepted":
            outcomes.append(out)
            continue
        folder = destination(layout, data_dir, decision.label, split)
        folder.mkdir(parents=True, exist_ok=True)
        name = _file_name(sha, str(data.get("file") or ""), image)
        path = _free_path(folder, name)
        rel = path.relative_to(data_dir).as_posix()
        try:
            _write_checked(path, image, rel)
        except (_Rejected, ImageError) as exc:
            out.status, out.detail = "rejected", f"the validator rejects it: {exc}"
            outcomes.append(out)
            continue
        taken[sha] = tid
        out.path = rel
        outcomes.append(out)
        rows.append(
            {
                "path": rel,
                "sha256": sha,
                "class": decision.label,
                "project": project,
                "task_id": tid,
                "annotators": ";".join(v.annotator for v in votes),
                "votes": decision.describe(),
                "agreement": round(decision.agreement, 4),
                "annotated_at": max(v.at for v in votes),
                "pulled_at": stamp,
                "batch": str(data.get("batch") or ""),
                "model": info.get("model") or "",
                "predicted": (row or {}).get("predicted", ""),
                "reason_chosen": (row or {}).get("reason", ""),
            }
        )
    if rows:
        table = pd.DataFrame(rows, columns=PROVENANCE_COLUMNS).astype(str)
        if len(previous):
            table = pd.concat([previous[PROVENANCE_COLUMNS], table], ignore_index=True)
        write_table(provenance_path, table, PROVENANCE_TABLE)
    result = PullResult(source, layout.kind, outcomes, agreement(decisions), provenance_path)
    if rows and version:
        result.dvc_file = dvc_add(data_dir)
        if result.dvc_file is None:
            result.notes.append(f"{data_dir} is not in a DVC project: not versioned")
        else:
            mark_labelled(result.dvc_file, result.added(), f"{data_dir.name}/{PROVENANCE}", stamp)
            result.notes.append(
                f"`dvc add {data_dir}` done: next `git add {result.dvc_file.name} && git commit`,"
                " then `dvc exp run` (docs/labelling.md)"
            )
    return result


def write_report(result: PullResult, path: Path) -> None:
    write_json_atomic(path, result.summary())


def pushed_project(batch: Path) -> tuple[str, int]:
    """(URL, project id) a batch was pushed to (its ``push.json``)."""
    from ihcflow.labelling.push import PUSH_JSON

    info = read_json(batch / PUSH_JSON, "push record (run `ihcflow label push` first)")
    return str(info["url"]), int(info["project"])
