"""Precise BatchNorm: the moving statistics that validation and test use, recomputed over the training images.

A model that trains its BatchNorm layers (a CNN from scratch, a backbone fine-tuned whole) validates with moving
averages of the batch statistics of its last few steps. On a small set (~10-20 steps an epoch, weights that still
move fast) those averages lag behind the weights, and the validation metric swings from epoch to epoch although
the model's batch-statistics predictions do not. Recomputing them over the training images after each epoch's fit
("precise BN", Wu & Johnson 2021; fvcore's ``update_bn_stats``) makes validation score the weights as they are.
"""

from __future__ import annotations

import keras


def trained_batchnorms(model: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """The BatchNormalization layers that update their moving statistics in training: trainable ones, nested models
    included (a frozen layer or backbone keeps its statistics, e.g. ImageNet's)."""
    found = []
    for layer in getattr(model, "layers", ()):
        if not layer.trainable:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        else:
            found += trained_batchnorms(layer)
    return found


def recompute_batchnorm_statistics(model: keras.Model, images, batch_size: int) -> int:
    """Set every trained BatchNorm layer's moving mean and variance to the mean of its batch statistics over
    ``images``, batch by batch, as fvcore's ``update_bn_stats``: each full batch (all of ``images`` when there are
    fewer) runs forward in training mode, compiled, with the layers' momentum at 0 so that each leaves its batch's
    statistics, which are then averaged. Weights do not change; a frozen backbone called in inference mode is not
    touched. Returns how many layers were updated (0: the model has none, nothing ran)."""
    layers = trained_batchnorms(model)
    if not layers or not len(images):
        return 0
    statistics = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    size = min(batch_size, len(images))
    starts = range(0, len(images) - size + 1, size)  # full batches only: one shape, one compiled program
    sums = [0.0] * len(statistics)
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0  # moving = the batch's own statistics (training mode normalises with those anyway)
        forward = _forward_in_training_mode(model)
        for start in starts:
            forward(images[start : start + size])
            sums = [total + keras.ops.convert_to_numpy(v.value) for total, v in zip(sums, statistics)]
        for total, variable in zip(sums, statistics):
            variable.assign(total / len(starts))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


def _forward_in_training_mode(model: keras.Model):
    """``model(x, training=True)`` as one compiled program (eager, op by op, it took as long as the epoch's
    training on small CNNs), updating the model's non-trainable variables. Traced anew on each call of
    ``recompute_batchnorm_statistics``: the momentum it reads is fixed when it is traced."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x: model(x, training=True))
    if backend == "jax":
        import jax

        step = jax.jit(lambda trainable, fixed, x: model.stateless_call(trainable, fixed, x, training=True)[1])
        trainable = [v.value for v in model.trainable_variables]

        def forward(x):
            fixed = step(trainable, [v.value for v in model.non_trainable_variables], x)
            for variable, value in zip(model.non_trainable_variables, fixed):
                variable.assign(value)

        return forward
    return lambda x: model(x, training=True)
