"""Crash points for the reliability tests (tests/project/test_crashes.py): where a stage is most fragile, it calls
`reached(point)`. With SEGPIPE_KILL_AT=<stage>:<point> in the environment, the first time that stage reaches that
point the whole process group (dvc repro and the stage) dies by SIGKILL: what a power cut, the OOM killer or
`kill -9` does, with no cleanup and no exit handler. Unset (always, outside those tests), a point costs one
dictionary lookup.

Points: `write` (a file written to its temp name, not yet renamed), `fill` (an output folder complete in its
temp folder), `swap` (the old output folder moved aside, the new one not yet in place), and in train
`epoch-<e>-batch-<b>` (after that training batch).
"""
from __future__ import annotations

import os
import signal

_stage = ""


def enter_stage(name: str) -> None:
    """Called once by segpipe.core.cli.run_stage: the stage this process runs."""
    global _stage
    _stage = name


def armed() -> bool:
    return os.environ.get("SEGPIPE_KILL_AT", "").startswith(f"{_stage}:") and bool(_stage)


def reached(point: str) -> None:
    if os.environ.get("SEGPIPE_KILL_AT") == f"{_stage}:{point}" and _stage:
        os.killpg(os.getpgrp(), signal.SIGKILL)


def keras_callback():
    """A Keras callback that passes `epoch-<e>-batch-<b>` (both from 1) after every training batch."""
    import keras

    class BatchPoints(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            reached(f"epoch-{self.epoch}-batch-{batch + 1}")

    return BatchPoints()
