"""Server settings: one dataclass, filled from ``IHCFLOW_*`` environment variables and flags.

Precedence: command-line flag > environment variable > the default here. The bearer token is
read only from the environment (``IHCFLOW_TOKEN``) or a file (``IHCFLOW_TOKEN_FILE``, e.g. a
mounted Kubernetes or Compose secret), never from a flag, so it does not show in ``ps``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "IHCFLOW_"
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A setting has a value the server cannot run with; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path("models")  # model.onnx + model.json written by the register stage
    log_dir: Path = Path("logs/predictions")  # predictions-YYYY-MM-DD.jsonl (drift monitoring)
    host: str = "127.0.0.1"  # loopback by default; 0.0.0.0 in a container
    port: int = 8000
    workers: int = 1  # uvicorn processes; in Kubernetes scale replicas instead (one each)
    token: str | None = field(default=None, repr=False)  # bearer token for /predict, None: open
    no_auth: bool = False  # serve without a token even though IHCFLOW_TOKEN is set but empty
    max_bytes: int = 20 << 20  # per uploaded file; the body limit is max_files x max_bytes
    max_pixels: int = 25_000_000  # per image, read from the header before decoding (5000x5000)
    max_files: int = 16  # images per request (one batch through the model)
    min_side: int = 16  # px: a smaller width or height is refused (422), it holds no cell
    log_images: bool = False  # put the uploaded bytes (base64) in the prediction log
    log_embedding: bool = True  # put the model's embedding in the prediction log (drift)
    log_fsync: bool = False  # fsync each log line: survives a machine crash, not just ours
    threads: int = 0  # ONNX Runtime intra-op threads per inference; 0: the CPUs we may use
    concurrency: int = 0  # requests decoded/predicted at once (bounds memory); 0: the CPUs

    def __post_init__(self) -> None:
        for name in ("port", "workers", "max_bytes", "max_pixels", "max_files", "min_side"):
            low = 0 if name == "port" else 1
            if int(getattr(self, name)) < low:
                raise SettingsError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("threads", "concurrency"):
            if int(getattr(self, name)) < 0:
                raise SettingsError(
                    f"{name} must be >= 0 (0: automatic), got {getattr(self, name)}"
                )
        if self.port > 65535:
            raise SettingsError(f"port must be <= 65535, got {self.port}")
        if self.token is not None and not self.token:
            raise SettingsError("token is empty: unset it to disable authentication")
        if self.token is not None and self.no_auth:
            raise SettingsError("a token is set and --no-auth asks for none: choose one")

    @property
    def auth_enabled(self) -> bool:
        return self.token is not None

    @property
    def cpus(self) -> int:
        """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
        return available_cpus()

    @property
    def intra_op_threads(self) -> int:
        return self.threads or self.cpus

    @property
    def max_concurrency(self) -> int:
        return self.concurrency or self.cpus

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``IHCFLOW_*`` variables; ``overrides`` that are not None win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "token":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None and k != "token"})
        values["token"] = _token(env, no_auth=bool(values.get("no_auth")))
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The ``IHCFLOW_*`` variables that rebuild these settings (for worker processes)."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = int(value)
            env[ENV_PREFIX + f.name.upper()] = str(value)
        return env


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs from the affinity mask (a cpuset), capped by the CPU quota of a container limit.

    Kubernetes and Docker limit CPU with a quota, not a cpuset: a 2-CPU pod on a 64-core node
    sees 64 CPUs, and 64 inference threads would be throttled.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_quota(root: Path) -> float | None:
    """The CPU quota in CPUs (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_*``), None if unlimited."""
    try:
        fields = (root / "cpu.max").read_text().split()  # "max 100000" or "200000 100000"
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_size(text: str) -> int:
    """``"20971520"``, ``"20M"``, ``"20MiB"``, ``"512k"`` -> bytes (binary units)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M or G)")
    unit = (match.group(2) or "")[:1].lower()
    return int(match.group(1)) * _UNITS[unit]


def _parse(name: str, raw: str) -> Any:
    var = ENV_PREFIX + name.upper()
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    try:
        if name == "max_bytes":
            return parse_size(raw)
        if kind == "bool":
            text = raw.strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(f"{raw!r} is not a boolean (1/0, true/false, yes/no, on/off)")
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "Path":
            if not raw.strip():
                raise ValueError("empty path")
            return Path(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{var}={raw!r}: {exc}") from None


def _token(env: Mapping[str, str], *, no_auth: bool = False) -> str | None:
    """The bearer token; None (authentication off) when neither variable is set. A variable
    that is set but blank is a mistake (an unfilled secret), never a way to turn auth off:
    it refuses to start unless ``no_auth`` says that an open server is meant."""
    raw = env.get(ENV_PREFIX + "TOKEN")
    if raw is not None and not raw.strip():
        if not no_auth:
            raise SettingsError(
                "IHCFLOW_TOKEN is set but empty: set the token, or unset it and pass --no-auth "
                "(IHCFLOW_NO_AUTH=1) to serve /predict without authentication"
            )
        raw = None
    token = raw or None
    path = env.get(ENV_PREFIX + "TOKEN_FILE") or None
    if token and path:
        raise SettingsError("set IHCFLOW_TOKEN or IHCFLOW_TOKEN_FILE, not both")
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(
                f"IHCFLOW_TOKEN_FILE={path}: cannot read the token: {exc}"
            ) from None
        if not token:
            raise SettingsError(f"IHCFLOW_TOKEN_FILE={path}: the file is empty")
    elif token is not None:
        token = token.strip()
    if token is not None and any(c.isspace() for c in token):
        raise SettingsError("the token contains whitespace, which a bearer header cannot carry")
    return token
