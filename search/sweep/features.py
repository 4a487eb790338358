"""Frozen backbones, once per node: a frozen backbone maps an image to the same features in every epoch of every trial,
so each node builds it once, keeps its weights, computes each image's features once, and trials train their heads
on those features alone (they never build, save or load the backbone).

One cache entry per backbone (``SWEEP_CACHE_DIR/features/<key>/``, the key: model, weights, input size, backend,
precision and, for a random backbone, its seed): ``backbone.json`` (the weights' digest), ``backbone.weights.h5``
(the feature extractor's weights: a random backbone is made once, from its seed, and kept) and the features of
every image seen so far, keyed by each image's content (``chunk-*.npz``): the two loading options split the same
images two ways, cross-validation folds share them, and none is computed twice; and the feature maps (before the
pooling) of the report's Grad-CAM example images (``maps-*.npz``), so that Grad-CAM of a head needs no backbone
either (``cached_maps``). The images are computed in parts
(by content hash), each under its own file lock: trials that start on the same backbone at once compute different
parts side by side, then read each other's, rather than one computing while the others wait.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from search import storage as store

FEATURE_BATCH = 128  # forward-only batches: no gradients, so larger than training's
BACKBONE_RECORD = "backbone.json"
BACKBONE_WEIGHTS = "backbone.weights.h5"  # Keras's name for a weights-only file must end so
FEATURES, MAPS = "chunk", "maps"  # the entry's files of pooled features, and of feature maps
MAP_BATCH = 16  # images per call for feature maps (a call keeps a whole batch's activations: NASNetLarge's are large)


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


@dataclass(frozen=True)
class Backbone:
    """What a frozen backbone's features depend on; JSON-ready (a head checkpoint records it)."""

    model: str  # registry name
    input_size: int
    weights: str | None  # as the study gives it: "imagenet", a file, or None (random, from ``seed``)
    seed: int
    backend: str
    policy: str | None  # mixed precision policy, or None

    def key(self) -> str:
        """The cache entry's name. A weights file counts by its path, size and modification time; a random
        backbone by its seed; Keras's version too (its initialisers and layers make the numbers)."""
        import keras

        from models.registry import get, resolve_weights

        source = f"random:{self.seed}"
        if self.weights is not None:
            path = Path(resolve_weights(get(self.model), self.weights))
            stat = path.stat()
            source = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.model}|{self.input_size}|{source}|{self.backend}|{self.policy}|{keras.__version__}".encode())
        return h.hexdigest()

    def build(self, weights_file: str | Path | None = None) -> tuple:
        """(extractor: image -> features, the backbone's weights digest): the weights from ``weights_file`` (an
        extractor's saved weights), else as the study asks: from its weights file, or random from ``seed``."""
        import keras

        import models

        info = models.get(self.model)
        keras.utils.set_random_seed(self.seed)
        whole = models.build(
            self.model,
            num_classes=2,  # the head is not used: only the backbone's layers are
            input_shape=(self.input_size, self.input_size, 3),
            weights=None if weights_file is not None else self.weights,
            mixed_precision=self.policy,
        )
        extractor = info.backbone.extractor(whole)
        if weights_file is not None:
            extractor.load_weights(weights_file)
        return extractor, info.backbone.digest(whole)


def image_hashes(images: np.ndarray) -> list[bytes]:
    """Each image's content hash (its pixels, shape and dtype): the features cache's key per image."""
    head = f"{images.shape[1:]}{images.dtype}".encode()
    return [hashlib.blake2b(head + np.ascontiguousarray(im).data, digest_size=16).digest() for im in images]


@dataclass
class Features:
    """A backbone's features of each split's images, and how they came."""

    by_split: dict[str, np.ndarray]
    digest: str  # the backbone's weights digest
    weights_file: Path  # its saved weights, in the node's cache
    computed: int  # images whose features this call computed (0: all read from the cache)
    read: int  # images whose features came from the cache


_LOADED: dict[str, tuple] = {}  # this process's last backbone: key -> (extractor, digest); a reused worker keeps it
PART_IMAGES = 256  # about this many images per part (one lock, one forward pass, one file)
MAX_PARTS = 32  # the last part computed alone is at most 1/32 of the work


def parts_of(hashes: list[bytes]) -> list[list[bytes]]:
    """The unique image ``hashes`` in parts of about PART_IMAGES, by content: a pure function of the set, so every
    trial that needs the same images (every split of every option and fold of one sweep) parts them alike."""
    unique = sorted(set(hashes))
    count = max(1, min(MAX_PARTS, round(len(unique) / PART_IMAGES)))
    parts: list[list[bytes]] = [[] for _ in range(count)]
    for h in unique:
        parts[int.from_bytes(h[:4], "big") % count].append(h)
    return [p for p in parts if p]


