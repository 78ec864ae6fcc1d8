"""U-Net builder: returns an uncompiled Functional keras.Model (Keras 3).

Encoders:
- `plain`: the classic U-Net (Ronneberger et al. 2015) with `depth` down-sampling steps of two 3x3
  conv + norm + ReLU, `base_filters` doubling per level.
- `resnet50`, `efficientnetb0`, `mobilenetv2`: the keras.applications networks without their top,
  skip connections taken at strides 2, 4, 8 and 16 and the bottleneck at stride 32 (so the depth is
  5), with `encoder_weights: imagenet` (downloaded once into ~/.keras/models) or null (random).
  Inputs stay in [0, 1]; a fixed, non-trainable 1x1 conv inside the model maps them to what each
  network was trained on (caffe BGR mean-subtracted, [-1, 1] or 0..255) and a gray channel to 3.
The decoder is the same for all: up-sample (transposed conv or bilinear + conv), concatenate the skip,
two 3x3 conv blocks. The head (1x1 conv + sigmoid/softmax) is float32 under mixed precision.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from segpipe.core.schema import (
    ENCODER_WEIGHTS,
    ENCODERS,
    NORMALIZATIONS,
    UPSAMPLING,
    check_architecture,
    downsampling_levels,
)

# Layer names of the skip features at strides 2, 4, 8, 16, and of the bottleneck at stride 32.
_APPLICATION_LAYERS = {
    "resnet50": (keras.applications.ResNet50,
                 ["conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"], "conv5_block3_out"),
    "efficientnetb0": (keras.applications.EfficientNetB0,
                       ["block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
                        "block6a_expand_activation"], "top_activation"),
    "mobilenetv2": (keras.applications.MobileNetV2,
                    ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"],
                    "out_relu"),
}


def _normalization(kind: str, filters: int, name: str):
    if kind == "batch":
        # momentum 0.9, not Keras' 0.99: with a few steps per epoch on small datasets the moving
        # statistics must catch up with the weights, or inference-mode predictions collapse.
        return layers.BatchNormalization(momentum=0.9, name=name)
    return layers.GroupNormalization(groups=min(8, filters), name=name)


def _block_layers(filters: int, *, normalization: str, name: str) -> list[keras.layers.Layer]:
    """Two 3x3 conv + norm + ReLU: the U-Net's block."""
    return [layer for index in (1, 2) for layer in (
        layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{index}"),
        _normalization(normalization, filters, f"{name}_norm{index}"),
        layers.Activation("relu", name=f"{name}_relu{index}"))]


def _batch_statistics_normalization(layer: layers.BatchNormalization, x):
    """`layer`'s training-mode output (the batch's mean and variance, computed in float32 as Keras does)
    without its moving-statistics update."""
    x = ops.cast(x, "float32")
    mean, variance = ops.moments(x, axes=[0, 1, 2], synchronized=layer.synchronized)
    outputs = ops.batch_normalization(x, mean, variance, axis=-1, offset=ops.cast(layer.beta, "float32"),
                                      scale=ops.cast(layer.gamma, "float32"), epsilon=layer.epsilon)
    return ops.cast(outputs, layer.compute_dtype)


