"""The speed levers, each exact: the frozen-backbone feature cache (same weights, same batches -> same head outputs
and metrics), the JAX compile cache (later trials load compiled programs, measured through `sweep bench`), bf16 only
where the GPU has it, and the scaling and summaries behind `sweep bench`."""

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_pipeline import DataConfig, prepare
from search.study.spec import SpecError, Train, load_study, merge
from search.sweep.bench import (
    BY_HAND,
    SERVICE_WAY,
    SLUGS,
    STUDY_WAY,
    WAYS,
    ReadInTrial,
    breakdown,
    by_hand_overrides,
    comparison,
    full_scale,
    same_best,
    scale_overrides,
    study_way_overrides,
    to_markdown,
    trial_count,
    way_summary,
)
from search.sweep.features import feature_cache_off_because
from search.sweep.gpu import BusySampler, resolve_mixed_precision

ROOT = Path(__file__).parent.parent
CLASSIFICATION = {"train": {"weights": None}}  # the built-in grid without the (absent) ImageNet weights


# ---- feature cache -------------------------------------------------------------------------------------------------


def _head_task(seed, n):
    """A head's tiny task: random 16-float features, n training and 10 validation rows of 4 classes, and the
    quickstart study's training settings at batches of 8."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 16)).astype("float32"), rng.integers(0, 4, n).astype("int32")
    xv, yv = rng.normal(size=(10, 16)).astype("float32"), rng.integers(0, 4, 10).astype("int32")
    study = load_study("classification", "quickstart")
    return x, y, xv, yv, study, replace(study.train, batch_size=8)


def _classifier(dropout, name="inception_resnet_v2", size=75, **hp):
    import keras

    import models

    keras.utils.set_random_seed(7)
    return models.build(name, num_classes=4, input_shape=(size, size, 3), dropout=dropout, seed=7, **hp)


def _compile(model, optimizer=None):
    import keras

    from models.metrics import get_loss, training_metrics

    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(0.01),
        loss=get_loss("categorical_crossentropy"),
        metrics=training_metrics("classification"),
    )


def test_head_on_cached_features_trains_exactly_like_the_whole_classifier(dropout=0.4):
    """Built with one seed, the whole classifier (its backbone drawn first) and the head alone start from the same
    weights and dropout stream; same batches: the whole classifier trained on images and the head alone (what a trial on
    a frozen backbone builds and trains) trained on the backbone's features end with the same weights, predictions
    and metrics (the dropout masks included). Both standardize the features (as trials on a random backbone do),
    each fitting its standardization on the training features. The features are computed in batches of the training
    batches' size, so both paths round alike: computed 32 at a time instead, float rounding in the backbone (about
    1e-7 of a feature), scaled up by the standardization and by Adam's first steps, moves a few weights by up to
    2.4e-4 after three steps."""
    import keras

    import models
    from models.classifiers import STANDARDIZE, feature_extractor, fit_standardization

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 75, 75, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 24).astype("int32")
    whole = _classifier(dropout, standardize_features=True)
    features = feature_extractor(whole).predict(images, batch_size=8, verbose=0)  # the training batches
    fit_standardization(whole, features)
    standardized = np.asarray(whole.get_layer(STANDARDIZE)(features))
    np.testing.assert_allclose(standardized.mean(axis=0), 0, atol=1e-4)  # centred; one pooled scale, unit on average
    assert standardized.var(axis=0).mean() == pytest.approx(1, rel=1e-3)
    hp = {"num_classes": 4, "dropout": dropout, "standardize_features": True}
    keras.utils.set_random_seed(99)  # another global random state than the whole model's: the seed alone decides
    head = models.build_head("inception_resnet_v2", feature_shape=features.shape[1:], seed=7, **hp)
    fit_standardization(head, features)
    for layer in (layer for layer in head.layers if layer.trainable_weights):  # the whole model's, by name
        for a, b in zip(layer.trainable_weights, whole.get_layer(layer.name).trainable_weights, strict=True):
            np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    trained = [layer for layer in head.layers if layer.weights]  # the standardization's statistics too
    masks = whole.get_layer("dropout").seed_generator.state  # the same dropout masks: the same seed
    np.testing.assert_array_equal(
        np.asarray(head.get_layer("dropout").seed_generator.state.value), np.asarray(masks.value)
    )
    _compile(whole)
    _compile(head)
    for batch in (slice(0, 8), slice(8, 16), slice(16, 24)):
        loss_whole = whole.train_on_batch(images[batch], labels[batch], return_dict=True)
        loss_head = head.train_on_batch(features[batch], labels[batch], return_dict=True)
        assert loss_head["loss"] == pytest.approx(loss_whole["loss"], rel=1e-4, abs=1e-5)
    for layer in trained:
        for a, b in zip(layer.weights, whole.get_layer(layer.name).weights, strict=True):
            np.testing.assert_allclose(np.asarray(a.value), np.asarray(b.value), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head.predict(features, verbose=0), whole.predict(images, verbose=0), atol=1e-5)
    on_images = whole.evaluate(images, labels, verbose=0, return_dict=True)
    on_features = head.evaluate(features, labels, verbose=0, return_dict=True)
    assert on_features == pytest.approx(on_images, rel=1e-4, abs=1e-5)


def test_several_steps_per_call_and_pipelines_train_exactly_as_one_step_per_call_on_arrays(monkeypatch):
    """The trial's epochs run STEPS_PER_EXECUTION steps per call into the framework, fed by pipelines kept for the
    whole trial: a head with dropout trained two epochs that way ends bitwise where one step per call on arrays
    ends, metrics and optimizer steps included, with a training set that is not a whole number of calls or batches
    (70 images, batches of 8: 9 steps, in calls of 4). Its validation metrics are Keras's evaluate on the arrays,
    and its batches visit the epoch's order."""
    import models
    from search.sweep import trial

    x, y, xv, yv, study, train = _head_task(0, 70)
    ends = []
    for per_call, pipelined in ((1, False), (4, True)):
        monkeypatch.setattr(trial, "STEPS_PER_EXECUTION", per_call)
        fold = trial.Fold(None, x, y, xv, yv, seg=False, pipelined=pipelined)
        fold.model = models.build_head("inception_resnet_v2", feature_shape=(16,), num_classes=4, dropout=0.4, seed=3)
        fold.compile(train, study, 0.01)
        assert fold.model.steps_per_execution == per_call
        metrics = []
        for epoch in range(2):
            metrics.append(fold.epoch(epoch, train, seed=5))
            # validation batched once per trial scores as Keras's evaluate on the arrays (10 images: 8 + 2)
            again = fold.model.evaluate(xv, yv, batch_size=8, verbose=0, return_dict=True)
            assert {f"val_{k}": float(v) for k, v in again.items()}.items() <= metrics[-1].items()
        ends.append((metrics, [np.asarray(w) for w in fold.model.get_weights()]))
    (one, weights_one), (several, weights_several) = ends
    assert one == several and one[-1]["optimizer_steps"] == 18
    for a, b in zip(weights_one, weights_several, strict=True):
        np.testing.assert_array_equal(a, b)
    pipeline, order = fold.training
    visited = np.concatenate([np.asarray(xb) for xb, _ in pipeline])
    np.testing.assert_array_equal(visited, x[np.asarray(order)])  # the last epoch's order, which is the epoch's own
    last, before = trial.epoch_order(5, 1, 70), trial.epoch_order(5, 0, 70)
    np.testing.assert_array_equal(np.asarray(order), last)
    assert sorted(last) == list(range(70)) and last.tolist() != before.tolist()


