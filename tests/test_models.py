"""The model registry: names, facts, validation, the study's parameter count, weights handling, fine-tuning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_legacy_h5

import models
from models.classifiers import unfreeze_top
from models.tasks import task_info

SCRIPT = Path(__file__).parent / "scripts" / "train_step.py"
ROOT = Path(__file__).parent.parent


def test_registry_lists_the_studys_models():
    assert models.list_models("classification") == [
        "convnext_base",
        "convnext_tiny",
        "custom_cnn",
        "efficientnetv2_b0",
        "efficientnetv2_l",
        "efficientnetv2_s",
        "inception_resnet_v2",
        "nasnet_large",
        "resnet50",
        "vgg16",
    ]
    assert models.list_models("segmentation") == [
        "deeplabv3_plus",
        "fcn8",
        "unet",
        "unet_fpn",
        "unet_fpn_gelu",
        "unet_xception",
    ]
    assert models.list_models() == sorted(models.list_models("classification") + models.list_models("segmentation"))


def test_entries_carry_their_facts():
    nas = models.get("nasnet_large")
    assert nas.imagenet_input_size == 331 and nas.min_input_size == 32 and "dropout" in nas.hyperparameters
    assert models.get("unet").size_multiple == 16 and models.get("unet").imagenet_weights is None


def test_preprocess_input_is_what_the_model_does_inside():
    x = np.array([[0.0, 127.5, 255.0]])
    np.testing.assert_allclose(models.get("inception_resnet_v2").preprocess_input(x.copy()), [[-1.0, 0.0, 1.0]])
    np.testing.assert_allclose(models.get("unet").preprocess_input(x), [[0.0, 0.5, 1.0]])
    model = models.build("unet", num_classes=1, input_shape=(32, 32, 3), base_filters=4)
    img = np.full((1, 32, 32, 3), 255.0, "float32")
    np.testing.assert_allclose(np.asarray(model.get_layer("preprocess")(img)), 1.0)


def test_unknown_model_lists_valid_names():
    with pytest.raises(models.ModelError, match=r"unknown model 'resnet18'.*inception_resnet_v2, nasnet_large"):
        models.build("resnet18", num_classes=4, input_shape=(224, 224, 3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dropout": 1.5}, "dropout must be in"),
        ({"learning_rate": 0.1}, "does not take learning_rate"),
        ({"input_shape": (50, 50, 3)}, "needs input_size divisible by 16"),
        ({"input_shape": (16, 16, 3)}, "needs input_size >= 32"),
        ({"num_classes": 3}, "num_classes must be 1"),
        ({"mixed_precision": "float8"}, "mixed_precision must be"),
    ],
)
def test_impossible_settings_rejected(kwargs, message):
    args = {"num_classes": 1, "input_shape": (32, 32, 3), **kwargs}
    with pytest.raises(models.ModelError, match=message):
        models.build("unet", **args)


def test_inception_resnet_v2_head_has_the_studys_394500_trainable_parameters():
    model = models.build("inception_resnet_v2", num_classes=4, input_shape=(75, 75, 3), dropout=0.4)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 394_500
    assert model.count_params() > 54_000_000  # the frozen backbone is really there


def test_imagenet_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(models.WeightsUnavailableError) as err:
        models.build("inception_resnet_v2", num_classes=4, input_shape=(75, 75, 3), weights="imagenet")
    text = str(err.value)
    assert "never download" in text and "InceptionResNetV2(include_top=False, weights='imagenet')" in text
    assert str(tmp_path / "models") in text and "weights: null" in text
    with pytest.raises(models.ModelError, match="need input_size 331"):
        models.build("nasnet_large", num_classes=4, input_shape=(224, 224, 3), weights="imagenet")
    with pytest.raises(models.ModelError, match="has no ImageNet weights"):
        models.build("unet", num_classes=1, input_shape=(32, 32, 3), weights="imagenet")


def test_weights_from_a_file_and_from_the_keras_cache(tmp_path, monkeypatch):
    source = models.build("inception_resnet_v2", num_classes=2, input_shape=(75, 75, 3))
    backbone = source.get_layer("backbone")
    cached = tmp_path / "models" / models.get("inception_resnet_v2").imagenet_weights
    cached.parent.mkdir()
    save_legacy_h5(backbone, cached)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    for weights in ("imagenet", str(cached)):
        loaded = models.build("inception_resnet_v2", num_classes=2, input_shape=(75, 75, 3), weights=weights)
        a, b = backbone.weights[0], loaded.get_layer("backbone").weights[0]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(models.ModelError, match="does not exist"):
        models.build("inception_resnet_v2", num_classes=2, input_shape=(75, 75, 3), weights=str(tmp_path / "x.h5"))


def test_fine_tuning_unfreezes_top_layers_but_not_batchnorm():
    import keras

    model = models.build("inception_resnet_v2", num_classes=4, input_shape=(75, 75, 3))
    frozen = len(model.trainable_weights)
    n = unfreeze_top(model, 20)
    assert 0 < n <= 20 and len(model.trainable_weights) > frozen
    backbone = model.get_layer("backbone").layers
    top, below = backbone[-20:], backbone[:-20]
    batchnorm = [layer for layer in top if isinstance(layer, keras.layers.BatchNormalization)]
    assert batchnorm and not any(layer.trainable for layer in batchnorm)  # among the top 20, and kept frozen
    assert sum(layer.trainable for layer in top) == n and not any(layer.trainable for layer in below)

    # One fine-tuning step on images far from anything the statistics have seen: the unfrozen layers learn, and every
    # BatchNorm of the backbone stays as it was: in inference mode (its moving mean and variance do not move) and
    # not learning (its scale and offset do not either).
    def statistics():
        found = [layer for layer in backbone if isinstance(layer, keras.layers.BatchNormalization)]
        return [keras.ops.convert_to_numpy(v).copy() for layer in found for v in layer.weights]

    learned = [w for layer in top if layer.trainable for w in layer.trainable_weights]
    before, weights = statistics(), [keras.ops.convert_to_numpy(w).copy() for w in learned]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", run_eagerly=True)
    images = np.random.default_rng(0).uniform(200, 255, (4, 75, 75, 3)).astype("float32")
    model.train_on_batch(images, np.array([0, 1, 2, 3]))
    for a, b in zip(before, statistics(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, keras.ops.convert_to_numpy(w)) for a, w in zip(weights, learned))


# XLA's CPU backend without its LLVM optimisations: JAX compiles every operation of a model's build and its whole
# step, and those passes took most of the JAX share's time (custom_cnn, EfficientNetV2-B0 frozen and U-Net: 79 s
# against 146 s when the step still ran op by op). This test checks
# that each model builds, steps and predicts, not how fast the code XLA makes for it runs.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _start(backend: str, names: list[str]) -> subprocess.Popen:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "XLA_FLAGS": FAST_COMPILE}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *names], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _check(proc: subprocess.Popen, backend: str, names: list[str]) -> None:
    out, err = proc.communicate(timeout=1400)
    assert proc.returncode == 0, err[-3000:]
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["model"] for r in results] == names
    for r in results:
        assert r["backend"] == backend and np.isfinite(r["loss"]), r
        assert r["pred_dtype"] == "float32" and 0.0 <= r["pred_min"] <= r["pred_max"] <= 1.0, r
        if r["row_sums"] is not None:
            assert r["pred_shape"] == [2, 3] and np.allclose(r["row_sums"], 1.0, atol=1e-4)
        else:
            assert r["pred_shape"][0] == 2 and r["pred_shape"][-1] == 1
        # From scratch, every BatchNorm learns its batch statistics; a frozen backbone's keep ImageNet's.
        moved = 0 if r["model"].endswith(":frozen") else r["batchnorm_layers"]
        assert r["batchnorm_moved"] == moved, r
    has_batchnorm = {"custom_cnn", "resnet50", "efficientnetv2_b0"}  # from scratch: their BatchNorm really learned
    assert all(r["batchnorm_moved"] > 0 for r in results if r["model"] in has_batchnorm)


# Which classifiers take their step with the backbone frozen (forward only, BatchNorm in inference mode) rather than
# whole, from scratch. The study's two: their setting. EfficientNetV2-S/-L and ConvNeXt-Base: their from-scratch path
# is the same code as their small siblings', and a whole-network step of EfficientNetV2-L alone takes minutes of
# tracing on 2 cores. On JAX every pretrained-family backbone steps frozen: XLA compiling a whole-network gradient
# (EfficientNetV2-B0: about 7 minutes on a loaded 2-core machine) would cost CI minutes per model; TensorFlow steps
# ResNet50, VGG16, EfficientNetV2-B0 and ConvNeXt-Tiny whole, and custom_cnn trains whole on both.
STEP_FROZEN = {
    "tensorflow": {"inception_resnet_v2", "nasnet_large", "efficientnetv2_s", "efficientnetv2_l", "convnext_base"},
    "jax": set(models.list_models("classification")) - {"custom_cnn", "vgg16"},
}


# Stepped on TensorFlow only: on JAX each is the same keras.applications code as a smaller sibling that steps there
# (EfficientNetV2-B0, ConvNeXt-Tiny), and op-by-op JAX costs each about 30 s of CI's 2 cores.
JAX_SIBLINGS = {"efficientnetv2_s", "efficientnetv2_l", "convnext_base"}


def _step_names(backend: str) -> list[str]:
    names = [n for n in models.list_models() if backend != "jax" or n not in JAX_SIBLINGS]
    return [f"{n}:frozen" if n in STEP_FROZEN[backend] else n for n in names]


@pytest.mark.timeout(1500)  # a guard against a hang, not a speed target: about 10 minutes on 2 idle cores
def test_every_model_trains_one_step_on_tensorflow_and_jax():
    """Each backend in fresh processes (the backend is fixed per process), side by side on the two cores; JAX's
    share, the longer one (the build op by op and the step compiled by XLA), split between two processes: its
    classifiers, then its segmenters. Mixed precision rides along: its outputs must stay float32."""
    jax = _step_names("jax")
    segmenters = set(models.list_models("segmentation"))
    runs = [
        ("tensorflow", [*_step_names("tensorflow"), "unet@mixed_float16"]),
        ("jax", [n for n in jax if n.split(":")[0] not in segmenters] + ["inception_resnet_v2@mixed_bfloat16:frozen"]),
        ("jax", [n for n in jax if n in segmenters] + ["unet_fpn_gelu@mixed_bfloat16"]),
    ]
    procs = [_start(backend, names) for backend, names in runs]
    for (backend, names), proc in zip(runs, procs):
        _check(proc, backend, names)


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_caffe_scaling_inside_the_model_is_keras_preprocess_input(name):
    info = models.get(name)
    model = models.build(name, num_classes=2, input_shape=(32, 32, 3), freeze_backbone=False)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    inside = np.asarray(model.get_layer("preprocess")(x))
    np.testing.assert_allclose(inside, info.preprocess_input(x.copy()), atol=1e-4)
    assert not model.get_layer("preprocess").trainable_weights  # fixed, never learned


def test_self_normalising_backbones_take_raw_pixels():
    """EfficientNetV2 and ConvNeXt normalise inside (include_preprocessing): nothing of ours scales before them."""
    import keras

    for name in ("efficientnetv2_b0", "efficientnetv2_s", "efficientnetv2_l", "convnext_tiny", "convnext_base"):
        info = models.get(name)
        x = np.array([[0.0, 127.5, 255.0]])
        np.testing.assert_array_equal(info.preprocess_input(x.copy()), x)  # keras's placeholder: identity
        assert "inside the backbone" in info.preprocess
    model = models.build("efficientnetv2_b0", num_classes=2, input_shape=(32, 32, 3))
    assert model.layers[1].name == "backbone"  # straight from the input
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in model.get_layer("backbone").layers)


@pytest.mark.parametrize("name", models.list_models())  # every registered model, classifiers and segmenters
def test_imagenet_weights_file_is_the_one_keras_applications_asks_for(name, monkeypatch):
    """The registry's file name against keras.applications' own, for every model (or encoder) with ImageNet
    weights: Keras asks its downloader for that name. A model without them (trained from scratch) is refused
    ImageNet weights before anything is built."""
    import keras
    from keras.src.utils import file_utils

    info = models.get(name)
    if not info.imagenet_weights:
        assert info.keras_application is None, name  # a keras.applications backbone has weights
        classes = task_info(info.task).num_outputs(2)
        with pytest.raises(models.ModelError, match=f"{name} has no ImageNet weights"):
            models.build(name, num_classes=classes, input_shape=(64, 64, 3), weights="imagenet")
        return
    app, size = info.keras_application, info.imagenet_input_size or max(info.min_input_size, 32)

    asked = []

    def no_download(fname, *args, **kwargs):
        asked.append(fname)
        raise RuntimeError("no network in tests")

    monkeypatch.setattr(file_utils, "get_file", no_download)
    with pytest.raises(RuntimeError, match="no network"):
        getattr(keras.applications, app)(include_top=False, weights="imagenet", input_shape=(size, size, 3))
    assert asked == [info.imagenet_weights]
