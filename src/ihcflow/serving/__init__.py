"""The model server: the registered ONNX model behind a FastAPI app (``ihcflow serve``).

Imports no torch: the serving image installs ``ihcflow[serve]`` only. The names below are
imported on first use, so ``ihcflow``'s other commands do not load the web stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "ihcflow.serving.app",
    "ModelLoadError": "ihcflow.serving.model",
    "ServedModel": "ihcflow.serving.model",
    "Settings": "ihcflow.serving.settings",
    "SettingsError": "ihcflow.serving.settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ihcflow.serving' has no attribute {name!r}")
