"""Training a U-Net with Keras' `fit`, in phases, resumably.

A run has one phase (`all_layers`) or, with a keras.applications encoder and
`train.freeze_encoder_epochs`, two: `frozen_encoder` for those epochs, then `all_layers`. Each phase
compiles the model afresh (a new optimizer whose schedule spans the phase) and calls `fit` once. The
batches continue the seeded stream where the last phase (or the killed run it resumes) left it.

The callbacks are Keras' own where Keras has them: ModelCheckpoint keeps the best epoch by
`train.monitor`, EarlyStopping stops after `train.patience` epochs in which neither the monitor nor the
validation loss improved, CSVLogger writes the history, BackupAndRestore the weights and optimizer,
TerminateOnNaN stops a diverged run.
segpipe/training/callbacks.py adds what Keras lacks (time budget, learning rate and timings in the history,
dropout random state, MLflow). Resume (segpipe/training/resume.py) restores what those callbacks keep in memory:
the best value (ModelCheckpoint's `initial_value_threshold`), the best loss and the epochs waited (EarlyStopping).
Early stopping in the frozen phase ends that phase only; patience counts within a phase.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from segpipe.core.schema import OPTIMIZERS, SCHEDULES
from segpipe.training.callbacks import (
    TIMING_COLUMNS,
    EpochClock,
    LogLearningRate,
    PlanEpochs,
    RequireMonitor,
    ResumedEarlyStopping,
    SaveResumeState,
    StopTogether,
    TimeBudget,
    history_name,
    keras_name,
    monitor_mode,
)
from segpipe.training.keras_patches import build_from_shapes, patch_fit_for_multi_worker
from segpipe.training.model import encoder_layers
from segpipe.training.resume import ResumeState, set_random_state


@keras.saving.register_keras_serializable(package="segpipe")
class PlannedCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras' CosineDecay (linear warm-up from 0 over `warmup_steps`, then cosine decay to 1% of
    `learning_rate` after `epochs` epochs), with `epochs` either an int, and then every rate is Keras' own
    to the bit, or a tf.Variable that a time budget sets once the first epochs are timed (PlanEpochs): the
    decay length is read from it at every step, so the rates of the steps already taken do not change
    while they are within the warm-up."""

    def __init__(self, *, learning_rate: float, warmup_steps: int, steps_per_epoch: int, epochs):
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        super().__init__(initial_learning_rate=0.0 if warmup_steps else learning_rate, decay_steps=1, alpha=0.01,
                         warmup_target=learning_rate if warmup_steps else None, warmup_steps=warmup_steps)

    @property
    def decay_steps(self):
        if isinstance(self.epochs, int):
            return max(1, self.epochs * self.steps_per_epoch - self.warmup_steps)
        return tf.maximum(1.0, tf.cast(self.epochs, tf.float32) * self.steps_per_epoch - self.warmup_steps)

    @decay_steps.setter
    def decay_steps(self, value):
        """CosineDecay's __init__ sets it; here it follows `epochs`."""

    def get_config(self):
        return {"learning_rate": self.warmup_target or self.initial_learning_rate, "warmup_steps": self.warmup_steps,
                "steps_per_epoch": self.steps_per_epoch, "epochs": int(keras.ops.convert_to_numpy(self.epochs))}


def make_optimizer(*, optimizer: str, learning_rate: float, schedule: str, warmup_epochs: int, epochs,
                   steps_per_epoch: int, weight_decay: float, momentum: float) -> keras.optimizers.Optimizer:
    """Adam / AdamW / SGD+momentum with a constant or cosine-with-warm-up learning rate.

    `plateau` uses a constant rate here; the stage's ReduceLROnPlateau callback lowers it.
    Cosine: `PlannedCosineDecay` over `epochs` (an int, or a tf.Variable that a time budget sets later).
    """
    if schedule == "cosine":
        rate = PlannedCosineDecay(learning_rate=learning_rate, warmup_steps=warmup_epochs * steps_per_epoch,
                                  steps_per_epoch=steps_per_epoch, epochs=epochs)
    elif schedule in ("constant", "plateau"):
        rate = learning_rate
    else:
        raise ValueError(f"param 'train.schedule' must be one of {list(SCHEDULES)}, got {schedule!r}.")
    if optimizer == "adam":
        return keras.optimizers.Adam(rate)
    if optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=weight_decay)
    if optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=momentum, nesterov=True)
    raise ValueError(f"param 'train.optimizer' must be one of {list(OPTIMIZERS)}, got {optimizer!r}.")


