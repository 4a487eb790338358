"""One trial, top to bottom: config -> data -> models.build -> compile -> for each epoch: fit, validate, report.

Runs inside a Ray Tune actor. The Keras backend and the GPU memory share must be set before Keras is imported, so
every framework import happens inside ``train_trial``.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from search import checkpoints
from search.features import cached_features, feature_cache_off_because, feature_key

FEATURE_BATCH = 128  # forward-only batches for the feature cache: no gradients, so larger than training's


def limit_gpu_memory(backend: str, gpu_share: float) -> dict[str, str]:
    """Environment that keeps a trial inside its share of a GPU (Ray pins devices but does not limit memory)."""
    env = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if 0 < gpu_share < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * gpu_share:.3f}"
    return env


def _limit_torch_memory(gpu_share: float) -> None:
    """PyTorch has no environment switch for this: cap the caching allocator at this trial's share."""
    import torch

    if 0 < gpu_share < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(0.9 * gpu_share)


def fine_tune_starts(epoch: int, train: dict[str, Any]) -> bool:
    """Whether the fine-tuning stage begins before this (0-based) epoch: once, after `fine_tune_after` epochs.
    A trial resumed later keeps the stage: the checkpoint holds the unfrozen layers and the lower learning rate."""
    return train.get("fine_tune_layers", 0) > 0 and epoch == train.get("fine_tune_after", 0)


