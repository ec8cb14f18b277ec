"""Label Studio's REST API over plain HTTP (httpx): no Label Studio package needed.

Where and as whom: ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (the names Label Studio's
own SDK reads) from the environment, else from a ``.env`` file in the current folder, which
must not be tracked by git. The key is either kind Label Studio issues (Account & Settings):
a legacy token (sent as ``Authorization: Token <key>``) or a personal access token, a JWT
refresh token exchanged at ``/api/token/refresh/`` for a short-lived access token (sent as
``Authorization: Bearer <access>``, renewed when it expires).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

URL_VAR = "LABEL_STUDIO_URL"
KEY_VAR = "LABEL_STUDIO_API_KEY"
PAGE = 100  # tasks per page when listing
TIMEOUT = 120.0  # seconds: an import of a few hundred image tasks takes a while


class StudioError(RuntimeError):
    """Label Studio cannot be reached or refused a request; the message says which and why."""


def _tracked_by_git(path: Path) -> bool:
    try:
        proc = subprocess.run(
            ["git", "ls-files", "--error-unmatch", path.name],
            cwd=path.parent,
            capture_output=True,
            check=False,
        )
    except OSError:
        return False
    return proc.returncode == 0


def connection(
    env: Mapping[str, str] | None = None, dotenv: Path = Path(".env")
) -> tuple[str, str]:
    """(URL, API key) from ``env`` (default: the environment), else from ``dotenv``."""
    env = os.environ if env is None else env
    values = {k: env.get(k, "") for k in (URL_VAR, KEY_VAR)}
    if not all(values.values()) and dotenv.is_file():
        if _tracked_by_git(dotenv.resolve()):
            raise StudioError(
                f"{dotenv}: tracked by git; a Label Studio key must never be committed: "
                f"`git rm --cached {dotenv}`, add it to .gitignore, and revoke the key"
            )
        from dotenv import dotenv_values

        from_file = dotenv_values(dotenv)
        for key in values:
            values[key] = values[key] or str(from_file.get(key) or "")
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise StudioError(
            f"{' and '.join(missing)} not set: export them, or put them in {dotenv} (git-ignored), "
            "e.g. LABEL_STUDIO_URL=http://127.0.0.1:8080 and the key from Label Studio's "
            "Account & Settings page"
        )
    return values[URL_VAR].rstrip("/"), values[KEY_VAR].strip()


def _is_jwt(key: str) -> bool:
    return key.count(".") == 2 and key.startswith("eyJ")


def _explain(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, Mapping):
        detail = body.get("validation_errors") or body.get("detail") or body
        return str(detail)[:600]
    return str(body)[:600]


class Studio:
    """A Label Studio server, as one user (the key's owner)."""

    def __init__(
        self, url: str, key: str, *, timeout: float = TIMEOUT, transport: Any = None
    ) -> None:
        self.url = url.rstrip("/")
        self._key = key
        self._client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._access: str | None = None

    def __enter__(self) -> Studio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _auth(self, renew: bool = False) -> dict[str, str]:
        if not _is_jwt(self._key):
            return {"Authorization": f"Token {self._key}"}
        if self._access is None or renew:
            response = self._send("POST", "/api/token/refresh/", json={"refresh": self._key})
            if response.status_code != 200:
                raise StudioError(
                    f"{self.url}: the personal access token was refused at /api/token/refresh/ "
                    f"({response.status_code}: {_explain(response)}); create a new one in "
                    "Account & Settings"
                )
            self._access = str(response.json()["access"])
        return {"Authorization": f"Bearer {self._access}"}

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise StudioError(
                f"{method} {self.url}{path}: {type(exc).__name__}: {exc} (is Label Studio "
                f"running there? {URL_VAR} says where)"
            ) from None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of an API call; a :class:`StudioError` naming the call otherwise."""
        response = self._send(method, path, headers=self._auth(), **kwargs)
        if response.status_code == 401 and _is_jwt(self._key):  # the access token expired
            response = self._send(method, path, headers=self._auth(renew=True), **kwargs)
        if response.status_code == 401:
            raise StudioError(
                f"{method} {self.url}{path}: 401, the API key was refused ({_explain(response)}); "
                f"check {KEY_VAR} (a legacy token works only where the organisation enables "
                "legacy tokens)"
            )
        if response.status_code >= 400:
            raise StudioError(
                f"{method} {self.url}{path}: {response.status_code}: {_explain(response)}"
            )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise StudioError(
                f"{method} {self.url}{path}: answered {response.headers.get('content-type')}, "
                f"not JSON: is {self.url} a Label Studio server?"
            ) from None

    # ------------------------------------------------------------------------------ projects

    def version(self) -> str:
        return str((self.request("GET", "/api/version") or {}).get("release", "?"))

    def projects(self) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            body = self.request("GET", "/api/projects", params={"page": page, "page_size": PAGE})
            if isinstance(body, list):  # older servers answer a plain list
                yield from body
                return
            yield from body.get("results") or []
            if not body.get("next"):
                return
            page += 1

    def find_project(self, title: str) -> dict[str, Any] | None:
        matches = [p for p in self.projects() if p.get("title") == title]
        if len(matches) > 1:
            ids = ", ".join(str(p["id"]) for p in matches)
            raise StudioError(
                f"{len(matches)} projects are titled {title!r} (ids {ids}): pass --project ID"
            )
        return matches[0] if matches else None

    def project(self, project_id: int) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/projects/{project_id}"))

    def create_project(self, title: str, config: str, **settings: Any) -> dict[str, Any]:
        body = {"title": title, "label_config": config, **settings}
        return dict(self.request("POST", "/api/projects", json=body))

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/api/projects/{project_id}", json=fields))

    # --------------------------------------------------------------------------------- tasks

    def tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        page, seen = 1, 0
        while True:
            body = self.request(
                "GET", "/api/tasks", params={"project": project_id, "page": page, "page_size": PAGE}
            )
            items = body.get("tasks", []) if isinstance(body, Mapping) else body
            yield from items
            seen += len(items)
            total = body.get("total") if isinstance(body, Mapping) else None
            if len(items) < PAGE or (total is not None and seen >= int(total)):
                return
            page += 1

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> int:
        body = self.request("POST", f"/api/projects/{project_id}/import", json=list(tasks))
        return int((body or {}).get("task_count", 0))

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (Label Studio's JSON export)."""
        body = self.request(
            "GET",
            f"/api/projects/{project_id}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )
        if not isinstance(body, list):
            raise StudioError(f"{self.url}: the export of project {project_id} is not a task list")
        return body

    def user_names(self) -> dict[int, str]:
        """``{user id: email}`` of the organisation (empty when the key may not list users)."""
        try:
            body = self.request("GET", "/api/users")
        except StudioError:
            return {}
        users = body.get("results", []) if isinstance(body, Mapping) else body
        return {int(u["id"]): str(u.get("email") or u.get("username") or u["id"]) for u in users}
