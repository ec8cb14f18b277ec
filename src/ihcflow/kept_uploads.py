"""The uploads the server keeps (``ihcflow serve --log-images DIR``), written and read only here.

Keeping patient images is opt-in and always comes with a retention period::

    DIR/<YYYY-MM-DD>/<sha256>.<ext>     the UTC day the upload arrived; the file's bytes hash
                                        to its name; ext from the image's format (png, jpg,
                                        tif, bmp)

- Folders are created 0700 and files 0600 (only the server's user reads them); a file is
  written to a hidden temporary sibling and renamed, so a reader never sees half an image.
  The same bytes uploaded twice on a day are one file.
- The prediction log line of the upload carries ``image_sha256`` (never the image).
- :meth:`KeptUploads.expire` deletes the day folders older than the retention; the server
  runs it at start and once a day.
- ``ihcflow label select --from-uploads DIR`` reads the files back (:func:`kept_files`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ihcflow.files import sha256_bytes
from ihcflow.images.codec import file_suffix

DIR_MODE = 0o700
FILE_MODE = 0o600
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME = re.compile(r"^([0-9a-f]{64})\.[a-z]+$")


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def folder_day(name: str) -> dt.date | None:
    """The day a folder named ``YYYY-MM-DD`` holds; None for any other name."""
    if not _DAY.match(name):
        return None
    try:
        return dt.date.fromisoformat(name)
    except ValueError:
        return None


def name_sha256(path: Path) -> str | None:
    """The sha256 a kept file's name claims (``<sha256>.<ext>``); None for any other name."""
    match = _NAME.match(path.name)
    return match.group(1) if match else None


def day_folders(root: Path) -> list[tuple[dt.date, Path]]:
    """The ``YYYY-MM-DD`` folders under ``root``, oldest first."""
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        day = folder_day(path.name)
        if day is not None and path.is_dir():
            found.append((day, path))
    return sorted(found)


def kept_files(root: Path, since: dt.date | None = None) -> Iterator[tuple[dt.date, Path]]:
    """Every visible file of the day folders (from ``since`` on), oldest day first."""
    for day, folder in day_folders(root):
        if since is not None and day < since:
            continue
        for path in sorted(folder.iterdir()):
            if not path.name.startswith(".") and path.is_file():
                yield day, path


class KeptUploads:
    """Writes uploads into ``root`` and deletes the days older than ``retention_days``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        retention_days: int,
        *,
        today: Callable[[], dt.date] = utc_today,
    ) -> None:
        if retention_days < 1:
            raise ValueError(f"retention must be >= 1 day, got {retention_days}")
        self.root = Path(root)
        self.retention_days = retention_days
        self.today = today
        _make_private_dir(self.root)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"{self.root}: uploads folder is not writable")

    def keep(self, data: bytes, image_format: str, day: dt.date) -> str:
        """Write ``data`` (an image in ``image_format``, e.g. PNG) under ``day``; its sha256."""
        digest = sha256_bytes(data)
        folder = self.root / day.isoformat()
        path = folder / f"{digest}{file_suffix(image_format)}"
        if path.is_file():
            return digest
        _make_private_dir(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{digest[:12]}.", suffix=".tmp", dir=folder)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def expire(self) -> list[str]:
        """Delete the day folders older than the retention (today counts as day 1); the
        names of the folders deleted."""
        first_kept = self.today() - dt.timedelta(days=self.retention_days - 1)
        removed = []
        for day, folder in day_folders(self.root):
            if day < first_kept:
                shutil.rmtree(folder, ignore_errors=True)  # another worker may be at it too
                removed.append(folder.name)
        return removed


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask, and an existing one kept
