"""U-Net contract: output shape/dtype for binary and multi-class, float32 head, size checks."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from segpipe.model import build_unet


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
    with pytest.raises(ValueError, match=r"not divisible by 2\*\*depth = 16 \(depth 4\).*multiple of 16"):
        build_unet(input_shape=(100, 100, 3), num_classes=1, depth=4)
