"""Patches to Keras 3's `fit` under a distribution strategy, which training always runs under.

Tested with Keras 3.15.1 on TensorFlow 2.21.0 (tests/training/test_train_devices.py runs two workers on 127.0.0.1).
They touch private Keras functions, so a Keras upgrade changes this file only.

1. `build_from_shapes`: fit (and evaluate, every epoch) first opens an iterator over the data to read
   one batch, builds the optimizer and metrics from it, and throws the iterator away. On a cached
   training stream that one batch costs decoding every row of a subset (the cache is filled by a
   first pass), so every row was decoded twice before the first step. Build from a batch of zeros
   of the data's shapes instead: shapes are all the build needs. Under MultiWorkerMirroredStrategy
   the original also fails (keras-team/keras#20585: it MEAN-reduces the PerReplica batch).
2. `patch_fit_for_multi_worker`: each step MEAN-reduces its logs along axis 0, which fails for scalar
   logs under MultiWorkerMirroredStrategy: reduce them with axis=None (the loss tracker and our metrics
   are synchronised variables, so the workers' values are equal and their mean is that value).
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer


def build_from_shapes(model: keras.Model, example) -> None:
    """Makes `model` build its optimizer and metrics from `example` (zeros of the data's shapes) (fix 1)."""

    def build(iterator=None, data_batch=None):
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=example)

    model._maybe_symbolic_build = build


def patch_fit_for_multi_worker() -> None:
    """Fix 2, to Keras' TensorFlow trainer (once per process)."""
    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy_, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy_, tf.distribute.MultiWorkerMirroredStrategy):
            return keras.tree.map_structure(
                lambda v: strategy_.reduce("MEAN", v, axis=None if len(v.shape) == 0 else 0), values)
        return original(values, strategy_, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica
