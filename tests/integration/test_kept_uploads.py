"""``ihcflow serve --log-images DIR``: the server keeps each accepted upload for labelling, for
a retention it enforces, and logs the image's sha256 (never the image); `ihcflow label select`
reads the kept uploads and what the server answered. The real server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ihcflow.files import sha256_bytes
from ihcflow.prediction_log import log_files, read_log
from tests.helpers import run_cmd
from tests.helpers.data import png
from tests.helpers.labelling import BLUE, TILE, labelled_project, put
from tests.helpers.models import write_model
from tests.helpers.pipeline import IHCFLOW
from tests.helpers.server import run_server, server_env


def test_uploads_are_kept_by_day_and_hash_and_expire(tmp_path: Path) -> None:
    root = labelled_project(tmp_path / "project")
    kept = tmp_path / "uploads"
    today = dt.datetime.now(dt.UTC).date()
    old, recent = today - dt.timedelta(days=2), today - dt.timedelta(days=1)
    put(kept / f"{old}/{'a' * 64}.png", b"kept 2 days ago")  # past a 2-day retention
    yesterday = png((120, 110, 20), TILE)  # red ~ green: the model doubts it
    put(kept / f"{recent}/{sha256_bytes(yesterday)}.png", yesterday)
    env = {"IHCFLOW_LOG_IMAGES": str(kept), "IHCFLOW_LOG_IMAGES_RETENTION_DAYS": "2"}
    red, blue = png((230, 40, 20), TILE), png(BLUE, TILE, "JPEG")  # not in data/
    with run_server(root / "models", tmp_path / "server", env) as server, server.client() as http:
        first = http.post("/predict", files=[("files", ("a.png", red)), ("files", ("b", blue))])
        again = http.post("/predict", content=red, headers={"Content-Type": "image/png"})
        refused = http.post(
            "/predict", content=b"not an image", headers={"Content-Type": "image/png"}
        )
    assert first.status_code == again.status_code == 200, first.text
    assert refused.status_code == 415

    # at start the day past the retention went; yesterday's stays
    assert sorted(p.name for p in kept.iterdir()) == [str(recent), str(today)]
    day = kept / str(today)
    files = sorted(p.name for p in day.iterdir())  # no temporary file, the refused one not kept
    assert files == sorted([f"{sha256_bytes(red)}.png", f"{sha256_bytes(blue)}.jpg"])
    assert (day / f"{sha256_bytes(blue)}.jpg").read_bytes() == blue  # as uploaded
    assert stat.S_IMODE(kept.stat().st_mode) == stat.S_IMODE(day.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((day / f).stat().st_mode) == 0o600 for f in files)

    # the log names the image by its hash, one line per accepted upload; never the bytes
    records = [r for f in log_files(server.log_dir) for r in read_log(f)]
    assert [r["image_sha256"] for r in records] == [sha256_bytes(x) for x in (red, blue, red)]
    assert not [k for r in records for k in r if "image" in k and k != "image_sha256"]
    started = [r for r in server.logs() if r.get("message") == "kept uploads"]
    assert started and started[0]["deleted_days"] == [str(old)]

    # label select takes the kept uploads, with what the server answered
    out = run_cmd(
        [IHCFLOW, "label", "select", "--from-uploads", str(kept), "--log-dir",
         str(server.log_dir), "-n", "3", "--no-balance", "--out", "labelling/kept"],
        root,
    ).stdout  # fmt: skip
    assert "chose 3 of 3 image(s)" in out and "2 of 3 image(s) found in the prediction log" in out
    manifest = pd.read_csv(root / "labelling/kept/manifest.csv", keep_default_na=False)
    assert manifest["source"].iloc[0] == f"{recent}/{sha256_bytes(yesterday)}.png"  # most doubt
    served = dict(zip(manifest["sha256"], manifest["served"], strict=True))
    assert served[sha256_bytes(yesterday)] == ""  # kept before this log
    assert served[sha256_bytes(red)].startswith("neg, margin ")
    assert served[sha256_bytes(red)].endswith(" (2 upload(s))")


def test_log_images_without_a_retention_is_refused(tmp_path: Path) -> None:
    model = write_model(tmp_path / "models")
    kept = tmp_path / "uploads"
    cmd = [sys.executable, "-m", "ihcflow.serving", "--model-dir", str(model), "--log-dir",
           str(tmp_path / "logs"), "--log-images", str(kept), "--check"]  # fmt: skip
    proc = subprocess.run(cmd, env=server_env({}), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "log_images needs a retention" in proc.stderr
    assert "--log-images-retention-days" in proc.stderr
    assert not kept.exists()
    with_days = subprocess.run(
        [*cmd, "--log-images-retention-days", "7"],
        env=server_env({}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert with_days.returncode == 0, with_days.stderr
