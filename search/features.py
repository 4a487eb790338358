"""Frozen-backbone feature cache: a frozen backbone maps an image to the same features in every epoch of every
trial, so compute them once per (backbone weights, input size, image set, backend, precision) and train the heads
on them. Features live on the node's disk (``SWEEP_CACHE_DIR/features``); a file lock makes the first trial that
needs them compute them while the others wait and read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np


def feature_cache_off_because(task: str, train: dict[str, Any]) -> str | None:
    """Why the feature cache cannot be exact for these settings, or None when it can (and is switched on)."""
    if not train.get("feature_cache", True):
        return "train.feature_cache is off"
    if task != "classification":
        return "segmentation models have no frozen backbone"
    if not train.get("freeze_backbone", True):
        return "the backbone trains (train.freeze_backbone: false)"
    if train.get("fine_tune_layers", 0) > 0:
        return "the fine-tuning stage makes backbone layers trainable"
    if train.get("online_augmentation", False):
        return "online augmentation changes the images every epoch"
    return None


def feature_key(*, model: str, backbone: str, input_shape: tuple, backend: str, policy: str, images: np.ndarray) -> str:
    """Cache key: everything the features depend on. ``backbone`` is the weights digest; the images are hashed."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{model}|{backbone}|{tuple(input_shape)}|{backend}|{policy}|{images.shape}|{images.dtype}".encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def cached_features(extract, key: str, images: np.ndarray, cache_dir: str | Path) -> tuple[np.ndarray, bool]:
    """The features of ``images`` (computed by ``extract(images)`` on a miss, then kept); and whether it was a hit."""
    from filelock import FileLock

    folder = Path(cache_dir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.npy"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return np.load(path), True
        features = np.asarray(extract(images), dtype="float32")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, features)
        os.replace(tmp, path)  # readers never see half a file
        return features, False
