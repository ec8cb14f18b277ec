"""``ihcflow label push``: a batch folder becomes Label Studio tasks with the model's choice
pre-selected, so the pathologist corrects rather than starts from zero.

Writes ``<batch>/tasks.json`` (Label Studio's import format: upload it by hand in the project's
Import dialog) and, unless told not to, imports the tasks through the REST API into the project
for the model (created with the labelling config built from the model's classes, or reused:
found by title or given by id). A task whose image (sha256) is already in the project is not
imported again. ``<batch>/push.json`` records where the tasks went.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ihcflow.files import write_json_atomic, write_text_atomic
from ihcflow.images.codec import decode_rgb8, encode_png, probe
from ihcflow.labelling.select import read_batch
from ihcflow.labelling.studio import Studio, StudioError
from ihcflow.labelling.tasks import (
    SHOWN_AS_IS,
    config_classes,
    data_url,
    label_config,
    make_task,
)

TASKS_JSON = "tasks.json"
PUSH_JSON = "push.json"


@dataclass
class PushResult:
    tasks_file: Path
    n_tasks: int
    project: dict[str, Any] | None = None
    imported: int = 0
    already_there: int = 0
    created: bool = False

    def describe(self, url: str = "") -> str:
        lines = [
            f"wrote {self.n_tasks} task(s) to {self.tasks_file} (Label Studio's import format)"
        ]
        if self.project is not None:
            what = "created" if self.created else "reused"
            lines.append(
                f"{what} project {self.project['id']} {self.project['title']!r}: imported "
                f"{self.imported} task(s)"
                + (f", {self.already_there} already there" if self.already_there else "")
            )
            lines.append(f"label them at {url}/projects/{self.project['id']}/data")
        return "\n".join(lines)


def project_title(model_name: str) -> str:
    return f"ihcflow {model_name}"


def header(model_label: str) -> str:
    return f"{model_label}: the model's choice is pre-selected; correct it if it is wrong"


def build_tasks(batch: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The tasks of a batch folder (in manifest order) and its ``batch.json``."""
    info, manifest = read_batch(batch)
    model_label = f"{info['model']['name']} {info['model']['version']}"
    tasks = []
    for row in manifest.itertuples():
        path = batch / str(row.file)
        try:
            data = path.read_bytes()
            fmt = probe(data, str(path)).format
            if fmt in SHOWN_AS_IS:
                url = data_url(data, SHOWN_AS_IS[fmt])
            else:  # browsers cannot show it: a PNG rendition (the original stays in the batch)
                url = data_url(encode_png(decode_rgb8(data, str(path))[0]), "image/png")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot be sent for labelling: {exc}") from None
        fields = {"sha256": row.sha256, "file": Path(str(row.file)).name, "batch": batch.name}
        tasks.append(make_task(url, fields, str(row.predicted), float(row.confidence), model_label))
    return tasks, info


def _project(
    studio: Studio, info: dict[str, Any], title: str | None, project_id: int | None, annotators: int
) -> tuple[dict[str, Any], bool]:
    """The project for the batch's model: found, or created; its config checked."""
    model = info["model"]
    classes = [str(c) for c in model["class_names"]]
    model_label = f"{model['name']} {model['version']}"
    config = label_config(classes, header(model_label))
    settings = {
        "model_version": model_label,  # whose predictions the labelling page pre-selects
        "show_collab_predictions": True,
        "maximum_annotations": annotators,  # annotators per task (majority vote in pull)
    }
    project: dict[str, Any] | None
    if project_id is not None:
        project = studio.project(project_id)
    else:
        project = studio.find_project(title or project_title(model["name"]))
    if project is None:
        description = (
            f"Images chosen by `ihcflow label select` for {model_label}. Choose the class; "
            "the model's guess is pre-selected."
        )
        created = studio.create_project(
            title or project_title(model["name"]), config, description=description, **settings
        )
        return created, True
    have = config_classes(project.get("label_config") or "")
    if have != classes:
        if not set(have) <= set(classes) and project.get("num_tasks_with_annotations"):
            raise StudioError(
                f"project {project['id']} {project['title']!r} labels {have}, the model "
                f"{model_label} knows {classes}: annotations with the old classes exist, so "
                "the config is not changed; push to a new project (--title)"
            )
        settings["label_config"] = config
    return studio.update_project(int(project["id"]), **settings), False


def push(
    batch: Path,
    studio: Studio | None,
    *,
    title: str | None = None,
    project_id: int | None = None,
    annotators: int = 1,
) -> PushResult:
    """Write ``<batch>/tasks.json``; with ``studio``, import the tasks and write ``push.json``."""
    if annotators < 1:
        raise ValueError(f"annotators per task must be >= 1, got {annotators}")
    tasks, info = build_tasks(batch)
    tasks_file = batch / TASKS_JSON
    write_text_atomic(tasks_file, json.dumps(tasks, separators=(",", ":")) + "\n")
    result = PushResult(tasks_file, len(tasks))
    if studio is None:
        return result
    project, created = _project(studio, info, title, project_id, annotators)
    pid = int(project["id"])
    present = {(t.get("data") or {}).get("sha256") for t in studio.tasks(pid)}
    new = [t for t in tasks if t["data"]["sha256"] not in present]
    imported = studio.import_tasks(pid, new) if new else 0
    result.project, result.created = project, created
    result.imported, result.already_there = imported, len(tasks) - len(new)
    shas = [str(t["data"]["sha256"]) for t in tasks]
    ids = {
        str(d["sha256"]): int(t["id"])
        for t in studio.tasks(pid)
        if (d := t.get("data") or {}).get("sha256") in set(shas)
    }
    write_json_atomic(
        batch / PUSH_JSON,
        {
            "url": studio.url,
            "project": pid,
            "title": project["title"],
            "pushed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "imported": imported,
            "already_in_project": result.already_there,
            "tasks": {sha: ids.get(sha) for sha in shas},  # sha256 -> task id
        },
    )
    return result
