"""Test support shared by the test modules (no test module imports another one)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ihcflow.prediction_log import PredictionLog

REPO = Path(__file__).resolve().parents[1]


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
