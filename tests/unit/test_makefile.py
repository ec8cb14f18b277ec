"""`make install`: torch from TORCH_INDEX when it is set, and a stamp that a .venv restored from
a CI cache still satisfies (the checkout's files are newer than it, their content is not)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def make(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX"} | env
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(project), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )


def variable(project: Path, name: str) -> str:
    """A Makefile variable as make itself computes it."""
    proc = make(project, "--eval", f"print-var: ; @echo $({name})", "print-var")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The install's inputs in a fresh folder, and the .venv a CI cache restores: a Python and
    the stamp, both older than the checkout."""
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy2(REPO / name, tmp_path / name)
    stamp = tmp_path / variable(tmp_path, "STAMP")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    stamp.write_text(variable(tmp_path, "INSTALL_KEY") + "\n")
    cached = time.time() - 3600  # restored with its old times; the checkout is from now
    os.utime(stamp, (cached, cached))
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        os.utime(tmp_path / name)
    return tmp_path


def planned(project: Path, **env: str) -> str:
    """What `make install` would run (`make -n`)."""
    proc = make(project, "-n", "install", **env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_stamp_lives_in_the_venv_and_records_the_inputs(project: Path) -> None:
    assert variable(project, "STAMP") == ".venv/.installed"  # cached with .venv
    key = variable(project, "INSTALL_KEY")
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    (project / ".venv" / ".installed").unlink()
    assert f"echo '{key}' > .venv/.installed" in planned(project)


def test_a_restored_venv_is_up_to_date_although_older_than_the_checkout(project: Path) -> None:
    stamp = project / ".venv" / ".installed"
    assert stamp.stat().st_mtime < (project / "pyproject.toml").stat().st_mtime
    assert make(project, "-q", "install").returncode == 0  # -q: 0 = nothing to do
    assert "pip install" not in planned(project)


@pytest.mark.parametrize("change", ["requirements.lock", "pyproject.toml", "no python"])
def test_changed_inputs_or_a_missing_venv_reinstall(project: Path, change: str) -> None:
    if change == "no python":
        (project / ".venv" / "bin" / "python").unlink()
    else:
        with (project / change).open("a") as fh:
            fh.write("\n# changed\n")
    plan = planned(project)
    assert "pip install" in plan and "-c requirements.lock -e '.[pipeline,serve,dev]'" in plan
    assert make(project, "-q", "install").returncode == 1


def torch_line(plan: str) -> str:
    [line] = [ln for ln in plan.splitlines() if "'torch==" in ln]
    return line


def test_torch_comes_from_torch_index_when_set(project: Path) -> None:
    (project / "requirements.lock").write_text("changed\n")  # so that make plans an install
    # set in the environment, as the workflows do
    line = torch_line(planned(project, TORCH_INDEX=CPU_INDEX))
    assert f"--index-url {CPU_INDEX} " in line and "--no-deps" in line
    # the rest (torch's dependencies included) is pinned by the lock, from pip's own indexes
    rest = [ln for ln in planned(project, TORCH_INDEX=CPU_INDEX).splitlines() if " -e " in ln]
    assert rest and "--index-url" not in rest[0]
    # unset (this machine): pip's own configuration finds the local CPU wheel
    assert "--index-url" not in planned(project)


def test_the_makefile_installs_the_torch_the_lock_pins(project: Path) -> None:
    lock = (REPO / "requirements.lock").read_text().splitlines()
    [pin] = [ln for ln in lock if ln.startswith("torch==")]
    assert variable(project, "TORCH") == pin
