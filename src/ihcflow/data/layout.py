"""The two raw-data layouts ihcflow accepts under ``data/``.

Layout 1: ``data/<class>/<image>``; the program splits.
Layout 2: ``data/train/<class>/<image>``, ``data/test/<class>/<image>`` and optionally
``data/val/<class>/<image>``; the given split is kept.

Regular files directly under ``data/`` (``groups.csv``, ``README.md``) are metadata, and
hidden files/folders (``.DS_Store``, ``.ipynb_checkpoints``) are ignored everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ihcflow.errors import PipelineError
from ihcflow.tables import SPLITS as GIVEN_SPLITS  # the folders are named like the splits


class DatasetError(PipelineError):
    """The data set as a whole cannot be used (not a single bad file: those are reported)."""


@dataclass(frozen=True)
class Entry:
    path: str  # posix path relative to the data folder
    label: str  # class name
    given_split: str  # "train" | "val" | "test" in layout 2, "" in layout 1


@dataclass(frozen=True)
class Layout:
    kind: int  # 1 or 2
    classes: tuple[str, ...]  # sorted class names
    entries: tuple[Entry, ...]  # every non-hidden file below a class folder, sorted by path


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_files(class_dir: Path, root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in class_dir.rglob("*")
        if p.is_file()
        and all(_visible(part) for part in p.relative_to(root).parents if part != Path())
        and _visible(p)
    )


def discover(data_dir: str | Path) -> Layout:
    """List the class folders and files of ``data_dir`` and tell which layout it uses."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found (run `ihcflow data get` or import data)")
    top = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    names = {p.name for p in top}
    if "train" in names and "test" in names and names <= set(GIVEN_SPLITS):
        kind = 2
        entries = [
            Entry(rel, Path(rel).parts[1], split.name)
            for split in top
            for class_dir in sorted(p for p in split.iterdir() if p.is_dir() and _visible(p))
            for rel in _class_files(class_dir, root)
        ]
        stray = [
            p.relative_to(root).as_posix()
            for s in top
            for p in s.iterdir()
            if p.is_file() and _visible(p)
        ]
        if stray:
            raise DatasetError(
                f"{root}: layout 2 (train/test) expects class folders inside each split, "
                f"found files {stray[:5]}"
            )
        classes = sorted(
            {e.label for e in entries}
            | {c.name for s in top for c in s.iterdir() if c.is_dir() and _visible(c)}
        )
    elif names & set(GIVEN_SPLITS) and len(names & set(GIVEN_SPLITS)) >= 2:
        splits, others = sorted(names & set(GIVEN_SPLITS)), sorted(names - set(GIVEN_SPLITS))
        raise DatasetError(
            f"{root}: found split folders {splits} but layout 2 needs both train/ and test/ "
            f"and nothing else at the top (also found {others})"
        )
    else:
        kind = 1
        entries = [Entry(rel, d.name, "") for d in top for rel in _class_files(d, root)]
        classes = sorted(names)
    if len(classes) < 2:
        raise DatasetError(
            f"{root}: found {len(classes)} class folder(s) {classes}; need at least 2"
        )
    return Layout(
        kind=kind, classes=tuple(classes), entries=tuple(sorted(entries, key=lambda e: e.path))
    )