def backbone_features(
    backbone: Backbone,
    splits: dict[str, np.ndarray],
    cache_dir: str | Path,
    *,
    weights_file: Callable | None = None,
    maps_of: np.ndarray | None = None,
) -> Features:
    """The features of every split's images through ``backbone``, each image computed once per node.
    ``weights_file``: a function giving a local file of the backbone's weights, called when this node has no entry
    for it (a checkpoint scored on another node: the experiment's copy); without it the backbone is built as the
    study asks. ``maps_of``: images whose feature maps to keep too (the report's Grad-CAM examples), computed where
    the backbone is at hand anyway (``_keep_maps``)."""
    from filelock import FileLock, Timeout

    from data_pipeline.cache import cache_folder, mark_used

    key = backbone.key()
    folder = cache_folder("features", cache_dir) / key
    with FileLock(str(folder) + ".lock"):
        record = folder / BACKBONE_RECORD
        if not record.is_file():  # a new entry (or one a trim left half): the backbone first, then its features
            _new_entry(backbone, folder, weights_file() if weights_file is not None else None)
        digest = json.loads(record.read_text())["digest"]
        mark_used(folder)
    hashes = {name: image_hashes(images) for name, images in splits.items()}
    images = {h: im for name in splits for h, im in zip(hashes[name], splits[name])}
    chunks = _Chunks(folder, FEATURES)
    computed = 0
    # First every part no other trial is computing (skip a locked one), then wait for those: trials that arrive
    # together split the work; whoever gets a part's lock computes what is still missing from it.
    pending = [p for p in parts_of(list(images)) if chunks.missing(p)]
    for wait in (False, True):
        for part in list(pending):
            lock = FileLock(str(folder / f"part-{_name(part)}.lock"))
            try:
                lock.acquire(blocking=wait)
            except Timeout:  # another trial computes this part now
                continue
            try:
                if todo := chunks.missing(part):
                    extractor = _extractor(backbone, key, folder, digest)
                    values = _forward(extractor, np.stack([images[h] for h in todo]), FEATURE_BATCH, predict=True)
                    chunks.add(todo, values)
                    computed += len(todo)
            finally:
                lock.release()
            pending.remove(part)
    if maps_of is not None and len(maps_of):
        _keep_maps(key, folder, digest, maps_of)
    by_split = {name: np.stack([chunks.known[h] for h in hashes[name]]) for name in splits}
    read = sum(len(h) for h in hashes.values()) - computed
    return Features(by_split, digest, folder / BACKBONE_WEIGHTS, computed=computed, read=read)


