"""A patch that makes Keras 3's `fit` run under MultiWorkerMirroredStrategy (keras-team/keras#20585, open).

Tested with Keras 3.15.1 on TensorFlow 2.21.0 (tests/test_train_devices.py runs two workers on 127.0.0.1).
It touches two private Keras functions, so a Keras upgrade changes this file only: when the issue is
fixed upstream, delete the file and its one call in segpipe/training.py.

1. fit first builds optimizer and metrics from a batch it MEAN-reduces across replicas, which fails
   ("Attempt to convert a value (PerReplica...)"): build from this worker's first local batch instead,
   which has the same shapes, all the build needs.
2. each step MEAN-reduces its logs along axis 0, which fails for scalar logs: reduce them with
   axis=None (the loss tracker and our metrics are synchronised variables, so the workers' values
   are equal and their mean is that value).
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer


def patch_fit_for_multi_worker(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Applies both fixes: the first to `model`, the second to Keras' TensorFlow trainer (once per process)."""

    def local_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = local_build
    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy_, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy_, tf.distribute.MultiWorkerMirroredStrategy):
            return keras.tree.map_structure(
                lambda v: strategy_.reduce("MEAN", v, axis=None if len(v.shape) == 0 else 0), values)
        return original(values, strategy_, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica
