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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search import checkpoints
from search.checkpoints import CHECKPOINT_MODEL
from search.features import feature_cache_off_because, head_on_features
from search.spec import Study, Train


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares besides its data: the validated study and where the sweep runs."""

    study: Study
    gpus_per_trial: float
    experiment_dir: str
    cache_dir: str | None = None  # features and compiled programs; None: each node's own SWEEP_CACHE_DIR


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


def fine_tune_starts(epoch: int, train: Train) -> bool:
    """Whether the fine-tuning stage begins before this (0-based) epoch: once, after `fine_tune_after` epochs.
    A trial resumed later keeps the stage: the checkpoint holds the unfrozen layers and the lower learning rate."""
    return train.fine_tune_layers > 0 and epoch == train.fine_tune_after


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


def train_trial(config: dict[str, Any], datasets: dict, context: TrialContext) -> None:
    """The Ray Tune trainable. ``datasets``: loading option -> PreparedData, or a tuple of them with
    cross-validation (one per fold: the trial trains one model per fold in lockstep, epoch by epoch, and reports
    the fold-mean validation metric, so ASHA compares configurations, not folds); ``context``: the study and where
    the sweep runs."""
    from ray import tune

    study = context.study
    train = study.trial_train(config)  # a search axis that names a train setting overrides it for this trial
    os.environ["KERAS_BACKEND"] = train.backend
    for key, value in limit_gpu_memory(train.backend, context.gpus_per_trial).items():
        os.environ.setdefault(key, value)
    import models
    from data_pipeline.cache import default_cache_dir
    from search import compile_cache

    cache_dir = context.cache_dir or default_cache_dir()  # node-local: features and compiled programs
    compiled = compile_cache.enable_for(train.backend, train.compile_cache, cache_dir)  # None: off
    if train.backend == "torch":
        _limit_torch_memory(context.gpus_per_trial)

    # ---- data and start: the trial's loading option (segmentation: the study's), its checkpoint if resumed ---------
    info = models.get(config["model"])
    data = datasets[config.get("option", study.data.option)]
    folds = data if isinstance(data, tuple) else (data,)
    seed = int(config.get("seed", study.search.seed)) + int(config.get("repeat", 0))  # repeats differ by seed only
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
            _fold_epochs(config, info, train, f, context, seed, s, start_epoch, cache_dir, head)
            for f, s in zip(folds, saved)
        ]
        models_ = [next(learner) for learner in learners]  # built or resumed
    started = time.perf_counter()  # the first epoch's time includes the features: cost tables stay honest

    # ---- epochs: every fold one epoch, then one report (ASHA reads the fold-mean validation metric) --------------
    metric = study.metric
    for epoch in range(start_epoch, train.epochs):
        t0 = started if epoch == start_epoch else time.perf_counter()
        metrics = fold_mean([next(learner) for learner in learners], metric)
        metrics |= {"epoch": epoch + 1, "epoch_seconds": time.perf_counter() - t0, "diverged": False}
        metrics["trainable_params"] = sum(int(math.prod(w.shape)) for w in models_[0].trainable_weights)
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
            if len(models_) == 1:
                whole = improved or not checkpoints.head_suffices(info, train, epoch + 1)
                checkpoints.write(Path(d), models_[0], state, whole=whole, info=info)
            else:
                for i, model in enumerate(models_):
                    model.save(Path(d) / CHECKPOINT_FOLD.format(i))
                (Path(d) / checkpoints.CHECKPOINT_STATE).write_text(json.dumps(state))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _fold_epochs(config, info, train: Train, data, context: TrialContext, seed, saved, start_epoch, cache_dir, head):
    """One model on one train/validation split: yields the model once it is built (or loaded from ``saved``), then
    each epoch's train and validation metrics, one epoch per ``next`` (the first also caches the features)."""
    import keras

    import models
    from data_pipeline.augment import augment, epoch_seed
    from models.batchnorm import recompute_batchnorm_statistics
    from models.metrics import get_loss, training_metrics
    from models.optimizers import build_optimizer
    from search.gpu import compute_capability, resolve_mixed_precision

    study = context.study
    task, seg = study.task, study.task == "segmentation"

    # ---- data: the object store's arrays as they are (uint8 images; the model casts on the device) ---------------
    def xy(split):
        s = data.split(split)
        return s.images, (s.masks[..., None].astype("float32") if seg else s.labels)

    (x_train, y_train), (x_val, y_val) = xy("train"), xy("val")

    # ---- model: fresh, or resumed from this trial's last checkpoint ---------------------------------------------
    keras.utils.set_random_seed(seed)
    gpu = compute_capability() if context.gpus_per_trial > 0 else None
    policy = resolve_mixed_precision(train.mixed_precision, gpu)
    steps_per_epoch = math.ceil(len(x_train) / train.batch_size)

    def compile_with_lr(lr: float) -> None:  # at the start, and again when the fine-tuning stage begins
        optimizer = build_optimizer(
            train.optimizer,
            lr,
            weight_decay=train.weight_decay,
            schedule=train.lr_schedule,
            steps_per_epoch=steps_per_epoch,
            epochs=train.epochs,
        )
        model.compile(optimizer=optimizer, loss=get_loss(train.loss or study.loss), metrics=training_metrics(task))

    if saved is not None:
        model = keras.saving.load_model(saved, compile=True)
    else:
        size = data.config.image_size
        # The hyperparameters this model takes, by its registry entry: dropout from the trial, the rest from train.
        hp = {k: getattr(train, k) for k in info.hyperparameters if k != "dropout"}
        model = models.build(
            info.name,
            num_classes=1 if seg else len(data.classes),
            input_shape=(size, size, 3),
            weights=train.weights,
            mixed_precision=policy,
            dropout=float(config["dropout"]),
            **hp,
        )
        compile_with_lr(float(config["lr"]))
    yield model

    # ---- frozen backbone: train the head on cached features (exact; see search.features) ------------------------
    started = time.perf_counter()
    net, extra = model, {"mixed_precision": policy or "float32", "backend": keras.backend.backend()}
    if feature_cache_off_because(info, train) is None:
        splits = {"train": x_train, "val": x_val}
        net, features, hits = head_on_features(
            model, info, splits, backend=train.backend, policy=str(policy), cache_dir=cache_dir
        )
        net.compile(optimizer=model.optimizer, loss=get_loss(train.loss or study.loss), metrics=training_metrics(task))
        x_train, x_val = features["train"], features["val"]
        extra |= {"feature_cache_hits": hits, "feature_seconds": time.perf_counter() - started}

    if head is not None:  # (head arrays, state) of a head checkpoint: onto this rebuilt model
        checkpoints.restore_head(info, model, net, *head)

    # ---- epochs: fit, validate ----------------------------------------------------------------------------------
    for epoch in range(start_epoch, train.epochs):
        if fine_tune_starts(epoch, train):
            info.backbone.unfreeze_top(model, train.fine_tune_layers)
            compile_with_lr(float(config["lr"]) * train.fine_tune_lr_factor)
        xs, ys = x_train, y_train
        if train.online_augmentation:
            masks = data.train.masks if seg else None
            xs, masks = augment(data.train.images, masks, seed=epoch_seed(seed, epoch))
            ys = masks[..., None].astype("float32") if seg else y_train
        hist = net.fit(xs, ys, batch_size=train.batch_size, epochs=1, verbose=0, shuffle=True)
        # Validation (and the checkpoint, test and export after it) scores the weights with BatchNorm statistics of
        # this epoch's training images, not moving averages that lag a few fast steps behind (models.batchnorm).
        recompute_batchnorm_statistics(net, xs, train.batch_size)
        val = net.evaluate(x_val, y_val, batch_size=train.batch_size, verbose=0, return_dict=True)
        metrics = {f"train_{k}": float(v[-1]) for k, v in hist.history.items()}
        metrics |= {f"val_{k}": float(v) for k, v in val.items()}
        # What the trial really ran with: the optimizer's class, its step count (epochs × ceil(n / batch size)) and
        # the learning rate its schedule gives now.
        opt = model.optimizer
        metrics |= {"optimizer_class": type(opt).__name__, "optimizer_steps": int(opt.iterations)}
        metrics |= {"batch_size": train.batch_size, "lr_now": float(keras.ops.convert_to_numpy(opt.learning_rate))}
        yield metrics | extra