def test_an_epoch_seeds_the_global_generators_as_keras_does_and_trains_the_same_without_tensorflows_seed(monkeypatch):
    """An epoch seeds Python's, NumPy's and Keras's global generators as ``keras.utils.set_random_seed`` does (the
    same draws after), but not TensorFlow's global seed, whose setting clears TensorFlow's caches: a head with
    dropout trained three epochs ends bitwise where it ends when every epoch also sets TensorFlow's seed, so
    nothing in an epoch draws from it."""
    import random

    import keras

    import models
    from search.sweep import trial

    def draws():
        return random.random(), float(np.random.rand()), keras.ops.convert_to_numpy(keras.random.uniform((3,))).tolist()

    keras.utils.set_random_seed(11)
    theirs = draws()
    trial.seed_globals(11)
    assert draws() == theirs

    x, y, xv, yv, study, train = _head_task(1, 50)
    ends = []
    for seeding in (trial.seed_globals, keras.utils.set_random_seed):
        monkeypatch.setattr(trial, "seed_globals", seeding)
        fold = trial.Fold(None, x, y, xv, yv, seg=False)
        fold.model = models.build_head("inception_resnet_v2", feature_shape=(16,), num_classes=4, dropout=0.5, seed=3)
        fold.compile(train, study, 0.01)
        metrics = [fold.epoch(epoch, train, seed=5) for epoch in range(3)]
        ends.append((metrics, [np.asarray(w) for w in fold.model.get_weights()]))
    (ours, weights_ours), (keras_own, weights_keras) = ends
    assert ours == keras_own
    for a, b in zip(weights_ours, weights_keras, strict=True):
        np.testing.assert_array_equal(a, b)