def padded_count(count: int, batch: int, static_shapes: bool) -> int:
    """How many rows to run ``count`` images as, in batches of ``batch``: ``count`` itself, or, where each input
    shape is a program of its own (JAX compiles one per shape), whole batches, so that every batch of every part
    has the one shape and the backbone is compiled once (on the GPU, each part's last batch of another size was
    compiled afresh: 132 s of InceptionResNetV2's features in the 48-trial study, most of it compiling)."""
    return -(-count // batch) * batch if static_shapes else count


def _forward(model, images: np.ndarray, batch: int, *, predict: bool) -> np.ndarray:
    """``model`` on ``images`` in inference, in batches of ``batch``, as float32. On JAX the last batch is padded
    with black images (``padded_count``) and their rows dropped: in inference each row's output depends on its own
    image alone. ``predict``: Keras's predict (one compiled program); else each batch is called, op by op on JAX
    and eagerly on TensorFlow (a few images: predict would trace a new program for them)."""
    import keras

    count = len(images)
    rows = padded_count(count, batch, keras.backend.backend() == "jax")
    if rows > count:
        images = np.concatenate([images, np.zeros((rows - count, *images.shape[1:]), images.dtype)])
    if predict:
        values = model.predict(images, batch_size=batch, verbose=0)
    else:
        calls = [model(images[i : i + batch].astype("float32"), training=False) for i in range(0, rows, batch)]
        values = np.concatenate([keras.ops.convert_to_numpy(v) for v in calls])
    return np.asarray(values[:count], dtype="float32")


def _keep_maps(key: str, folder: Path, digest: str, images: np.ndarray) -> None:
    """Keep the feature maps of ``images`` in the entry, computed by a process that holds the backbone already (it
    computed features with it) and never built for them alone: where no trial of the sweep held it, Grad-CAM builds
    the whole model as before. One process computes them; the others go on."""
    from filelock import FileLock, Timeout

    from models.gradcam import has_map, split_at_map

    if key not in _LOADED or _LOADED[key][1] != digest or not has_map(_LOADED[key][0]):
        return
    by_hash = dict(zip(image_hashes(images), images))
    maps = _Chunks(folder, MAPS)
    if not maps.missing(list(by_hash)):
        return
    lock = FileLock(str(folder / "maps.lock"))
    try:
        lock.acquire(blocking=False)
    except Timeout:  # another trial computes them now
        return
    try:
        if todo := maps.missing(list(by_hash)):
            # Called, not predicted: a few images, and predict would trace a new program for them (4.4 s against
            # 1.2 s for 16 images through InceptionResNetV2 at 75 px, one core of TensorFlow). As Grad-CAM calls it.
            to_map = split_at_map(_LOADED[key][0])[0]
            maps.add(todo, _forward(to_map, np.stack([by_hash[h] for h in todo]), MAP_BATCH, predict=False))
    finally:
        lock.release()


def cached_maps(backbone: Backbone, digest: str, images: np.ndarray, cache_dir: str | Path) -> np.ndarray | None:
    """The feature maps of ``images`` through ``backbone`` (its weights digest ``digest``) from this node's cache,
    or None where the node's entry holds another backbone or not every one of them."""
    from data_pipeline.cache import cache_folder

    folder = cache_folder("features", cache_dir) / backbone.key()
    record = folder / BACKBONE_RECORD
    if not record.is_file() or json.loads(record.read_text())["digest"] != digest:
        return None
    hashes, maps = image_hashes(images), _Chunks(folder, MAPS)
    return None if maps.missing(hashes) else np.stack([maps.known[h] for h in hashes])


class _Chunks:
    """The entry's features (or feature maps: ``kind``) read so far; ``missing`` first reads the files other trials
    wrote since (each file once: a chunk is never changed, only added)."""

    def __init__(self, folder: Path, kind: str):
        self.folder, self.kind, self.known, self.seen = folder, kind, {}, set()

    def missing(self, hashes: list[bytes]) -> list[bytes]:
        """Those of ``hashes`` whose features no chunk holds yet."""
        if all(h in self.known for h in hashes):
            return []
        for path in sorted(self.folder.glob(f"{self.kind}-*.npz")):
            if path.name not in self.seen:
                with np.load(path) as f:
                    self.known |= dict(zip((bytes(h) for h in f["hashes"]), f["features"]))
                self.seen.add(path.name)
        return [h for h in hashes if h not in self.known]

    def add(self, hashes: list[bytes], values: np.ndarray) -> None:
        """Features of new images, one file per computation (atomic: readers never see half a file)."""
        from data_pipeline.files import write_file

        keys = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), -1)
        name = f"{self.kind}-{_name(hashes)}.npz"
        write_file(self.folder / name, lambda out: np.savez(out, hashes=keys, features=values))
        self.known |= dict(zip(hashes, values))
        self.seen.add(name)


def _name(hashes: list[bytes]) -> str:
    return hashlib.blake2b(b"".join(hashes), digest_size=10).hexdigest()


def _new_entry(backbone: Backbone, folder: Path, weights_file: Path | None) -> None:
    """Build the backbone (or load ``weights_file``), keep its weights and digest: the entry's first files."""
    import shutil

    from data_pipeline.files import write_file

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700)
    extractor, digest = backbone.build(weights_file)
    extractor.save_weights(folder / BACKBONE_WEIGHTS)
    write_file(folder / BACKBONE_RECORD, json.dumps({**asdict(backbone), "digest": digest}).encode())
    _LOADED.clear()
    _LOADED[backbone.key()] = (extractor, digest)


def _extractor(backbone: Backbone, key: str, folder: Path, digest: str):
    """This node's extractor of ``backbone``: the one this process holds, or built and given the entry's weights."""
    if key in _LOADED and _LOADED[key][1] == digest:
        return _LOADED[key][0]
    extractor, found = backbone.build(folder / BACKBONE_WEIGHTS)
    if found != digest:
        raise RuntimeError(f"{folder / BACKBONE_WEIGHTS} does not hold the backbone {folder / BACKBONE_RECORD} names")
    _LOADED.clear()
    _LOADED[key] = (extractor, digest)
    return extractor


def publish_backbone(features: Features, experiment_dir: str) -> str:
    """The experiment's copy of the backbone's weights (``backbones/<digest>.weights.h5``), written once: a whole
    model is assembled from it and a head wherever the experiment is read (export, Grad-CAM, another node). The
    cache never changes a file in place, so on one file system the copy is a hard link (clearing the cache leaves
    the experiment's name of the file)."""
    from search.study.experiment import backbone_file

    target = backbone_file(experiment_dir, features.digest)
    if store.exists(target):
        return target
    if not store.is_uri(target):  # on the cache's file system: a second name for the cache's file, not a copy
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.link(features.weights_file, target)
            return target
    store.write_bytes(target, features.weights_file.read_bytes())
    return target