def plateau_callback(*, monitor: str, patience: int) -> keras.callbacks.ReduceLROnPlateau:
    """`schedule: plateau`: halve the learning rate after `patience` epochs without `monitor` improving."""
    return keras.callbacks.ReduceLROnPlateau(monitor=keras_name(monitor), mode=monitor_mode(monitor), factor=0.5,
                                             patience=patience, min_lr=1e-6)


# The last epoch a budgeted phase may reach before PlanEpochs has planned (it stops the run long before).
UNPLANNED_EPOCHS = 9999


def training_phases(model: keras.Model, *, freeze_encoder_epochs: int, epochs: int,
                    max_minutes: float = 0) -> list[tuple[str, int]]:
    """[(phase name, the epoch it ends after)]: `frozen_encoder` first when the model has an encoder to freeze.
    With a time budget the last phase ends when PlanEpochs says (UNPLANNED_EPOCHS until it has planned)."""
    last = UNPLANNED_EPOCHS if max_minutes else epochs
    frozen = [("frozen_encoder", min(freeze_encoder_epochs, last))] if (
        encoder_layers(model) and freeze_encoder_epochs) else []
    return frozen + [("all_layers", last)]


def _best_row(history: pd.DataFrame, *, monitor: str) -> int | None:
    """Index of the first row with the best finite `monitor` value (as ModelCheckpoint kept it), or None."""
    values = history[monitor].to_numpy(dtype=float) if len(history) else np.array([])
    finite = np.flatnonzero(np.isfinite(values))
    if not len(finite):
        return None
    return int(finite[np.argmax(values[finite]) if monitor_mode(monitor) == "max" else np.argmin(values[finite])])


def _best_and_wait(history: pd.DataFrame, *, monitor: str, loss: str,
                   phase_start: int) -> tuple[float | None, float | None, int]:
    """(best finite `monitor` value in the logged epochs, best finite `loss`, epochs since the later of the
    two within this phase): what ResumedEarlyStopping held when the run was interrupted."""
    best, best_loss = _best_row(history, monitor=monitor), _best_row(history, monitor=loss)
    if best is None:
        return None, None, 0
    last = max(best, -1 if best_loss is None else best_loss, phase_start - 1)
    return (float(history[monitor].iloc[best]),
            None if best_loss is None else float(history[loss].iloc[best_loss]), len(history) - 1 - last)


@dataclass
class Outcome:
    history: pd.DataFrame   # one row per epoch in the project's names (`epoch` from 1, `valid_iou`), with timings
    best_epoch: int         # from 1
    stop_reason: str


