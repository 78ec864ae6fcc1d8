"""The backup folder that lets a killed training run resume where it stopped.

A run keeps its state in a folder that DVC persists between `dvc repro` runs (`persist: true`):
- keras/<phase>/: Keras' BackupAndRestore (weights, optimizer, epoch) of each training phase;
- history.csv: Keras' CSVLogger, one row per finished epoch (Keras' names: epoch from 0, `val_iou`);
- best.keras: Keras' ModelCheckpoint, the best epoch so far;
- state.json: what Keras keeps nowhere: the fingerprint, the MLflow run id, where each phase started,
  the phases done, and the dropout random state per epoch.
A killed run continues from its last finished epoch; a finished run clears the folder, so the next one
starts fresh. A backup made with other params or data (its fingerprint differs), or one with a file
that cannot be read back (cut off by a kill, a full disk or a hand edit), is discarded with a one-line
message naming the file instead of being resumed: a fresh start is slower, a wrong resume is worse.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import h5py
import keras
import pandas as pd

from segpipe.core.outputs import write_csv, write_json


def fingerprint(*, params: dict, files: list[Path]) -> str:
    """Hash of what a resumed run must share with the interrupted one: its params and input files."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in sorted(map(str, files)):
        digest.update(path.encode())
        with open(path, "rb") as fh:
            digest.update(fh.read())
    return digest.hexdigest()


def _intact(path: Path) -> bool:
    """Whether a .keras file is a complete zip (ModelCheckpoint writes in place, so a kill can cut it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def _readable_weights(path: Path) -> bool:
    """Whether a Keras .weights.h5 file opens as HDF5 (a truncated or garbage file does not)."""
    try:
        with h5py.File(path, "r"):
            return True
    except (OSError, ValueError):
        return False


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


class ResumeState:
    """The backup folder: load, save and clear the state of an interrupted run."""

    def __init__(self, folder: Path, *, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.keras_dir = self.folder / "keras"
        self.best_model = self.folder / "best.keras"
        self.history_csv = self.folder / "history.csv"
        self.state_file = self.folder / "state.json"

    def load(self) -> dict:
        """The saved state of an interrupted run with the same fingerprint, else {} (and the folder is cleared)."""
        if not self.state_file.is_file():
            self.clear()
            return {}
        state = _json_object(self.state_file)
        if state is not None and state.get("fingerprint") != self.fingerprint:
            print(f"train: the interrupted run in '{self.folder}' used other params or data; starting afresh.")
            self.clear()
            return {}
        unreadable = self.unreadable_file() if state is not None else self.state_file
        if unreadable is not None:
            print(f"train: '{unreadable}' of the interrupted run cannot be read back (cut off by a kill, a full "
                  "disk or an edit); starting afresh.")
            self.clear()
            return {}
        return state

    def unreadable_file(self) -> Path | None:
        """The first file of the backup that cannot be read back as what it should be, or None."""
        if self.best_model.exists() and not _intact(self.best_model):
            return self.best_model
        if self.history_csv.is_file():
            try:
                if "epoch" not in pd.read_csv(self.history_csv).columns:
                    return self.history_csv
            except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
                return self.history_csv
        for metadata in sorted(self.keras_dir.glob("*/training_metadata.json")):
            if not isinstance((_json_object(metadata) or {}).get("epoch"), int):
                return metadata
        for weights in sorted(self.keras_dir.glob("*/latest.weights.h5")):
            if not _readable_weights(weights):
                return weights
        return None

    def save(self, state: dict) -> None:
        write_json(self.state_file, {**state, "fingerprint": self.fingerprint})

    def keras_epoch(self, phase: str) -> int | None:
        """The epoch (from 0) at which Keras' BackupAndRestore resumes `phase`, or None."""
        metadata = self.keras_dir / phase / "training_metadata.json"
        return json.loads(metadata.read_text())["epoch"] if metadata.is_file() else None

    def history(self, *, before_epoch: int | None = None) -> pd.DataFrame:
        """The logged epochs (all, or those before `before_epoch`, from 0), in Keras' names; later rows,
        which a resumed run redoes, are removed from the file so that CSVLogger appends after the last kept one."""
        if not self.history_csv.is_file():
            return pd.DataFrame()
        history = pd.read_csv(self.history_csv, float_precision="round_trip")
        if before_epoch is None:
            return history
        kept = history[history["epoch"] < before_epoch]
        if len(kept) < len(history):
            write_csv(self.history_csv, kept)
        return kept.reset_index(drop=True)

    def clear(self) -> None:
        """Empties the folder but keeps it, with a note: DVC expects the declared output to exist."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "README.txt").write_text(
            "The train stage keeps the state of an unfinished run here (state.json, history.csv, best.keras,\n"
            "keras/), so a killed run resumes on the next `dvc repro`. Empty after a finished run. Safe to delete.\n")


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


def open_backup(folder: Path, *, is_chief: bool, params: dict, files: list[Path],
                several_workers: bool = False) -> tuple[ResumeState, dict]:
    """The run's backup folder and the state it holds ({} for a fresh run). Non-chief workers of a
    multi-worker run keep theirs in a temporary folder, out of the DVC output, so a multi-worker run is
    never resumed: the chief drops its backup too, as workers that start at different epochs would wait
    for each other forever."""
    folder = Path(folder) if is_chief else Path(tempfile.mkdtemp(prefix="segpipe-worker-"))
    resume = ResumeState(folder, fingerprint=fingerprint(params=params, files=files))
    state = resume.load()
    if state and several_workers:
        print(f"train: not resuming the interrupted run in '{folder}': several workers start together from "
              "the first epoch", flush=True)
        resume.clear()
        state = resume.load()
    elif state:
        print(f"train: resuming the interrupted run after epoch {len(resume.history())} (state in '{folder}')",
              flush=True)
    return resume, state
