"""Test support shared by the test modules: no test module imports another one.

- this module: paths, running commands, loading a stage, composing the params, conf values;
- :mod:`tests.helpers.data`: generated images, split tables and drift feature pools;
- :mod:`tests.helpers.models`: a tiny real model, evaluated and registered as the stages do;
- :mod:`tests.helpers.pipeline`: throwaway DVC projects on the built-in sample;
- :mod:`tests.helpers.server`: the model server on 127.0.0.1;
- :mod:`tests.helpers.docker`: what the Dockerfile and .dockerignore say.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ihcflow.prediction_log import PredictionLog

REPO = Path(__file__).resolve().parents[2]
PBC_SAMPLE = REPO.parent / "shared" / "datasets" / "pbc-sample"
BIN = Path(sys.executable).parent


def command_env() -> dict[str, str]:
    """The environment commands run in: this venv first on PATH, no analytics, a git author."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # dvc.yaml runs `python stages/...`
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "ihcflow tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@ihcflow.invalid"
    return env


def run_cmd(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, cwd=cwd, env=command_env(), capture_output=True, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


def fresh_clone(root: Path, dest: Path) -> Path:
    """``git clone`` of ``root``: what someone else gets, without data/, outputs or DVC cache."""
    run_cmd(["git", "clone", "-q", str(root), str(dest)], root.parent)
    return dest


def load_stage(name: str) -> ModuleType:
    """``stages/<name>.py`` as a module (stages/ is not a package: DVC runs the files)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The params Hydra composes from conf/ with ``overrides`` (what `dvc exp run -S` does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def conf_section(group: str, option: str = "default") -> dict[str, Any]:
    """``conf/<group>/<option>.yaml`` as a plain dict: the values the pipeline runs with."""
    loaded = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / group / f"{option}.yaml"))
    assert isinstance(loaded, dict)
    return loaded


def plain_preprocess(size: int) -> dict[str, Any]:
    """The ``preprocess`` params with no denoising and no correction: an image as decoded,
    resized to ``size`` (what a test model is registered with)."""
    section = conf_section("preprocess")
    section["size"] = size
    section["denoise"]["method"] = "none"
    section["auto_correct"]["enabled"] = False
    section["stain_norm"]["method"] = "none"
    return section


def write_logs(log_dir: Path, records: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Append ``records`` with the server's own writer; returns the day files written."""
    with PredictionLog(log_dir) as log:
        return log.write(records)
