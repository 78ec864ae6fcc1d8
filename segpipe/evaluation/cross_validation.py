"""Cross-validated scores (evaluate's metrics/cv.json) from the stored out-of-fold predictions, and the manifest
of the models to deploy (models/ensemble.json, which segpipe-predict reads).

The fold stages write under one folder (dvc.yaml passes it as evaluate's --cv-dir): fold-<k>/rows/ (fold-rows@k:
valid.csv holds the fold's held-out rows), fold-<k>/model/ (train-fold@k: model.keras, inference.json) and
fold-<k>/predictions/ (predict-fold@k; segpipe/evaluation/stored_predictions.py). Every image of train + valid
is held out by exactly one fold, so the out-of-fold set is the whole of them, each predicted by the one model
that never saw it. Its totals are the sum of the folds' (SplitTotals.merged): pooled scores over all images,
the binary threshold chosen on them, and the bootstrap interval over all images; each fold's own scores (at
that threshold) give the mean and standard deviation across folds. A test split the dataset ships is in no
fold: the k models predict it together (`ensemble_totals`, probabilities averaged), scored at that threshold.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from segpipe.core.parallel import read_ahead
from segpipe.data.image_io import read_png
from segpipe.data.rows import read_rows
from segpipe.evaluation.intervals import HEADLINE_SCORES
from segpipe.evaluation.scoring import flat_scores, rounded
from segpipe.evaluation.stored_predictions import read_index, read_prediction
from segpipe.evaluation.totals import SplitTotals, per_image_table


def fold_folder(cv_dir: Path, fold: int) -> Path:
    return Path(cv_dir) / f"fold-{fold}"


def fold_models(cv_dir: Path, folds: list[int]) -> list[Path]:
    """Each fold's model (train-fold@k's model.keras), in the order of `folds`."""
    return [fold_folder(cv_dir, fold) / "model" / "model.keras" for fold in folds]


def fold_totals(cv_dir: Path, folds: list[int], *, num_classes: int, tolerance: int
                ) -> tuple[list[SplitTotals], pd.DataFrame]:
    """(each fold's totals over its held-out images, all held-out rows with their fold), streamed: one stored
    prediction and its mask in memory at a time."""
    parts, tables = [], []
    for fold in folds:
        rows = read_rows(fold_folder(cv_dir, fold) / "rows" / "valid.csv", made_by="the fold-rows stage")
        files = read_index(fold_folder(cv_dir, fold) / "predictions", ids=list(rows["id"]))
        totals = SplitTotals(num_classes=num_classes, tolerance=tolerance)
        for probabilities, truth in zip(read_ahead(read_prediction, files), read_ahead(read_png, rows["mask_path"]),
                                        strict=True):
            totals.add(probabilities, truth)
        parts.append(totals)
        tables.append(rows.assign(fold=fold))
    return parts, pd.concat(tables, ignore_index=True)


def cv_scores(parts: list[SplitTotals], rows: pd.DataFrame, *, folds: list[int], num_classes: int,
              class_names: list[str], bootstrap_resamples: int, seed: int, groups: dict[str, list] | None = None,
              test: SplitTotals | None = None) -> tuple[dict, float, pd.DataFrame]:
    """(metrics/cv.json's content, the threshold chosen on the out-of-fold set, its per-image table with each
    row's fold). Every score over all out-of-fold images; the headline scores (intervals.HEADLINE_SCORES) per
    fold, with their mean and standard deviation. `test`: the fold ensemble's totals on the test split,
    scored as "ensemble_test" at that threshold; `groups`: {"oof": each out-of-fold row's group,
    "ensemble_test": each test row's}, to resample whole groups."""
    headline = HEADLINE_SCORES["binary" if num_classes == 1 else "multi_class"]  # per fold: these only
    whole = SplitTotals.merged(parts)
    splits = {"oof": whole, **({"ensemble_test": test} if test is not None else {})}
    flat, threshold, _ = flat_scores(splits, num_classes=num_classes, class_names=class_names,
                                     bootstrap_resamples=bootstrap_resamples, seed=seed, groups=groups,
                                     chosen_on="oof")
    suffixes = ((0.5, ""), (threshold, "_at_best_threshold")) if num_classes == 1 else ((0.5, ""),)
    per_fold = {}
    for fold, part in zip(folds, parts):
        scores = {}
        for value, suffix in suffixes:
            scores.update(part.scores("fold", class_names=class_names, threshold=value, suffix=suffix)[0])
        per_fold[str(fold)] = {key[len("fold_"):]: value for key, value in scores.items()
                               if key[len("fold_"):].removesuffix("_at_best_threshold") in headline}
    names = list(per_fold[str(folds[0])])
    summary = {"folds": len(folds), "images": len(rows), "best_threshold": threshold,
               "oof": {key[len("oof_"):]: value for key, value in flat.items() if key.startswith("oof_")},
               "fold_mean": {}, "fold_std": {}, "fold": per_fold}
    if test is not None:
        summary["ensemble_test"] = {key[len("ensemble_test_"):]: value for key, value in flat.items()
                                    if key.startswith("ensemble_test_")}
    for name in names:
        values = [scores[name] for scores in per_fold.values() if scores[name] is not None]
        summary["fold_mean"][name] = float(np.mean(values)) if values else None
        summary["fold_std"][name] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    table = per_image_table(rows, whole, class_names=class_names, threshold=threshold)
    table.insert(1, "fold", rows["fold"].to_numpy())
    return rounded_tree(summary), threshold, table


def ensemble_totals(models: list, input_modes: list[str], rows: pd.DataFrame, *, num_classes: int, tolerance: int,
                    **settings) -> SplitTotals:
    """The totals of `rows` predicted by `models` together (segpipe/inference/ensemble.py: each the way it was
    trained, probabilities averaged); `settings`: tile_overlap, tta, batch_size."""
    from segpipe.inference.ensemble import averaged
    from segpipe.inference.prediction import predict_files

    totals = SplitTotals(num_classes=num_classes, tolerance=tolerance)
    streams = [predict_files(model, list(rows["image_path"]), input_mode=mode, desc=f"evaluate ensemble {index + 1}",
                             **settings) for index, (model, mode) in enumerate(zip(models, input_modes, strict=True))]
    for (_, probabilities), truth in zip(averaged(streams), read_ahead(read_png, rows["mask_path"]), strict=True):
        totals.add(probabilities, truth)
    return totals


def rounded_tree(value):
    """Every float of a nested dict rounded to 6 digits (as evaluate.json's)."""
    if isinstance(value, dict):
        return {key: rounded_tree(item) for key, item in value.items()}
    return rounded(value) if isinstance(value, float) else value


def ensemble_manifest(models: list[Path], *, manifest: Path, threshold: float, chosen_by: str, tta: str,
                      tile_overlap: float) -> dict:
    """models/ensemble.json: the models that predict together (their probabilities averaged), as paths relative
    to the manifest's folder, and the threshold, tta and tile overlap to predict with."""
    return {"models": [Path(os.path.relpath(model, Path(manifest).parent)).as_posix() for model in models],
            "threshold": threshold, "chosen_by": chosen_by, "tta": tta, "tile_overlap": tile_overlap}
