"""Training loop pieces: optimizer and learning-rate schedule from params, and the callback that keeps
the best model, the history, early stopping and the wall-clock budget, all resumable.

Resume: a run keeps its state in a backup folder (DVC `persist: true`, so it survives between
`dvc repro` runs): Keras' BackupAndRestore (weights, optimizer, epoch) in <backup>/keras/, and
ours in <backup>/state.json (history rows, best value and epoch, epochs since best, MLflow run id)
plus <backup>/best.keras. A killed run continues from its last finished epoch; a run that finished
(or stopped early) clears the folder, so the next one starts fresh. A backup made with other params
or data (its fingerprint differs) is discarded with a message instead of being resumed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras

from segpipe.outputs import write_json

OPTIMIZERS = ("adam", "adamw", "sgd")
# Per-epoch timings kept in the resume state and MLflow, not in the history CSV (they change every run).
TIMING_COLUMNS = ("epoch_seconds", "train_seconds", "elapsed_seconds")
SCHEDULES = ("constant", "cosine", "plateau")


def make_optimizer(*, optimizer: str, learning_rate: float, schedule: str, warmup_epochs: int, epochs: int,
                   steps_per_epoch: int, weight_decay: float, momentum: float) -> keras.optimizers.Optimizer:
    """Adam / AdamW / SGD+momentum with a constant or cosine-with-warm-up learning rate.

    `plateau` uses a constant rate here; the ReduceLROnPlateau callback lowers it (see `plateau_callback`).
    Cosine: linear warm-up from 0 over `warmup_epochs`, then cosine decay to 1% of the rate at `epochs`.
    """
    if schedule == "cosine":
        warmup_steps = warmup_epochs * steps_per_epoch
        decay_steps = max(1, (epochs - warmup_epochs) * steps_per_epoch)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else learning_rate, decay_steps=decay_steps, alpha=0.01,
            warmup_target=learning_rate if warmup_steps else None, warmup_steps=warmup_steps)
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


def history_name(keras_name: str) -> str:
    """A Keras log name in the project's words: Keras says `val_iou`, segpipe says `valid_iou` everywhere."""
    return "valid_" + keras_name[len("val_"):] if keras_name.startswith("val_") else keras_name


def keras_name(name: str) -> str:
    """The inverse of `history_name`, for Keras callbacks that watch a log by name."""
    return "val_" + name[len("valid_"):] if name.startswith("valid_") else name


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    rate = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(rate))


