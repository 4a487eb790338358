"""Issue 24: validation scores the weights with BatchNorm statistics of the training images (precise BN), not moving
averages that lag behind a few fast steps, so ASHA ranks configurations rather than noise."""

import numpy as np
import pytest

import models
from models.batchnorm import recompute_batchnorm_statistics, trained_batchnorms


def _cnn(**kw):
    return models.build("custom_cnn", num_classes=2, input_shape=(16, 16, 3), base_filters=4, blocks=2, **kw)


def _images(n=24, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 16, 16, 3)).astype("float32")


def test_statistics_are_the_mean_of_the_training_batches():
    import keras

    model, x = _cnn(), _images()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, np.arange(24) % 2, batch_size=8, epochs=1, verbose=0)  # moving averages of 3 steps: off
    weights = [w.numpy().copy() for w in model.trainable_weights]
    assert recompute_batchnorm_statistics(model, x, batch_size=8) == 2
    bn = model.get_layer("block0_bn")
    conv = keras.Model(model.input, model.get_layer("block0_conv").output)  # what the first BatchNorm sees
    batches = [keras.ops.convert_to_numpy(conv(x[i : i + 8])) for i in range(0, 24, 8)]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean((0, 1, 2)) for b in batches], 0), rtol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var((0, 1, 2)) for b in batches], 0), rtol=1e-3)
    assert bn.momentum == 0.9  # the layer's own momentum again, for the next epoch's training
    assert all(np.array_equal(w.numpy(), v) for w, v in zip(model.trainable_weights, weights))


def test_one_batch_makes_inference_what_training_mode_computes():
    """Over one batch, inference mode then normalises exactly as training mode does on that batch."""
    import keras

    model, x = _cnn(), _images(16)
    before = keras.ops.convert_to_numpy(model(x, training=False))
    recompute_batchnorm_statistics(model, x, batch_size=16)
    training = keras.ops.convert_to_numpy(model(x, training=True))
    assert not np.allclose(before, training, atol=1e-3)  # fresh moving statistics (0 and 1) are not the data's
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), training, atol=1e-4)


def test_frozen_batchnorm_keeps_its_statistics():
    model = _cnn()
    model.get_layer("block0_bn").trainable = False  # as a frozen backbone's or a fine-tuned one's
    kept = model.get_layer("block0_bn").moving_mean.numpy().copy()
    assert [layer.name for layer in trained_batchnorms(model)] == ["block1_bn"]
    assert recompute_batchnorm_statistics(model, _images(), batch_size=8) == 1
    np.testing.assert_array_equal(model.get_layer("block0_bn").moving_mean.numpy(), kept)
    assert recompute_batchnorm_statistics(models.build("unet", num_classes=1, input_shape=(32, 32, 3)), [], 8) == 0


def test_the_trial_validates_with_the_epochs_statistics():
    """The trial loop itself: with the whole training split in one batch, the model it validates predicts the
    training images in inference mode as training mode does; moving averages after one step (momentum 0.9) do not."""
    import keras

    from search.study.spec import load_study
    from search.sweep.runner import prepare_all
    from search.sweep.trial import Fold

    batch_size = 64
    overrides = {
        "space": {"model": ["custom_cnn"], "lr": [0.01], "dropout": [0.0]},
        "train": {"epochs": 1, "batch_size": batch_size, "base_filters": 4, "blocks": 2, "dense_units": 8},
        "data": {"image_size": 32, "synthetic_counts": [8, 8, 8, 8], "synthetic_size": 32},
        "scheduler": {"grace_period": 1},
    }
    study = load_study("classification", "quickstart", overrides)
    data = prepare_all(study)[study.data.option]
    assert len(data.train) <= batch_size
    train = study.trial_train({"model": "custom_cnn", "lr": 0.01, "dropout": 0.0})
    fit = Fold.of(data, study, None, 0)  # what the trial trains: one model on one split, one epoch per call
    keras.utils.set_random_seed(0)
    hp = {"base_filters": 4, "blocks": 2, "dense_units": 8, "dropout": 0.0}
    fit.model = models.build("custom_cnn", num_classes=len(data.classes), input_shape=(32, 32, 3), **hp)
    fit.compile(train, study, 0.01)
    metrics = fit.epoch(0, train, seed=0)
    model = fit.model
    x = data.train.images
    inference = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(inference, keras.ops.convert_to_numpy(model(x, training=True)), atol=1e-4)
    val = keras.ops.convert_to_numpy(model(data.val.images, training=False))
    labels = data.val.labels.argmax(-1) if data.val.labels.ndim > 1 else data.val.labels
    assert metrics["val_accuracy"] == pytest.approx(np.mean(val.argmax(-1) == labels), abs=1e-6)