def fit_in_phases(model: keras.Model, *, phases: list[tuple[str, int]], compile_phase: Callable[..., None],
                  training_data: Callable[..., tf.data.Dataset], validation_data: tf.data.Dataset,
                  steps_per_epoch: int, monitor: str, patience: int, max_minutes: float,
                  callbacks: list[keras.callbacks.Callback], resume: ResumeState, state: dict) -> Outcome:
    """Trains `model` through `phases`, resuming from `resume`'s backup when it holds an interrupted run.

    Args:
        phases: from `training_phases`.
        compile_phase: `compile_phase(model, epochs=N)` compiles the model for a phase of N epochs
            (under the distribution strategy's scope).
        training_data: `training_data(first_batch=k)` is the training stream from batch k on; under several
            workers it is called with `input_context=` too, once per worker.
        validation_data: batches of the validation rows.
        monitor: the history name that picks the best epoch (`valid_iou`); *_loss is minimised.
        patience: early stopping after this many epochs without improvement; 0 = off.
        max_minutes: wall-clock budget over all attempts; 0 = none.
        callbacks: more callbacks (MLflow, learning-rate schedule, TensorBoard).
        state: the run's resume state (`resume.load()`), updated and saved as training goes.

    Returns:
        The history, the best epoch (its model is `resume.best_model`) and why the run stopped.
    """
    mode = monitor_mode(monitor)
    strategy = model.distribute_strategy
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker:
        patch_fit_for_multi_worker()
    height, width, channels = model.input_shape[1:]
    build_from_shapes(model, (tf.zeros([1, height, width, channels]), tf.zeros([1, height, width, 1], tf.uint8)))
    frozen_layers = encoder_layers(model)
    done = state.setdefault("phases_done", [])
    for phase, last_epoch in phases:
        weights_file = resume.folder / f"{phase}_done.weights.h5"
        if phase in done or state.get("stop_reason"):
            if phase in done and weights_file.is_file():
                model.load_weights(weights_file)
            continue
        # Where this phase starts, fixed on its first run so that a resumed phase keeps its schedule.
        first_epoch = state.setdefault("phase_start", {}).setdefault(
            phase, len(resume.history()))
        for layer in frozen_layers:
            layer.trainable = phase != "frozen_encoder"
        trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        planning = max_minutes and phase == phases[-1][0]
        if planning:
            last_epoch = state.get("planned_epochs") or last_epoch
            # The schedule's length in epochs, which PlanEpochs sets after timing the first epochs (the warm-up).
            with strategy.scope():
                phase_epochs = tf.Variable(last_epoch - first_epoch, trainable=False, dtype=tf.int64)
        else:
            phase_epochs = last_epoch - first_epoch
        span = (f"{first_epoch + 1}-{last_epoch}" if last_epoch != UNPLANNED_EPOCHS else
                f"from {first_epoch + 1} (the time budget plans how many after epoch {first_epoch + 2})")
        print(f"train: epochs {span} with "
              f"{'the encoder frozen' if phase == 'frozen_encoder' else 'all layers trainable'}"
              f" ({trainable:,} trainable weights)", flush=True)
        compile_phase(model, epochs=phase_epochs)
        start_epoch = resume.keras_epoch(phase) or first_epoch
        if str(start_epoch) in state.get("random_states", {}):
            set_random_state(model, state["random_states"][str(start_epoch)])
        history = resume.history(before_epoch=start_epoch)
        best, best_loss, wait = _best_and_wait(history, monitor=keras_name(monitor), loss="val_loss",
                                               phase_start=first_epoch)
        early_stopping = ResumedEarlyStopping(best=best, wait=wait, loss="val_loss", best_loss=best_loss,
                                              monitor=keras_name(monitor), mode=mode,
                                              patience=patience) if patience else None
        budget = TimeBudget(max_minutes=max_minutes)
        plan = PlanEpochs(max_minutes=max_minutes, first_epoch=first_epoch, total_epochs=phase_epochs, state=state,
                          early_stopping=early_stopping, strategy=strategy) if planning else None
        together = StopTogether(strategy) if multi_worker else None
        phase_callbacks = [
            LogLearningRate(), EpochClock(seconds_before=float(history["elapsed_seconds"].iloc[-1]) if len(history)
                                          else 0.0),
            RequireMonitor(monitor), keras.callbacks.CSVLogger(str(resume.history_csv), append=True),
            keras.callbacks.ModelCheckpoint(str(resume.best_model), monitor=keras_name(monitor), mode=mode,
                                            save_best_only=True, initial_value_threshold=best),
            *[c for c in (plan, early_stopping, budget, together) if c is not None], *callbacks,
            SaveResumeState(resume=resume, state=state),  # before BackupAndRestore: see its docstring
            keras.callbacks.BackupAndRestore(str(resume.keras_dir / phase)), keras.callbacks.TerminateOnNaN()]
        first_batch = start_epoch * steps_per_epoch
        # Several workers: each builds its own share of the stream (segpipe/data/input_pipeline.py).
        data = (strategy.distribute_datasets_from_function(
            lambda context, first=first_batch: training_data(first_batch=first, input_context=context)) if multi_worker
            else training_data(first_batch=first_batch))
        model.fit(data, validation_data=validation_data,
                  epochs=last_epoch, initial_epoch=first_epoch, steps_per_epoch=steps_per_epoch,
                  callbacks=phase_callbacks, verbose=1 if sys.stdout.isatty() else 2, shuffle=False)

        history = resume.history()
        if not math.isfinite(float(history["loss"].iloc[-1])):
            if _best_row(history, monitor=keras_name(monitor)) is None:
                raise ValueError(f"training diverged (loss is not finite in epoch {len(history)}) before any "
                                 "usable epoch; lower train.learning_rate, or set train.precision: float32 to rule "
                                 "out overflow.")
            state["stop_reason"] = f"loss not finite in epoch {len(history)}; kept the best epoch before"
        elif plan is not None and plan.reached:
            state["stop_reason"] = (f"time budget of {max_minutes:g} minutes: the {state['planned_epochs']} "
                                    "planned epochs run")
        elif budget.spent:
            state["stop_reason"] = f"time budget of {max_minutes:g} minutes spent"
        elif together is not None and together.stopped_by_another:
            state["stop_reason"] = "another worker stopped"
        elif early_stopping is not None and early_stopping.stopped_epoch and phase == "all_layers":
            state["stop_reason"] = (f"early stopping: neither {monitor} nor valid_loss improved in "
                                    f"{early_stopping.patience} epochs")
        if phase != phases[-1][0]:
            model.save_weights(weights_file)
        done.append(phase)
        resume.save(state)
    return _outcome(resume.history(), monitor=monitor, stop_reason=state.get("stop_reason") or "all epochs run")


