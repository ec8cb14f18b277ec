"""The prediction log: one JSON line per predicted image, one file per UTC day.

The one definition of the format, for its writer (the server), its reader (drift monitoring)
and the simulator that rehearses the monitoring loop (:mod:`ihcflow.monitoring.simulate`).

- Files: ``<log_dir>/predictions-YYYY-MM-DD.jsonl`` (:func:`log_path`), the UTC day of each
  record's ``ts``; a reader also looks one folder down (``<log_dir>/<pod>/...``, one folder per
  server pod as deploy/k8s writes them: :func:`log_files`).
- Records (:func:`make_record`; fields in docs/serving.md): ``ts`` (:func:`iso_z`), ``request_id``,
  ``model_name``, ``model_version``, ``filename``, ``predicted``, ``probs``, ``features``
  (:data:`ihcflow.images.features.FEATURE_COLUMNS` of the decoded upload at the model's input
  size, full precision), ``acquisition`` (:data:`~ihcflow.images.features.ACQUISITION_COLUMNS`
  of the file), ``latency_ms``, and optionally ``ood`` (``{"score", "flag"}``,
  :mod:`ihcflow.ood`), ``embedding`` and ``image_b64``. A reader needs :data:`REQUIRED`.

Each line is written with a single ``os.write`` on an ``O_APPEND`` file descriptor, so lines
from several threads or worker processes never interleave, and a line is in the kernel as soon
as the call returns: a crash of the server loses at most the request in flight, and a line it
left half-written is ended before the next record is appended (:func:`_ends_a_line`). With
``fsync`` each line is also forced to disk (survives a machine crash).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PREFIX = "predictions-"
SUFFIX = ".jsonl"
LOG_GLOB = f"{PREFIX}*{SUFFIX}"
# in the log folder itself (one server), and one level down (one sub-folder per pod: deploy/k8s)
LOG_GLOBS = (LOG_GLOB, f"*/{LOG_GLOB}")
_LOG_DATE = re.compile(rf"^{PREFIX}(\d{{4}}-\d{{2}}-\d{{2}}){re.escape(SUFFIX)}$")
REQUIRED = ("ts", "model_version", "predicted", "features")  # what drift monitoring reads


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso_z(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, millisecond precision: ``2026-05-01T12:00:00.123Z``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_path(log_dir: str | os.PathLike[str], day: dt.date) -> Path:
    return Path(log_dir) / f"{PREFIX}{day.isoformat()}{SUFFIX}"


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The log files under ``path``: one ``.jsonl``, or the ``predictions-*.jsonl`` of a folder
    and of its sub-folders (``<pod>/predictions-*.jsonl``, one level down)."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for pattern in LOG_GLOBS for p in path.glob(pattern) if p.is_file())


def log_file_day(path: str | os.PathLike[str]) -> dt.date | None:
    """The UTC day a log file holds, from its name (``predictions-YYYY-MM-DD.jsonl``)."""
    match = _LOG_DATE.match(Path(path).name)
    if not match:
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


def make_record(
    *,
    ts: dt.datetime | str,
    request_id: str,
    model_name: str,
    model_version: str,
    filename: str | None,
    predicted: str,
    probs: Mapping[str, float],
    features: Mapping[str, float],
    latency_ms: float,
    acquisition: Mapping[str, int | str] | None = None,
    ood: Mapping[str, float | bool] | None = None,
    embedding: Sequence[float] | None = None,
    image_b64: str | None = None,
) -> dict[str, Any]:
    """One log record (``ts``: a time, or a string :func:`iso_z` made)."""
    out: dict[str, Any] = {
        "ts": ts if isinstance(ts, str) else iso_z(ts),
        "request_id": request_id,
        "model_name": model_name,
        "model_version": model_version,
        "filename": filename,
        "predicted": predicted,
        "probs": dict(probs),
        "features": {k: float(v) for k, v in features.items()},
        "latency_ms": latency_ms,
    }
    if acquisition is not None:
        out["acquisition"] = dict(acquisition)
    if ood is not None:
        out["ood"] = dict(ood)
    if embedding is not None:
        out["embedding"] = [float(v) for v in embedding]
    if image_b64 is not None:
        out["image_b64"] = image_b64
    return out


class PredictionLog:
    """Append-only JSON Lines writer, rotated by the UTC date of each record's ``ts``."""

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        fsync: bool = False,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.fsync = fsync
        self.clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day: dt.date | None = None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(self.log_dir, os.W_OK):
            raise PermissionError(f"{self.log_dir}: prediction log folder is not writable")

    def now(self) -> dt.datetime:
        return self.clock()

    def write(self, records: Iterable[Mapping[str, Any]]) -> list[Path]:
        """Append one line per record (each has ``ts``, an ISO string ending in ``Z``); returns
        the files written to."""
        lines = [
            (
                _day_of(r["ts"]),
                (json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n").encode(),
            )
            for r in records
        ]
        with self._lock:
            for day, line in lines:
                fd = self._open(day)
                _write_all(fd, line if _ends_a_line(fd) else b"\n" + line)
                if self.fsync:
                    os.fsync(fd)
        return [log_path(self.log_dir, day) for day in sorted({day for day, _ in lines})]

    def _open(self, day: dt.date) -> int:
        """The descriptor for ``day``; reopened when the day changes or the file was removed."""
        if self._fd is not None and self._day == day:
            try:
                if os.fstat(self._fd).st_nlink > 0:
                    return self._fd
            except OSError:
                pass
        self._close()
        self.log_dir.mkdir(parents=True, exist_ok=True)  # may have been removed by a clean-up
        # read and write: _ends_a_line reads the last byte
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(log_path(self.log_dir, day), flags, 0o644)
        self._day = day
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._day = None, None

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _day_of(ts: str) -> dt.date:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(dt.UTC).date()


def _ends_a_line(fd: int) -> bool:
    """Whether the file is empty or ends with a newline. A writer killed mid-line (or a full
    disk) leaves a partial last line; the next record then starts on a line of its own, so it
    is not glued to the fragment and lost with it (the fragment is one unusable line)."""
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def _write_all(fd: int, data: bytes) -> None:
    """One ``os.write`` (atomic for a regular file); a short write (disk full) is completed."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of one log file, unchecked (for tests and tools)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_records(files: Iterable[Path]) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """Every non-blank line of ``files`` as ``(where, record, "")`` (``where``: file:line), or
    ``(where, None, reason)`` for a line a reader cannot use: not JSON (a truncated line), not
    an object, lacking a :data:`REQUIRED` field, ``features`` not an object; a file that cannot
    be opened is one such entry."""
    for path in files:
        try:
            fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            yield str(path), None, f"unreadable file ({exc.strerror})"
            continue
        with fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield f"{path}:{lineno}", *_parse(line)


def _parse(line: str) -> tuple[dict[str, Any] | None, str]:
    try:
        rec = json.loads(line)
    except ValueError:
        return None, "not valid JSON (a truncated line?)"
    if not isinstance(rec, dict):
        return None, "not a JSON object"
    lacking = [k for k in REQUIRED if rec.get(k) is None]
    if lacking:
        return None, f"lacks {', '.join(lacking)}"
    if not isinstance(rec["features"], dict):
        return None, "features is not an object"
    return rec, ""
