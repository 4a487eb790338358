"""Classifiers: a Keras Applications backbone plus the study's head, and a small CNN that trains from scratch.

RGB [0, 255] -> the backbone's own input scaling (a layer inside the model) -> backbone (frozen by default)
-> global average pooling -> [Normalization, with standardize_features] -> Dense(dense_units, relu) -> Dropout(dropout)
-> Dense(num_classes, softmax, float32)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.registry import CUSTOM_CNN_MAX_BLOCKS, FrozenBackbone, keras_function, register

if TYPE_CHECKING:
    import keras

BACKBONE = "backbone"  # the nested backbone model's name inside every classifier
FEATURES = "pool"  # the layer whose output the head reads: what a frozen backbone's feature cache holds
STANDARDIZE = "standardize"  # the head's fixed feature standardization (train.standardize_features), when it has one
_HP = {"dropout": 0.0, "freeze_backbone": True, "dense_units": 256, "standardize_features": False}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # ImageNet channel means, BGR (keras imagenet_utils, mode "caffe")


def _inception_scaling(x):
    from keras import layers

    return layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)


def caffe_scaling(x):
    """RGB -> BGR, minus the ImageNet channel means (ResNet50's and VGG16's preprocess_input), as a fixed 1×1
    convolution: a built-in layer, so a saved model loads anywhere with safe_mode, and exact in float32."""
    from keras import layers

    layer = layers.Conv2D(3, 1, name="preprocess", trainable=False, dtype="float32")
    y = layer(x)
    layer.set_weights([np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3), -np.array(CAFFE_MEAN_BGR, "float32")])
    return y


def _head(x, **head):
    from keras import layers

    return _on_features(layers.GlobalAveragePooling2D(name=FEATURES)(x), **head)


def _on_features(x, *, num_classes, dropout, dense_units, standardize_features, head_seed=None):
    """The study's head on pooled features. With ``head_seed``, its layers draw their initial weights and their dropout
    stream from that seed alone, whatever was built before them: a whole classifier (its backbone drawn first) and
    its head built alone start identical, so a trial trains alike on images and on cached features."""
    import keras
    from keras import layers

    if head_seed is not None:
        keras.utils.set_random_seed(head_seed)
    if standardize_features:  # its mean and variance: fitted on the training split by fit_standardization
        x = layers.Normalization(axis=-1, name=STANDARDIZE)(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def _classifier(
    app,
    *,
    name,
    num_classes,
    input_shape,
    weights,
    scaling=_inception_scaling,
    app_kwargs=None,
    dropout,
    freeze_backbone,
    dense_units,
    standardize_features,
    head_seed=None,
):
    import keras

    inputs = keras.Input(input_shape, name="image")
    x = scaling(inputs) if scaling else inputs  # None: the backbone normalises its [0, 255] input itself
    backbone = app(include_top=False, weights=weights, input_shape=input_shape, **(app_kwargs or {}))
    # Renamed after construction: EfficientNetV2 and ConvNeXt read their block layout from the name they are built
    # with. Every classifier's backbone is then found under one name (fine-tuning, the feature cache).
    backbone.name = BACKBONE
    backbone.trainable = not freeze_backbone
    # A frozen backbone runs in inference mode so its BatchNorm statistics stay ImageNet's (transfer learning); a
    # trained one (from scratch or fine-tuned whole) learns its batch statistics like any other layer.
    x = backbone(x, training=False) if freeze_backbone else backbone(x)
    head = dict(dropout=dropout, dense_units=dense_units, standardize_features=standardize_features)
    return keras.Model(inputs, _head(x, num_classes=num_classes, head_seed=head_seed, **head), name=name)


def unfreeze_top(model: keras.Model, n_layers: int) -> int:
    """Fine-tuning stage: make the top ``n_layers`` backbone layers trainable (BatchNorm stays frozen).

    Returns how many layers were unfrozen. Recompile the model afterwards, at a lower learning rate.
    """
    from keras import layers

    backbone = model.get_layer(BACKBONE)
    backbone.trainable = True
    layers_ = backbone.layers
    for i, layer in enumerate(layers_):
        top = i >= len(layers_) - n_layers
        layer.trainable = top and not isinstance(layer, layers.BatchNormalization)
    return sum(layer.trainable for layer in layers_)


def feature_extractor(model: keras.Model) -> keras.Model:
    """A classifier's image -> pooled backbone features (the ``FEATURES`` layer's output), its layers shared with
    ``model``: what the feature cache runs, and what a saved backbone's weights are loaded into. ``head_model``
    takes its output."""
    import keras

    return keras.Model(model.input, model.get_layer(FEATURES).output, name=f"{model.name}_features")


def backbone_digest(model: keras.Model) -> str:
    """A digest of the backbone's weight values in order (not their names, which Keras numbers per process): features
    computed with equal weights are interchangeable, and a rebuilt backbone is the same one."""
    import hashlib

    import keras

    h = hashlib.blake2b(digest_size=16)
    for w in model.get_layer(BACKBONE).weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(w.value))
        h.update(f"{value.shape}{value.dtype}".encode())
        h.update(value.data)
    return h.hexdigest()


def head_model(
    feature_shape: tuple[int, ...],
    *,
    num_classes: int,
    dropout: float,
    dense_units: int,
    standardize_features: bool,
    head_seed: int | None = None,
    **backbone_hp,
) -> keras.Model:
    """The classifier's head alone, features -> probabilities: the same layers (names, shapes, dtypes) as the part of
    the whole classifier after ``FEATURES``, so its weights go into a whole classifier as they are. A trial on a
    frozen backbone trains only this, on cached features. ``backbone_hp`` (freeze_backbone) shapes no head layer."""
    import keras

    del backbone_hp
    inputs = keras.Input(feature_shape, dtype=keras.config.dtype_policy().compute_dtype, name="features")
    head = dict(dropout=dropout, dense_units=dense_units, standardize_features=standardize_features)
    return keras.Model(inputs, _on_features(inputs, num_classes=num_classes, head_seed=head_seed, **head), name="head")


def fit_standardization(model: keras.Model, features) -> None:
    """Fit the feature standardization of ``model`` (a head or a whole classifier built with standardize_features)
    on ``features``, the training split's pooled backbone features: each feature centred on its mean, all scaled by
    one standard deviation pooled over the features (scaling each by its own would blow up features that are nearly
    constant on the training images). Once, on a new model: checkpoints keep it."""
    f = np.asarray(features, dtype="float64")
    layer = model.get_layer(STANDARDIZE)
    layer.adapt_mean.assign(f.mean(axis=0).astype("float32"))
    layer.adapt_variance.assign(np.full(f.shape[1], f.var(axis=0).mean(), dtype="float32"))
    layer.finalize_state()


_FACTS = dict(
    task="classification",
    size_multiple=1,
    hyperparameters=_HP,
    backbone=FrozenBackbone(feature_extractor, backbone_digest, head_model, unfreeze_top, fit_standardization),
)


@register(
    "inception_resnet_v2",
    min_input_size=75,
    preprocess="x / 127.5 - 1 (inception_resnet_v2.preprocess_input), inside the model",
    preprocess_input=keras_function("keras.applications.inception_resnet_v2.preprocess_input"),
    imagenet_weights="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    keras_application="InceptionResNetV2",
    description="InceptionResNetV2 (keras.applications) with the study's 256-unit head",
    **_FACTS,
)
def inception_resnet_v2(**kw) -> keras.Model:
    import keras

    return _classifier(keras.applications.InceptionResNetV2, name="inception_resnet_v2", **kw)


@register(
    "nasnet_large",
    min_input_size=32,
    preprocess="x / 127.5 - 1 (nasnet.preprocess_input), inside the model",
    preprocess_input=keras_function("keras.applications.nasnet.preprocess_input"),
    imagenet_weights="nasnet_large_no_top.h5",
    imagenet_input_size=331,
    keras_application="NASNetLarge",
    description="NASNetLarge (keras.applications) with the study's 256-unit head",
    **_FACTS,
)
def nasnet_large(**kw) -> keras.Model:
    import keras

    return _classifier(keras.applications.NASNetLarge, name="nasnet_large", **kw)


_CAFFE = dict(
    preprocess="RGB -> BGR minus the ImageNet channel means (caffe mode), inside the model",
    min_input_size=32,
    **_FACTS,
)
_SELF_NORMALISING = dict(min_input_size=32, **_FACTS)


@register(
    "resnet50",
    preprocess_input=keras_function("keras.applications.resnet50.preprocess_input"),
    imagenet_weights="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    keras_application="ResNet50",
    description="ResNet50 (keras.applications) with the study's head",
    **_CAFFE,
)
def resnet50(**kw) -> keras.Model:
    import keras

    return _classifier(keras.applications.ResNet50, name="resnet50", scaling=caffe_scaling, **kw)


@register(
    "vgg16",
    preprocess_input=keras_function("keras.applications.vgg16.preprocess_input"),
    imagenet_weights="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    keras_application="VGG16",
    description="VGG16 (keras.applications) with the study's head; no BatchNorm",
    **_CAFFE,
)
def vgg16(**kw) -> keras.Model:
    import keras

    return _classifier(keras.applications.VGG16, name="vgg16", scaling=caffe_scaling, **kw)


def _register_self_normalising(
    name: str, app: str, weights_file: str, preprocess: str, module: str, onnx_problem: str | None = None
) -> None:
    """A backbone whose first layers scale its [0, 255] input (keras.applications' include_preprocessing=True)."""

    def builder(**kw) -> keras.Model:
        import keras

        application = getattr(keras.applications, app)
        return _classifier(application, name=name, scaling=None, app_kwargs={"include_preprocessing": True}, **kw)

    register(
        name,
        preprocess=preprocess,
        preprocess_input=keras_function(f"{module}.preprocess_input"),
        imagenet_weights=weights_file,
        keras_application=app,
        description=f"{app} (keras.applications) with the study's head",
        onnx_problem=onnx_problem,
        **_SELF_NORMALISING,
    )(builder)


_EFFNET_B = "x / 255, then ImageNet mean/std normalisation, inside the backbone (include_preprocessing)"
_EFFNET = "x / 128 - 1, inside the backbone (include_preprocessing)"
_CONVNEXT = "x / 255, then ImageNet mean/std normalisation, inside the backbone (include_preprocessing)"
# Keras runs ConvNeXt's grouped convolutions through XLA on TensorFlow: a StatefulPartitionedCall tf2onnx leaves
_CONVNEXT_ONNX = "Keras runs its grouped convolutions through XLA, which tf2onnx cannot convert"
_CONVNEXT_MODULE = "keras.applications.convnext"
for _name, _app, _file, _pre, _module, *_onnx in (
    (
        "efficientnetv2_b0",
        "EfficientNetV2B0",
        "efficientnetv2-b0_notop.h5",
        _EFFNET_B,
        "keras.applications.efficientnet_v2",
    ),
    ("efficientnetv2_s", "EfficientNetV2S", "efficientnetv2-s_notop.h5", _EFFNET, "keras.applications.efficientnet_v2"),
    ("efficientnetv2_l", "EfficientNetV2L", "efficientnetv2-l_notop.h5", _EFFNET, "keras.applications.efficientnet_v2"),
    ("convnext_tiny", "ConvNeXtTiny", "convnext_tiny_notop.h5", _CONVNEXT, _CONVNEXT_MODULE, _CONVNEXT_ONNX),
    ("convnext_base", "ConvNeXtBase", "convnext_base_notop.h5", _CONVNEXT, _CONVNEXT_MODULE, _CONVNEXT_ONNX),
):
    _register_self_normalising(_name, _app, _file, _pre, _module, *_onnx)


# Keras's default 0.99 needs hundreds of steps before the moving statistics that validation uses are the data's;
# a from-scratch model on a small set takes ~10 steps an epoch.
BN_MOMENTUM = 0.9


@register(
    "custom_cnn",
    task="classification",
    min_input_size=16,
    size_multiple=1,
    hyperparameters={"dropout": 0.0, "dense_units": 256, "base_filters": 32, "blocks": 4},
    preprocess="x / 255, inside the model",
    preprocess_input=lambda x: x / 255.0,
    description="small CNN from scratch: blocks × (Conv 3×3 - BatchNorm - ReLU - MaxPool 2), GAP, the study's head",
)
def custom_cnn(*, num_classes, input_shape, weights, dropout, dense_units, base_filters, blocks) -> keras.Model:
    """Seed 003's custom CNN, sized for CPUs: block k has base_filters × 2^k filters (width: base_filters, depth:
    blocks). It has no pretrained weights and trains whole, BatchNorm in training mode."""
    import keras
    from keras import layers

    del weights  # none exist
    from models.registry import ModelError

    if not 1 <= blocks <= CUSTOM_CNN_MAX_BLOCKS or base_filters < 1:
        raise ModelError(f"custom_cnn needs blocks in [1, {CUSTOM_CNN_MAX_BLOCKS}] and base_filters >= 1")
    if input_shape[0] < 2**blocks:
        raise ModelError(f"custom_cnn with blocks={blocks} needs input_size >= {2**blocks}, got {input_shape[0]}")
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
    for k in range(blocks):
        x = layers.Conv2D(base_filters * 2**k, 3, padding="same", use_bias=False, name=f"block{k}_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{k}_bn")(x)
        x = layers.Activation("relu", name=f"block{k}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{k}_pool")(x)
    outputs = _head(x, num_classes=num_classes, dropout=dropout, dense_units=dense_units, standardize_features=False)
    return keras.Model(inputs, outputs, name="custom_cnn")
