"""What the Dockerfile and .dockerignore say, read the way Docker reads them."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from tests.helpers import REPO


def dockerfile_instructions(path: Path = REPO / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instr in dockerfile_instructions():
        if instr[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instr)
    return result


def install_command() -> list[str]:
    """The builder's `pip install ...` (what tests/integration/test_serving_image.py runs)."""
    for word, args in stages()[0]:
        if word == "RUN" and args.startswith("pip install"):
            return shlex.split(args.split("&&")[0])
    raise AssertionError("no pip install in the builder stage")


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex on posix paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules(path: Path = REPO / ".dockerignore") -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append((keep, _pattern(line.lstrip("!").strip("/"))))
    return rules


def sent_to_docker(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(rel).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for keep, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            included = keep
    return included


def build_context(root: Path = REPO) -> Iterator[str]:
    """The files `docker build .` sends (skips folders no `!` pattern reaches into)."""
    rules = dockerignore_rules(root / ".dockerignore")
    lines = (root / ".dockerignore").read_text().splitlines()
    reopened = [line.strip().lstrip("!").strip("/") for line in lines if line.startswith("!")]

    def walk(folder: Path) -> Iterator[str]:
        for entry in sorted(folder.iterdir()):
            rel = entry.relative_to(root).as_posix()
            if entry.is_dir():
                if sent_to_docker(rel, rules) or any(r.startswith(rel + "/") for r in reopened):
                    yield from walk(entry)
            elif sent_to_docker(rel, rules):
                yield rel

    yield from walk(root)