@keras.saving.register_keras_serializable(package="segpipe")
class RecomputedBlock(layers.Layer):
    """A U-Net block whose inner activations are recomputed in the backward pass (`train.remat: true`).

    Only the block's input is kept for the gradient; its five inner outputs are recomputed from it when the
    gradient reaches the block (tf.recompute_grad through keras.remat). The layers inside have the same names,
    weights and order as the plain block's, so a model's weights load into the other variant.
    The recomputation normalises with the batch's statistics as the forward pass did, but does not update
    BatchNorm's moving statistics a second time (that would turn momentum 0.9 into 0.81).
    """

    def __init__(self, filters: int, normalization: str, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.normalization = filters, normalization
        self.inner = _block_layers(filters, normalization=normalization, name=self.name)

    def build(self, input_shape):
        shape = input_shape
        for layer in self.inner:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def call(self, x, training=None):
        if not training:
            return self._run(x, training=False, recomputing=False)
        passes = []  # tf.recompute_grad calls `forward` for the forward pass, then again for the gradient

        def forward(x):
            passes.append(None)
            return self._run(x, training=True, recomputing=len(passes) > 1)
        return keras.remat(forward)(x)

    def _run(self, x, *, training: bool, recomputing: bool):
        for layer in self.inner:
            if recomputing and isinstance(layer, layers.BatchNormalization):
                x = _batch_statistics_normalization(layer, x)
            else:
                x = layer(x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "normalization": self.normalization}


def _conv_block(x, filters: int, *, dropout: float, normalization: str, name: str, remat: bool = False):
    if remat:
        x = RecomputedBlock(filters, normalization, name=name)(x)
    else:
        for layer in _block_layers(filters, normalization=normalization, name=name):
            x = layer(x)
    if dropout > 0:  # outside the recomputed part: a recomputed dropout would draw a different mask
        x = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return x


def _preprocessing_weights(encoder: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """1x1 conv kernel and bias mapping [0, 1] inputs of `channels` channels to the encoder's input range."""
    kernel = np.zeros((1, 1, channels, 3), np.float32)
    bias = np.zeros(3, np.float32)
    for out in range(3):
        source = out if channels == 3 else 0
        if encoder == "resnet50":  # caffe: BGR order, 0..255 minus the ImageNet mean
            source = (2 - out) if channels == 3 else 0
            kernel[0, 0, source, out] = 255.0
            bias[out] = -(103.939, 116.779, 123.68)[out]
        elif encoder == "mobilenetv2":  # [-1, 1]
            kernel[0, 0, source, out] = 2.0
            bias[out] = -1.0
        else:  # efficientnet rescales 0..255 itself
            kernel[0, 0, source, out] = 255.0
    return kernel, bias


def _application_encoder(inputs, *, encoder: str, encoder_weights: str | None):
    """(skip tensors at strides 2..16, bottleneck tensor, the encoder model) for a keras.applications net."""
    constructor, skip_names, bottleneck_name = _APPLICATION_LAYERS[encoder]
    channels = inputs.shape[-1]
    kernel, bias = _preprocessing_weights(encoder, channels)
    preprocess = layers.Conv2D(3, 1, trainable=False, name="encoder_preprocess")
    x = preprocess(inputs)
    preprocess.set_weights([kernel, bias])
    try:
        backbone = constructor(include_top=False, weights=encoder_weights, input_shape=(*inputs.shape[1:3], 3))
    except Exception as err:  # keras raises a bare Exception("URL fetch failure ...") when offline
        if encoder_weights != "imagenet" or "fetch failure" not in str(err).lower() and not isinstance(err, OSError):
            raise
        raise ValueError(
            f"could not download the ImageNet weights of encoder '{encoder}' ({err}). They download once into "
            "~/.keras/models when this machine is online; offline, copy that file there from a machine that has "
            "it, or set train.encoder_weights: null to start from random weights.") from None
    backbone._name = f"encoder_{encoder}"
    features = keras.Model(backbone.input, [backbone.get_layer(n).output for n in skip_names]
                           + [backbone.get_layer(bottleneck_name).output], name=f"encoder_{encoder}")
    outputs = features(x)
    return outputs[:-1], outputs[-1], features


def build_unet(*, input_shape: tuple[int, int, int], num_classes: int, encoder: str = "plain",
               encoder_weights: str | None = None, depth: int = 4, base_filters: int = 32, dropout: float = 0.0,
               upsampling: str = "transpose", normalization: str = "batch", remat: bool = False) -> keras.Model:
    """A U-Net.

    Args:
        input_shape: (height, width, channels); height and width must be divisible by 2**depth
            (2**5 = 32 for the keras.applications encoders).
        num_classes: 1 = binary (one sigmoid channel); > 1 = softmax over num_classes channels.
        encoder: one of ENCODERS.
        encoder_weights: None (random) or "imagenet" (keras.applications encoders only).
        depth: down-sampling steps of the plain encoder (ignored by the others, which have 5).
        base_filters: filters of the first level, doubled at each level down (plain encoder and
            every decoder level: level k has base_filters * 2**k).
        dropout: spatial dropout rate after the bottleneck and each decoder block.
        upsampling: "transpose" (Conv2DTranspose) or "bilinear" (UpSampling2D + 3x3 conv).
        normalization: "batch" (BatchNormalization, momentum 0.9) or "group" (GroupNormalization,
            8 groups: no batch statistics, so it behaves the same in training and inference).
        remat: recompute each conv block's inner activations in the backward pass instead of keeping
            them (RecomputedBlock): less activation memory for more compute. The keras.applications
            encoders are not recomputed, only the decoder.

    Returns:
        Uncompiled model: float32 input in [0, 1] of shape (batch, H, W, C); output (batch, H, W,
        max(1, num_classes)) probabilities, always float32 (also under mixed precision). The
        keras.applications encoder is the sub-model named `encoder_<name>` (for freezing).
    """
    for name, value, choices in (("encoder", encoder, ENCODERS), ("upsampling", upsampling, UPSAMPLING),
                                 ("normalization", normalization, NORMALIZATIONS),
                                 ("encoder_weights", encoder_weights, ENCODER_WEIGHTS)):
        if value not in choices:
            raise ValueError(f"param 'train.{name}' must be one of {list(choices)}, got {value!r}.")
    check_architecture(image_size=input_shape[:2], encoder=encoder, encoder_weights=encoder_weights, depth=depth)
    levels = downsampling_levels(encoder=encoder, depth=depth)
    block = dict(normalization=normalization, remat=remat)
    inputs = keras.Input(shape=input_shape, name="image")
    if encoder == "plain":
        x, skips = inputs, []
        for level in range(depth):
            x = _conv_block(x, base_filters * 2 ** level, dropout=0.0, name=f"down{level}", **block)
            skips.append(x)
            x = layers.MaxPooling2D(name=f"down{level}_pool")(x)
        x = _conv_block(x, base_filters * 2 ** depth, dropout=dropout, name="bottleneck", **block)
    else:
        # Skips at strides 2..16 feed decoder levels 1..4; level 0 (full size) has the input as skip.
        features, x, _ = _application_encoder(inputs, encoder=encoder, encoder_weights=encoder_weights)
        skips = [inputs] + list(features)
        if dropout > 0:
            x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(levels)):
        filters = base_filters * 2 ** level
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_transpose")(x)
        else:
            x = layers.UpSampling2D(interpolation="bilinear", name=f"up{level}_resize")(x)
            x = layers.Conv2D(filters, 3, padding="same", name=f"up{level}_conv0")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, dropout=dropout if level else 0.0, name=f"up{level}", **block)
    channels = max(1, num_classes)
    logits = layers.Conv2D(channels, 1, dtype="float32", name="logits")(x)
    # float32 head: softmax/sigmoid in float16 is a known cause of non-converging mixed-precision runs.
    outputs = layers.Activation("sigmoid" if num_classes == 1 else "softmax", dtype="float32",
                                name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=f"unet_{encoder}")


def encoder_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The pretrained encoder's layers (empty for the plain U-Net): what `freeze_encoder_epochs` freezes."""
    return [layer for layer in model.layers if layer.name.startswith("encoder_") and layer.name != "encoder_preprocess"]


