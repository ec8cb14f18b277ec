"""requirements.lock installs anywhere: every entry is `name==version` from the registry, and it
pins the whole environment the tests run in (`make install` installs with it as constraints).

A lock once pointed at a wheel in /tmp that only one machine had; CI stayed green there and
every other install failed. These tests fail on such an entry, and on a package installed in
the venv that the lock does not pin (or pins at another version)."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.helpers import REPO

LOCK = REPO / "requirements.lock"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[0-9][A-Za-z0-9.!+-]*)$")
# Installer tooling that `pip freeze` leaves out too: venv seeds them, the lock does not pin them.
TOOLING = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """The version without a local label: torch's CPU wheel is 2.13.0+cpu, the lock says 2.13.0."""
    return version.split("+", 1)[0]


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match is None:
            raise AssertionError(
                f"{path.name}:{number}: {line!r} is not `name==version` (no URLs, file:// "
                "paths, VCS links, editable installs or options: the lock must install from the "
                "package index on any machine)"
            )
        name = canonical(match["name"])
        if name in pins:
            raise AssertionError(f"{path.name}:{number}: {match['name']} is pinned twice")
        if "+" in match["version"]:
            raise AssertionError(
                f"{path.name}:{number}: {line!r} has a local version label; pin the public "
                "version (a CPU or CUDA build of torch both satisfy torch==X.Y.Z)"
            )
        pins[name] = match["version"]
    return pins


def test_every_entry_is_a_plain_pin() -> None:
    pins = read_lock()
    assert "torch" in pins and "dvc" in pins and "pytest" in pins


@pytest.mark.parametrize(
    "line",
    [
        "kubernetes-validate @ file:///tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl",
        "ihcflow @ git+https://github.com/example/ihcflow@main",
        "-e .",
        "--find-links /opt/wheels",
        "numpy>=2",
        "torch==2.13.0+cpu",
    ],
)
def test_a_local_or_unpinned_entry_is_refused(tmp_path: Path, line: str) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# header\nnumpy==2.3.5\n{line}\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="requirements.lock:3"):
        read_lock(lock)


def installed() -> dict[str, str]:
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[canonical(name)] = dist.version
    return out


@pytest.mark.skipif(
    sys.prefix == sys.base_prefix, reason="not in a virtual environment (make install makes one)"
)
def test_the_lock_pins_every_installed_package() -> None:
    pins = read_lock()
    env = installed()
    project = canonical("ihcflow")
    unpinned = sorted(n for n in env if n not in pins and n not in TOOLING and n != project)
    assert not unpinned, (
        f"installed in {sys.prefix} but not pinned in requirements.lock: {unpinned}. "
        "Add them to pyproject.toml if the project needs them, then `make lock`; "
        "otherwise uninstall them"
    )
    differ = {n: (pins[n], public(v)) for n, v in env.items() if n in pins and pins[n] != public(v)}
    assert not differ, f"lock vs installed versions differ: {differ}; run `make lock`"
    assert project not in pins, "the project itself is installed from the checkout, not pinned"
