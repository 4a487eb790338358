"""One trial, top to bottom: config -> data (a frozen backbone's features) -> models.build (or build_head) -> compile
-> for each epoch: fit, validate, checkpoint, report.

Runs inside a Ray Tune actor. The Keras backend and the GPU memory share must be set before Keras is imported, so
every framework import happens inside ``train_trial``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.study import checkpoints
from search.study.results import COST_COLUMNS, TRIAL_PHASES, architecture, best_so_far
from search.study.spec import Study, Train
from search.sweep.features import Backbone, backbone_features, feature_cache_off_because, publish_backbone
from search.sweep.scoring import gradcam_images

STEPS_PER_EXECUTION = 32  # a head's epoch on 4,000 features: 0.68 s at 1, 0.35 s at 25 (TensorFlow, one core)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares besides its data: the validated study and where the sweep runs."""

    study: Study
    gpus_per_trial: float
    experiment_dir: str
    cache_dir: str | None = None  # features and compiled programs; None: each node's own SWEEP_CACHE_DIR


def limit_gpu_memory(gpu_share: float) -> dict[str, str]:
    """Environment that keeps a trial inside its share of a GPU (Ray pins devices but does not limit memory)."""
    env = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if 0 < gpu_share < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * gpu_share:.3f}"
    return env


def framework_threads(cpus: float | None) -> dict[str, str]:
    """Environment that sizes TensorFlow's thread pools to a CPU-only trial's ``cpus`` (its Ray share; None: not
    in Ray, left alone). Ray sizes OpenMP's (so PyTorch's) this way; TensorFlow's pools otherwise span the machine, and
    two trials side by side on 2 cores contend (InceptionResNetV2's head in the 48-trial study: 1.04 s an epoch, 0.80 s
    with one thread each)."""
    if not cpus:
        return {}
    n = str(max(1, int(cpus)))
    return {"TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n}


def cpu_threads(backend: str) -> int | None:
    """The CPU threads a TensorFlow trial's ops run on: its intra-op pool, ``TF_NUM_INTRAOP_THREADS`` when set, else
    TensorFlow's default of one per CPU this process may use. None on the other backends."""
    if backend != "tensorflow":
        return None
    return int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 0) or len(os.sched_getaffinity(0))


def _limit_torch_memory(gpu_share: float) -> None:
    """PyTorch has no environment switch for this: cap the caching allocator at this trial's share."""
    import torch

    if 0 < gpu_share < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(0.9 * gpu_share)


def fine_tune_starts(epoch: int, train: Train) -> bool:
    """Whether the fine-tuning stage begins before this (0-based) epoch: once, after `fine_tune_after` epochs.
    A trial resumed later keeps the stage: the checkpoint holds the unfrozen layers and the lower learning rate."""
    return train.fine_tune_layers > 0 and epoch == train.fine_tune_after


def epoch_order(seed: int, epoch: int, n: int):
    """The order in which one epoch visits a training split's ``n`` items: the trial's seed and the epoch's alone,
    so the same on cached features as on images, and the same in a resumed trial as in an uninterrupted one."""
    import numpy as np

    from data_pipeline.augment import epoch_seed

    return np.random.default_rng(epoch_seed(seed, epoch)).permutation(n)


