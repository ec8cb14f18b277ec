"""The labelling tests' workspace and Label Studio's JSON export format, built by hand.

The registered model is :func:`tests.helpers.models.write_model` (mean colour -> class: red
neg, green pos, blue mixed), the images one-colour files of :data:`TILE` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.helpers.data import png
from tests.helpers.models import write_model

TILE = (12, 12)  # width, height of the test images
RED, GREEN, BLUE = (200, 30, 30), (30, 200, 30), (60, 60, 220)


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def labelled_project(root: Path) -> Path:
    """A registered model in ``root/models`` (classes neg, pos, mixed) and ``root/data`` in
    layout 1: neg 3, pos 1, mixed 1."""
    write_model(root / "models")
    for i in range(3):
        put(root / f"data/neg/n{i}.png", png((200 + i, 30, 30), TILE))
    put(root / "data/pos/p0.png", png(GREEN, TILE))
    put(root / "data/mixed/m0.png", png(BLUE, TILE))
    return root


def annotation(user: int, label: str | None, *, cancelled: bool = False, at: str = "") -> dict:
    """One annotation as Label Studio exports it: ``label`` chosen by user id ``user``
    (None: an empty result; ``cancelled``: the Skip button)."""
    result = [] if label is None else [
        {"from_name": "label", "to_name": "image", "type": "choices",
         "value": {"choices": [label]}}
    ]  # fmt: skip
    return {
        "id": user * 1000,
        "completed_by": user,
        "result": result,
        "was_cancelled": cancelled,
        "created_at": at or "2026-05-01T10:00:00Z",
        "updated_at": at or "2026-05-01T10:00:00Z",
    }


def exported(
    tasks: Sequence[dict[str, Any]], *annotations: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Label Studio's JSON export of ``tasks`` (the import file `label push --no-api` writes),
    task ids from 10 on, with the given annotations per task."""
    return [
        {"id": 10 + i, **task, "annotations": anns}
        for i, (task, anns) in enumerate(zip(tasks, annotations, strict=False))
    ]
