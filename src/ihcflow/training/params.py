"""The train stage's params as typed configs: ``model``, ``train``, ``trainer``, ``seed`` and
``preprocess.size`` (conf/model, conf/train, conf/trainer hold the values and say why).

``_target_`` nodes (the network, the optimiser, the scheduler, a baseline's estimator) stay
mappings: ``hydra.utils.instantiate`` checks their keys against the class it builds, and
``trainer`` is passed to Lightning's ``Trainer``, which names an argument it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from ihcflow.config import ConfigError, plain, seed, typed
from ihcflow.training.augment import AugmentParams

MODEL_KINDS = ("lightning", "sklearn")


@dataclass
class ModelParams:
    kind: str  # lightning (a torch network) | sklearn (a baseline on image features)
    name: str
    net: Any = None  # lightning: the network's _target_ node (None for the other kind)
    features: Any = None  # sklearn: the ImageFeatures arguments
    estimator: Any = None  # sklearn: the estimator's _target_ node


@dataclass
class EarlyStopping:
    patience: int | None  # None: run the whole schedule
    min_delta: float


@dataclass
class TrainParams:
    epochs: int
    batch_size: int
    eval_batch_size: int
    lr: float
    optimizer: Any  # _target_ node, _partial_: true
    scheduler: Any  # _target_ node, _partial_: true, or None
    scheduler_interval: str  # step | epoch
    label_smoothing: float
    imbalance: str  # class_weights | balanced_sampler | none
    augment: AugmentParams
    monitor: str
    mode: str
    early_stopping: EarlyStopping
    num_workers: Any  # "auto" or a count
    in_memory_max_bytes: int
    channels_last: bool
    ema_decay: float | None  # None: off; else the checkpoints hold the EMA of the weights


@dataclass
class TrainRun:
    """Everything a training run reads from the params."""

    seed: int
    model: ModelParams
    train: TrainParams
    trainer: dict[str, Any]  # Lightning Trainer arguments (max_epochs comes from train)
    image_size: int | None  # preprocess.size; None: taken from the images

    @classmethod
    def from_params(cls, params: DictConfig | dict[str, Any]) -> TrainRun:
        model = typed(params.get("model"), ModelParams, "model")
        if model.kind not in MODEL_KINDS:
            raise ConfigError(f"params `model.kind`: {model.kind!r}, expected one of {MODEL_KINDS}")
        trainer = plain(params.get("trainer"))
        if not isinstance(trainer, dict):
            raise ConfigError("params `trainer`: missing section (Lightning Trainer arguments)")
        preprocess = plain(params.get("preprocess")) or {}
        return cls(
            seed=seed(params),
            model=model,
            train=typed(params.get("train"), TrainParams, "train"),
            trainer=trainer,
            image_size=preprocess.get("size"),
        )
