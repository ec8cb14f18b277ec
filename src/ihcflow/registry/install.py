"""The registered set in ``models/``: read it, version it, and replace it as one set.

The three files (:data:`ihcflow.model_format.REGISTERED`) are replaced together: staged in a
temporary folder, the previous set backed up to ``models/.previous/``, then renamed into place;
an interrupted swap is rolled back from the backup on the next run.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ihcflow.files import read_json
from ihcflow.model_format import JSON_NAME, REGISTERED

BACKUP_DIR = ".previous"
FIRST_VERSION = "1.0.0"


def read_registered(models_dir: str | Path) -> dict[str, Any] | None:
    path = Path(models_dir) / JSON_NAME
    if not path.is_file():
        return None
    return read_json(path, "registered model")


def next_version(previous: Mapping[str, Any] | None, digest: str) -> str:
    """The previous version for the same model (its ``model_digest``), else previous + 1 patch.

    The digest is of the weights, not of the checkpoint file, so the same training rerun in
    another clone (another absolute path in Lightning's callback state) keeps the version.
    """
    if not previous or "version" not in previous:
        return FIRST_VERSION
    version = str(previous["version"])
    if previous.get("checkpoint", {}).get("model_digest") == digest:
        return version
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(
            f"registered model.json has version {version!r}, expected MAJOR.MINOR.PATCH"
        )
    return f"{parts[0]}.{parts[1]}.{int(parts[2]) + 1}"


def recover_interrupted_swap(models_dir: str | Path) -> bool:
    """Roll back a swap that was interrupted (``.previous/`` still present). True if it did."""
    models_dir = Path(models_dir)
    shutil.rmtree(models_dir / f"{BACKUP_DIR}.partial", ignore_errors=True)
    backup = models_dir / BACKUP_DIR
    if not backup.is_dir():
        return False
    for name in REGISTERED:
        if (backup / name).exists():
            (backup / name).replace(models_dir / name)
        else:  # the interrupted swap added it; the previous set did not have it
            (models_dir / name).unlink(missing_ok=True)
    shutil.rmtree(backup)
    return True


def install_set(staging: str | Path, models_dir: str | Path) -> None:
    """Move the staged ``REGISTERED`` files into ``models_dir`` as one set.

    The current set is copied to ``.previous/`` first (built as ``.previous.partial`` and
    renamed, so it is complete whenever it exists); any failure while renaming rolls back
    from it, and it is removed once every new file is in place.
    """
    staging, models_dir = Path(staging), Path(models_dir)
    missing = [n for n in REGISTERED if not (staging / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{staging}: staged set lacks {missing}")
    models_dir.mkdir(parents=True, exist_ok=True)
    recover_interrupted_swap(models_dir)
    partial = models_dir / f"{BACKUP_DIR}.partial"
    partial.mkdir()
    for name in REGISTERED:
        if (models_dir / name).exists():
            shutil.copy2(models_dir / name, partial / name)
    partial.replace(models_dir / BACKUP_DIR)
    try:
        for name in REGISTERED:
            (staging / name).replace(models_dir / name)
    except BaseException:
        recover_interrupted_swap(models_dir)
        raise
    shutil.rmtree(models_dir / BACKUP_DIR)
