"""The memory plan (segpipe/training/memory_plan.py) on networks whose sizes can be worked out by hand, the
batch it picks and its caps, and rematerialisation: same gradients, same BatchNorm statistics, less activation memory.
How close the estimate is to measured memory is a benchmark (bench/memory_plan.py), not a test."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from segpipe.training import memory_plan
from segpipe.training.devices import Placement
from segpipe.training.losses import make_loss
from segpipe.training.model import RecomputedBlock, build_unet


def one_conv(dtype: str = "float32") -> keras.Model:
    inputs = keras.Input((8, 8, 2))
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same", dtype=dtype)(inputs))


def test_estimate_of_a_network_worked_out_by_hand():
    plan = memory_plan.estimate(one_conv(), batch_size=3, optimizer="adam", mixed_precision=False)
    parameters = 2 * 9 * 4 + 4
    assert plan["weights"] == 4 * parameters and plan["gradients"] == 4 * parameters
    assert plan["optimizer_slots"] == 2 * 4 * parameters  # adam: two slots
    assert plan["activations"] == int(memory_plan.ACTIVATION_FACTOR * 3 * 8 * 8 * 4 * 4)  # 3 x 8x8x4 float32
    # the backward pass's working set: WORKSPACE_FACTOR x batch x the largest output (here the only one)
    assert plan["workspace"] == int(memory_plan.WORKSPACE_BYTES + memory_plan.WORKSPACE_FACTOR * 3 * 8 * 8 * 4 * 4)
    assert plan["total"] == sum(v for k, v in plan.items() if k != "total")
    sgd = memory_plan.estimate(one_conv(), batch_size=3, optimizer="sgd", mixed_precision=False)
    assert sgd["optimizer_slots"] == 4 * parameters


def test_mixed_precision_halves_outputs_but_batchnorm_keeps_a_float32_copy():
    def network(dtype):
        inputs = keras.Input((8, 8, 2))
        x = keras.layers.Conv2D(4, 3, padding="same", dtype=dtype)(inputs)
        return keras.Model(inputs, keras.layers.BatchNormalization(dtype=dtype)(x))
    assert memory_plan.kept_activation_bytes(network("float32")) == 2 * 8 * 8 * 4 * 4
    assert memory_plan.kept_activation_bytes(network("mixed_bfloat16")) == 8 * 8 * 4 * (2 + 2 + 4)


def test_remat_keeps_block_outputs_and_one_block_inside():
    plain = build_unet(input_shape=(32, 32, 1), num_classes=1, depth=2, base_filters=4)
    recomputed = build_unet(input_shape=(32, 32, 1), num_classes=1, depth=2, base_filters=4, remat=True)
    assert memory_plan.kept_activation_bytes(recomputed) < 0.6 * memory_plan.kept_activation_bytes(plain)
    # the largest block (down0/up0: 32x32x4 float32) keeps 5 inner outputs during its gradient
    blocks = [layer for layer in recomputed.layers if isinstance(layer, RecomputedBlock)]
    assert len(blocks) == 5  # down0, down1, bottleneck, up1, up0


def test_pick_batch_size_fits_the_budget_and_is_capped(monkeypatch):
    model = build_unet(input_shape=(64, 64, 3), num_classes=1, depth=2, base_filters=8)
    def total(batch):
        return memory_plan.estimate(model, batch_size=batch, optimizer="adam", mixed_precision=False)["total"]
    budget = total(5) + 1  # room for 5 images, not 6
    batch, line = memory_plan.pick_batch_size(model, optimizer="adam", mixed_precision=False, budget=budget,
                                              num_replicas=1, training_rows=1000)
    assert batch == 5 and "5 image(s) per replica fit" in line
    # two logical devices share the memory: each gets half
    monkeypatch.setattr(memory_plan, "device_memory_bytes", lambda name: (2 * total(3) + 1, "RAM"))
    two_cpus = Placement(strategy=None, device_names=["/cpu:0", "/cpu:1"], num_replicas=2, num_workers=1,
                         is_chief=True)
    budget, source = memory_plan.replica_budget(two_cpus)
    assert source == "RAM, split among 2 logical devices"
    batch, _ = memory_plan.pick_batch_size(model, optimizer="adam", mixed_precision=False, budget=budget,
                                           num_replicas=2, training_rows=1000)
    assert batch == 3
    # capped: at least MIN_STEPS_PER_EPOCH steps per epoch, and MAX_AUTO_BATCH
    batch, line = memory_plan.pick_batch_size(model, optimizer="adam", mixed_precision=False, budget=2 ** 40,
                                              num_replicas=2, training_rows=40)
    assert batch == 40 // (memory_plan.MIN_STEPS_PER_EPOCH * 2) and "steps per epoch" in line
    batch, _ = memory_plan.pick_batch_size(model, optimizer="adam", mixed_precision=False, budget=2 ** 40,
                                           num_replicas=1, training_rows=10 ** 6)
    assert batch == memory_plan.MAX_AUTO_BATCH
    with pytest.raises(ValueError, match="one image does not fit.*train.remat: true"):
        memory_plan.pick_batch_size(model, optimizer="adam", mixed_precision=False, budget=total(1) - 1,
                                    num_replicas=1, training_rows=100)


@pytest.mark.parametrize("normalization", ["batch", "group"])
def test_remat_gives_the_same_gradients_and_statistics(normalization):
    """Recomputed blocks: identical gradients, and BatchNorm's moving statistics updated once, not twice."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 1)).astype("float32")
    y = (rng.random((2, 32, 32, 1)) > 0.6).astype("float32")
    models = {}
    for remat in (False, True):
        keras.utils.set_random_seed(1)
        models[remat] = build_unet(input_shape=(32, 32, 1), num_classes=1, depth=2, base_filters=4, dropout=0.0,
                                   normalization=normalization, remat=remat)
    models[True].set_weights(models[False].get_weights())
    loss = make_loss(weights={"bce": 1.0, "dice": 1.0})
    gradients = {}
    for remat, model in models.items():
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        gradients[remat] = tape.gradient(value, model.trainable_weights)
    assert len(gradients[True]) == len(gradients[False]) > 0
    for plain, recomputed in zip(gradients[False], gradients[True]):
        np.testing.assert_allclose(recomputed.numpy(), plain.numpy(), rtol=1e-5, atol=1e-7)
    for plain, recomputed in zip(models[False].non_trainable_weights, models[True].non_trainable_weights):
        np.testing.assert_allclose(recomputed.numpy(), plain.numpy(), rtol=1e-6)


def test_a_recomputed_model_saves_loads_and_gives_its_weights_to_the_plain_one(tmp_path):
    keras.utils.set_random_seed(2)
    recomputed = build_unet(input_shape=(32, 32, 3), num_classes=3, depth=2, base_filters=4, remat=True)
    recomputed.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    plain = build_unet(input_shape=(32, 32, 3), num_classes=3, depth=2, base_filters=4)
    plain.set_weights(loaded.get_weights())
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(plain.predict(x, verbose=0), recomputed.predict(x, verbose=0), atol=1e-6)
