"""A real Label Studio for the labelling tests and the docs' screenshot.

Started from the venv ``make labelstudio`` creates (``.venv-labelstudio``, or the one
``IHCFLOW_LABEL_STUDIO_VENV`` names) on 127.0.0.1 and a free port, with SQLite and media in a
temporary folder; an admin with a legacy API token is created at start. Labellers sign up and
log in through the web forms and annotate through the API with their browser session, as the
labelling page does. Nothing leaves 127.0.0.1 (Label Studio's update check and analytics off).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import REPO
from tests.helpers.server import free_port

VENV = Path(os.environ.get("IHCFLOW_LABEL_STUDIO_VENV", REPO / ".venv-labelstudio"))
BINARY = VENV / "bin" / "label-studio"
ADMIN = "admin@ihcflow.invalid"
SKIP_REASON = (
    f"Label Studio is not installed in {VENV}: `make labelstudio` installs it (a venv of its own)"
)
START_TIMEOUT = 420  # s: the first start creates the database (migrations), slow on a busy CPU


def installed() -> bool:
    return os.access(BINARY, os.X_OK)


@dataclass
class LabelStudio:
    url: str
    token: str  # the admin's legacy token
    password: str
    log: Path

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=120
        )

    def personal_access_token(self) -> str:
        """A new personal access token of the admin (a JWT refresh token)."""
        with self.admin() as client:
            response = client.post("/api/token/")
            response.raise_for_status()
            return str(response.json()["token"])


@contextlib.contextmanager
def running(folder: Path) -> Iterator[LabelStudio]:
    """Label Studio serving from ``folder`` (database, media, log) until the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    port, token, password = free_port(), secrets.token_hex(20), secrets.token_urlsafe(16)
    env = {
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(folder / "home"),
        "LABEL_STUDIO_BASE_DATA_DIR": str(folder / "data"),
        "DJANGO_DB": "sqlite",
        "SECRET_KEY": secrets.token_hex(32),
        "LATEST_VERSION_CHECK": "false",  # it would ask pypi.org at start
        "COLLECT_ANALYTICS": "false",
        "LOG_LEVEL": "WARNING",
    }
    log = folder / "label-studio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(BINARY),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--username",
                ADMIN,
                "--password",
                password,
                "--user-token",
                token,
                "--enable-legacy-api-token",
            ],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited {proc.returncode}:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio not up after {START_TIMEOUT} s:\n{_tail(log)}")
            time.sleep(1)
        yield LabelStudio(url, token, password, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.is_file() else "(no log)"


_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class Labeller:
    """A person with a browser session: signs up (or logs in) and labels tasks."""

    def __init__(self, url: str, email: str, password: str) -> None:
        self.url, self.email = url, email
        self.client = httpx.Client(base_url=url, timeout=120)
        if not self._form("/user/signup/", email, password):
            assert self._form("/user/login/", email, password), f"{email} cannot log in"

    def _form(self, path: str, email: str, password: str) -> bool:
        page = self.client.get(path)
        match = _CSRF.search(page.text)
        assert match, f"{path}: no CSRF token in the form"
        fields = {"email": email, "password": password, "csrfmiddlewaretoken": match[1]}
        answer = self.client.post(path, data=fields, headers={"Referer": self.url + path})
        return answer.status_code == 302  # redirected to the projects: logged in

    @property
    def cookies(self) -> dict[str, str]:
        return dict(self.client.cookies.items())

    def annotate(self, task_id: int, label: str | None, *, skip: bool = False) -> dict[str, Any]:
        """Submit a choice (or press Skip) on a task, as the labelling page does."""
        result = []
        if label is not None:
            result = [
                {
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": [label]},
                }
            ]
        response = self.client.post(
            f"/api/tasks/{task_id}/annotations",
            json={"result": result, "was_cancelled": skip},
            headers={"X-CSRFToken": self.client.cookies["csrftoken"], "Referer": self.url + "/"},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------- screenshots


def screenshot(
    url: str,
    cookies: dict[str, str],
    out: Path,
    *,
    ready: str,
    size: tuple[int, int] = (1400, 900),
    timeout: float = 120.0,
) -> Path:
    """A PNG of ``url`` in headless Chromium, logged in by ``cookies``, taken once the
    JavaScript expression ``ready`` is true (the page renders in the browser)."""
    import base64
    import json
    import shutil
    import tempfile

    from websockets.sync.client import connect

    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed"
    with tempfile.TemporaryDirectory(prefix="ihcflow-chromium-") as profile:
        proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                f"--window-size={size[0]},{size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not port_file.is_file() or not port_file.read_text().strip():
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.2)
            port = int(port_file.read_text().split()[0])
            pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            target = next(p for p in pages if p.get("type") == "page")
            with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
                ids = iter(range(1, 1_000_000))

                def call(method: str, **params: Any) -> dict[str, Any]:
                    mid = next(ids)
                    ws.send(json.dumps({"id": mid, "method": method, "params": params}))
                    while True:
                        message = json.loads(ws.recv(timeout=timeout))
                        if message.get("id") == mid:
                            assert "error" not in message, message
                            return dict(message.get("result") or {})

                for name, value in cookies.items():
                    call("Network.setCookie", name=name, value=value, url=url)
                call(
                    "Emulation.setDeviceMetricsOverride",
                    width=size[0],
                    height=size[1],
                    deviceScaleFactor=1,
                    mobile=False,
                )
                call("Page.navigate", url=url)
                while True:
                    answer = call("Runtime.evaluate", expression=f"Boolean({ready})")
                    if answer.get("result", {}).get("value") is True:
                        break
                    assert time.monotonic() < deadline, f"{url}: not ready after {timeout} s"
                    time.sleep(0.5)
                time.sleep(1.0)  # let the last transitions settle
                shot = call("Page.captureScreenshot", format="png")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return out
