"""Fixtures. Shared code lives in tests/helpers/ (a test module never imports another one)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cmd

# What a temporary DVC project needs from this repository (not data, not outputs).
PROJECT_FILES = ("dvc.yaml", "params.yaml", "conf", "stages", "src", ".dvcignore", ".gitignore")


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with the most slow tests first, each file's tests kept together and in order:
    ``make test`` hands whole files to two workers in this order (``--dist loadfile
    --no-loadscope-reorder``), so the long files start early and the short ones fill the gaps."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)

    def slow(tests: list[pytest.Item]) -> int:
        return sum(t.get_closest_marker("slow") is not None for t in tests)

    ordered = sorted(files.values(), key=slow, reverse=True)  # stable: ties keep their order
    items[:] = [item for tests in ordered for item in tests]
