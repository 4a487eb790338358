"""The study's classifiers: a Keras Applications backbone plus the study's head.

RGB [0, 255] -> Rescaling to [-1, 1] (the backbones' preprocess_input) -> backbone (frozen by default)
-> global average pooling -> Dense(256, relu) -> Dropout(dropout) -> Dense(num_classes, softmax, float32)
"""

from __future__ import annotations

import keras
from keras import layers

from models.registry import register

BACKBONE = "backbone"  # the nested backbone model's name inside every classifier
FEATURES = "pool"  # the layer whose output the head reads: what a frozen backbone's feature cache holds
_HP = ("dropout", "freeze_backbone", "dense_units")


def _classifier(app, *, name, num_classes, input_shape, weights, dropout=0.0, freeze_backbone=True, dense_units=256):
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inputs)
    backbone = app(include_top=False, weights=weights, input_shape=input_shape, name=BACKBONE)
    backbone.trainable = not freeze_backbone
    # A frozen backbone runs in inference mode so its BatchNorm statistics stay ImageNet's (transfer learning).
    x = backbone(x, training=False) if freeze_backbone else backbone(x)
    x = layers.GlobalAveragePooling2D(name=FEATURES)(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


_FACTS = dict(task="classification", default_input_size=224, size_multiple=1, hyperparameters=_HP)


@register(
    "inception_resnet_v2",
    min_input_size=75,
    preprocess="x / 127.5 - 1 (inception_resnet_v2.preprocess_input), inside the model",
    preprocess_input=keras.applications.inception_resnet_v2.preprocess_input,
    imagenet_weights="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    keras_application="InceptionResNetV2",
    description="InceptionResNetV2 (keras.applications) with the study's 256-unit head",
    **_FACTS,
)
def inception_resnet_v2(**kw) -> keras.Model:
    return _classifier(keras.applications.InceptionResNetV2, name="inception_resnet_v2", **kw)


@register(
    "nasnet_large",
    min_input_size=32,
    preprocess="x / 127.5 - 1 (nasnet.preprocess_input), inside the model",
    preprocess_input=keras.applications.nasnet.preprocess_input,
    imagenet_weights="nasnet_large_no_top.h5",
    imagenet_input_size=331,
    keras_application="NASNetLarge",
    description="NASNetLarge (keras.applications) with the study's 256-unit head",
    **_FACTS,
)
def nasnet_large(**kw) -> keras.Model:
    return _classifier(keras.applications.NASNetLarge, name="nasnet_large", **kw)


def unfreeze_top(model: keras.Model, n_layers: int) -> int:
    """Fine-tuning stage: make the top ``n_layers`` backbone layers trainable (BatchNorm stays frozen).

    Returns how many layers were unfrozen. Recompile the model afterwards, at a lower learning rate.
    """
    backbone = model.get_layer(BACKBONE)
    backbone.trainable = True
    layers_ = backbone.layers
    for i, layer in enumerate(layers_):
        top = i >= len(layers_) - n_layers
        layer.trainable = top and not isinstance(layer, layers.BatchNormalization)
    return sum(layer.trainable for layer in layers_)


def split_at_features(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(extractor, head) of a classifier: image -> pooled backbone features, and features -> probabilities.

    The head reuses the classifier's own head layers (shared weights), so training the head on cached features
    trains ``model``: checkpoints and exports stay the whole classifier. Exact only while the backbone is frozen.
    """
    features = model.get_layer(FEATURES).output
    extractor = keras.Model(model.input, features, name=f"{model.name}_features")
    x = inputs = keras.Input(features.shape[1:], dtype=features.dtype, name="features")
    for layer in model.layers[model.layers.index(model.get_layer(FEATURES)) + 1 :]:
        x = layer(x)
    return extractor, keras.Model(inputs, x, name=f"{model.name}_head")


def backbone_digest(model: keras.Model) -> str:
    """A digest of the backbone's weights: features computed with equal weights are interchangeable."""
    import hashlib

    import numpy as np

    h = hashlib.blake2b(digest_size=16)
    for w in model.get_layer(BACKBONE).weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(w.value))
        h.update(f"{w.path}{value.shape}{value.dtype}".encode())
        h.update(value.data)
    return h.hexdigest()
