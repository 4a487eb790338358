"""Keras 3 models by name, backend-agnostic, with their losses and metrics. Never imports ``search``."""

from models import classifiers, segmenters  # noqa: F401  (registers the models)
from models.registry import (
    MIXED_PRECISION,
    ModelError,
    ModelInfo,
    WeightsUnavailableError,
    build,
    get,
    list_models,
    register,
)

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
