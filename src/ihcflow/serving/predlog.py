"""The prediction log: one JSON line per predicted image, one file per UTC day.

``<log_dir>/predictions-YYYY-MM-DD.jsonl``, read by drift monitoring (fields in
docs/serving.md). Each line is written with a single ``os.write`` on an ``O_APPEND`` file
descriptor, so lines from several threads or worker processes never interleave, and a line
is in the kernel as soon as the call returns: a crash of the server loses at most the request
in flight. With ``fsync`` each line is also forced to disk (survives a machine crash).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

PREFIX = "predictions-"
SUFFIX = ".jsonl"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso_z(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, millisecond precision: ``2026-05-01T12:00:00.123Z``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_path(log_dir: str | os.PathLike[str], day: dt.date) -> Path:
    return Path(log_dir) / f"{PREFIX}{day.isoformat()}{SUFFIX}"


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

    def write(self, records: Iterable[Mapping[str, Any]]) -> Path:
        """Append one line per record (each has ``ts``, an ISO string ending in ``Z``)."""
        lines = [
            (
                _day_of(r["ts"]),
                (json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n").encode(),
            )
            for r in records
        ]
        path = self.log_dir
        with self._lock:
            for day, line in lines:
                fd = self._open(day)
                _write_all(fd, line)
                if self.fsync:
                    os.fsync(fd)
                path = log_path(self.log_dir, day)
        return path

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
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
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


def _day_of(ts: str) -> dt.date:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(dt.UTC).date()


def _write_all(fd: int, data: bytes) -> None:
    """One ``os.write`` (atomic for a regular file); a short write (disk full) is completed."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of one log file (for tests and tools)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