def fingerprint(*, params: dict, files: list[Path]) -> str:
    """Hash of what a resumed run must share with the interrupted one: its params and input files."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in sorted(map(str, files)):
        digest.update(path.encode())
        with open(path, "rb") as fh:
            digest.update(fh.read())
    return digest.hexdigest()


class ResumeState:
    """The backup folder: load / check / clear the state of an interrupted run."""

    def __init__(self, folder: Path, *, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.keras_dir = self.folder / "keras"
        self.best_model = self.folder / "best.keras"
        self.state_file = self.folder / "state.json"

    def load(self) -> dict | None:
        """The saved state of an interrupted run with the same fingerprint, else None (and the folder is cleared)."""
        if not self.state_file.is_file():
            self.clear()
            return None
        state = json.loads(self.state_file.read_text())
        if state.get("fingerprint") != self.fingerprint:
            print(f"train: the interrupted run in '{self.folder}' used other params or data; starting afresh.")
            self.clear()
            return None
        return state

    def keras_epoch(self, phase: str) -> int | None:
        """The epoch at which Keras' BackupAndRestore resumes `phase` (from its training_metadata.json), or None."""
        metadata = self.keras_dir / phase / "training_metadata.json"
        return json.loads(metadata.read_text())["epoch"] if metadata.is_file() else None

    def save(self, state: dict) -> None:
        write_json(self.state_file, {**state, "fingerprint": self.fingerprint})

    def clear(self) -> None:
        """Empties the folder but keeps it, with a note: DVC expects the declared output to exist."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "README.txt").write_text(
            "The train stage keeps the state of an unfinished run here (state.json, best.keras, keras/), so a\n"
            "killed run resumes on the next `dvc repro`. Empty after a finished run. Safe to delete.\n")


def random_state(model: keras.Model) -> dict[str, list[int]]:
    """The state of every Keras SeedGenerator in the model (the dropout masks' random stream).

    `model.save_weights`, and so BackupAndRestore, leaves these out: without them a resumed run draws
    the dropout masks of epoch 1 again and drifts from the run it continues."""
    return {v.path: [int(x) for x in keras.ops.convert_to_numpy(v).ravel()]
            for v in model.variables if v.path.endswith("seed_generator_state")}


def set_random_state(model: keras.Model, states: dict[str, list[int]]) -> None:
    for variable in model.variables:
        if variable.path in states:
            variable.assign(keras.ops.reshape(keras.ops.array(states[variable.path], dtype=variable.dtype),
                                              variable.shape))


def save_model_atomically(model: keras.Model, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


class EpochRecorder(keras.callbacks.Callback):
    """Per epoch: history row, best model, early stopping, time budget, MLflow metrics, resume state.

    Put it BEFORE keras.callbacks.BackupAndRestore in the callback list, so its state is saved first.
    """

    def __init__(self, *, resume: ResumeState, state: dict, monitor: str, mode: str, patience: int,
                 max_minutes: float, images_per_epoch: int, tracker, is_chief: bool = True,
                 multi_worker_strategy=None):
        super().__init__()
        self.resume, self.monitor, self.mode, self.patience = resume, monitor, mode, patience
        self.max_seconds = max_minutes * 60.0
        self.images_per_epoch, self.tracker, self.is_chief = images_per_epoch, tracker, is_chief
        self.multi_worker_strategy = multi_worker_strategy
        self.state = {"history": [], "best": None, "best_epoch": 0, "since_best": 0, "stop_reason": None,
                      "train_seconds": 0.0, "elapsed_seconds": 0.0, **state}
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
            # Rows of epochs after the last Keras backup are redone: drop them.
            self.state["history"] = [row for row in self.state["history"] if row["epoch"] <= epoch]
            self._elapsed_before = self.state["history"][-1]["elapsed_seconds"] if self.state["history"] else 0.0
            self._start = time.perf_counter()
        self._epoch_start = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):
        if self._train_seconds is None and getattr(self, "_epoch_start", None) is not None:
            self._train_seconds = time.perf_counter() - self._epoch_start

    def on_epoch_end(self, epoch, logs=None):
        logs = {history_name(key): value for key, value in (logs or {}).items()}
        if self.monitor not in logs:
            raise ValueError(f"param 'train.monitor' is {self.monitor!r}, which training does not log; "
                             f"choose one of {sorted(logs)}.")
        seconds = time.perf_counter() - self._epoch_start
        train_seconds = self._train_seconds or seconds
        elapsed = self._elapsed_before + time.perf_counter() - self._start
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in sorted(logs.items())},
               "learning_rate": current_learning_rate(self.model.optimizer),
               "epoch_seconds": round(seconds, 3), "train_seconds": round(train_seconds, 3),
               "elapsed_seconds": round(elapsed, 3)}
        row.pop("lr", None)
        self.state["history"].append(row)
        # Per epoch, so a resume from Keras' backup (saved just after this) finds the state of its epoch.
        states = self.state.setdefault("random_states", {})
        states[str(epoch + 1)] = random_state(self.model)
        for old in sorted(states, key=int)[:-2]:
            del states[old]
        value = logs[self.monitor]
        best = self.state["best"]
        improved = best is None or (value > best if self.mode == "max" else value < best)
        if not math.isfinite(value):
            improved = False
        if improved:
            self.state.update(best=float(value), best_epoch=epoch + 1, since_best=0)
            if self.is_chief:
                save_model_atomically(self.model, self.resume.best_model)
        else:
            self.state["since_best"] += 1
        if self.patience and self.state["since_best"] >= self.patience:
            self.state["stop_reason"] = f"early stopping: no {self.monitor} improvement in {self.patience} epochs"
            self.model.stop_training = True
        if self.max_seconds and elapsed >= self.max_seconds:
            self.state["stop_reason"] = f"time budget of {self.max_seconds / 60:g} minutes spent"
            self.model.stop_training = True
        if self.multi_worker_strategy is not None:
            self._agree_on_stopping()
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        if self.is_chief:
            self.resume.save(self.state)

    def _agree_on_stopping(self) -> None:
        """Workers stop together: each worker's clock differs, and one stopping alone would hang the others."""
        import tensorflow as tf

        strategy = self.multi_worker_strategy
        flag = strategy.run(lambda: tf.constant(float(bool(self.model.stop_training))))
        if float(strategy.reduce(tf.distribute.ReduceOp.SUM, flag, axis=None)) > 0:
            self.model.stop_training = True
            self.state["stop_reason"] = self.state["stop_reason"] or "another worker stopped"


def work_around_multi_worker_fit(model: keras.Model, strategy) -> None:
    """Makes Keras 3's fit run under MultiWorkerMirroredStrategy (keras-team/keras#20585, open). Two spots:

    1. fit first builds optimizer and metrics from a batch it MEAN-reduces across replicas, which fails
       ("Attempt to convert a value (PerReplica...)"): build from this worker's first local batch instead,
       which has the same shapes, all the build needs.
    2. each step MEAN-reduces its logs along axis 0, which fails for scalar logs: reduce them with
       axis=None (the loss tracker and our metrics are synchronised variables, so the workers' values
       are equal and their mean is that value).
    Both touch private Keras functions; tests/test_train.py runs two workers to catch a Keras change.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

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
