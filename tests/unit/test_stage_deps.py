"""Every module of ``ihcflow`` that a stage runs is in that stage's ``deps``, so that
`dvc status` sees a stale result when the code behind it changes.

The imports are walked statically from the stage's script (``python stages/x.py`` or ``python -m
ihcflow.<package>``), through every ``import`` inside ``ihcflow`` (function-level ones
too), plus the packages' ``__init__`` files Python runs on the way and the ``_target_`` classes
Hydra instantiates from the stage's params."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

SRC = REPO / "src"
PACKAGE = "ihcflow"
PIPELINES = [REPO / "dvc.yaml", REPO / "monitoring" / "dvc.yaml"]


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` under src/, or None (not ours, or an attribute)."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_names(path: Path) -> Iterator[str]:
    """Absolute names of the modules (or module attributes) ``path`` imports, anywhere in it."""
    current = module_name(path) if path.is_relative_to(SRC) else ""
    package = current if path.name == "__init__.py" else current.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def with_parents(name: str) -> Iterator[str]:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        yield ".".join(parts[:i])


def closure(entry: Path, extra: list[str]) -> set[Path]:
    """Files of ``ihcflow`` that running ``entry`` imports (transitively), with their packages."""
    seen: set[Path] = set()
    todo = [entry]
    names = list(extra)
    while todo or names:
        while names:
            name = names.pop()
            if name.split(".")[0] != PACKAGE:
                continue
            for part in with_parents(name):
                found = module_file(part)
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
        if todo:
            names.extend(imported_names(todo.pop()))
    return {p for p in seen if p.is_relative_to(SRC)}


def targets(node: Any) -> Iterator[str]:
    """Module names of the ``_target_`` callables in a params section."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value.rpartition(".")[0]
            else:
                yield from targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from targets(value)


def entry_script(cmd: str) -> Path:
    """The Python file a stage's command runs (``python stages/x.py`` or ``python -m module``)."""
    if match := re.match(r"python\s+(\S+\.py)\b", cmd):
        return REPO / match[1]
    if (match := re.match(r"python\s+-m\s+(\S+)", cmd)) and (found := module_file(match[1])):
        main = found.parent / "__main__.py" if found.name == "__init__.py" else found
        return main if main.is_file() else found
    raise AssertionError(f"cannot tell which Python file runs {cmd!r}")


def stages() -> Iterator[tuple[str, dict[str, Any]]]:
    for dvc_file in PIPELINES:
        for name, stage in yaml.safe_load(dvc_file.read_text())["stages"].items():
            yield f"{dvc_file.relative_to(REPO)}:{name}", stage


def stage_params(stage: dict[str, Any], params: dict[str, Any]) -> list[Any]:
    sections = []
    for entry in stage.get("params", []):
        keys = entry if isinstance(entry, str) else None
        if keys is None:
            continue
        node: Any = params
        for key in keys.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        sections.append(node)
    return sections


def covered(path: Path, deps: list[str]) -> bool:
    rel = PurePosixPath(path.relative_to(REPO).as_posix())
    return any(rel == PurePosixPath(d) or PurePosixPath(d) in rel.parents for d in deps)


@pytest.mark.parametrize("stage_id", [sid for sid, _ in stages()])
def test_stage_deps_cover_the_code_it_runs(stage_id: str) -> None:
    stage = dict(stages())[stage_id]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    entry = entry_script(" ".join(str(stage["cmd"]).split()))
    found = closure(entry, list(targets(stage_params(stage, params))))
    deps = [str(d) for d in stage.get("deps", [])]
    if entry.is_relative_to(REPO / "stages"):
        assert covered(entry, deps), f"{stage_id}: its script {entry.name} is not in deps"
    missing = sorted(str(p.relative_to(REPO)) for p in found if not covered(p, deps))
    assert not missing, f"{stage_id}: imports these modules, which its deps do not list: {missing}"


def test_the_walk_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The walker itself: a lazy import inside a function and ``from . import x`` count."""
    names = set(imported_names(SRC / PACKAGE / "data" / "fetch.py"))
    assert "ihcflow.data.synth" in names  # `from ihcflow.data import synth` inside get_data
    train = closure(REPO / "stages" / "train.py", [])
    assert SRC / PACKAGE / "training" / "fit.py" in train
    assert SRC / PACKAGE / "__init__.py" in train
