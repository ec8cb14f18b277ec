"""The params: ``params.yaml`` (composed from ``conf/`` by DVC's Hydra integration) and its
sections read as typed configs.

``conf/`` is the one place where the values live; the dataclasses the sections are read into
(:func:`section`) have no defaults of their own. Reading a section through its dataclass turns
a misspelled or unknown key, a missing one or a value of the wrong type into a
:class:`ConfigError` that names the key, where ``.get(key, default)`` would silently fall back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ihcflow.errors import PipelineError

T = TypeVar("T")


class ConfigError(PipelineError):
    """A params section that cannot be read: the message names the key and the problem."""


def load_params(path: str | os.PathLike[str] = "params.yaml") -> DictConfig:
    """Load the composed ``params.yaml`` (DVC composes it from ``conf/`` on ``dvc exp run``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return cfg


def plain(node: Any) -> Any:
    """A params node as plain, resolved Python data (dicts and lists)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def typed(node: Mapping[str, Any] | DictConfig | None, schema: type[T], where: str) -> T:
    """``node`` (a params section; ``where`` is its dotted name) as the dataclass ``schema``.

    Every field must be given (the dataclasses have no defaults: conf/ has them), no other key
    may be, and values must have the field's type (numbers are converted like YAML's).
    """
    if node is None:
        raise ConfigError(f"params `{where}`: missing section")
    data = plain(node)
    if not isinstance(data, Mapping):
        raise ConfigError(f"params `{where}`: expected a mapping, got {type(data).__name__}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), data)  # not frozen: read-only nodes
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(_message(exc, schema, where)) from None


def section(params: DictConfig | Mapping[str, Any], name: str, schema: type[T]) -> T:
    """``params[name]`` as ``schema`` (see :func:`typed`)."""
    node = params.get(name) if isinstance(params, Mapping | DictConfig) else None
    return typed(node, schema, name)


def seed(params: DictConfig | Mapping[str, Any]) -> int:
    """The top-level ``seed``: one seed for everything random (split, augmentation, init)."""
    value = params.get("seed")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"params `seed`: expected an integer, got {value!r}")
    return value


def _message(exc: OmegaConfBaseException, schema: type, where: str) -> str:
    key = getattr(exc, "full_key", "") or ""
    name = ".".join(part for part in (where, key) if part)
    text = str(exc).splitlines()[0]
    if "not in" in text and "Key" in text:
        known = ", ".join(_field_names(schema, key))
        return f"params `{name}`: unknown key (known here: {known})"
    if "missing mandatory value" in text.lower():
        return f"params `{name}`: missing (conf/ sets every key)"
    return f"params `{name}`: {text}"


def _field_names(schema: type, full_key: str) -> list[str]:
    """The field names of the dataclass where ``full_key``'s last part was looked up."""
    for part in full_key.split(".")[:-1]:
        inner = get_type_hints(schema).get(part)
        if not (isinstance(inner, type) and is_dataclass(inner)):
            break
        schema = inner
    return [f.name for f in fields(schema)]  # type: ignore[arg-type]
