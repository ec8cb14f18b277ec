"""The kept uploads' folder (ihcflow.kept_uploads): names, retention by day, private files."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from ihcflow.files import sha256_bytes
from ihcflow.kept_uploads import KeptUploads, kept_files
from tests.helpers.data import png


def test_retention_counts_today_as_day_one(tmp_path: Path) -> None:
    today = dt.date(2026, 5, 10)
    store = KeptUploads(tmp_path / "kept", 3, today=lambda: today)
    data = png((10, 20, 30), fmt="TIFF")
    for back in range(5):
        assert store.keep(data, "TIFF", today - dt.timedelta(days=back)) == sha256_bytes(data)
    (tmp_path / "kept/not-a-day").mkdir()  # left alone
    assert store.expire() == ["2026-05-06", "2026-05-07"]
    assert [(d.isoformat(), p.name) for d, p in kept_files(tmp_path / "kept")] == [
        (f"2026-05-{d:02d}", f"{sha256_bytes(data)}.tif") for d in (8, 9, 10)
    ]
    assert store.keep(data, "TIFF", today) == sha256_bytes(data)  # the same bytes: one file
    day = tmp_path / "kept/2026-05-10"
    assert [p.name for p in day.iterdir()] == [f"{sha256_bytes(data)}.tif"]
    assert stat.S_IMODE(day.stat().st_mode) == 0o700
    assert stat.S_IMODE((day / f"{sha256_bytes(data)}.tif").stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="retention must be >= 1 day"):
        KeptUploads(tmp_path / "other", 0)
