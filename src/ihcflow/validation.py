"""Check every raw file once, before anything trusts it: the ``validate`` stage's library.

Each file under a class folder is hashed and fully decoded (in parallel worker processes).
A file is rejected with one reason: ``empty``, ``not_an_image``, ``corrupt``,
``unsupported_mode``, ``too_large`` or ``duplicate``. Accepted files form the manifest
(see docs/pipeline.md); the report lists every rejection and every conversion.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from ihcflow.data.layout import DatasetError, Entry, Layout, discover
from ihcflow.files import sha256_bytes
from ihcflow.images.codec import DEFAULT_MAX_PIXELS, ImageError, ImageInfo, decode_rgb8
from ihcflow.tables import MANIFEST

POLICIES = ("skip", "fail")
REASONS = (
    "empty",
    "not_an_image",
    "corrupt",
    "unsupported_mode",
    "too_large",
    "no_content",
    "duplicate",
)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# Below both of these, starting worker processes (~1 s: each imports OpenCV, PIL, pandas)
# costs more than it saves: a 20 KB JPEG takes ~1.5 ms to hash and decode twice.
MIN_FILES_FOR_WORKERS = 1000
MIN_BYTES_FOR_WORKERS = 64 * 1024 * 1024
MAX_CHUNK = 64  # files per task sent to a worker: big enough to amortise the round trip


@dataclass
class ValidateParams:
    """The ``validate`` params section (conf/validate/default.yaml)."""

    policy: str  # skip: drop bad files and report them; fail: list every bad file, no manifest
    max_pixels: int  # refuse larger images before decoding
    max_bytes: int  # refuse larger files without reading them
    min_per_class: int  # a class with fewer valid images is an error


@dataclass
class ValidationResult:
    manifest: pd.DataFrame  # one row per accepted image, MANIFEST.columns, sorted by path
    report: dict[str, Any]  # the content of reports/data/validation.json


class ValidationFailed(DatasetError):
    """Validation found the data set unusable; ``report`` says what was found."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class FileCheck:
    """The outcome for one file: ``info`` when it decodes, else ``reason`` and ``detail``."""

    path: str
    bytes: int
    sha256: str = ""
    info: ImageInfo | None = None
    reason: str = ""
    detail: str = ""

    @property
    def notes(self) -> list[str]:
        return self.info.notes if self.info else []