def seed_globals(seed: int) -> None:
    """Seed the global generators an epoch may draw from, as ``keras.utils.set_random_seed`` does, except
    TensorFlow's: setting TensorFlow's global seed clears its caches, so the next ``fit`` instantiated its training
    step again (InceptionResNetV2's head, an epoch on 4,000 features, one thread: 0.64 s with it, 0.36 s without).
    Nothing in an epoch draws from that seed: Keras 3 draws through its own seed generators (stateless ops on
    TensorFlow), and no pipeline here shuffles; the weights come out bitwise the same either way (tested). A trial
    sets it once, before building its model."""
    import random

    import keras
    import numpy as np

    try:  # where keras.utils.set_random_seed keeps Keras's own global seed and generator (Keras 3)
        from keras.src.backend.common import global_state
        from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
        from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
    except ImportError:  # moved in another Keras: its own function, as exact, slower on TensorFlow
        keras.utils.set_random_seed(seed)
        return
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, None)  # made again from the seed when first drawn
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def fold_mean(per_fold: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """One report from the folds' epoch metrics: numbers averaged, ``diverged`` if any fold diverged, the rest from
    fold 0; with several folds, the validation metric's standard deviation across folds as ``<metric>_std`` (the
    configuration's score is mean ± std)."""
    import statistics

    out = dict(per_fold[0])
    for key, value in per_fold[0].items():
        values = [m[key] for m in per_fold]
        if key == "diverged":
            out[key] = any(values)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = sum(values) / len(values)
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
    trial = study.trial(config)  # typed; a search axis that names a train setting overrides it for this trial
    train = trial.train
    os.environ["KERAS_BACKEND"] = train.backend
    env = limit_gpu_memory(context.gpus_per_trial)
    if train.trial_threads and context.gpus_per_trial == 0:  # before the framework starts: its pools are fixed then
        import ray

        env |= framework_threads(ray.get_runtime_context().get_assigned_resources().get("CPU"))
    for key, value in env.items():
        os.environ.setdefault(key, value)  # the user's own setting wins
    import keras

    import models
    from data_pipeline.cache import default_cache_dir
    from search.sweep import compile_cache
    from search.sweep.gpu import compute_capability, resolve_mixed_precision

    cache_dir = context.cache_dir or default_cache_dir()  # node-local: features and compiled programs
    compiled = compile_cache.enable_for(train.backend, train.compile_cache, cache_dir)  # None: off
    if train.backend == "torch":
        _limit_torch_memory(context.gpus_per_trial)
    seconds = dict.fromkeys(TRIAL_PHASES, 0.0)  # this trial's time by phase, reported with every epoch
    started = time.perf_counter()  # the first epoch's time includes the features and the build: costs stay honest

    # ---- data: the trial's loading option (segmentation: the study's); a frozen backbone's features ---------------
    info = models.get(trial.model)
    data = datasets[trial.option]
    folds = data if isinstance(data, tuple) else (data,)
    seed = trial.seed
    gpu = compute_capability() if context.gpus_per_trial > 0 else None
    policy = resolve_mixed_precision(train.mixed_precision, gpu)
    build = {
        "num_classes": study.facts.num_outputs(len(folds[0].classes)),
        **trial.hyperparameters(info),
    }
    on_features = feature_cache_off_because(info, train) is None
    record, extra = None, {"mixed_precision": policy or "float32", "backend": keras.backend.backend()}
    extra["cpu_threads"] = cpu_threads(extra["backend"])
    extra["architecture"] = architecture(info.name, build)  # what its cost depends on (search.study.results)
    if on_features:  # the head trains on the backbone's features: computed once per node (search.sweep.features)
        with _timed(seconds, "feature_seconds"):
            size = folds[0].config.image_size
            backbone = Backbone(info.name, size, train.weights, seed, train.backend, policy)
            images = _every_image(datasets, trial.option)  # and the report's Grad-CAM examples' feature maps:
            features = backbone_features(backbone, images, cache_dir, maps_of=gradcam_images(datasets))
            publish_backbone(features, context.experiment_dir)
        record = {"spec": dataclasses.asdict(backbone), "digest": features.digest, "build": build}
        extra |= {"features_computed": features.computed, "feature_cache_hits": features.read}
    fits = [Fold.of(f, study, features.by_split if on_features else None, i) for i, f in enumerate(folds)]

    # ---- models: the heads (or whole models) built, or resumed from this trial's last checkpoint ------------------
    start_epoch, best = 0, -math.inf
    checkpoint = tune.get_checkpoint()  # the latest: resume after the last finished epoch
    with _timed(seconds, "build_seconds"):
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                state = checkpoints.read_state(Path(d))
                start_epoch, best = state["epoch"], state["best"]
                for fit, model in zip(fits, checkpoints.load(Path(d)), strict=True):
                    fit.model = model
        else:
            for fit in fits:
                keras.utils.set_random_seed(seed)
                if on_features:
                    shape = fit.x_train.shape[1:]
                    fit.model = models.build_head(
                        info.name, feature_shape=shape, mixed_precision=policy, seed=seed, **build
                    )
                else:
                    shape = (fit.data.config.image_size,) * 2 + (3,)
                    fit.model = models.build(
                        info.name, input_shape=shape, weights=train.weights, mixed_precision=policy, seed=seed, **build
                    )
                if build.get("standardize_features"):  # on the training split's features, as the head sees them
                    extract = info.backbone.extractor
                    x = fit.x_train if on_features else extract(fit.model).predict(fit.x_train, verbose=0)
                    info.backbone.standardize(fit.model, x)
                fit.compile(train, study, trial.lr)

    # ---- cost: the search's second objective, measured on this architecture as it would be deployed --------------
    if study.cost_objective is not None:
        with _timed(seconds, "cost_seconds"):
            extra |= _architecture_cost(info, build, fits[0], on_features, policy, cache_dir)

    # ---- epochs: every fold one epoch, then one report (ASHA reads the fold-mean validation metric) --------------
    metric = study.metric
    for epoch in range(start_epoch, train.epochs):
        t0 = started if epoch == start_epoch else time.perf_counter()
        if fine_tune_starts(epoch, train):  # the top backbone layers train from now on, at a lower learning rate
            for fit in fits:
                info.backbone.unfreeze_top(fit.model, train.fine_tune_layers)
                fit.compile(train, study, trial.lr * train.fine_tune_lr_factor)
        with _timed(seconds, "fit_seconds"):
            per_fold = [fit.epoch(epoch, train, seed) for fit in fits]
        metrics = fold_mean(per_fold, metric) | extra
        metrics |= {"epoch": epoch + 1, "epoch_seconds": time.perf_counter() - t0, "diverged": False}
        metrics["trainable_params"] = sum(int(math.prod(w.shape)) for w in fits[0].model.trainable_weights)
        if compiled is not None:
            now = compile_cache.counts()
            metrics |= {f"compile_cache_{k}": now[k] - compiled[k] for k in now}
        if not all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss")):
            # The study's lr = 0.1 rows: not an error. Stop now; the tables keep this trial's last finite epoch.
            # ASHA gets the best value so far (0 if none) so it can rank the trial without a NaN.
            so_far = best if math.isfinite(best) else 0.0
            last = {"epoch": epoch + 1, "diverged": True, metric: so_far, best_so_far(metric): so_far}
            tune.report(last | {k: extra[k] for k in ("architecture", *COST_COLUMNS) if k in extra})  # for Optuna
            return
        # Every epoch is checkpointed (a resumed trial continues from its last one); Ray keeps the best and the last.
        improved = metrics[metric] > best
        best = max(best, metrics[metric])
        metrics[best_so_far(metric)] = best
        metrics[checkpoints.SCORE] = metrics[metric] if improved else -math.inf  # a tie never displaces the best
        state = {"epoch": epoch + 1, "best": best} | ({"backbone": record} if record else {})
        with tempfile.TemporaryDirectory() as d:
            with _timed(seconds, "checkpoint_seconds"):
                checkpoints.write(Path(d), [fit.model for fit in fits], state)
            tune.report(metrics | seconds, checkpoint=tune.Checkpoint.from_directory(d))


def _architecture_cost(info, build: dict[str, Any], fit: Fold, on_features: bool, policy, cache_dir) -> dict:
    """What this trial's whole model costs to run as exported (``search.outputs.deploy.model_cost``), measured once per
    architecture and machine (``search.outputs.deploy.build_cost``). A head on cached features has no whole model: one
    is built with random weights (the cost does not depend on their values)."""
    import models
    from search.outputs.deploy import build_cost

    size = fit.data.config.image_size

    def whole():
        if not on_features:
            return fit.model
        shape = (size, size, 3)
        return models.build(info.name, input_shape=shape, weights=None, mixed_precision=policy, **build)

    shape_only = {k: v for k, v in build.items() if k != "dropout"}  # dropout is gone once exported
    return build_cost(whole, {"model": info.name, "policy": policy, **shape_only}, size, cache_dir)


def _every_image(datasets: dict, mine: int) -> dict:
    """The images of every split of every loading option and fold, this trial's own by their plain names
    (``train0``, ...): the first trials on a node compute the features every later one reads (the options split the
    same images two ways). The test images' features are computed here too, never looked at: the test split is
    scored only after the sweep (``search.sweep.scoring``)."""
    out = {}
    for option, data in datasets.items():
        for i, fold in enumerate(data if isinstance(data, tuple) else (data,)):
            prefix = "" if option == mine else f"option{option}-"
            out |= {f"{prefix}{split}{i}": fold.split(split).images for split in ("train", "val", "test")}
    return out


@contextlib.contextmanager
def _timed(seconds: dict[str, float], phase: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] += time.perf_counter() - t0


@dataclass
class Fold:
    """One model on one train/validation split: the arrays it trains on (images, or a frozen backbone's features of
    them), and the model once built."""

    data: Any  # PreparedData
    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    seg: bool
    model: Any = None
    # On TensorFlow, each split goes to Keras as one tf.data pipeline made at the first epoch and kept (False: as
    # arrays, each epoch, as on the other backends; the same batches either way, tested).
    pipelined: bool = True
    training: Any = None  # (pipeline, the order variable it reads each epoch), from ``_training``
    validation: Any = None  # from ``_validation``

    @classmethod
    def of(cls, data, study: Study, features: dict | None, i: int) -> Fold:
        """Fold ``i``'s arrays: the object store's as they are (uint8 images; the model casts on the device)."""
        seg = study.facts.masks

        def xy(split):
            s = data.split(split)
            x = s.images if features is None else features[f"{split}{i}"]
            return x, (s.masks[..., None].astype("float32") if seg else s.labels)

        return cls(data, *xy("train"), *xy("val"), seg=seg)

    def compile(self, train: Train, study: Study, lr: float) -> None:
        """At the start, and again when the fine-tuning stage begins."""
        from models.metrics import get_loss, training_metrics
        from models.optimizers import build_optimizer

        steps = math.ceil(len(self.x_train) / train.batch_size)
        optimizer = build_optimizer(
            train.optimizer,
            lr,
            weight_decay=train.weight_decay,
            schedule=train.lr_schedule,
            steps_per_epoch=steps,
            epochs=train.epochs,
        )
        loss = get_loss(train.loss or study.loss)
        # Up to STEPS_PER_EXECUTION steps in one call into the framework: the same steps in the same order (checked
        # bitwise), without Python's per-step dispatch, which was half of a head's epoch on TensorFlow.
        per_call = min(steps, STEPS_PER_EXECUTION)
        self.model.compile(
            optimizer=optimizer, loss=loss, metrics=training_metrics(study.task), steps_per_execution=per_call
        )
        # The optimizer's slots made now, eagerly: left to the first training step, TensorFlow traces that step once
        # to create them and again to run it (a 4-filter U-Net's first epoch: 7.4 s against 3.6 s). Same values.
        self.model.optimizer.build(self.model.trainable_variables)

    def epoch(self, epoch: int, train: Train, seed: int) -> dict[str, Any]:
        """Fit one epoch, then validate: this fold's metrics."""
        import keras

        from data_pipeline.augment import augment, epoch_seed
        from models.batchnorm import recompute_batchnorm_statistics

        xs, ys = self.x_train, self.y_train
        if train.online_augmentation:
            masks = self.data.train.masks if self.seg else None
            xs, masks = augment(self.data.train.images, masks, seed=epoch_seed(seed, epoch))
            ys = masks[..., None].astype("float32") if self.seg else ys
        model = self.model
        # Whatever draws from the global generators in this epoch (a layer made without a seed) draws the same in a
        # resumed trial as in an uninterrupted one.
        seed_globals(epoch_seed(seed, epoch))
        order = epoch_order(seed, epoch, len(xs))
        pipelined = self.pipelined and keras.backend.backend() == "tensorflow"
        if pipelined and xs is self.x_train:
            # One pipeline for every epoch: given arrays, Keras builds and traces a new one at each fit
            # (InceptionResNetV2's head, an epoch on 4,000 features, one thread: 0.46 s against 0.49 s).
            pipeline, order_now = self._training(train.batch_size)
            order_now.assign(order)
            hist = model.fit(pipeline, epochs=1, verbose=0, shuffle=False)
        else:
            hist = model.fit(xs[order], ys[order], batch_size=train.batch_size, epochs=1, verbose=0, shuffle=False)
        # Validation (and the checkpoint, test and export after it) scores the weights with BatchNorm statistics of
        # this epoch's training images, not moving averages that lag a few fast steps behind (models.batchnorm).
        recompute_batchnorm_statistics(model, xs, train.batch_size)
        if pipelined:
            val = model.evaluate(self._validation(train.batch_size), verbose=0, return_dict=True)
        else:
            val = model.evaluate(self.x_val, self.y_val, batch_size=train.batch_size, verbose=0, return_dict=True)
        metrics = {f"train_{k}": float(v[-1]) for k, v in hist.history.items()}
        metrics |= {f"val_{k}": float(v) for k, v in val.items()}
        # What the trial really ran with: the optimizer's class, its step count (epochs × ceil(n / batch size)) and
        # the learning rate its schedule gives now.
        opt = model.optimizer
        metrics |= {"optimizer_class": type(opt).__name__, "optimizer_steps": int(opt.iterations)}
        metrics |= {"batch_size": train.batch_size, "lr_now": float(keras.ops.convert_to_numpy(opt.learning_rate))}
        return metrics

    def _training(self, batch_size: int):
        """The training split as one pipeline of batches, in the order its variable holds when an epoch starts."""
        if self.training is None:
            import tensorflow as tf

            n = len(self.x_train)
            with tf.device("/CPU:0"):  # beside tf.data's functions, which run there, not on a GPU (not tried on one)
                x, y = tf.constant(self.x_train), tf.constant(self.y_train)
                order = tf.Variable(tf.range(n, dtype=tf.int64), trainable=False)

            def batch(b):
                rows = order[b * batch_size : tf.minimum((b + 1) * batch_size, n)]
                return tf.gather(x, rows), tf.gather(y, rows)

            batches = tf.data.Dataset.range(math.ceil(n / batch_size)).map(batch)
            self.training = (batches.prefetch(tf.data.AUTOTUNE), order)
        return self.training

    def _validation(self, batch_size: int):
        """The validation split batched once for every epoch: given arrays, Keras builds (and traces) a new input
        pipeline at each ``evaluate`` (TensorFlow: 0.1 s of a head's 0.5 s epoch). The same batches in the same order,
        so the same metrics (tested)."""
        if self.validation is None:
            import tensorflow as tf

            self.validation = tf.data.Dataset.from_tensor_slices((self.x_val, self.y_val)).batch(batch_size)
        return self.validation
