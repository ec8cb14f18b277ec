"""Checkpoint files: what they hold, when a run may resume from one, and safe loading.

A checkpoint is a ``torch.save`` dict. Besides Lightning's own entries (``state_dict``,
optimiser and loop states, ``epoch``) it holds ``ckpt["ihcflow"]``: the resolved config
(``model``, ``train``, ``trainer``, ``preprocess``, ``seed``), ``class_names``, ``input_size``,
``mean``/``std``, ``kind`` (``lightning`` | ``sklearn``), ``fingerprint`` and ``finished``.
Everything is plain Python data and tensors, so it loads with ``torch.load(weights_only=True)``;
a scikit-learn estimator travels as pickled bytes that are only unpickled on request.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ihcflow.config import ConfigError
from ihcflow.errors import PipelineError
from ihcflow.files import params_hash, sha256_file, write_bytes_atomic
from ihcflow.training.module import CKPT_KEY


class CheckpointError(PipelineError):
    """A checkpoint that cannot be loaded; the message names the file."""


BEST = "best.ckpt"
LAST = "last.ckpt"
CONFIG_SECTIONS = ("model", "train", "trainer", "preprocess", "seed")
# Keys that change how a run looks, not what it computes: they do not block resuming.
_COSMETIC_TRAINER_KEYS = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")


def run_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The sections of the params a training run depends on, as plain resolved data."""
    if isinstance(cfg, DictConfig):
        data = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(data, dict)
    else:
        data = dict(cfg)
    missing = [s for s in CONFIG_SECTIONS if s not in data]
    if missing:
        raise ConfigError(f"params: missing section(s) {missing} needed by train")
    return {s: data[s] for s in CONFIG_SECTIONS}


def fingerprint(config: Mapping[str, Any], split_csv: str | os.PathLike[str]) -> str:
    """Identity of a run: its config (minus cosmetic keys) and the exact split table."""
    trainer = {
        k: v
        for k, v in dict(config.get("trainer") or {}).items()
        if k not in _COSMETIC_TRAINER_KEYS
    }
    relevant = {**config, "trainer": trainer}
    return f"{params_hash(relevant)}-{sha256_file(split_csv)[:16]}"


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (run the train stage)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint: {exc}") from None
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt:
        raise CheckpointError(f"{path}: not an ihcflow checkpoint (no {CKPT_KEY!r} entry)")
    return ckpt


def save_checkpoint(path: str | os.PathLike[str], ckpt: Mapping[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(dict(ckpt), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def resumable(ckpt_dir: str | os.PathLike[str], fp: str) -> Path | None:
    """``last.ckpt`` if it belongs to this config+data and its run did not finish, else None."""
    last = Path(ckpt_dir) / LAST
    if not last.is_file():
        return None
    try:
        meta = load_checkpoint(last)[CKPT_KEY]
    except ValueError:
        return None  # a foreign or damaged file: start fresh rather than fail
    if meta.get("fingerprint") != fp or meta.get("finished", False):
        return None
    return last


def clear(ckpt_dir: str | os.PathLike[str]) -> None:
    """Remove the checkpoints of an earlier run (only ``*.ckpt`` files; the folder stays)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for path in ckpt_dir.glob("*.ckpt"):
        path.unlink()


def mark_finished(path: str | os.PathLike[str]) -> None:
    """Flag a checkpoint's run as complete, so rerunning starts fresh instead of resuming."""
    ckpt = load_checkpoint(path)
    ckpt[CKPT_KEY] = {**ckpt[CKPT_KEY], "finished": True}
    save_checkpoint(path, ckpt)


# What decides a model's predictions, besides its weights (the rest of a run's config does not).
_MODEL_META = ("kind", "class_names", "input_size", "mean", "std", "features")


def _digest_update(h: Any, value: Any) -> None:
    """Feed ``value`` to ``h`` in a canonical form (sorted keys; tensors as dtype, shape, bytes)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        h.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"A{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, bytes | bytearray):
        h.update(b"B%d:" % len(value))
        h.update(value)
    elif isinstance(value, Mapping):
        h.update(b"{")
        for key in sorted(value, key=str):
            h.update(f"{key!s}:".encode())
            _digest_update(h, value[key])
        h.update(b"}")
    elif isinstance(value, list | tuple):
        h.update(b"[")
        for item in value:
            _digest_update(h, item)
        h.update(b"]")
    else:
        h.update(json.dumps(value, default=str).encode())


def model_digest(ckpt: Mapping[str, Any]) -> str:
    """sha256 of what the checkpoint's model computes: its weights (or fitted estimator), the
    classes, input size, normalisation and preprocessing it expects.

    Two runs that train the same weights give the same digest although their files differ:
    Lightning stores absolute paths, optimiser and loop state in a checkpoint.
    """
    meta = ckpt[CKPT_KEY]
    h = hashlib.sha256()
    _digest_update(h, {key: meta.get(key) for key in _MODEL_META})
    _digest_update(h, (meta.get("config") or {}).get("preprocess"))
    weights = ckpt["state_dict"] if "state_dict" in ckpt else ckpt.get("estimator")
    if weights is None:
        raise ValueError("checkpoint holds neither a state_dict nor an estimator")
    _digest_update(h, weights)
    return h.hexdigest()