def _outcome(keras_history: pd.DataFrame, *, monitor: str, stop_reason: str) -> Outcome:
    history = keras_history.rename(columns=history_name).assign(epoch=keras_history["epoch"] + 1)
    scores = sorted(c for c in history.columns if c not in ("epoch", "learning_rate", *TIMING_COLUMNS))
    history = history[["epoch", *scores, "learning_rate", *TIMING_COLUMNS]].reset_index(drop=True)
    best_epoch = int(history["epoch"].iloc[_best_row(history, monitor=monitor)])
    return Outcome(history=history, best_epoch=best_epoch, stop_reason=stop_reason)


def run_summary(outcome: Outcome, *, images_per_epoch: int) -> tuple[pd.DataFrame, dict, dict]:
    """(history without timings, for the CSV; quality metrics at the best epoch; timing facts)."""
    history = outcome.history
    best_row = history[history["epoch"] == outcome.best_epoch].iloc[0]
    metrics = {f"best_{key}" if key.startswith("valid_") else f"best_train_{key}": round(float(best_row[key]), 6)
               for key in best_row.index if key not in ("epoch", "learning_rate", *TIMING_COLUMNS)}
    # Steady-state speed: the first epoch of a process includes graph tracing.
    steady = history.iloc[1:] if len(history) > 1 else history
    facts = {"best_epoch": outcome.best_epoch, "epochs_run": int(len(history)), "stop_reason": outcome.stop_reason,
             "train_seconds": round(float(history["train_seconds"].sum()), 2),
             "validation_seconds": round(float(history["validation_seconds"].sum()), 2),
             # What in-training validation cost: its share of the epochs' time (the budget's target is 15%).
             "validation_share": round(float(history["validation_seconds"].sum() / history["epoch_seconds"].sum()), 3),
             "wall_seconds": round(float(history["elapsed_seconds"].iloc[-1]), 2),
             "images_per_second": round(len(steady) * images_per_epoch / float(steady["train_seconds"].sum()), 2)}
    return history.drop(columns=list(TIMING_COLUMNS)), metrics, facts
