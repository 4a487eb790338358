"""Segmenters. The leukemia study's: U-Net, U-Net + FPN, and U-Net + FPN with GELU inside the FPN blocks, with
``depth`` = 4 pooling stages (so the input side must be a multiple of 16). Seed 003's (brain MRI): DeepLabV3+ on a
ResNet50 encoder, keras.io's Xception-style U-Net-like model, FCN-8s on a VGG16 encoder.

All take RGB [0, 255] (scaled inside the model) and end in one sigmoid channel kept in float32 under mixed precision.
``base_filters`` sets each one's width (see its builder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.classifiers import caffe_scaling
from models.registry import keras_function, register

if TYPE_CHECKING:
    import keras

_DEPTH = 4
_HP = {"dropout": 0.0, "base_filters": 32}


def _conv_block(x, filters: int, dropout: float, name: str):
    from keras import layers

    for k in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv{k}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{k}")(x)
    return layers.Dropout(dropout, name=f"{name}_drop")(x) if dropout else x


def _fpn(stages: list, filters: int, activation: str) -> list:
    """Feature Pyramid Network over encoder stages (fine to coarse): lateral 1×1 convolutions, a top-down path of
    upsample-and-add, then a 3×3 smoothing convolution with ``activation`` on every merged map."""
    from keras import layers

    laterals = [layers.Conv2D(filters, 1, name=f"fpn_lateral{i}")(c) for i, c in enumerate(stages)]
    merged = [laterals[-1]]
    for i in range(len(stages) - 2, -1, -1):
        up = layers.UpSampling2D(2, name=f"fpn_up{i}")(merged[0])
        merged.insert(0, layers.Add(name=f"fpn_add{i}")([laterals[i], up]))
    return [
        layers.Activation(activation, name=f"fpn_act{i}")(
            layers.Conv2D(filters, 3, padding="same", name=f"fpn_smooth{i}")(m)
        )
        for i, m in enumerate(merged)
    ]


def _unet(*, name, num_classes, input_shape, weights, dropout, base_filters, fpn_activation=None):
    import keras
    from keras import layers

    del num_classes, weights  # one sigmoid channel; no pretrained weights exist for these
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
    skips = []
    for d in range(_DEPTH):
        x = _conv_block(x, base_filters * 2**d, dropout, f"enc{d}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{d}")(x)
    x = _conv_block(x, base_filters * 2**_DEPTH, dropout, "bottleneck")
    if fpn_activation:  # the decoder is fed the FPN's merged maps instead of the raw encoder stages
        skips = _fpn([*skips, x], base_filters * 4, fpn_activation)[:-1]
    for d in reversed(range(_DEPTH)):
        x = layers.Conv2DTranspose(base_filters * 2**d, 2, strides=2, name=f"up{d}")(x)
        x = layers.Concatenate(name=f"skip{d}")([x, skips[d]])
        x = _conv_block(x, base_filters * 2**d, dropout, f"dec{d}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name=name)


_FACTS = dict(
    task="segmentation",
    min_input_size=32,
    size_multiple=2**_DEPTH,
    hyperparameters=_HP,
    preprocess="x / 255, inside the model",
    preprocess_input=lambda x: x / 255.0,
)


@register("unet", description="U-Net: 4-stage encoder-decoder with skip connections", **_FACTS)
def unet(**kw) -> keras.Model:
    return _unet(name="unet", **kw)


@register("unet_fpn", description="U-Net whose skips pass through a Feature Pyramid Network (ReLU)", **_FACTS)
def unet_fpn(**kw) -> keras.Model:
    return _unet(name="unet_fpn", fpn_activation="relu", **kw)


@register("unet_fpn_gelu", description="U-Net + FPN with GELU in the FPN blocks, ReLU elsewhere", **_FACTS)
def unet_fpn_gelu(**kw) -> keras.Model:
    return _unet(name="unet_fpn_gelu", fpn_activation="gelu", **kw)


# ---------------------------------------------------------------------------------------------------------------
# Seed 003's segmenters: DeepLabV3+ (ResNet50 encoder), the Xception-style "U-Net-like" model, FCN-8s (VGG16)
# ---------------------------------------------------------------------------------------------------------------


def _conv_bn_relu(x, filters: int, name: str, kernel_size: int = 3, dilation_rate: int = 1, use_bias: bool = False):
    """keras.io DeepLabV3+'s convolution_block: convolution (He normal), BatchNorm, ReLU."""
    from keras import layers

    x = layers.Conv2D(
        filters,
        kernel_size,
        dilation_rate=dilation_rate,
        padding="same",
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _aspp(x, filters: int):
    """Atrous Spatial Pyramid Pooling: image pooling, a 1×1 and three dilated 3×3 branches (rates 6, 12, 18)."""
    from keras import layers

    h, w = x.shape[1], x.shape[2]
    pooled = layers.AveragePooling2D(pool_size=(h, w), name="aspp_pool")(x)
    pooled = _conv_bn_relu(pooled, filters, "aspp_image", kernel_size=1, use_bias=True)
    pooled = layers.UpSampling2D(size=(h, w), interpolation="bilinear", name="aspp_pool_up")(pooled)
    branches = [pooled, _conv_bn_relu(x, filters, "aspp_1x1", kernel_size=1)]
    branches += [_conv_bn_relu(x, filters, f"aspp_rate{r}", dilation_rate=r) for r in (6, 12, 18)]
    x = layers.Concatenate(name="aspp_concat")(branches)
    return _conv_bn_relu(x, filters, "aspp_out", kernel_size=1)


ENCODER = "encoder"  # the nested pretrained encoder's name inside deeplabv3_plus and fcn8
ENCODER_TAPS = {  # the keras.applications layers each model reads, fine to coarse
    "deeplabv3_plus": ("conv2_block3_2_relu", "conv4_block6_2_relu"),  # strides 4 and 16
    "fcn8": ("block3_pool", "block4_pool", "block5_pool"),  # strides 8, 16, 32
}


def _encoder(app, input_shape, weights, taps: tuple[str, ...]) -> keras.Model:
    """A keras.applications backbone (its ImageNet file, a user's file, or None) as one nested model that returns
    the ``taps`` layers' outputs: built whole first, so a no-top weights file loads exactly as for a classifier."""
    import keras

    backbone = app(include_top=False, weights=weights, input_shape=input_shape)
    return keras.Model(backbone.input, [backbone.get_layer(t).output for t in taps], name=ENCODER)


def _mask_head(x, dropout: float):
    from keras import layers

    x = layers.Dropout(dropout, name="head_drop")(x) if dropout else x
    return layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)