def train_trial(config: dict[str, Any], datasets: dict, settings: dict[str, Any]) -> None:
    """The Ray Tune trainable. ``datasets``: loading option -> PreparedData (shared through the object store);
    ``settings``: the study's fixed settings (train section, task, metric)."""
    from ray import tune

    train, task = settings["train"], settings["task"]
    os.environ["KERAS_BACKEND"] = train["backend"]
    for key, value in limit_gpu_memory(train["backend"], settings["gpus_per_trial"]).items():
        os.environ.setdefault(key, value)
    from data_pipeline.io import default_cache_dir
    from search import compile_cache

    cache_dir = settings.get("cache_dir") or default_cache_dir()  # node-local: features and compiled programs
    compiled = compile_cache.enable_for(train["backend"], train["compile_cache"], cache_dir)  # None: off

    import keras

    if train["backend"] == "torch":
        _limit_torch_memory(settings["gpus_per_trial"])
    import models
    from data_pipeline.augment import augment, epoch_seed
    from models.metrics import get_loss, training_metrics
    from search.gpu import compute_capability, resolve_mixed_precision

    # ---- data: the object store's arrays as they are (uint8 images; the model casts on the device) ---------------
    data = datasets[config.get("option", settings["option"])]  # segmentation: one option, the study's
    seg = task == "segmentation"

    def xy(split):
        s = data.split(split)
        return s.images, (s.masks[..., None].astype("float32") if seg else s.labels)

    (x_train, y_train), (x_val, y_val) = xy("train"), xy("val")

    # ---- model: fresh, or resumed from this trial's last checkpoint ---------------------------------------------
    seed = int(config.get("seed", settings["seed"])) + int(config.get("repeat", 0))  # repeats differ by seed only
    keras.utils.set_random_seed(seed)
    start_epoch, best = 0, -math.inf
    policy = resolve_mixed_precision(
        train["mixed_precision"], compute_capability() if settings["gpus_per_trial"] > 0 else None
    )

    def compile_with_lr(lr: float) -> None:  # at the start, and again when the fine-tuning stage begins
        model.compile(
            optimizer=keras.optimizers.Adam(lr), loss=get_loss(settings["loss"]), metrics=training_metrics(task)
        )

    checkpoint, model, head = tune.get_checkpoint(), None, None  # the latest: resume after the last finished epoch
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model, state, head = checkpoints.read(Path(d))
        start_epoch, best = state["epoch"], state["best"]
    if model is None:  # fresh, or a head checkpoint that goes back onto a rebuilt (identical, frozen) backbone
        size = data.config.image_size
        hp = {"dropout": float(config["dropout"])}
        if seg:
            hp["base_filters"] = train["base_filters"]
        else:
            hp["freeze_backbone"] = train["freeze_backbone"]
        model = models.build(
            config["model"],
            num_classes=1 if seg else len(data.classes),
            input_shape=(size, size, 3),
            weights=train["weights"],
            mixed_precision=policy,
            **hp,
        )
        compile_with_lr(float(config["lr"]))

    # ---- frozen backbone: train the head on cached features (exact; see search.features) ------------------------
    started = time.perf_counter()  # the first epoch's time includes the features: cost tables stay honest
    net, extra = model, {"mixed_precision": policy or "float32", "backend": keras.backend.backend()}
    if feature_cache_off_because(task, train) is None:
        from models.classifiers import backbone_digest, split_at_features

        extractor, net = split_at_features(model)  # net shares the head's layers and optimizer with model
        net.compile(optimizer=model.optimizer, loss=get_loss(settings["loss"]), metrics=training_metrics(task))
        digest = backbone_digest(model)

        def cached(images):
            key = feature_key(
                model=config["model"],
                backbone=digest,
                input_shape=model.input_shape[1:],
                backend=train["backend"],
                policy=str(policy),
                images=images,
            )
            return cached_features(
                lambda x: extractor.predict(x, batch_size=FEATURE_BATCH, verbose=0), key, images, cache_dir
            )

        (x_train, hit_train), (x_val, hit_val) = cached(x_train), cached(x_val)
        extra |= {"feature_cache_hits": hit_train + hit_val, "feature_seconds": time.perf_counter() - started}

    if head is not None:
        checkpoints.restore_head(model, net, head, state)

    # ---- epochs: fit, validate, report (ASHA reads the validation metric) ---------------------------------------
    metric = settings["metric"]
    for epoch in range(start_epoch, train["epochs"]):
        t0 = started if epoch == start_epoch else time.perf_counter()
        if fine_tune_starts(epoch, train):
            from models.classifiers import unfreeze_top

            unfreeze_top(model, train["fine_tune_layers"])
            compile_with_lr(float(config["lr"]) * train["fine_tune_lr_factor"])
        xs, ys = x_train, y_train
        if train["online_augmentation"]:
            masks = data.train.masks if seg else None
            xs, masks = augment(data.train.images, masks, seed=epoch_seed(seed, epoch))
            ys = masks[..., None].astype("float32") if seg else y_train
        hist = net.fit(xs, ys, batch_size=train["batch_size"], epochs=1, verbose=0, shuffle=True)
        val = net.evaluate(x_val, y_val, batch_size=train["batch_size"], verbose=0, return_dict=True)
        metrics = {f"train_{k}": float(v[-1]) for k, v in hist.history.items()}
        metrics |= {f"val_{k}": float(v) for k, v in val.items()}
        metrics |= {"epoch": epoch + 1, "epoch_seconds": time.perf_counter() - t0, "diverged": False, **extra}
        metrics["trainable_params"] = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
        if compiled is not None:
            now = compile_cache.counts()
            metrics |= {f"compile_cache_{k}": now[k] - compiled[k] for k in now}
        if not all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss")):
            # The study's lr = 0.1 rows: not an error. Stop now; the tables keep this trial's last finite epoch.
            # ASHA gets the best value so far (0 if none) so it can rank the trial without a NaN.
            tune.report({"epoch": epoch + 1, "diverged": True, metric: best if math.isfinite(best) else 0.0})
            return
        # Every epoch is checkpointed (a resumed trial continues from its last one); an improvement as the whole
        # model (the best, kept for the tables and export), any other epoch as cheaply as it can be (see checkpoints).
        improved = metrics[metric] > best
        best = max(best, metrics[metric])
        metrics[checkpoints.SCORE] = metrics[metric] if improved else -math.inf  # a tie never displaces the best
        whole = improved or not checkpoints.head_suffices(task, train, epoch + 1)
        with tempfile.TemporaryDirectory() as d:
            checkpoints.write(Path(d), model, {"epoch": epoch + 1, "best": best}, whole=whole)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
