"""U-Net builder: returns an uncompiled Functional keras.Model.

Only the plain encoder so far (`encoder: plain`, the classic U-Net); keras.applications encoders come
with the train stage.
"""
from __future__ import annotations

import keras
from keras import layers


def _conv_block(x, filters: int, *, dropout: float, name: str):
    for index in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{index}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    if dropout > 0:
        x = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return x


def build_unet(*, input_shape: tuple[int, int, int], num_classes: int, depth: int = 4, base_filters: int = 32,
               dropout: float = 0.0, upsampling: str = "transpose") -> keras.Model:
    """The classic U-Net.

    Args:
        input_shape: (height, width, channels); height and width must be divisible by 2**depth.
        num_classes: 1 = binary (one sigmoid channel); > 1 = softmax over num_classes channels.
        depth: number of down-sampling steps.
        base_filters: filters of the first level, doubled at each level down.
        dropout: spatial dropout rate after each block of the decoder and the bottleneck.
        upsampling: "transpose" (Conv2DTranspose) or "bilinear" (UpSampling2D + 3x3 conv).

    Returns:
        Uncompiled model: float32 input in [0, 1] of shape (batch, H, W, C); output (batch, H, W,
        max(1, num_classes)) probabilities, always float32 (also under mixed precision).
    """
    height, width = input_shape[:2]
    factor = 2 ** depth
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not divisible by 2**depth = {factor} (depth {depth}); "
                         f"use a size that is a multiple of {factor}, e.g. {max(factor, height // factor * factor)}.")
    if upsampling not in ("transpose", "bilinear"):
        raise ValueError(f"upsampling must be one of ['transpose', 'bilinear'], got {upsampling!r}.")
    inputs = keras.Input(shape=input_shape, name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2 ** level, dropout=0.0, name=f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"down{level}_pool")(x)
    x = _conv_block(x, base_filters * 2 ** depth, dropout=dropout, name="bottleneck")
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_transpose")(x)
        else:
            x = layers.UpSampling2D(interpolation="bilinear", name=f"up{level}_resize")(x)
            x = layers.Conv2D(filters, 3, padding="same", name=f"up{level}_conv0")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, dropout=dropout, name=f"up{level}")
    channels = max(1, num_classes)
    logits = layers.Conv2D(channels, 1, dtype="float32", name="logits")(x)
    # float32 head: softmax/sigmoid in float16 is a known cause of non-converging mixed-precision runs.
    outputs = layers.Activation("sigmoid" if num_classes == 1 else "softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="unet")
