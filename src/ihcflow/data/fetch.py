"""`ihcflow data get`: make data/ match data.dvc (checkout, pull, or regenerate the sample)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SAMPLE_SOURCE = "ihcflow data synth"


@dataclass
class GetResult:
    action: str  # "present" | "modified" | "checkout" | "pulled" | "synthesized"
    message: str


def read_dvc_file(dvc_file: Path) -> dict[str, Any]:
    if not dvc_file.is_file():
        return {}
    loaded = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict) or "outs" not in loaded:
        raise ValueError(f"{dvc_file}: not a DVC file (no 'outs' list)")
    return loaded


def mark_sample(dvc_file: Path, synth_args: dict[str, Any]) -> None:
    """Record in ``data.dvc`` that it tracks the built-in sample and how to regenerate it."""
    from ihcflow.io import write_text_atomic

    content = read_dvc_file(dvc_file)
    content["meta"] = {"source": SAMPLE_SOURCE, "args": synth_args}
    write_text_atomic(dvc_file, yaml.safe_dump(content, sort_keys=False))


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() for p in path.rglob("*"))


def get_data(root: Path, synth_defaults: dict[str, Any], data: str = "data") -> GetResult:
    """Bring ``data/`` in line with ``data.dvc`` without ever overwriting a user's files."""
    from dvc.repo import Repo

    from ihcflow.data import synth

    data_dir = root / data
    dvc_file = root / f"{data}.dvc"
    recorded = read_dvc_file(dvc_file)
    repo = Repo(str(root))
    try:
        if _has_files(data_dir):
            if recorded and repo.status(targets=[str(dvc_file)]):
                return GetResult(
                    "modified",
                    f"{data_dir} differs from {dvc_file.name}: using it as it is "
                    f"(run `dvc add {data}` to record the change)",
                )
            return GetResult("present", f"{data_dir} is present and matches {dvc_file.name}")
        if recorded:
            try:
                repo.checkout(targets=[str(dvc_file)])
                return GetResult("checkout", f"{data_dir} checked out from the local DVC cache")
            except Exception:  # noqa: BLE001 - not in the cache: try the remote next
                pass
            if repo.config.get("remote"):
                try:
                    repo.pull(targets=[str(dvc_file)])
                    return GetResult("pulled", f"{data_dir} pulled from the DVC remote")
                except Exception as exc:  # noqa: BLE001 - unreachable remote: fall back below
                    pull_error = f"dvc pull failed ({type(exc).__name__}: {exc})"
            else:
                pull_error = "no DVC remote is configured"
            meta = recorded.get("meta") or {}
            if meta.get("source") != SAMPLE_SOURCE:
                raise RuntimeError(
                    f"{dvc_file} records your own data, which is not in the local DVC cache "
                    f"and {pull_error}. Configure a reachable remote (`dvc remote add -d ...`) "
                    f"and run `dvc pull`, or import the data again (`ihcflow data import SRC`)."
                )
            args = {**synth_defaults, **meta.get("args", {})}
        else:
            args = dict(synth_defaults)
        synth.generate(data_dir, **_synth_kwargs(args))
        if not recorded:
            repo.add([str(data_dir)])
            mark_sample(dvc_file, args)
            return GetResult(
                "synthesized", f"built-in sample written to {data_dir}; {dvc_file.name} created"
            )
        # Not in the cache yet: commit it, then compare the hash with what data.dvc recorded.
        repo.commit(str(dvc_file), force=True)
        now = read_dvc_file(dvc_file)
        if now.get("meta") != recorded.get("meta"):
            mark_sample(dvc_file, args)
        if now["outs"][0].get("md5") != recorded["outs"][0].get("md5"):
            return GetResult(
                "synthesized",
                f"built-in sample written to {data_dir}, but its hash differs from the one "
                f"{dvc_file.name} recorded (different library versions?); {dvc_file.name} "
                "now records the regenerated sample",
            )
        return GetResult(
            "synthesized", f"built-in sample written to {data_dir} (matches {dvc_file.name})"
        )
    finally:
        repo.close()


def _synth_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    keys = ("classes", "per_class", "patients", "size", "seed")
    out = {k: args[k] for k in keys if k in args}
    if "classes" in out:
        out["classes"] = tuple(out["classes"])
    return out