def _deeplabv3_plus(*, num_classes, input_shape, weights, dropout, base_filters):
    """keras.io's DeepLabV3+: ResNet50 features at stride 16 (conv4) through ASPP, upsampled 4× and joined with the
    stride-4 features (conv2, reduced to 48 channels), two 3×3 blocks, upsampled 4× to the input size."""
    import keras
    from keras import layers

    del num_classes  # one sigmoid channel
    inputs = keras.Input(input_shape, name="image")
    low, deep = _encoder(keras.applications.ResNet50, input_shape, weights, ENCODER_TAPS["deeplabv3_plus"])(
        caffe_scaling(inputs)
    )
    x = _aspp(deep, base_filters)
    size = input_shape[0]
    x = layers.UpSampling2D(size=size // 4 // x.shape[1], interpolation="bilinear", name="decoder_up4")(x)
    low = _conv_bn_relu(low, 48, "decoder_low", kernel_size=1)
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = _conv_bn_relu(x, base_filters, "decoder_a")
    x = _conv_bn_relu(x, base_filters, "decoder_b")
    x = layers.UpSampling2D(size=size // x.shape[1], interpolation="bilinear", name="decoder_out_up")(x)
    return keras.Model(inputs, _mask_head(x, dropout), name="deeplabv3_plus")


def _unet_xception(*, num_classes, input_shape, weights, dropout, base_filters):
    """keras.io's Oxford-pets "U-Net-like" model: a strided entry convolution, three Xception-style downsampling
    blocks (separable convolutions, max pooling, a strided 1×1 residual), four upsampling blocks (transposed
    convolutions, upsampling, a 1×1 residual). Widths base_filters × (1, 2, 4, 8)."""
    import keras
    from keras import layers

    del num_classes, weights  # one sigmoid channel; no pretrained weights exist
    f = base_filters
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
    x = layers.Conv2D(f, 3, strides=2, padding="same", name="entry_conv")(x)
    x = layers.BatchNormalization(name="entry_bn")(x)
    x = layers.Activation("relu", name="entry_relu")(x)
    previous = x
    for i, filters in enumerate((2 * f, 4 * f, 8 * f)):
        for k in (1, 2):
            x = layers.Activation("relu", name=f"down{i}_relu{k}")(x)
            x = layers.SeparableConv2D(filters, 3, padding="same", name=f"down{i}_sepconv{k}")(x)
            x = layers.BatchNormalization(name=f"down{i}_bn{k}")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"down{i}_pool")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same", name=f"down{i}_residual")(previous)
        x = previous = layers.Add(name=f"down{i}_add")([x, residual])
    for i, filters in enumerate((8 * f, 4 * f, 2 * f, f)):
        for k in (1, 2):
            x = layers.Activation("relu", name=f"up{i}_relu{k}")(x)
            x = layers.Conv2DTranspose(filters, 3, padding="same", name=f"up{i}_convt{k}")(x)
            x = layers.BatchNormalization(name=f"up{i}_bn{k}")(x)
        x = layers.UpSampling2D(2, name=f"up{i}_up")(x)
        residual = layers.UpSampling2D(2, name=f"up{i}_residual_up")(previous)
        residual = layers.Conv2D(filters, 1, padding="same", name=f"up{i}_residual")(residual)
        x = previous = layers.Add(name=f"up{i}_add")([x, residual])
    return keras.Model(inputs, _mask_head(x, dropout), name="unet_xception")


def _fcn8(*, num_classes, input_shape, weights, dropout, base_filters):
    """FCN-8s (Long et al.; keras.io's fully-convolutional-network example): VGG16's pools 3, 4 and 5; the fully
    connected layers as convolutions (7×7 then 1×1, ``base_filters`` wide, dropout after each); a score map per
    stage, added coarse to fine with 2× upsampling, then upsampled 8× to the input size."""
    import keras
    from keras import layers

    del num_classes  # one sigmoid channel
    inputs = keras.Input(input_shape, name="image")
    encoder = _encoder(keras.applications.VGG16, input_shape, weights, ENCODER_TAPS["fcn8"])
    pool3, pool4, pool5 = encoder(caffe_scaling(inputs))
    x = layers.Conv2D(base_filters, 7, padding="same", activation="relu", name="fc6")(pool5)
    x = layers.Dropout(dropout, name="fc6_drop")(x) if dropout else x
    x = layers.Conv2D(base_filters, 1, padding="same", activation="relu", name="fc7")(x)
    x = layers.Dropout(dropout, name="fc7_drop")(x) if dropout else x
    # Score layers start at zero, as in the FCN paper: the model starts at p = 0.5 everywhere instead of saturating
    # on VGG's unnormalised activations.
    score = layers.Conv2D(1, 1, kernel_initializer="zeros", name="score5")(x)
    for stage, features in ((4, pool4), (3, pool3)):
        score = layers.UpSampling2D(2, interpolation="bilinear", name=f"score{stage + 1}_up")(score)
        stage_score = layers.Conv2D(1, 1, kernel_initializer="zeros", name=f"score{stage}")(features)
        score = layers.Add(name=f"fuse{stage}")([score, stage_score])
    score = layers.UpSampling2D(8, interpolation="bilinear", name="score_up8")(score)
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(score)
    return keras.Model(inputs, outputs, name="fcn8")


_CAFFE_FACTS = dict(
    task="segmentation",
    min_input_size=32,
    preprocess="RGB -> BGR minus the ImageNet channel means (caffe mode), inside the model",
)


@register(
    "deeplabv3_plus",
    size_multiple=16,
    preprocess_input=keras_function("keras.applications.resnet50.preprocess_input"),
    imagenet_weights="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",  # the encoder's: ResNet50's
    keras_application="ResNet50",
    description="DeepLabV3+: ResNet50 encoder (stride 16), ASPP, decoder with stride-4 skip (base_filters 256)",
    hyperparameters={**_HP, "base_filters": 256},
    **_CAFFE_FACTS,
)
def deeplabv3_plus(**kw) -> keras.Model:
    return _deeplabv3_plus(**kw)


@register(
    "unet_xception",
    task="segmentation",
    min_input_size=32,
    size_multiple=16,
    hyperparameters=_HP,
    preprocess="x / 255, inside the model",
    preprocess_input=lambda x: x / 255.0,
    description="keras.io's Xception-style U-Net-like model: separable-conv residual blocks (base_filters 32)",
)
def unet_xception(**kw) -> keras.Model:
    return _unet_xception(**kw)


@register(
    "fcn8",
    size_multiple=32,
    preprocess_input=keras_function("keras.applications.vgg16.preprocess_input"),
    imagenet_weights="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",  # the encoder's: VGG16's
    keras_application="VGG16",
    description="FCN-8s: VGG16 encoder, convolutional fc6/fc7 (base_filters 512), scores fused at strides 32/16/8",
    hyperparameters={**_HP, "base_filters": 512},
    **_CAFFE_FACTS,
)
def fcn8(**kw) -> keras.Model:
    return _fcn8(**kw)
