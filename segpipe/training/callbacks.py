"""The training callbacks Keras does not ship, one job each. Everything else is Keras' own
(ModelCheckpoint, EarlyStopping, CSVLogger, BackupAndRestore, TerminateOnNaN, ReduceLROnPlateau).

Callbacks that add to `logs` (as Keras' ReduceLROnPlateau adds `learning_rate`) must come before
CSVLogger in the callback list, so that the history file has their columns.
"""
from __future__ import annotations

import math
import time

import keras
import tensorflow as tf

from segpipe.training.resume import ResumeState, random_state

# What EpochClock adds to the logs: in the resume state and MLflow, not in the history CSV (they change every run).
TIMING_COLUMNS = ("epoch_seconds", "train_seconds", "validation_seconds", "elapsed_seconds")


def history_name(keras_name: str) -> str:
    """A Keras log name in the project's words: Keras says `val_iou`, segpipe says `valid_iou` everywhere."""
    return "valid_" + keras_name[len("val_"):] if keras_name.startswith("val_") else keras_name


def keras_name(name: str) -> str:
    """The inverse of `history_name`, for Keras callbacks that watch a log by name."""
    return "val_" + name[len("valid_"):] if name.startswith("valid_") else name


def monitor_mode(monitor: str) -> str:
    """Keras' `mode` for a monitored log: losses are minimised, scores maximised."""
    return "min" if monitor.endswith("loss") else "max"


class LogLearningRate(keras.callbacks.Callback):
    """Adds the optimizer's learning rate at the end of each epoch to the logs (as `learning_rate`)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class EpochClock(keras.callbacks.Callback):
    """Adds `epoch_seconds`, `train_seconds` (the training steps), `validation_seconds` and `elapsed_seconds`
    (since the run began, over resumes: `seconds_before` is what the interrupted attempts spent) to the logs."""

    def __init__(self, *, seconds_before: float = 0.0):
        super().__init__()
        self.seconds_before = seconds_before
        self._start = self._epoch_start = self._train_seconds = self._test_start = None
        self._validation_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        now = time.perf_counter()
        self._start = self._start or now
        self._epoch_start, self._train_seconds, self._validation_seconds = now, None, 0.0

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()
        if self._train_seconds is None and self._epoch_start is not None:
            self._train_seconds = self._test_start - self._epoch_start

    def on_test_end(self, logs=None):
        if self._test_start is not None:
            self._validation_seconds += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        if logs is not None:
            logs.update(zip(TIMING_COLUMNS, (round(now - self._epoch_start, 3),
                                             round(self._train_seconds or now - self._epoch_start, 3),
                                             round(self._validation_seconds, 3),
                                             round(self.seconds_before + now - self._start, 3))))


class TimeBudget(keras.callbacks.Callback):
    """Stops training after the epoch in which `elapsed_seconds` (from EpochClock) reaches the budget."""

    def __init__(self, *, max_minutes: float):
        super().__init__()
        self.max_minutes = max_minutes
        self.spent = False

    def on_epoch_end(self, epoch, logs=None):
        if self.max_minutes and (logs or {}).get("elapsed_seconds", 0.0) >= self.max_minutes * 60:
            self.spent = True
            self.model.stop_training = True


class PlanEpochs(keras.callbacks.Callback):
    """Turns a time budget into an epoch count, once, and stops there.

    After the phase's `after`-th epoch (the first one pays for graph tracing and filling the cache), the
    epochs that fit in what is left of `max_minutes` at the last epoch's pace (plus 10%) are added to those done. The
    count goes into `total_epochs` (the learning-rate schedule's length, in epochs of this phase), into
    `state["planned_epochs"]` (a resumed run keeps it), and raises the early-stopping patience to a quarter
    of it: a cosine schedule gains most in its last epochs, when the rate is low, so a plateau while the
    rate is still high must not end the run. Multi-worker: the workers take the smallest count.
    """

    def __init__(self, *, max_minutes: float, first_epoch: int, total_epochs, state: dict,
                 early_stopping: keras.callbacks.EarlyStopping | None, strategy=None, after: int = 2):
        super().__init__()
        self.max_minutes, self.first_epoch, self.total_epochs = max_minutes, first_epoch, total_epochs
        self.state, self.early_stopping, self.strategy, self.after = state, early_stopping, strategy, after
        self.reached = False
        if state.get("planned_epochs"):
            self._adopt(state["planned_epochs"])

    def _adopt(self, planned: int) -> None:
        self.state["planned_epochs"] = planned
        self.total_epochs.assign(planned - self.first_epoch)
        if self.early_stopping is not None:
            self.early_stopping.patience = max(self.early_stopping.patience, math.ceil(planned / 4))

    def on_epoch_end(self, epoch, logs=None):
        done, logs = epoch + 1, logs or {}
        if not self.state.get("planned_epochs") and done - self.first_epoch >= self.after:
            left = self.max_minutes * 60 - logs["elapsed_seconds"]
            # 10% margin: later epochs pay for checkpoints and a busier machine; finishing the schedule matters
            # more than one more epoch (TimeBudget still stops an overrun at the budget).
            planned = done + max(0, int(left // (1.1 * max(logs["epoch_seconds"], 1e-3))))
            if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
                count = self.strategy.run(lambda: tf.constant(float(planned)))
                planned = int(self.strategy.reduce(tf.distribute.ReduceOp.MIN, count, axis=None))
            self._adopt(planned)
            print(f"train: time budget {self.max_minutes:g} min at {logs['epoch_seconds']:.1f} s/epoch: "
                  f"{planned} epochs planned, the learning-rate schedule spans them"
                  + (f"; early-stopping patience {self.early_stopping.patience}" if self.early_stopping else ""),
                  flush=True)
        if self.state.get("planned_epochs") and done >= self.state["planned_epochs"]:
            self.reached = True
            self.model.stop_training = True


class RequireMonitor(keras.callbacks.Callback):
    """Fails with a named param error when `train.monitor` is not logged (Keras' callbacks only warn)."""

    def __init__(self, monitor: str):
        super().__init__()
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        names = sorted(history_name(key) for key in (logs or {}))
        if self.monitor not in names:
            raise ValueError(f"param 'train.monitor' is {self.monitor!r}, which training does not log; "
                             f"choose one of {names}.")


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping that waits while the validation loss still falls, and starts from the best
    values and the epochs waited so far (a resumed run; Keras' own resets them when training begins).

    The monitor (`valid_iou`) picks the best epoch, but a run whose validation loss still falls is still
    learning, and its score can sit behind an early value for many epochs: on a sparse class the first
    epoch's predict-everything scores the class share and the next epochs predict nothing, and on a small
    validation set one noisy epoch sets a bar the next ones miss. So patience counts the epochs in which
    neither the monitor nor `loss` improved.
    """

    def __init__(self, *, best: float | None, wait: int, loss: str, best_loss: float | None, **kwargs):
        super().__init__(**kwargs)
        self.loss = loss
        self.resumed_best, self.resumed_wait, self.resumed_best_loss = best, wait, best_loss

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best, self.wait, self.best_loss = self.resumed_best, self.resumed_wait, self.resumed_best_loss

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get(self.loss)
        if loss is not None and math.isfinite(loss) and (self.best_loss is None or loss < self.best_loss):
            self.best_loss = loss
            # Keras' own adds this epoch to the wait before it compares the monitor: the wait ends at 0.
            self.wait = -1
        super().on_epoch_end(epoch, logs)


class SaveResumeState(keras.callbacks.Callback):
    """Saves state.json after each epoch, with the dropout random state of that epoch. Put it before
    BackupAndRestore, so the state of an epoch is on disk when Keras records the epoch as done."""

    def __init__(self, *, resume: ResumeState, state: dict):
        super().__init__()
        self.resume, self.state = resume, state

    def on_epoch_end(self, epoch, logs=None):
        states = self.state.setdefault("random_states", {})
        states[str(epoch + 1)] = random_state(self.model)
        for old in sorted(states, key=int)[:-2]:
            del states[old]
        self.resume.save(self.state)


class LogToMlflow(keras.callbacks.Callback):
    """Logs each epoch's logs, in the project's names, to the MLflow run of `tracker` (step = epoch from 1)."""

    def __init__(self, tracker):
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.log_metrics({history_name(k): float(v) for k, v in (logs or {}).items()}, step=epoch + 1)


class StopTogether(keras.callbacks.Callback):
    """Multi-worker training: when one worker stops (its own clock, its own NaN), all stop, or the others
    would wait for it forever. Put it after the callbacks that stop training."""

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy
        self.stopped_by_another = False

    def on_epoch_end(self, epoch, logs=None):
        stopping = bool(self.model.stop_training)
        flag = self.strategy.run(lambda: tf.constant(float(stopping)))
        if float(self.strategy.reduce(tf.distribute.ReduceOp.SUM, flag, axis=None)) > 0 and not stopping:
            self.stopped_by_another = True
            self.model.stop_training = True
