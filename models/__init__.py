"""Keras 3 models by name, backend-agnostic, with their losses and metrics. Never imports ``search``.

Importing the package is light: Keras and the model families are imported the first time a registry function is
used (``models.build``, ``models.get``, ...), so commands that only read results (``models.tasks``, ``models.stats``)
never pay for them.
"""

from __future__ import annotations

import importlib

__all__ = [
    "MIXED_PRECISION",
    "ModelError",
    "ModelInfo",
    "WeightsUnavailableError",
    "build",
    "get",
    "list_models",
    "register",
]
_FAMILIES = ("models.classifiers", "models.segmenters")  # importing them registers their models


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    for family in _FAMILIES:
        importlib.import_module(family)
    return getattr(importlib.import_module("models.registry"), name)