def test_features_are_computed_once_per_image_on_a_node_and_keyed_on_what_they_depend_on(tmp_path):
    """Two trials at once need a backbone's features: one builds the backbone, and each image's features are
    computed by one of them and read by the other. Images already seen are never computed again, whatever split or
    set they come in; another seed (a random backbone), input size, backend or precision is another backbone."""
    from search.sweep.features import Backbone, backbone_features

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    backbone = Backbone("efficientnetv2_b0", 32, None, 3, "tensorflow", None)
    splits = {"train": images[:4], "val": images[4:], "again": images[:2]}  # "again": seen in train already
    results = []
    threads = [threading.Thread(target=lambda: results.append(backbone_features(backbone, splits, tmp_path)))]
    threads.append(threading.Thread(target=lambda: results.append(backbone_features(backbone, splits, tmp_path))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((r.computed, r.read) for r in results) == [(0, 8), (6, 2)]
    first, second = results
    for name in splits:
        np.testing.assert_array_equal(first.by_split[name], second.by_split[name])
    np.testing.assert_array_equal(first.by_split["again"], first.by_split["train"][:2])
    entry = tmp_path / "features" / backbone.key()
    assert sorted(p.name for p in entry.iterdir() if not p.name.startswith(("chunk-", "part-"))) == [
        "backbone.json",
        "backbone.weights.h5",
    ]
    assert not list(entry.glob(".sweep-tmp-*"))  # no temporary file left

    more = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    later = backbone_features(backbone, {"test": np.concatenate([images[:1], more])}, tmp_path)
    assert (later.computed, later.read, later.digest) == (3, 1, first.digest)  # only the new images
    keys = {
        Backbone("efficientnetv2_b0", 32, None, 4, "tensorflow", None).key(),
        Backbone("efficientnetv2_b0", 48, None, 3, "tensorflow", None).key(),
        Backbone("efficientnetv2_b0", 32, None, 3, "jax", None).key(),
        Backbone("efficientnetv2_b0", 32, None, 3, "tensorflow", "mixed_bfloat16").key(),
        Backbone("resnet50", 32, None, 3, "tensorflow", None).key(),
    }
    assert backbone.key() not in keys and len(keys) == 5


def test_trials_that_need_the_same_features_compute_different_parts_side_by_side(tmp_path, monkeypatch):
    """The images are computed in parts, each under its own lock: a trial skips a part another is computing,
    computes every other part first, then waits for that one (and computes it if the other left it undone). Two
    trials at once share the work: between them each image is computed exactly once, and both read the same
    features."""
    from filelock import FileLock

    from search.sweep import features as f

    monkeypatch.setattr(f, "PART_IMAGES", 3)  # 12 images: 4 parts
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    splits = {"train": images[:8], "val": images[8:]}
    backbone = f.Backbone("efficientnetv2_b0", 32, None, 5, "tensorflow", None)
    parts = f.parts_of(f.image_hashes(images))
    assert len(parts) == 4 and sorted(h for p in parts for h in p) == sorted(set(f.image_hashes(images)))

    entry = tmp_path / "features" / backbone.key()
    stranger = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    f.backbone_features(backbone, {"first": stranger}, tmp_path)  # the entry, none of these images' features yet
    held = FileLock(str(entry / f"part-{f._name(parts[0])}.lock"))
    held.acquire()  # another trial computes part 0 and dies before it writes it
    done = []
    worker = threading.Thread(target=lambda: done.append(f.backbone_features(backbone, splits, tmp_path)))
    worker.start()
    deadline = time.monotonic() + 120
    while len(list(entry.glob("chunk-*.npz"))) < 1 + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert len(list(entry.glob("chunk-*.npz"))) == 1 + 3 and worker.is_alive()  # the others done; waits for part 0
    held.release()
    worker.join()
    assert (done[0].computed, done[0].read) == (12, 0) and len(list(entry.glob("chunk-*.npz"))) == 1 + 4

    other = f.Backbone("efficientnetv2_b0", 32, None, 6, "tensorflow", None)
    results = []
    pair = [threading.Thread(target=lambda: results.append(f.backbone_features(other, splits, tmp_path)))]
    pair.append(threading.Thread(target=lambda: results.append(f.backbone_features(other, splits, tmp_path))))
    for t in pair:
        t.start()
    for t in pair:
        t.join()
    assert sum(r.computed for r in results) == 12 and all(r.computed + r.read == 12 for r in results)
    for name in splits:
        np.testing.assert_array_equal(results[0].by_split[name], results[1].by_split[name])
    alone = f.backbone_features(other, splits, tmp_path / "alone")  # one trial, every part: the same features
    for name in splits:
        np.testing.assert_allclose(results[0].by_split[name], alone.by_split[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "train, task, reason",
    [
        ({}, "classification", None),
        ({"feature_cache": False}, "classification", "train.feature_cache is off"),
        ({}, "segmentation", "no frozen backbone"),
        ({"freeze_backbone": False}, "classification", "the backbone trains"),
        ({"fine_tune_layers": 20}, "classification", "fine-tuning stage"),
        ({"online_augmentation": True}, "classification", "online augmentation"),
    ],
)
def test_feature_cache_switches_off_where_it_would_not_be_exact(train, task, reason):
    import models

    info = models.get("inception_resnet_v2" if task == "classification" else "unet")
    got = feature_cache_off_because(info, replace(Train(feature_cache=True, freeze_backbone=True), **train))
    assert got == reason if reason is None else reason in got


# ---- compile cache, precision, GPU sampling --------------------------------------------------------------------------


def test_bf16_only_where_the_gpu_runs_it():
    assert resolve_mixed_precision("auto", (9, 0)) == "mixed_bfloat16"
    assert resolve_mixed_precision("auto", (8, 0)) == "mixed_bfloat16"
    assert resolve_mixed_precision("auto", (7, 5)) is None  # Turing: no bf16 tensor cores
    assert resolve_mixed_precision("auto", None) is None  # CPU
    assert resolve_mixed_precision("mixed_float16", None) == "mixed_float16"  # an explicit choice stays
    assert resolve_mixed_precision(None, (9, 0)) is None


def test_gpu_busy_sampler_says_nothing_without_a_gpu():
    with BusySampler(interval=0.05) as busy:
        threading.Event().wait(0.2)
    assert busy.devices == 0 and busy.mean is None


def test_spec_takes_the_new_settings_and_rejects_impossible_ones(tmp_path):
    study = load_study("segmentation", overrides={"train": {"mixed_precision": "auto"}})
    assert study.train.mixed_precision == "auto" and study.resources.max_concurrent_trials == 0
    with pytest.raises(SpecError) as err:
        load_study(
            "segmentation",
            overrides={
                "train": {"mixed_precision": "fp8", "feature_cache": "yes"},
                "resources": {"max_concurrent_trials": -1},
            },
        )
    for expected in (
        "train.mixed_precision: 'fp8'",
        "train.feature_cache: 'yes' must be true or false",
        "max_concurrent_trials",
    ):
        assert expected in str(err.value)


# ---- sweep bench: scaling and summaries ------------------------------------------------------------------------------


def test_scaling_keeps_every_model_and_thins_the_grid_from_its_middle():
    full = load_study("classification", overrides=CLASSIFICATION)
    assert trial_count(full) == 48
    over = scale_overrides(full, fraction=0.25, epochs=6, image_size=96)
    scaled = load_study("classification", overrides=merge(CLASSIFICATION, over))
    assert scaled.space["model"] == full.space["model"] and trial_count(scaled) <= 12
    assert scaled.space["lr"] == [0.01, 0.001] and scaled.space["dropout"] == [0.2]
    assert scaled.train.epochs == 6 and scaled.scheduler.grace_period == 1 and scaled.data.image_size == 96
    assert full_scale(full, scaled) == pytest.approx(48 / trial_count(scaled) * 10 * (331 / 96) ** 2)
    assert trial_count(load_study("classification", overrides=merge(CLASSIFICATION, scale_overrides(full)))) == 48
    with pytest.raises(SpecError, match="fraction"):
        scale_overrides(full, fraction=0)


def test_data_scale_grows_a_sized_synthetic_set_only(tmp_path):
    """--data-scale multiplies the smoke preset's synthetic set (and its balancing) so validation holds enough images
    for trials to differ; the estimate for the full study divides the images back out; a user's folder and a
    synthetic set at its own size are left as they are."""
    smoke = load_study("classification", "smoke")
    big = load_study("classification", "smoke", scale_overrides(smoke, data_scale=4))
    assert big.data.synthetic_counts == tuple(4 * n for n in smoke.data.synthetic_counts) == (40, 64, 60, 48)
    assert big.data.balance_to == 4 * smoke.data.balance_to
    assert full_scale(smoke, big) == pytest.approx(1 / 4)
    assert "data" not in scale_overrides(load_study("classification", overrides=CLASSIFICATION), data_scale=4)
    users = replace(smoke, data=replace(smoke.data, data_dir=str(tmp_path)))
    assert "data" not in scale_overrides(users, data_scale=4)
    with pytest.raises(SpecError, match="data-scale"):
        scale_overrides(smoke, data_scale=0)


def test_the_studys_way_is_sequential_all_epochs_no_caches():
    service = load_study("segmentation", "smoke")
    way = load_study("segmentation", "smoke", study_way_overrides(service))
    assert way.resources.max_concurrent_trials == 1 and way.scheduler.grace_period == way.train.epochs
    assert not way.train.feature_cache and not way.train.compile_cache and way.train.mixed_precision is None
    assert not way.train.trial_threads  # the notebook's TensorFlow spans the machine
    assert way.space == service.space and way.data == service.data


def test_ray_tune_by_hand_drops_the_levers_and_reads_its_own_files(synth_root, tmp_path):
    service = load_study("segmentation", "smoke")
    by_hand = load_study("segmentation", "smoke", by_hand_overrides())
    assert not by_hand.train.feature_cache and not by_hand.train.compile_cache and by_hand.train.mixed_precision is None
    assert not by_hand.train.trial_threads and service.train.trial_threads
    assert by_hand.space == service.space and by_hand.scheduler == service.scheduler
    assert by_hand.resources == service.resources  # side by side, as many as fit, like the service
    cfg = DataConfig(task="segmentation", data_dir=str(synth_root), image_size=32, balance_to=None)
    shared = prepare(cfg, cache_dir=tmp_path / "cache")
    read = ReadInTrial({2: cfg})
    assert list(read) == [2] and len(read) == 1
    own = read[2]  # decoded again from the files, in a cache of its own that is gone afterwards
    for split in ("train", "val", "test"):
        assert np.array_equal(own.split(split).images, shared.split(split).images)
        assert np.array_equal(own.split(split).masks, shared.split(split).masks)


def test_way_summary_counts_images_and_picks_on_validation():
    frame = pd.DataFrame(
        {
            "model": ["a", "a", "b"],
            "option": [1, 2, 2],
            "lr": [0.01, 0.001, 0.01],
            "dropout": [0.2, 0.2, 0.0],
            "epochs": [3, 1, 2],
            "val_accuracy": [0.5, 0.9, 0.7],
            "test_accuracy": [0.99, 0.1, 0.2],
            "first_epoch_overhead_seconds": [2.0, None, 1.0],
        }
    )
    s = way_summary(frame, 10.0, {1: 100, 2: 50}, None, {}, "val_accuracy")
    assert s["train_images_per_second"] == pytest.approx((300 + 50 + 100) / 10)
    assert s["epochs_run"] == 6 and s["first_epoch_overhead_seconds"] == 3.0 and s["compile_cache_hits"] is None
    assert s["best"] == "a option 2, lr 0.001, dropout 0.2" and s["best_val_accuracy"] == 0.9
    assert s["trials_at_best"] == 1 and s["start_up_seconds"] is None and s["fit_seconds_summed"] is None
    by_hand, service = {**s, "wall_seconds": 5.0}, {**s, "wall_seconds": 2.5}
    ways = dict(zip(WAYS, (s, by_hand, service)))
    assert comparison(ways) == {"speedup_wall": 4.0, "speedup_vs_by_hand": 2.0, "same_best": True}
    assert comparison({**ways, BY_HAND: {**by_hand, "best": "b"}})["same_best"] is False
    text = to_markdown(ways, {"speedup_wall": 4.0})
    assert "| wall_seconds" in text and "n/a" in text and "- speedup_wall: 4.00" in text
    assert [c.strip() for c in text.splitlines()[0].split("|")[2:5]] == list(WAYS)


def test_breakdown_sums_the_trials_phases_and_reads_the_drivers():
    frame = pd.DataFrame(
        {
            "build_seconds": [4.0, 5.0, None],  # a trial that failed before its first report
            "feature_seconds": [30.0, 0.5, None],  # the first trial computed, the second read them
            "fit_seconds": [20.0, 10.0, None],
            "checkpoint_seconds": [6.0, 3.0, None],
        }
    )
    timings = {"start_up": 12.0, "trials": 50.0, "test_scoring": 8.0, "extras": 3.0, "results": 0.5}
    assert breakdown(frame, timings) == {
        "start_up_seconds": 12.0,
        "build_seconds_summed": 9.0,
        "feature_seconds_summed": 30.5,
        "cost_seconds_summed": None,  # no cost objective: nothing measured as the models were built
        "fit_seconds_summed": 30.0,
        "checkpoint_seconds_summed": 9.0,
        "trials_seconds": 50.0,
        "test_scoring_seconds": 8.0,
        "finalize_seconds": 3.5,
    }
    older = breakdown(frame[["feature_seconds"]], {"trials": 50.0})  # trials or a driver that recorded less: n/a
    assert older["feature_seconds_summed"] == 30.5 and older["fit_seconds_summed"] is None
    assert older["start_up_seconds"] is None and older["finalize_seconds"] is None


def test_same_best_says_tie_when_a_ways_best_value_is_shared():
    frame = pd.DataFrame(
        {"model": ["a"] * 3, "lr": [0.01, 0.001, 0.1], "dropout": [0.2] * 3, "epochs": [2] * 3,
         "val_accuracy": [0.25, 0.25, 0.25]}
    )  # fmt: skip
    at_chance = way_summary(frame, 1.0, {1: 10}, None, {}, "val_accuracy")
    assert at_chance["trials_at_best"] == 3 and at_chance["best"] == "a, lr 0.01, dropout 0.2"  # the study's order
    assert same_best(dict.fromkeys(WAYS, at_chance)) == "tie"  # the same pick, but not a finding
    apart = way_summary(frame.assign(val_accuracy=[0.5, 0.75, 0.25]), 1.0, {1: 10}, None, {}, "val_accuracy")
    assert apart["trials_at_best"] == 1 and apart["best"] == "a, lr 0.001, dropout 0.2"
    assert same_best(dict.fromkeys(WAYS, apart)) is True
    assert same_best({**dict.fromkeys(WAYS, apart), BY_HAND: {**apart, "best": "b"}}) is False
    assert same_best({**dict.fromkeys(WAYS, apart), STUDY_WAY: at_chance}) == "tie"


def test_trials_differing_in_learning_rate_share_compiled_programs(tmp_path):
    """Two fresh processes, as two trials on one node: the first compiles the U-Net's programs into the cache, the
    second, with another learning rate, loads every one of them (the learning rate is a variable, not a constant)."""
    script = ROOT / "tests" / "scripts" / "compile_cache_epoch.py"

    def trial(lr):
        proc = subprocess.run(
            [sys.executable, script, tmp_path / "cache", lr],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first, second = trial("0.01"), trial("0.001")
    assert first["misses"] > 0 and first["hits"] == 0
    assert second["hits"] >= first["misses"] and second["misses"] == 0
    assert any((tmp_path / "cache" / "jax-compile").iterdir())


def test_only_static_shapes_pad_a_part_to_whole_batches():
    from search.sweep.features import padded_count

    assert [padded_count(n, 4, True) for n in (0, 1, 4, 5)] == [0, 4, 4, 8]
    assert [padded_count(n, 4, False) for n in (0, 1, 4, 5)] == [0, 1, 4, 5]


def test_features_on_jax_run_every_part_in_one_compiled_shape(tmp_path):
    """JAX compiles a program per input shape, and each part of a backbone's features ended in a batch of its own
    size: on the GPU most of a sweep's feature time was compiling. Two parts of 3 and 5 images in batches of 4: the
    second compiles nothing (unpadded, its batches of 4 and 1 compiled two programs), and the padded rows change no
    image's features (as the backbone predicts each image alone)."""
    proc = subprocess.run(
        [sys.executable, ROOT / "tests" / "scripts" / "feature_shapes.py", tmp_path / "cache"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["misses"][0] > 0 and out["misses"][1] == 0
    assert out["computed"] == 5 and out["max_diff"] < 1e-5


def test_sweep_bench_runs_three_ways_side_by_side(tmp_path):
    """`sweep bench` for real on a tiny segmentation study: the study's way runs every epoch of every trial one at a
    time; Ray Tune by hand and the service's way run them side by side with ASHA, by hand without the service's
    levers and with every trial decoding its own images; the table and bench.json are written."""
    args = ["bench", "segmentation", "--preset", "smoke", "--fraction", "0.5", "--epochs", "2", "--data-scale", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "search", *args, "--storage", str(tmp_path), "--name", "b"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    study_way, by_hand, service_way = (bench["ways"][w] for w in WAYS)
    assert study_way["trials"] == by_hand["trials"] == service_way["trials"] == 2
    assert study_way["epochs_run"] == 2 * 2  # all epochs, no early stopping
    assert study_way["wall_seconds"] > 0 and service_way["train_images_per_second"] > 0
    assert study_way["compile_cache_hits"] is None  # TensorFlow: no persistent compilation cache
    assert bench["speedup_wall"] == pytest.approx(study_way["wall_seconds"] / service_way["wall_seconds"])
    assert bench["speedup_vs_by_hand"] == pytest.approx(by_hand["wall_seconds"] / service_way["wall_seconds"])
    tied = any(w["trials_at_best"] > 1 for w in (study_way, by_hand, service_way))
    assert bench["same_best"] == ("tie" if tied else study_way["best"] == by_hand["best"] == service_way["best"])
    assert bench["trials in the full study"] == 4 and bench["backend"] == "tensorflow"
    for way in (study_way, by_hand, service_way):  # the breakdown: the driver's phases fit inside the way's wall time
        phases = [way[k] for k in ("start_up_seconds", "trials_seconds", "test_scoring_seconds", "finalize_seconds")]
        assert all(p > 0 for p in phases) and sum(phases) <= way["wall_seconds"], way
        assert all(way[f"{c}_summed"] > 0 for c in ("build_seconds", "fit_seconds", "checkpoint_seconds")), way
        assert way["feature_seconds_summed"] == 0, way  # segmenters have no frozen backbone
    assert "| train_images_per_second" in proc.stdout and "Ray Tune by hand" in proc.stdout
    assert "| start_up_seconds" in proc.stdout and "| checkpoint_seconds_summed" in proc.stdout
    sweeps = {w: json.loads((tmp_path / "b" / SLUGS[w] / "sweep.json").read_text())["study"] for w in WAYS}
    assert sweeps[STUDY_WAY]["resources"]["max_concurrent_trials"] == 1
    assert sweeps[STUDY_WAY]["scheduler"]["grace_period"] == 2
    for way in (BY_HAND, SERVICE_WAY):  # both in parallel with ASHA's own grace period
        assert sweeps[way]["resources"]["max_concurrent_trials"] == 0 and sweeps[way]["scheduler"]["grace_period"] == 1
    assert sweeps[BY_HAND]["train"]["compile_cache"] is False and sweeps[BY_HAND]["train"]["mixed_precision"] is None
    assert sweeps[SERVICE_WAY]["train"]["compile_cache"] is True
