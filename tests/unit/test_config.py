"""The params as typed configs: every section of every composable config reads, a misspelled
key fails with its name, and the few defaults the code keeps for its own callers are conf/'s."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pytest

from ihcflow.config import ConfigError, load_params, section, typed
from ihcflow.data import synth
from ihcflow.evaluation import EvaluateParams
from ihcflow.monitoring.cli import DEFAULT_CACHE
from ihcflow.monitoring.drift import DriftParams
from ihcflow.preprocess import PreprocessParams
from ihcflow.registry.gate import ClassifierGateSettings, GateParams
from ihcflow.segmentation import params as seg
from ihcflow.segmentation import sample as nuclei_sample
from ihcflow.segmentation.inference import TilingConfig
from ihcflow.segmentation.instances import PostprocessConfig
from ihcflow.segmentation.params import SegTrainRun
from ihcflow.split import SplitParams
from ihcflow.training.params import TrainRun
from ihcflow.validation import ValidateParams, validate_dataset
from tests.helpers import REPO, compose, conf_section

READERS: dict[str, Callable[[Any], Any]] = {
    "validate": lambda p: section(p, "validate", ValidateParams),
    "preprocess": lambda p: PreprocessParams.from_section(p.get("preprocess")),
    "split": lambda p: section(p, "split", SplitParams),
    "train": TrainRun.from_params,
    "evaluate": lambda p: section(p, "evaluate", EvaluateParams),
    "gate": lambda p: GateParams.from_section(p.get("gate"), ClassifierGateSettings),
    "segmentation.train": SegTrainRun.from_params,
    "segmentation.split": seg.split_params,
    "segmentation.tiling": seg.tiling_params,
    "segmentation.postprocess": seg.postprocess_params,
    "segmentation.evaluate": seg.evaluate_params,
    "segmentation.data": seg.data_params,
    "segmentation.gate": seg.gate_params,
    "drift": lambda p: DriftParams.from_mapping(
        {k: v for k, v in dict(p.get("drift")).items() if k != "cache_dir"}
    ),
}


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=resnet"],
        ["model=logreg"],
        ["model=svm"],
        ["trainer=ddp"],
        ["experiment=pbc28"],
        ["experiment=nuclei40x"],
    ],
)
def test_every_section_of_every_config_reads(overrides: list[str]) -> None:
    params = compose(overrides)
    for name, read in READERS.items():
        assert read(params) is not None, name


def test_the_committed_params_yaml_reads() -> None:
    params = load_params(REPO / "params.yaml")
    run = TrainRun.from_params(params)
    assert run.model.kind == "lightning" and run.train.augment.rot90 is True
    assert run.image_size == params.preprocess.size and run.seed == params.seed


@pytest.mark.parametrize(
    ("path", "reader"),
    [
        ("validate.polcy", "validate"),
        ("preprocess.denoise.kszie", "preprocess"),
        ("split.group_patern", "split"),
        ("train.early_stopping.patiense", "train"),
        ("train.augment.hfilp", "train"),
        ("model.kidn", "train"),
        ("evaluate.misclassified.colums", "evaluate"),
        ("gate.verify_imgs", "gate"),
        ("segmentation.train.augment.hfilp", "segmentation.train"),
        ("segmentation.postprocess.seeed", "segmentation.postprocess"),
        ("segmentation.tiling.overlp", "segmentation.tiling"),
    ],
)
def test_a_misspelled_key_fails_with_its_name(path: str, reader: str) -> None:
    params = compose([f"+{path}=1"])
    with pytest.raises(ConfigError, match=rf"params `{path}`: unknown key"):
        READERS[reader](params)


def test_a_missing_key_or_a_wrong_type_fails_with_its_name() -> None:
    params = compose(["~evaluate.batch_size"])
    with pytest.raises(ConfigError, match=r"params `evaluate.batch_size`: missing"):
        READERS["evaluate"](params)
    with pytest.raises(ConfigError, match=r"params `split.val`: .*could not be converted"):
        typed({**conf_section("split"), "val": "a lot"}, SplitParams, "split")
    with pytest.raises(ConfigError, match=r"params `seed`: expected an integer"):
        TrainRun.from_params(compose(["seed=x"]))


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_code_defaults_for_direct_callers_are_confs() -> None:
    """The library keeps a few keyword defaults for callers without params (tests, notebooks,
    ``ihcflow drift`` without a params.yaml); they must be conf/'s values."""
    validate = _defaults(validate_dataset)
    assert {k: validate[k] for k in conf_section("validate")} == conf_section("validate")
    sample = _defaults(synth.generate)
    expected = conf_section("data")["synth"]
    assert {k: sample[k] for k in expected} == {**expected, "classes": tuple(expected["classes"])}
    nuclei = _defaults(nuclei_sample.generate)
    expected = conf_section("segmentation")["data"]["synth"]
    assert {k: nuclei[k] for k in expected} == {**expected, "stains": tuple(expected["stains"])}
    assert asdict(TilingConfig()) == conf_section("segmentation")["tiling"]
    assert asdict(PostprocessConfig()) == conf_section("segmentation")["postprocess"]
    drift = conf_section("drift")
    assert drift.pop("cache_dir") == DEFAULT_CACHE
    assert DriftParams.from_mapping(drift) == DriftParams()
