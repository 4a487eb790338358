"""Frozen-backbone feature cache: a frozen backbone maps an image to the same features in every epoch of every
trial, so compute them once per (backbone weights, input size, image set, backend, precision) and train the heads
on them. Features live on the node's disk (``SWEEP_CACHE_DIR/features``); a file lock makes the first trial that
needs them compute them while the others wait and read.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from search import storage as store

FEATURE_BATCH = 128  # forward-only batches: no gradients, so larger than training's


def feature_cache_off_because(info, train) -> str | None:
    """Why the feature cache cannot be exact for model ``info`` (its registry entry) trained with ``train`` (the
    trial's ``spec.Train``), or None when it can (and is switched on)."""
    if not train.feature_cache:
        return "train.feature_cache is off"
    if info.backbone is None:
        return f"{info.name} has no frozen backbone"
    if not train.freeze_backbone:
        return "the backbone trains (train.freeze_backbone: false)"
    if train.fine_tune_layers > 0:
        return "the fine-tuning stage makes backbone layers trainable"
    if train.online_augmentation:
        return "online augmentation changes the images every epoch"
    return None


def head_on_features(model, info, splits: dict[str, np.ndarray], *, backend: str, policy: str, cache_dir):
    """Split ``model`` at its features (its registry entry's facts) and put each split's images through the frozen
    backbone once per cache key. Returns (head: features -> output, sharing ``model``'s layers, so training it
    trains ``model``; features per split; how many splits were cache hits)."""
    extractor, head = info.backbone.split_at_features(model)
    digest = info.backbone.digest(model)

    def extract(images: np.ndarray) -> np.ndarray:
        return extractor.predict(images, batch_size=FEATURE_BATCH, verbose=0)

    features, hits = {}, 0
    for name, images in splits.items():
        key = feature_key(
            model=info.name,
            backbone=digest,
            input_shape=model.input_shape[1:],
            backend=backend,
            policy=policy,
            images=images,
        )
        features[name], hit = cached_features(extract, key, images, cache_dir)
        hits += hit
    return head, features, hits


def feature_key(*, model: str, backbone: str, input_shape: tuple, backend: str, policy: str, images: np.ndarray) -> str:
    """Cache key: everything the features depend on. ``backbone`` is the weights digest; the images are hashed."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{model}|{backbone}|{tuple(input_shape)}|{backend}|{policy}|{images.shape}|{images.dtype}".encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def cached_features(extract, key: str, images: np.ndarray, cache_dir: str | Path) -> tuple[np.ndarray, bool]:
    """The features of ``images`` (computed by ``extract(images)`` on a miss, then kept); and whether it was a hit."""
    from filelock import FileLock

    from data_pipeline.cache import cache_folder, mark_used

    path = cache_folder("features", cache_dir) / f"{key}.npy"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            mark_used(path)
            return np.load(path), True
        features = np.asarray(extract(images), dtype="float32")
        buffer = io.BytesIO()
        np.save(buffer, features)
        store.write_bytes(str(path), buffer.getvalue())  # atomic: readers never see half a file
        return features, False
