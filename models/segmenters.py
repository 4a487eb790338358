"""The study's segmenters: U-Net, U-Net + FPN, and U-Net + FPN with GELU inside the FPN blocks.

All take RGB [0, 255] (scaled to [0, 1] inside), have ``depth`` = 4 pooling stages (so the input side must be a
multiple of 16), and end in one sigmoid channel kept in float32 under mixed precision.
"""

from __future__ import annotations

import keras
from keras import layers

from models.registry import register

_DEPTH = 4
_HP = ("dropout", "base_filters")


def _conv_block(x, filters: int, dropout: float, name: str):
    for k in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv{k}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{k}")(x)
    return layers.Dropout(dropout, name=f"{name}_drop")(x) if dropout else x


def _fpn(stages: list, filters: int, activation: str) -> list:
    """Feature Pyramid Network over encoder stages (fine to coarse): lateral 1×1 convolutions, a top-down path of
    upsample-and-add, then a 3×3 smoothing convolution with ``activation`` on every merged map."""
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


def _unet(*, name, num_classes, input_shape, weights, dropout=0.0, base_filters=32, fpn_activation=None):
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
    default_input_size=224,
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