def check_file(
    path: str | os.PathLike[str],
    source: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FileCheck:
    """Size-check, hash and fully decode one file; never raises for a bad file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return FileCheck(source, 0, reason="empty", detail="file is empty (0 bytes)")
        if size > max_bytes:
            return FileCheck(
                source,
                size,
                reason="too_large",
                detail=f"file is {size} bytes > max_bytes {max_bytes} (not read)",
            )
        data = path.read_bytes()
    except OSError as exc:
        return FileCheck(source, 0, reason="corrupt", detail=f"cannot read file: {exc}")
    check = FileCheck(source, len(data), sha256_bytes(data))
    try:
        _, info = decode_rgb8(data, source, max_pixels=max_pixels, strict=True)
    except ImageError as exc:
        check.reason, check.detail = exc.reason, exc.detail
    except Exception as exc:  # a decoder crash on one malformed file must not stop the scan
        check.reason = "corrupt"
        check.detail = f"decoder failed: {type(exc).__name__}: {exc}"
    else:
        check.info = info
    return check


def _init_worker() -> None:
    import cv2  # one decode per process at a time: the processes are the parallelism

    cv2.setNumThreads(1)


def resolve_workers(workers: int) -> int:
    """``0`` means every core this process may run on."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers:
        return workers
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _total_bytes(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):  # check_file reports unreadable files
            total += path.stat().st_size
    return total


def _check_all(
    root: Path, entries: tuple[Entry, ...], workers: int, max_pixels: int, max_bytes: int
) -> Iterator[FileCheck]:
    paths = [root / e.path for e in entries]
    sources = [e.path for e in entries]
    check = partial(check_file, max_pixels=max_pixels, max_bytes=max_bytes)
    n_workers = min(resolve_workers(workers), len(entries))
    if n_workers <= 1 or (
        len(entries) < MIN_FILES_FOR_WORKERS and _total_bytes(paths) < MIN_BYTES_FOR_WORKERS
    ):
        yield from map(check, paths, sources)
        return
    chunk = max(1, min(MAX_CHUNK, len(entries) // (n_workers * 4)))
    # forkserver, not fork: a forked child inherits OpenCV's thread pool half-alive and can
    # hang in it (seen with cv2.setNumThreads after the parent used OpenCV).
    ctx = multiprocessing.get_context("forkserver")
    try:
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker) as pool:
            yield from pool.map(check, paths, sources, chunksize=chunk)
    except BrokenProcessPool as exc:
        raise RuntimeError(
            f"a validation worker process died ({exc}); if you call validate_dataset from a "
            "script, put the call under `if __name__ == '__main__':`, or pass workers=1"
        ) from exc


def _resolve_duplicates(checks: list[FileCheck], entries: dict[str, Entry]) -> None:
    """Reject copies of the same bytes: all of them across classes/splits, else all but one."""
    by_hash: dict[str, list[FileCheck]] = defaultdict(list)
    for check in checks:
        if not check.reason:
            by_hash[check.sha256].append(check)
    for digest, group in by_hash.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda c: c.path)
        classes = {entries[c.path].label for c in group}
        splits = {entries[c.path].given_split for c in group}
        if len(classes) == 1 and len(splits) == 1:
            for dup in group[1:]:
                dup.reason = "duplicate"
                dup.detail = f"same bytes as {group[0].path} (sha256 {digest[:12]}), which is kept"
            continue
        why = []
        if len(classes) > 1:
            why.append(f"in classes {sorted(classes)}: ambiguous label")
        if len(splits) > 1:
            why.append(f"in given splits {sorted(splits)}: leaks between splits")
        for dup in group:
            others = ", ".join(c.path for c in group if c is not dup)
            dup.reason = "duplicate"
            dup.detail = (
                f"same bytes (sha256 {digest[:12]}) as {others}; "
                f"{' and '.join(why)}; all copies rejected"
            )


def _manifest(accepted: list[FileCheck], entries: dict[str, Entry]) -> pd.DataFrame:
    rows = []
    for check in accepted:
        entry, info = entries[check.path], check.info
        assert info is not None
        rows.append(
            {
                "path": check.path,
                "class": entry.label,
                "given_split": entry.given_split,
                "sha256": check.sha256,
                "width": info.width,
                "height": info.height,
                "channels": info.channels,
                "bit_depth": info.bit_depth,
                "mode": info.mode,
                "format": info.format,
                "bytes": check.bytes,
                "notes": "; ".join(check.notes),
            }
        )
    frame = pd.DataFrame(rows, columns=list(MANIFEST.columns))
    return frame.sort_values("path", kind="stable").reset_index(drop=True)


def _class_problems(
    layout: Layout, checks: list[FileCheck], counts: dict[str, int], min_per_class: int
) -> str:
    short = [c for c in layout.classes if counts[c] < min_per_class]
    if not short:
        return ""
    label = {e.path: e.label for e in layout.entries}
    lines = []
    for name in short:
        reasons = Counter(c.reason for c in checks if label[c.path] == name and c.reason)
        n_files = sum(1 for e in layout.entries if e.label == name)
        if n_files == 0:
            what = "empty folder (no files)"
        else:
            rejected = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
            what = f"{counts[name]} valid of {n_files} file(s)" + (
                f", rejected: {rejected}" if rejected else ""
            )
        lines.append(f"  class {name!r}: {what}")
    return (
        f"{len(short)} class(es) with fewer than min_per_class={min_per_class} valid image(s) "
        f"(add images, fix the rejected files, or remove the folder):\n" + "\n".join(lines)
    )


def _rejection_list(rejected: Iterable[dict[str, str]]) -> str:
    return "\n".join(f"  {r['path']}: {r['reason']}: {r['detail']}" for r in rejected)


def validate_dataset(
    data_dir: str | os.PathLike[str],
    *,
    policy: str = "skip",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_per_class: int = 1,
    workers: int = 0,
) -> ValidationResult:
    """Check every file of the data set at ``data_dir`` and build the manifest.

    ``policy="skip"`` drops bad files (they are listed in the report); ``"fail"`` raises
    :class:`ValidationFailed` listing every bad file. A class left with fewer than
    ``min_per_class`` valid images raises too. ``workers=0`` uses every core; worker
    processes are started with ``forkserver``, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    if policy not in POLICIES:
        raise DatasetError(f"policy must be one of {POLICIES}, got {policy!r}")
    for name, value in (("max_pixels", max_pixels), ("max_bytes", max_bytes)):
        if value <= 0:
            raise DatasetError(f"{name} must be > 0, got {value}")
    if min_per_class < 1:
        raise DatasetError(f"min_per_class must be >= 1, got {min_per_class}")
    root = Path(data_dir)
    layout = discover(root)
    entries = {e.path: e for e in layout.entries}
    checks = list(
        _check_all(
            root, layout.entries, workers, max_pixels=int(max_pixels), max_bytes=int(max_bytes)
        )
    )
    _resolve_duplicates(checks, entries)
    accepted = [c for c in checks if not c.reason]
    rejected = [
        {"path": c.path, "reason": c.reason, "detail": c.detail}
        for c in sorted(checks, key=lambda c: c.path)
        if c.reason
    ]
    counts = dict.fromkeys(layout.classes, 0)
    for check in accepted:
        counts[entries[check.path].label] += 1
    report: dict[str, Any] = {
        "layout": layout.kind,
        "policy": policy,
        "classes": counts,
        "n_files": len(checks),
        "n_valid": len(accepted),
        "n_rejected": len(rejected),
        "rejected": rejected,
        "converted": [
            {"path": c.path, "notes": "; ".join(c.notes)}
            for c in sorted(accepted, key=lambda c: c.path)
            if c.notes
        ],
    }
    errors = []
    if policy == "fail" and rejected:
        errors.append(
            f"{len(rejected)} of {len(checks)} file(s) rejected (policy=fail):\n"
            + _rejection_list(rejected)
        )
    class_problems = _class_problems(layout, checks, counts, min_per_class)
    if class_problems:
        errors.append(class_problems)
    if errors:
        message = f"{root}: " + "\n".join(errors)
        raise ValidationFailed(message, {**report, "error": message})
    return ValidationResult(manifest=_manifest(accepted, entries), report=report)


def summarize(report: dict[str, Any], max_listed: int = 10) -> str:
    """A few human-readable lines about a validation report."""
    by_reason = Counter(r["reason"] for r in report["rejected"])
    reasons = ", ".join(f"{r} {by_reason[r]}" for r in REASONS if by_reason[r])
    lines = [
        f"layout {report['layout']}, {len(report['classes'])} classes, "
        f"{report['n_files']} files: {report['n_valid']} valid, "
        f"{report['n_rejected']} rejected" + (f" ({reasons})" if reasons else "") + ", "
        f"{len(report['converted'])} converted"
    ]
    lines += [
        f"  {r['path']}: {r['reason']}: {r['detail']}" for r in report["rejected"][:max_listed]
    ]
    if report["n_rejected"] > max_listed:
        lines.append(f"  ... and {report['n_rejected'] - max_listed} more (see the report)")
    return "\n".join(lines)
