"""U-Net contract: output shape/dtype for binary and multi-class, float32 head, size checks."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from segpipe.training.model import build_unet


@pytest.mark.parametrize("num_classes, channels, upsampling", [(1, 3, "transpose"), (4, 1, "bilinear")])
def test_output_shape_and_probabilities(num_classes, channels, upsampling):
    model = build_unet(input_shape=(32, 48, channels), num_classes=num_classes, depth=2, base_filters=4,
                       upsampling=upsampling)
    out = model(np.random.default_rng(0).random((2, 32, 48, channels), dtype=np.float32))
    assert out.shape == (2, 32, 48, num_classes) and keras.backend.standardize_dtype(out.dtype) == "float32"
    values = keras.ops.convert_to_numpy(out)
    assert values.min() >= 0 and values.max() <= 1
    if num_classes > 1:
        np.testing.assert_allclose(values.sum(axis=-1), 1.0, rtol=1e-5)


def test_head_is_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_unet(input_shape=(16, 16, 3), num_classes=1, depth=2, base_filters=4)
        assert model.get_layer("down0_conv1").compute_dtype == "float16"
        assert model.get_layer("probabilities").compute_dtype == "float32"
        assert keras.backend.standardize_dtype(model(np.zeros((1, 16, 16, 3), np.float32)).dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_incompatible_size_is_explained():
    with pytest.raises(ValueError, match=r"not divisible by 2\*\*depth = 16 \(train.depth 4\).*multiple of 16"):
        build_unet(input_shape=(100, 100, 3), num_classes=1, depth=4)


@pytest.mark.parametrize("encoder", ["resnet50", "efficientnetb0", "mobilenetv2"])
@pytest.mark.parametrize("num_classes, channels", [(1, 3), (3, 1)])
def test_application_encoders_give_full_size_probabilities(encoder, num_classes, channels):
    model = build_unet(input_shape=(64, 32, channels), num_classes=num_classes, encoder=encoder, base_filters=4)
    out = keras.ops.convert_to_numpy(model(np.random.default_rng(1).random((2, 64, 32, channels), dtype=np.float32)))
    assert out.shape == (2, 64, 32, num_classes) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    from segpipe.training.model import encoder_layers

    assert [layer.name for layer in encoder_layers(model)] == [f"encoder_{encoder}"]
    assert not model.get_layer("encoder_preprocess").trainable


def test_application_encoder_head_is_float32_under_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(input_shape=(32, 32, 3), num_classes=2, encoder="mobilenetv2", base_filters=4)
        assert model.get_layer("up0_conv1").compute_dtype == "bfloat16"
        assert keras.backend.standardize_dtype(model(np.zeros((1, 32, 32, 3), np.float32)).dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_preprocessing_maps_unit_range_to_the_encoder_range():
    from segpipe.training.model import _preprocessing_weights

    kernel, bias = _preprocessing_weights("resnet50", 3)
    rgb = np.array([1.0, 0.5, 0.0], np.float32)
    np.testing.assert_allclose(rgb @ kernel[0, 0] + bias, [0 - 103.939, 127.5 - 116.779, 255 - 123.68])  # BGR
    kernel, bias = _preprocessing_weights("mobilenetv2", 1)
    np.testing.assert_allclose(np.array([0.25], np.float32) @ kernel[0, 0] + bias, [-0.5] * 3)


def test_encoder_size_rule_and_plain_weights_are_explained():
    with pytest.raises(ValueError, match=r"not divisible by 2\*\*depth = 32 \(5 levels in encoder resnet50\)"):
        build_unet(input_shape=(48, 48, 3), num_classes=1, encoder="resnet50")
    with pytest.raises(ValueError, match="encoder_weights' must be null for encoder 'plain'"):
        build_unet(input_shape=(32, 32, 3), num_classes=1, encoder="plain", encoder_weights="imagenet")
    with pytest.raises(ValueError, match=r"train.encoder' must be one of \['plain', 'resnet50'"):
        build_unet(input_shape=(32, 32, 3), num_classes=1, encoder="vgg16")


def test_offline_imagenet_download_gives_a_clear_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ValueError, match="could not download the ImageNet weights of encoder 'mobilenetv2'.*"
                                         "train.encoder_weights: null"):
        build_unet(input_shape=(32, 32, 3), num_classes=1, encoder="mobilenetv2", encoder_weights="imagenet")
