"""One trial, top to bottom: config -> data -> models.build -> compile -> for each epoch: fit, validate, report.

Runs inside a Ray Tune actor. The Keras backend and the GPU memory share must be set before Keras is imported, so
every framework import happens inside ``train_trial``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from search import checkpoints
from search.checkpoints import CHECKPOINT_MODEL
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


CHECKPOINT_FOLD = "fold{}.keras"  # cross-validation: one model per fold, trained in lockstep


def fold_files(folder: Path) -> list[Path]:
    """A checkpoint's fold models in fold order (empty for a single model)."""
    out, i = [], 0
    while (folder / CHECKPOINT_FOLD.format(i)).is_file():
        out.append(folder / CHECKPOINT_FOLD.format(i))
        i += 1
    return out


def ensemble(members: list):
    """One Keras model whose output is the mean of the members' outputs (probabilities or masks), as nnU-Net
    ensembles its cross-validation folds. Member i is the nested model ``fold_i``; preprocessing stays inside each."""
    import keras

    for i, m in enumerate(members):
        m.name = f"fold_{i}"
    inputs = keras.Input(members[0].input_shape[1:])
    return keras.Model(inputs, keras.layers.Average()([m(inputs) for m in members]), name="ensemble")


def fold_member(model, i: int):
    """Fold model i of an ensemble built by ``ensemble``."""
    return model.get_layer(f"fold_{i}")


def checkpoint_model(folder: Path):
    """The model a checkpoint holds, for evaluation and export: its model, or the ensemble of its fold models."""
    import keras

    folds = fold_files(Path(folder))
    if not folds:
        return keras.saving.load_model(Path(folder) / CHECKPOINT_MODEL, compile=False)
    return ensemble([keras.saving.load_model(f, compile=False) for f in folds])


