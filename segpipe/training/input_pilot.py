"""The pilot of `train.input: auto` (segpipe/training/input_mode.py): when resizing and patches are both possible, a
short run of each, scored the way evaluate scores, decides which one the rest of the training goes on with.

Each candidate gets the same share of the training: `train.input_pilot` x the time budget (or x the epochs,
without one), split evenly. The score is evaluate's headline at native resolution, without test-time
augmentation: the IoU of the positive class at threshold 0.5 (binary) or the mean IoU over the classes,
void excluded (multi-class), pooled over the validation images (a seeded sample of at most
PILOT_VALIDATION_IMAGES). The network-size validation of each epoch cannot decide: resized predictions
lose most between the network's output and the native mask (small objects, thin structures).
A tie goes to resize, the cheaper input to train and to predict.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from segpipe.core.parallel import read_ahead
from segpipe.data.image_io import IGNORE_ID, read_png
from segpipe.evaluation.metrics import class_confusion, class_scores
from segpipe.inference.prediction import predict_files, to_class_ids
from segpipe.training.resume import ResumeState
from segpipe.training.setup import InputSetup

PILOT_VALIDATION_IMAGES = 64
PILOT_TILE_OVERLAP = 0.5  # evaluate.tile_overlap's default


def pilot_length(*, pilot: float, candidates: int, max_minutes: float, epochs: int) -> tuple[float, int]:
    """(minutes, epochs) of each candidate's pilot: with a time budget `pilot` x max_minutes split evenly
    (epochs: the budget plans them); without one, `pilot` x epochs split evenly, at least one epoch."""
    if max_minutes:
        return max_minutes * pilot / candidates, epochs
    return 0.0, max(1, round(epochs * pilot / candidates))


def native_score(model: keras.Model, rows: pd.DataFrame, *, input_mode: str, num_classes: int, batch_size: int,
                 seed: int) -> tuple[float, int]:
    """(score, images scored): the model's pooled IoU (binary, threshold 0.5) or mean IoU (multi-class) on
    `rows` at native resolution, as evaluate predicts them (module docstring)."""
    if len(rows) > PILOT_VALIDATION_IMAGES:
        rows = rows.sample(n=PILOT_VALIDATION_IMAGES, random_state=seed).sort_values("id")
    classes = max(2, num_classes)
    matrix = np.zeros((classes, classes), np.int64)
    predictions = predict_files(model, list(rows["image_path"]), input_mode=input_mode, batch_size=batch_size,
                                tile_overlap=PILOT_TILE_OVERLAP, tta="none", desc=f"pilot {input_mode}: scoring")
    for (_, probabilities), truth in zip(predictions, read_ahead(read_png, rows["mask_path"]), strict=True):
        labelled = truth != IGNORE_ID
        predicted = to_class_ids(probabilities, threshold=0.5)
        matrix += class_confusion(predicted[labelled], truth[labelled], num_classes=classes)
    scores = class_scores(matrix)
    if num_classes == 1:
        foreground = scores["iou_per_class"][1]
        return (1.0 if foreground is None else foreground), len(rows)
    return scores["mean_iou"], len(rows)


def pick(scores: dict[str, float]) -> str:
    """The candidate with the highest score; a tie goes to resize (module docstring)."""
    best = max(scores.values())
    return "resize" if scores.get("resize") == best else max(scores, key=scores.get)


def run_pilot(candidates: list[str], *, set_up: Callable[[str], InputSetup], fit: Callable[..., object],
              valid: pd.DataFrame, num_classes: int, seed: int, resume: ResumeState, minutes: float,
              epochs: int) -> dict:
    """Trains each candidate input for `minutes` (or `epochs`, without a budget) from scratch, scores its best
    epoch at native resolution and keeps its weights in the run's backup folder (`pilot_weights`); returns
    the record train keeps in its resume state and facts: the chosen input, the scores and the seconds.
    `set_up(input_mode)` builds an InputSetup; `fit(setup, resume=, state=, epochs=, max_minutes=, patience=)`
    trains it."""
    started, scores, scored = time.perf_counter(), {}, 0
    for mode in candidates:
        print(f"train: pilot of {mode}: " + (f"{minutes:.2f} minutes" if minutes else f"{epochs} epoch(s)"),
              flush=True)
        setup = set_up(mode)
        trial = ResumeState(resume.folder / f"pilot_{mode}", fingerprint=resume.fingerprint)
        trial.clear()
        fit(setup, resume=trial, state={}, epochs=epochs, max_minutes=minutes, patience=0)
        if not trial.best_model.is_file():  # no epoch with a finite monitor
            raise ValueError(f"the pilot of train.input {mode} diverged before any usable epoch; lower "
                             "train.learning_rate, or set train.input to the other input.")
        best = keras.models.load_model(trial.best_model, compile=False)
        scores[mode], scored = native_score(best, valid, input_mode=mode, num_classes=num_classes,
                                            batch_size=setup.global_batch, seed=seed)
        best.save_weights(pilot_weights(resume, mode))
        shutil.rmtree(trial.folder)
        print(f"train: pilot of {mode}: {scores[mode]:.4f} at native resolution on {scored} validation images",
              flush=True)
    return {"chosen": pick(scores), "scores": scores, "images_scored": scored,
            "seconds": round(time.perf_counter() - started, 1),
            **({"minutes_each": round(minutes, 3)} if minutes else {"epochs_each": epochs})}


def pilot_weights(resume: ResumeState, input_mode: str) -> Path:
    """Where the pilot of `input_mode` keeps its best weights until the run ends."""
    return resume.folder / f"pilot_{input_mode}.weights.h5"


def after_pilot(record: dict | None, *, max_minutes: float, epochs: int) -> tuple[str, float, int]:
    """(the pilot's outcome in words, the minutes and epochs left for the rest of the training)."""
    if record is None:
        return "", max_minutes, epochs
    length = (f"{record['minutes_each']:g} minutes each" if "minutes_each" in record else
              f"{record['epochs_each']} epoch(s) each")
    words = f"; pilot ({length}): " + ", ".join(f"{mode} {score:.4f}" for mode, score in record["scores"].items()) \
        + f" -> {record['chosen']}"
    return (words, round(max(0.0, max_minutes - record["seconds"] / 60), 2) if max_minutes else 0.0,
            max(1, epochs - record.get("epochs_each", 0)))


def settle_input(candidates: list[str], *, state: dict, resume: ResumeState, pilot: float, max_minutes: float,
                 epochs: int, **run_pilot_args) -> tuple[str, str, float, int]:
    """(the input to train, the pilot's outcome in words or "", the minutes and epochs left): the one candidate,
    or the pilot's choice, run now (and kept in `state`) unless a resumed run holds it already;
    `run_pilot_args`: set_up, fit, valid, num_classes, seed (see `run_pilot`)."""
    if len(candidates) > 1 and "input_pilot" not in state:
        minutes, each = pilot_length(pilot=pilot, candidates=len(candidates), max_minutes=max_minutes, epochs=epochs)
        state["input_pilot"] = run_pilot(candidates, resume=resume, minutes=minutes, epochs=each, **run_pilot_args)
        resume.save(state)
    record = state.get("input_pilot")
    words, minutes_left, epochs_left = after_pilot(record, max_minutes=max_minutes, epochs=epochs)
    return (record["chosen"] if record else candidates[0]), words, minutes_left, epochs_left
