"""params.yaml's ``segmentation`` section as typed configs (conf/segmentation/ holds the values
and says why): read through :func:`ihcflow.config.typed`, so a misspelled, unknown or missing
key fails with its dotted name.

The Lightning ``trainer`` and the top-level ``seed`` are shared with classification; so is the
split's ``group_pattern`` (``split`` section: one patient's tiles never straddle two splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from ihcflow.config import ConfigError, plain, seed, typed
from ihcflow.registry.gate import GateParams, GateSettings
from ihcflow.segmentation.inference import TilingConfig
from ihcflow.segmentation.instances import PostprocessConfig
from ihcflow.training.augment import AugmentParams
from ihcflow.training.params import EarlyStopping

SECTION = "segmentation"


@dataclass
class SynthParams:
    images: int
    patients: int
    size: int
    seed: int
    stains: list[str]


@dataclass
class SegDataParams:
    microns_per_pixel: float  # the magnification the model is for, recorded in the card
    synth: SynthParams  # the built-in sample (`ihcflow data get`)


@dataclass
class SegSplitParams:
    val: float  # fractions of the tiles (layout 1), or val of the given train set (layout 2)
    test: float


@dataclass
class SegModelParams:
    name: str
    net: Any  # the network's _target_ node (Hydra checks its keys)


@dataclass
class SegTrainParams:
    epochs: int
    patches_per_epoch: int
    batch_size: int
    patch: int
    val_patches: int
    boundary_px: int
    positive_weight: float
    lr: float
    optimizer: Any  # _target_ node, _partial_: true
    scheduler: Any  # _target_ node, _partial_: true, or None
    scheduler_interval: str
    augment: AugmentParams
    monitor: str
    mode: str
    early_stopping: EarlyStopping


@dataclass
class SegEvaluateParams:
    tune_postprocess: bool  # choose seed/min_seed_px/foreground on the validation tiles
    overlays: int  # test tiles drawn with predicted and true contours


@dataclass
class SegTrainRun:
    """Everything a segmentation training run reads from the params."""

    seed: int
    model: SegModelParams
    train: SegTrainParams
    trainer: dict[str, Any]
    microns_per_pixel: float

    @classmethod
    def from_params(cls, params: DictConfig | dict[str, Any]) -> SegTrainRun:
        seg = _section(params)
        trainer = plain(params.get("trainer"))
        if not isinstance(trainer, dict):
            raise ConfigError("params `trainer`: missing section (Lightning Trainer arguments)")
        return cls(
            seed=seed(params),
            model=typed(seg.get("model"), SegModelParams, f"{SECTION}.model"),
            train=typed(seg.get("train"), SegTrainParams, f"{SECTION}.train"),
            trainer=trainer,
            microns_per_pixel=data_params(params).microns_per_pixel,
        )


def _section(params: DictConfig | dict[str, Any]) -> Any:
    seg = params.get(SECTION)
    if seg is None:
        raise ConfigError(f"params `{SECTION}`: missing section (conf/segmentation/)")
    return seg


def data_params(params: DictConfig | dict[str, Any]) -> SegDataParams:
    return typed(_section(params).get("data"), SegDataParams, f"{SECTION}.data")


def split_params(params: DictConfig | dict[str, Any]) -> SegSplitParams:
    return typed(_section(params).get("split"), SegSplitParams, f"{SECTION}.split")


def tiling_params(params: DictConfig | dict[str, Any]) -> TilingConfig:
    return typed(_section(params).get("tiling"), TilingConfig, f"{SECTION}.tiling")


def postprocess_params(params: DictConfig | dict[str, Any]) -> PostprocessConfig:
    return typed(_section(params).get("postprocess"), PostprocessConfig, f"{SECTION}.postprocess")


def evaluate_params(params: DictConfig | dict[str, Any]) -> SegEvaluateParams:
    return typed(_section(params).get("evaluate"), SegEvaluateParams, f"{SECTION}.evaluate")


def gate_params(params: DictConfig | dict[str, Any]) -> GateParams[GateSettings]:
    return GateParams.from_section(_section(params).get("gate"), GateSettings)
