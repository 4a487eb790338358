"""One registry of models: ``@register`` next to each builder, ``build(name, ...)`` to make one.

The registry key is the one name used everywhere: study specs, result tables, TensorBoard run names, export files.
Each entry carries its facts (task, input sizes, preprocessing, accepted hyperparameters, ImageNet weights), so the
sweep engine never special-cases a model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.tasks import TASKS, task_info

if TYPE_CHECKING:
    import keras

MIXED_PRECISION = ("mixed_bfloat16", "mixed_float16")
CUSTOM_CNN_MAX_BLOCKS = 6  # custom_cnn halves its input at each block; more would leave nothing of a small image


class ModelError(ValueError):
    """An unknown model, an impossible hyperparameter or an input size a model cannot take."""

    exit_code = 2  # the CLI prints the message and exits with this, no traceback


class WeightsUnavailableError(ModelError):
    """ImageNet weights were asked for but are not on this machine (no network at run time)."""


@dataclass(frozen=True)
class FrozenBackbone:
    """What a model built around a pretrained backbone can do for a sweep (timm's forward_features/forward_head):
    the sweep asks its registry entry, never a model family's internals."""

    extractor: Callable  # model -> its feature extractor (image -> features), layers shared with the model
    digest: Callable  # model -> str: a digest of the backbone's weights; equal digests give equal features
    head: Callable  # (feature_shape, *, num_classes, **hp) -> the head alone, features -> output, its layers named
    #                 as in the whole model (a trial on cached features trains this; its weights go into the whole)
    unfreeze_top: Callable  # (model, n_layers) -> layers made trainable (the fine-tuning stage)
    standardize: Callable  # (model or head, training features) -> fits the head's feature standardization, if any


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str
    builder: Callable[..., keras.Model]
    min_input_size: int
    size_multiple: int  # input side must be a multiple of this (U-Nets halve it at every stage)
    hyperparameters: Mapping[str, Any]  # what the builder takes besides num_classes, input_shape, weights: its default
    preprocess: str  # what the model does to its input, inside the model (inputs are RGB in [0, 255])
    preprocess_input: Callable  # the same as a function on arrays (the model applies it itself; for reference)
    imagenet_weights: str | None = None  # file name Keras caches the no-top ImageNet weights under
    imagenet_input_size: int | None = None  # the only input size ImageNet weights support (None: any legal size)
    keras_application: str | None = None  # keras.applications constructor that downloads those weights
    description: str = ""
    onnx_problem: str | None = None  # why its whole model cannot be converted to ONNX (a known failure), or None
    backbone: FrozenBackbone | None = None  # a pretrained backbone that can be frozen; None: the model trains whole

    def settings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The hyperparameters this model is built with: ``given``'s values, and its own default (``hyperparameters``)
        for each one not given or given as None. One it does not take raises ModelError."""
        unknown = sorted(set(given) - set(self.hyperparameters))
        if unknown:
            takes = ", ".join(self.hyperparameters)
            raise ModelError(f"{self.name} does not take {', '.join(unknown)}; it takes: {takes}")
        return {k: default if given.get(k) is None else given[k] for k, default in self.hyperparameters.items()}

    def input_size_problems(self, size: int, weights: str | None = None) -> list[str]:
        out = []
        if size < self.min_input_size:
            out.append(f"{self.name} needs input_size >= {self.min_input_size}, got {size}")
        if size % self.size_multiple:
            out.append(f"{self.name} needs input_size divisible by {self.size_multiple}, got {size}")
        if weights == "imagenet" and self.imagenet_input_size and size != self.imagenet_input_size:
            out.append(f"{self.name}'s ImageNet weights need input_size {self.imagenet_input_size}, got {size}")
        if weights == "imagenet" and not self.imagenet_weights:
            out.append(f"{self.name} has no ImageNet weights; use weights: null")
        return out


_REGISTRY: dict[str, ModelInfo] = {}


def keras_function(path: str) -> Callable:
    """The Keras function at dotted ``path`` (``keras.applications.resnet50.preprocess_input``), imported when first
    called: registering a model (and so validating a study) does not import Keras."""
    import importlib

    module, name = path.rsplit(".", 1)

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__, call.__qualname__ = name, path
    return call


def register(name: str, **facts) -> Callable:
    """Decorator: register ``builder`` under ``name`` with its facts (see ModelInfo)."""

    def deco(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        hyperparameters = dict(facts.pop("hyperparameters", {}))  # its own copy: families share their dicts
        _REGISTRY[name] = ModelInfo(name=name, builder=builder, hyperparameters=hyperparameters, **facts)
        return builder

    return deco


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally only those of one task."""
    if task is not None and task not in TASKS:
        raise ModelError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    return sorted(n for n, info in _REGISTRY.items() if task is None or info.task == task)


def get(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name raises and lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def resolve_weights(info: ModelInfo, weights: str | None) -> str | None:
    """None, or a local weights file; 'imagenet' resolves to Keras's cache and never downloads."""
    if weights is None:
        return None
    if weights == "imagenet":
        if not info.imagenet_weights:
            raise ModelError(f"{info.name} has no ImageNet weights; use weights: null")
        path = keras_cache_dir() / info.imagenet_weights
        if not path.is_file():
            raise WeightsUnavailableError(
                f"ImageNet weights for {info.name} are not on this machine ({path}), and sweeps never download. "
                f"On a machine with network run:\n"
                f'  python -c "import keras; keras.applications.{info.keras_application}'
                f"(include_top=False, weights='imagenet')\"\n"
                f"then copy ~/.keras/models/{info.imagenet_weights} to {path} (or set KERAS_HOME), "
                f"or pass a weights file path as weights:, or use weights: null to train from scratch."
            )
        return str(path)
    if not Path(weights).expanduser().is_file():
        raise ModelError(f"weights file {weights} does not exist; pass 'imagenet', null, or an existing .h5 path")
    return str(Path(weights).expanduser())


@contextmanager
def _dtype_policy(policy: str | None):
    if policy is None:
        yield
        return
    if policy not in MIXED_PRECISION:
        raise ModelError(f"mixed_precision must be null or one of {', '.join(MIXED_PRECISION)}, not {policy!r}")
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    mixed_precision: str | None = None,
    seed: int | None = None,
    **hyperparameters,
) -> keras.Model:
    """Build registered model ``name``. Inputs are RGB images in [0, 255]; preprocessing is inside the model.
    ``seed``: a frozen-backbone model's head draws its initial weights and dropout from it alone, as ``build_head``'s
    does with the same seed (the rest of the model draws from the global random state).

    A hyperparameter not given takes the model's own default, from its registry entry.

    Raises ModelError for an unknown name, a hyperparameter the model does not take, an impossible value or an
    input size the model cannot take; WeightsUnavailableError when 'imagenet' weights are not on this machine.
    """
    info = get(name)
    hyperparameters = info.settings(hyperparameters)
    dropout = hyperparameters.get("dropout", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout must be in [0, 1), got {dropout}")
    if len(input_shape) != 3 or input_shape[0] != input_shape[1] or input_shape[2] != 3:
        raise ModelError(f"input_shape must be (size, size, 3), got {input_shape}")
    problems = info.input_size_problems(input_shape[0], weights)
    if problems:
        raise ModelError("; ".join(problems))
    task = task_info(info.task)
    if task.masks and num_classes != 1:
        raise ModelError(f"{name} predicts one binary mask: num_classes must be 1, got {num_classes}")
    if not task.masks and num_classes < task.min_classes:
        raise ModelError(f"a {info.task} model needs num_classes >= {task.min_classes}, got {num_classes}")
    path = resolve_weights(info, weights)
    if seed is not None and info.backbone is not None:
        hyperparameters["head_seed"] = seed
    with _dtype_policy(mixed_precision):
        return info.builder(num_classes=num_classes, input_shape=tuple(input_shape), weights=path, **hyperparameters)


def build_head(
    name: str,
    *,
    feature_shape: tuple[int, ...],
    num_classes: int,
    mixed_precision: str | None = None,
    seed: int | None = None,
    **hyperparameters,
) -> keras.Model:
    """The head alone of registered model ``name`` (one with a frozen backbone), taking the backbone's features:
    what a trial on cached features trains. Its layers are the whole model's, by name (``assemble`` puts them back);
    with the same ``seed`` as ``build``'s, their initial weights and dropout stream too."""
    info = get(name)
    if info.backbone is None:
        raise ModelError(f"{name} has no frozen backbone: it has no head to train alone")
    hyperparameters = info.settings(hyperparameters)
    with _dtype_policy(mixed_precision):
        return info.backbone.head(tuple(feature_shape), num_classes=num_classes, head_seed=seed, **hyperparameters)


def assemble(
    name: str,
    head: keras.Model,
    backbone_weights: str | Path,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    mixed_precision: str | None = None,
    **hyperparameters,
) -> keras.Model:
    """The whole model of registered ``name`` that a frozen backbone (its feature extractor's saved weights,
    ``backbone_weights``) and a ``head`` trained on its features make together: built with weights=None, then both
    put in, the head's layers by name."""
    info = get(name)
    whole = build(name, num_classes=num_classes, input_shape=input_shape, mixed_precision=mixed_precision,
                  **hyperparameters)  # fmt: skip
    info.backbone.extractor(whole).load_weights(backbone_weights)
    for layer in head.layers:
        if layer.weights:
            part = whole.get_layer(layer.name)
            part.set_weights(layer.get_weights())
            if finalize := getattr(part, "finalize_state", None):  # Normalization computes from its weights once
                finalize()
    return whole
