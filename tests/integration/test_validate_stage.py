"""The `validate` stage as DVC runs it: params.yaml in, manifest and report out."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import REPO, load_stage

ROOT = REPO
STAGE = load_stage("validate")
PARAMS = """\
validate:
  policy: {policy}
  max_pixels: 50000000
  max_bytes: 268435456
  min_per_class: 1
"""


def png(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def gray_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (5, 5), 9).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    files = {
        "data/a/1.png": png(1),
        "data/a/gray.png": gray_png(),
        "data/b/2.png": png(2),
        "data/b/3.png": png(3),
        "data/b/empty.png": b"",
        "data/groups.csv": b"path,group\n",  # metadata beside the class folders, not data
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "params.yaml").write_text(PARAMS.format(policy="skip"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_main_writes_manifest_and_report(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    STAGE.main([])
    manifest = pd.read_csv(workdir / "processed/manifest.csv", keep_default_na=False)
    assert list(manifest["path"]) == ["a/1.png", "a/gray.png", "b/2.png", "b/3.png"]
    assert list(manifest["class"]) == ["a", "a", "b", "b"]
    assert manifest.loc[1, "notes"] == "grayscale converted to RGB"
    report = json.loads((workdir / "reports/data/validation.json").read_text())
    assert report["classes"] == {"a": 2, "b": 2}
    assert report["rejected"] == [
        {"path": "b/empty.png", "reason": "empty", "detail": "file is empty (0 bytes)"}
    ]
    assert report["converted"] == [{"path": "a/gray.png", "notes": "grayscale converted to RGB"}]
    out = capsys.readouterr().out
    assert "5 files: 4 valid, 1 rejected (empty 1), 1 converted" in out
    assert "b/empty.png: empty" in out


def test_fail_policy_exits_with_every_bad_file_and_no_manifest(workdir: Path) -> None:
    (workdir / "params.yaml").write_text(PARAMS.format(policy="fail"))
    (workdir / "data/a/notes.png").write_text("not an image")
    stale = workdir / "processed/manifest.csv"
    stale.parent.mkdir()
    stale.write_text("path\nold.png\n")
    with pytest.raises(SystemExit) as exc:
        STAGE.main([])
    message = str(exc.value.code)
    assert message.startswith("validate: ")
    assert "a/notes.png: not_an_image" in message and "b/empty.png: empty" in message
    assert not stale.exists(), "a failed run must not leave a manifest behind"
    report = json.loads((workdir / "reports/data/validation.json").read_text())
    assert report["n_rejected"] == 2 and report["policy"] == "fail" and report["error"]


def test_dataset_error_exits_without_traceback(workdir: Path) -> None:
    for path in (workdir / "data/b").iterdir():
        path.unlink()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages/validate.py"), "--workers", "1"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "validate: " in proc.stderr and "class 'b': empty folder" in proc.stderr
    assert not (workdir / "processed/manifest.csv").exists()
    assert (workdir / "reports/data/validation.json").exists()


def test_custom_paths(workdir: Path) -> None:
    STAGE.main(["--manifest", "out/m.csv", "--report", "out/r.json", "--workers", "1"])
    assert (workdir / "out/m.csv").is_file() and (workdir / "out/r.json").is_file()
    assert not (workdir / "processed").exists()
