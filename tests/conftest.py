"""Shared fixtures: paths, a throwaway DVC project built from this repository's pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PBC_SAMPLE = REPO.parent / "shared" / "datasets" / "pbc-sample"
BIN = Path(sys.executable).parent

# What a temporary DVC project needs from this repository (not data, not outputs).
PROJECT_FILES = ("dvc.yaml", "params.yaml", "conf", "stages", "src", ".dvcignore", ".gitignore")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # dvc.yaml runs `python stages/...`
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "ihcflow tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@ihcflow.invalid"
    return env


def run_cmd(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


def fresh_clone(root: Path, dest: Path) -> Path:
    """``git clone`` of ``root``: what someone else gets, without data/, outputs or DVC cache."""
    run_cmd(["git", "clone", "-q", str(root), str(dest)], root.parent)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Callable[..., Path]:
    """Make a git + DVC project in tmp with this repository's pipeline and conf/."""

    def make(name: str = "project") -> Path:
        root = tmp_path / name
        root.mkdir()
        for item in PROJECT_FILES:
            src = REPO / item
            if src.is_dir():
                shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.exists():
                shutil.copy2(src, root / item)
        (root / ".dvc").mkdir()
        shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")
        shutil.copy2(REPO / ".dvc" / ".gitignore", root / ".dvc" / ".gitignore")
        run_cmd(["git", "init", "-q", "-b", "main"], root)
        run_cmd(["git", "add", "-A"], root)
        run_cmd(["git", "commit", "-qm", "pipeline"], root)
        return root

    return make
