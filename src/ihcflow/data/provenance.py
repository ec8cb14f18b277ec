"""Where ``data/`` came from: the ``meta`` block of ``data.dvc``, written and read only here.

DVC keeps a ``.dvc`` file's ``meta`` when ``dvc add`` updates its hash, so ``meta`` alone
cannot tell whether it still describes the data. It therefore records ``md5``, the hash of
``data/`` at the moment it was written; when ``outs`` holds another hash, the data changed
since, and :func:`describe` says so instead of repeating the old source.

- The built-in sample (``ihcflow data get`` in a project without ``data.dvc``)::

      meta: {source: ihcflow data synth, md5: <hash>, args: {classes, per_class, ...}}

- An import (``ihcflow data import``, which runs ``dvc add`` itself)::

      meta:
        source: ihcflow data import
        md5: <hash of data/ as imported>
        imported: {name, path, kind: npz|folder, sha256 (npz), layout, images, counts, at}

- Labelled images added (``ihcflow label pull``, which runs ``dvc add`` itself)::

      meta:
        source: ihcflow label pull
        md5: <hash of data/ after the pull>
        base: <the meta before the first pull: the sample's or the import's>
        labelled: {images, counts: {class: n}, pulls, table: data/labelled.csv, at}

  ``images`` and ``counts`` add up over every pull; ``data/labelled.csv`` has one row per
  image (task, annotators, votes). Such data is not the sample any more: ``ihcflow data get``
  restores it only from the DVC cache or a remote.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from ihcflow.files import sha256_file, write_text_atomic


class Imported(Protocol):
    """What an import recorded in a ``.dvc`` file's meta: ``data.importers.ImportSummary``
    (classification) or ``segmentation.importers.SegImportSummary``."""

    layout: int

    @property
    def n_images(self) -> int: ...

    @property
    def counts(self) -> Any: ...


SAMPLE_SOURCE = "ihcflow data synth"
IMPORT_SOURCE = "ihcflow data import"
LABEL_SOURCE = "ihcflow label pull"


def parse_dvc_file(text: str, source: str) -> dict[str, Any]:
    """The content of a ``.dvc`` file; a clear error when it is not one."""
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("outs"), list):
        raise ValueError(f"{source}: not a DVC file (no 'outs' list)")
    return loaded


def read_dvc_file(dvc_file: Path) -> dict[str, Any]:
    """The content of ``dvc_file``, or ``{}`` when there is none."""
    if not dvc_file.is_file():
        return {}
    return parse_dvc_file(dvc_file.read_text(encoding="utf-8"), str(dvc_file))


def recorded_md5(content: dict[str, Any]) -> str | None:
    """The hash ``outs`` records (``<md5>.dir`` for a folder)."""
    outs = content.get("outs") or [{}]
    return outs[0].get("md5") if isinstance(outs[0], dict) else None


def write_meta(dvc_file: Path, meta: dict[str, Any]) -> None:
    """Replace the ``meta`` of ``dvc_file`` (``outs`` stay as DVC wrote them)."""
    content = read_dvc_file(dvc_file)
    if not content:
        raise FileNotFoundError(f"{dvc_file}: not found (run `dvc add` first)")
    content["meta"] = meta
    write_text_atomic(dvc_file, yaml.safe_dump(content, sort_keys=False))


def mark_sample(dvc_file: Path, synth_args: dict[str, Any]) -> None:
    """Record that ``dvc_file`` tracks the built-in sample, with the args that regenerate it."""
    md5 = recorded_md5(read_dvc_file(dvc_file))
    write_meta(dvc_file, {"source": SAMPLE_SOURCE, "md5": md5, "args": synth_args})


def mark_import(dvc_file: Path, summary: Imported, src: Path) -> None:
    """Record what ``ihcflow data import`` brought into the folder ``dvc_file`` tracks."""
    md5 = recorded_md5(read_dvc_file(dvc_file))
    imported: dict[str, Any] = {
        "name": src.name,
        "path": str(src.resolve()),
        "kind": "folder" if src.is_dir() else src.suffix.lower().lstrip("."),
    }
    if src.is_file():
        imported["sha256"] = sha256_file(src)
    imported |= {
        "layout": summary.layout,
        "images": summary.n_images,
        "counts": summary.counts,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_meta(dvc_file, {"source": IMPORT_SOURCE, "md5": md5, "imported": imported})


def mark_labelled(dvc_file: Path, added: Mapping[str, int], table: str, at: str) -> None:
    """Record that ``ihcflow label pull`` added ``added`` images per class to the folder
    ``dvc_file`` tracks (after its ``dvc add``); the meta before the first pull becomes
    ``base``."""
    content = read_dvc_file(dvc_file)
    meta = content.get("meta") or {}
    if meta.get("source") == LABEL_SOURCE:
        base, before = meta.get("base") or {}, meta.get("labelled") or {}
    else:
        base, before = meta, {}
    counts = Counter(before.get("counts") or {})
    counts.update(added)
    labelled = {
        "images": sum(counts.values()),
        "counts": dict(sorted(counts.items())),
        "pulls": int(before.get("pulls") or 0) + 1,
        "table": table,
        "at": at,
    }
    md5 = recorded_md5(content)
    write_meta(dvc_file, {"source": LABEL_SOURCE, "md5": md5, "base": base, "labelled": labelled})


def dvc_add(dest: Path, done: str, then: str) -> Path | None:
    """``dvc add dest``: the ``.dvc`` file, or None when ``dest`` is not in a DVC project. On
    failure the error says what was ``done`` to ``dest`` and what to do ``then``."""
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        root = Repo.find_root(str(dest.resolve().parent))
    except NotDvcRepoError:
        return None
    try:
        with Repo(root) as repo:
            repo.add([str(dest.resolve())])
    except DvcException as exc:
        raise RuntimeError(f"{dest}: {done}, but `dvc add {dest}` failed ({exc}); {then}") from exc
    return dest.with_name(f"{dest.name}.dvc")


def version_import(dest: Path, summary: Imported, src: Path) -> Path | None:
    """``dvc add dest`` and :func:`mark_import`; None when ``dest`` is not in a DVC project."""
    dvc_file = dvc_add(
        dest,
        "imported",
        "fix that and import again with --replace, so that the .dvc file records the source",
    )
    if dvc_file is not None:
        mark_import(dvc_file, summary, src)
    return dvc_file


def is_sample(content: dict[str, Any]) -> bool:
    return (content.get("meta") or {}).get("source") == SAMPLE_SOURCE


def describe(content: dict[str, Any], name: str = "data.dvc") -> str:
    """What ``content`` (a ``.dvc`` file) holds, as a phrase ("Data: ...", "data.dvc records
    ...")."""
    meta = content.get("meta") or {}
    source, md5 = meta.get("source"), meta.get("md5")
    what = _origin(meta)
    if what is None and source:
        return f"data from {source} (`{name}` meta.source)"
    if what is None:
        return f"data of unrecorded origin (`{name}` has no meta.source)"
    if md5 is not None and md5 != recorded_md5(content):
        return f"data changed since it was {what} (`{name}`'s hash is no longer its meta.md5)"
    return f"{what} (`{name}` meta.source: {source})"


def _origin(meta: Mapping[str, Any]) -> str | None:
    """What a known ``meta.source`` made, as a phrase; None for another source or none."""
    source = meta.get("source")
    if source == SAMPLE_SOURCE:
        return "the built-in synthetic sample"
    if source == IMPORT_SOURCE:
        imp = meta.get("imported") or {}
        return (
            f"data imported from `{imp.get('name', '?')}` ({imp.get('kind', '?')}, "
            f"{imp.get('images', '?')} images) at {imp.get('at', '?')}"
        )
    if source == LABEL_SOURCE:
        base = _origin(meta.get("base") or {}) or "data of unrecorded origin"
        lab = meta.get("labelled") or {}
        return (
            f"{base} plus {lab.get('images', '?')} image(s) labelled in Label Studio "
            f"(`{LABEL_SOURCE}`, {lab.get('table', '?')}; last at {lab.get('at', '?')})"
        )
    return None
