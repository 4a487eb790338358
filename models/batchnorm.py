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
    ``images`` (forward passes in training mode, batch by batch, with the momentum of a running mean), as fvcore's
    ``update_bn_stats``. Weights do not change; a frozen backbone called in inference mode is not touched.
    Returns how many layers were updated (0: the model has none, nothing ran)."""
    layers = trained_batchnorms(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        for i, start in enumerate(range(0, len(images), batch_size)):
            for layer in layers:  # moving = moving × momentum + batch × (1 − momentum): the mean of batches 0..i
                layer.momentum = i / (i + 1)
            model(images[start : start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)
