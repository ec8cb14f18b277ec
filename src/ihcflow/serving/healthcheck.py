"""Container health check without curl: ``python -m ihcflow.serving.healthcheck [PATH]``.

Exits 0 when ``http://127.0.0.1:$IHCFLOW_PORT/PATH`` (default ``/readyz``) answers 200, else 1.
Standard library only, so it starts fast.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check(path: str = "/readyz", port: int | None = None, timeout: float = 4.0) -> tuple[bool, str]:
    port = port or int(os.environ.get("IHCFLOW_PORT", "8000"))
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code} {exc.read(500).decode('utf-8', 'replace')}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ok, message = check(args[0] if args else "/readyz")
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
