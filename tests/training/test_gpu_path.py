"""The GPU path, as far as a CPU can test it: mixed_float16 training (loss scaling, float32 head) and, for
`train.deterministic: true`, no op in the training step without a deterministic GPU kernel."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from segpipe.training.keras_metrics import training_metrics
from segpipe.training.loop import make_optimizer
from segpipe.training.losses import make_loss
from segpipe.training.model import build_unet

# Op types that TensorFlow (2.8 and later) refuses on a GPU with tf.config.experimental.enable_op_determinism()
# (tf.errors.UnimplementedError at run time), from the function's documentation and the determinism RFC.
# FusedBatchNormGradV3 only with is_training=False (a frozen BatchNormalization that still passes gradients).
NO_DETERMINISTIC_GPU_KERNEL = {
    "AdjustContrastv2", "Bincount", "DenseBincount", "SparseBincount", "RaggedBincount",
    "CropAndResizeGradBoxes", "CropAndResizeGradImage", "DepthwiseConv2dNativeBackpropFilter",
    "Dilation2DBackpropFilter", "Dilation2DBackpropInput", "MaxPoolGradWithArgmax", "ResizeNearestNeighborGrad",
    "SparseTensorDenseMatMul", "DebugNumericSummary", "DebugNumericSummaryV2",
    "FractionalAvgPoolGrad", "FractionalMaxPoolGrad", "ResizeBicubicGrad", "ResizeAreaGrad",
}


def graph_ops(graph: tf.Graph) -> list[tf.Operation]:
    """Every op of a graph and of the functions it calls (loops, conditionals, remat's recompute)."""
    ops = list(graph.get_operations())
    for function in graph.as_graph_def().library.function:
        ops += [node for node in function.node_def]
    return ops


def op_type(op) -> str:
    return op.type if isinstance(op, tf.Operation) else op.op


def training_step(*, num_classes: int, upsampling: str, remat: bool, policy: str = "float32"):
    """The traced graph of one training step (forward, loss, gradients, metrics, optimizer update) of a tiny U-Net."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_unet(input_shape=(32, 32, 3), num_classes=num_classes, depth=2, base_filters=4, dropout=0.1,
                           upsampling=upsampling, remat=remat)
        model.compile(optimizer=make_optimizer(optimizer="adam", learning_rate=1e-3, schedule="cosine",
                                               warmup_epochs=1, epochs=2, steps_per_epoch=2, weight_decay=0.0,
                                               momentum=0.9),
                      loss=make_loss(weights={"bce": 1.0, "dice": 1.0, "focal": 0.5},
                                     class_weights=[1.0, 2.0, 3.0] if num_classes == 3 else None),
                      metrics=training_metrics(num_classes=num_classes, threshold=0.5))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    images = tf.TensorSpec([2, 32, 32, 3], tf.float32)
    masks = tf.TensorSpec([2, 32, 32, 1], tf.uint8)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            prediction = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=prediction)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        model.compute_metrics(x, y, prediction)
        return loss

    return model, step.get_concrete_function(images, masks).graph


@pytest.mark.parametrize("num_classes, upsampling, remat", [(1, "transpose", False), (3, "bilinear", True)])
def test_the_training_step_has_no_op_without_a_deterministic_gpu_kernel(num_classes, upsampling, remat):
    _, graph = training_step(num_classes=num_classes, upsampling=upsampling, remat=remat)
    ops = graph_ops(graph)
    types = {op_type(op) for op in ops}
    assert "Conv2DBackpropFilter" in types  # the graph holds the backward pass too
    assert not types & NO_DETERMINISTIC_GPU_KERNEL, sorted(types & NO_DETERMINISTIC_GPU_KERNEL)
    frozen = [op for op in ops if op_type(op) == "FusedBatchNormGradV3" and not op.get_attr("is_training")]
    assert frozen == []


def test_mixed_float16_trains_with_loss_scaling_and_a_float32_head():
    model, _ = training_step(num_classes=1, upsampling="transpose", remat=False, policy="mixed_float16")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.layers[1].compute_dtype == "float16" and model.output.dtype == "float32"
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    rng = np.random.default_rng(0)
    masks = np.zeros((8, 32, 32, 1), np.uint8)
    masks[:, 8:24, 8:24] = 1
    images = (rng.random((8, 32, 32, 3)) * 0.3 + masks * 0.6).astype(np.float32)
    history = model.fit(images, masks, batch_size=4, epochs=3, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert float(model.optimizer.dynamic_scale) > 1  # loss scaling on: float16 gradients would underflow
    assert model.predict(images[:1], verbose=0).dtype == np.float32
