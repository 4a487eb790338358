"""Keras 3 models by name, backend-agnostic, with their losses and metrics. Never imports ``search``.

Importing the package is light: Keras and the model families are imported the first time the registry is read
(``models.build``, ``models.get``, ``models.list_models``), so commands that only read results never pay for them.
"""

from __future__ import annotations

import importlib

__all__ = [
    "CUSTOM_CNN_MAX_BLOCKS",
    "MIXED_PRECISION",
    "ModelError",
    "ModelInfo",
    "WeightsUnavailableError",
    "assemble",
    "build",
    "build_head",
    "get",
    "list_models",
    "register",
]
_FAMILIES = ("models.classifiers", "models.segmenters")  # importing them registers their models


# what reads the registry's entries; the rest is plain data
_NEED_FAMILIES = ("assemble", "build", "build_head", "get", "list_models")


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    if name in _NEED_FAMILIES:
        for family in _FAMILIES:
            importlib.import_module(family)
    return getattr(importlib.import_module("models.registry"), name)