def fold_mean(per_fold: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """One report from the folds' epoch metrics: numbers averaged (feature-cache counts and seconds summed),
    ``diverged`` if any fold diverged, the rest from fold 0; with several folds, the validation metric's standard
    deviation across folds as ``<metric>_std`` (the configuration's score is mean ± std)."""
    import statistics

    summed = ("feature_cache_hits", "feature_seconds")
    out = dict(per_fold[0])
    for key, value in per_fold[0].items():
        values = [m[key] for m in per_fold]
        if key == "diverged":
            out[key] = any(values)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = sum(values) if key in summed else (sum(values) / len(values))
    if len(per_fold) > 1 and all(metric in m for m in per_fold):
        out[f"{metric}_std"] = statistics.stdev(m[metric] for m in per_fold)
    return out


def train_trial(config: dict[str, Any], datasets: dict, settings: dict[str, Any]) -> None:
    """The Ray Tune trainable. ``datasets``: loading option -> PreparedData, or a tuple of them with
    cross-validation (one per fold: the trial trains one model per fold in lockstep, epoch by epoch, and reports
    the fold-mean validation metric, so ASHA compares configurations, not folds); ``settings``: the study's fixed
    settings (train section, task, metric)."""
    from ray import tune

    # A search axis that names a train setting (optimizer, batch_size, ...) overrides it for this trial.
    train = {**settings["train"], **{k: v for k, v in config.items() if k in settings["train"]}}
    settings = {**settings, "train": train}
    os.environ["KERAS_BACKEND"] = train["backend"]
    for key, value in limit_gpu_memory(train["backend"], settings["gpus_per_trial"]).items():
        os.environ.setdefault(key, value)
    from data_pipeline.io import default_cache_dir
    from search import compile_cache

    cache_dir = settings.get("cache_dir") or default_cache_dir()  # node-local: features and compiled programs
    compiled = compile_cache.enable_for(train["backend"], train["compile_cache"], cache_dir)  # None: off

    if train["backend"] == "torch":
        _limit_torch_memory(settings["gpus_per_trial"])

    data = datasets[config.get("option", settings["option"])]  # segmentation: one option, the study's
    folds = data if isinstance(data, tuple) else (data,)
    seed = int(config.get("seed", settings["seed"])) + int(config.get("repeat", 0))  # repeats differ by seed only
    start_epoch, best = 0, -math.inf
    checkpoint = tune.get_checkpoint()  # the latest: resume after the last finished epoch
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as d:
        saved, head = [None] * len(folds), None
        if d is not None:
            state = json.loads((Path(d) / checkpoints.CHECKPOINT_STATE).read_text())
            start_epoch, best = state["epoch"], state["best"]
            if (Path(d) / checkpoints.CHECKPOINT_HEAD).is_file():  # a head, for a rebuilt frozen backbone
                head = (checkpoints.read(Path(d))[2], state)
            else:
                saved = fold_files(Path(d)) or [Path(d) / CHECKPOINT_MODEL]
        learners = [
            _fold_epochs(config, f, settings, seed, s, start_epoch, cache_dir, head) for f, s in zip(folds, saved)
        ]
        models = [next(learner) for learner in learners]  # built or resumed
    started = time.perf_counter()  # the first epoch's time includes the features: cost tables stay honest

    # ---- epochs: every fold one epoch, then one report (ASHA reads the fold-mean validation metric) --------------
    metric = settings["metric"]
    for epoch in range(start_epoch, train["epochs"]):
        t0 = started if epoch == start_epoch else time.perf_counter()
        metrics = fold_mean([next(learner) for learner in learners], metric)
        metrics |= {"epoch": epoch + 1, "epoch_seconds": time.perf_counter() - t0, "diverged": False}
        metrics["trainable_params"] = sum(int(math.prod(w.shape)) for w in models[0].trainable_weights)
        if compiled is not None:
            now = compile_cache.counts()
            metrics |= {f"compile_cache_{k}": now[k] - compiled[k] for k in now}
        if not all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss")):
            # The study's lr = 0.1 rows: not an error. Stop now; the tables keep this trial's last finite epoch.
            # ASHA gets the best value so far (0 if none) so it can rank the trial without a NaN.
            tune.report({"epoch": epoch + 1, "diverged": True, metric: best if math.isfinite(best) else 0.0})
            return
        # Every epoch is checkpointed (a resumed trial continues from its last one); an improvement as the whole
        # model(s) (the best, for the tables and export), any other epoch as cheaply as it can be (see checkpoints).
        improved = metrics[metric] > best
        best = max(best, metrics[metric])
        metrics[checkpoints.SCORE] = metrics[metric] if improved else -math.inf  # a tie never displaces the best
        state = {"epoch": epoch + 1, "best": best}
        with tempfile.TemporaryDirectory() as d:
            if len(models) == 1:
                whole = improved or not checkpoints.head_suffices(settings["task"], train, epoch + 1)
                checkpoints.write(Path(d), models[0], state, whole=whole)
            else:
                for i, model in enumerate(models):
                    model.save(Path(d) / CHECKPOINT_FOLD.format(i))
                (Path(d) / checkpoints.CHECKPOINT_STATE).write_text(json.dumps(state))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _fold_epochs(config, data, settings, seed: int, saved: Path | None, start_epoch: int, cache_dir: str, head=None):
    """One model on one train/validation split: yields the model once it is built (or loaded from ``saved``), then
    each epoch's train and validation metrics, one epoch per ``next`` (the first also caches the features)."""
    import keras

    import models
    from data_pipeline.augment import augment, epoch_seed
    from models.metrics import get_loss, training_metrics
    from models.optimizers import build_optimizer
    from search.gpu import compute_capability, resolve_mixed_precision

    train, task = dict(settings["train"]), settings["task"]
    seg = task == "segmentation"

    # ---- data: the object store's arrays as they are (uint8 images; the model casts on the device) ---------------
    def xy(split):
        s = data.split(split)
        return s.images, (s.masks[..., None].astype("float32") if seg else s.labels)

    (x_train, y_train), (x_val, y_val) = xy("train"), xy("val")

    # ---- model: fresh, or resumed from this trial's last checkpoint ---------------------------------------------
    keras.utils.set_random_seed(seed)
    policy = resolve_mixed_precision(
        train["mixed_precision"], compute_capability() if settings["gpus_per_trial"] > 0 else None
    )

    info = models.get(config["model"])
    if "freeze_backbone" not in info.hyperparameters:  # no pretrained backbone (custom_cnn): nothing to freeze
        train["freeze_backbone"] = False
    steps_per_epoch = math.ceil(len(x_train) / train["batch_size"])

    def compile_with_lr(lr: float) -> None:  # at the start, and again when the fine-tuning stage begins
        optimizer = build_optimizer(
            train["optimizer"],
            lr,
            weight_decay=train["weight_decay"],
            schedule=train["lr_schedule"],
            steps_per_epoch=steps_per_epoch,
            epochs=train["epochs"],
        )
        model.compile(optimizer=optimizer, loss=get_loss(settings["loss"]), metrics=training_metrics(task))

    if saved is not None:
        model = keras.saving.load_model(saved, compile=True)
    else:
        size = data.config.image_size
        hp = {"dropout": float(config["dropout"])} | {k: train[k] for k in info.hyperparameters if k in train}
        model = models.build(
            config["model"],
            num_classes=1 if seg else len(data.classes),
            input_shape=(size, size, 3),
            weights=train["weights"],
            mixed_precision=policy,
            **hp,
        )
        compile_with_lr(float(config["lr"]))
    yield model

    # ---- frozen backbone: train the head on cached features (exact; see search.features) ------------------------
    started = time.perf_counter()
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

    if head is not None:  # (head arrays, state) of a head checkpoint: onto this rebuilt model
        checkpoints.restore_head(model, net, *head)

    # ---- epochs: fit, validate ----------------------------------------------------------------------------------
    for epoch in range(start_epoch, train["epochs"]):
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
        # What the trial really ran with: the optimizer's class, its step count (epochs × ceil(n / batch size)) and
        # the learning rate its schedule gives now.
        opt = model.optimizer
        metrics |= {"optimizer_class": type(opt).__name__, "optimizer_steps": int(opt.iterations)}
        metrics |= {"batch_size": train["batch_size"], "lr_now": float(keras.ops.convert_to_numpy(opt.learning_rate))}
        yield metrics | extra
