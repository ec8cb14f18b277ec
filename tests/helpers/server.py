"""The model server, ``python -m ihcflow.serving``, on a free port of 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import REPO


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_dir: Path
    stderr: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr.read_text().splitlines() if line]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(extra: dict[str, str], source: bool = True) -> dict[str, str]:
    """This environment without IHCFLOW_* settings; ``source``: import ihcflow from src/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IHCFLOW_")}
    env.pop("PYTHONPATH", None)
    if source:
        env["PYTHONPATH"] = str(REPO / "src")
    env["IHCFLOW_THREADS"] = "1"
    return {**env, **extra}


@contextlib.contextmanager
def run_server(
    model_dir: Path, work: Path, env: dict[str, str], python: str = sys.executable
) -> Iterator[Server]:
    """``python -m ihcflow.serving`` (``python``: another venv's, with ihcflow installed)."""
    port = free_port()
    work.mkdir(parents=True)
    stderr = work / "server.log"
    cmd = [python, "-m", "ihcflow.serving", "--model-dir", str(model_dir),
           "--log-dir", str(work / "predictions"), "--port", str(port)]  # fmt: skip
    environ = server_env(env, source=python == sys.executable)
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, env=environ, stdout=err, stderr=err, cwd=work)
    server = Server(f"http://127.0.0.1:{port}", port, proc, work / "predictions", stderr)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}:\n{stderr.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready after 60 s:\n{stderr.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
