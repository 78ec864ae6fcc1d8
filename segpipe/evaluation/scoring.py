"""evaluate's work (stages/evaluate.py runs it): predict every image of each split once and keep running
totals (`score_splits`), turn the totals into the metrics file's flat scores (`flat_scores`), and draw the
plot folder (`draw_plots`: the tables, the overlays of the first and worst images, the charts).

Binary models are scored at threshold 0.5 and at the best validation threshold (`_at_best_threshold`);
multi-class models by argmax (no threshold).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import keras
import pandas as pd

from segpipe.core.parallel import read_ahead
from segpipe.data.image_io import read_png
from segpipe.data.rows import check_files
from segpipe.evaluation import intervals, metrics
from segpipe.evaluation.charts import confusion_cells, iou_histogram, write_evaluation_plots
from segpipe.evaluation.totals import SplitTotals, per_image_table
from segpipe.inference import prediction


def score_splits(model: keras.Model, splits: dict[str, pd.DataFrame], *, num_classes: int, boundary_tolerance: int,
                 csv_dir: Path, **settings) -> tuple[dict[str, SplitTotals], float]:
    """({split: its totals}, seconds per image): one pass, each image predicted, scored and let go;
    `settings`: input_mode, tile_overlap, tta, batch_size (segpipe/inference/prediction.py)."""
    totals, started = {}, time.perf_counter()
    for name, rows in splits.items():
        check_files(rows, source=f"{csv_dir / name}.csv")
        totals[name] = SplitTotals(num_classes=num_classes, tolerance=boundary_tolerance)
        predictions = prediction.predict_files(model, list(rows["image_path"]), desc=f"evaluate {name}", **settings)
        for (_, probabilities), truth in zip(predictions, read_ahead(read_png, rows["mask_path"]), strict=True):
            totals[name].add(probabilities, truth)
    return totals, (time.perf_counter() - started) / sum(len(rows) for rows in splits.values())


def rounded(value):
    """A score (or {class: score}) rounded to 6 digits for the metrics file; None (no score) stays None."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return None if value is None else round(float(value), 6)


def flat_scores(totals: dict[str, SplitTotals], *, num_classes: int, class_names: list[str],
                bootstrap_resamples: int, seed: int, groups: dict[str, list] | None = None,
                chosen_on: str = "valid") -> tuple[dict, float, pd.DataFrame]:
    """(the metrics file's flat scores, the best threshold, the threshold sweep of split `chosen_on`); binary:
    the best threshold by pooled IoU on `chosen_on` (the validation split; cross-validation: out-of-fold). The
    headline scores (intervals.HEADLINE_SCORES) get their 95% bootstrap interval over the split's images
    (segpipe/evaluation/intervals.py) unless `bootstrap_resamples` is 0; `groups`: {split: each image's group},
    to resample whole groups instead of images."""
    threshold, sweep = 0.5, pd.DataFrame()
    if num_classes == 1:
        sweep = pd.DataFrame(totals[chosen_on].sweep())
        threshold = metrics.best_threshold(sweep.to_dict("records"))
    flat = {"best_threshold": threshold}
    for name in totals:
        for value, suffix in ((0.5, ""), (threshold, "_at_best_threshold")) if num_classes == 1 else ((0.5, ""),):
            flat.update(totals[name].scores(name, class_names=class_names, threshold=value, suffix=suffix)[0])
            if bootstrap_resamples:
                table = totals[name].per_image(class_names=class_names, threshold=value)
                scores = intervals.HEADLINE_SCORES["binary" if num_classes == 1 else "multi_class"]
                named = {score: intervals.metric_parts(table, score) for score in scores}
                if groups:
                    named = {score: (intervals.group_sums(parts, groups[name]), statistic)
                             for score, (parts, statistic) in named.items()}
                found = intervals.bootstrap_intervals(named, resamples=bootstrap_resamples, seed=seed)
                for score, (_, low, high) in found.items():
                    flat[f"{name}_{score}{suffix}_ci_low"], flat[f"{name}_{score}{suffix}_ci_high"] = low, high
    return {k: rounded(v) for k, v in sorted(flat.items())}, threshold, sweep


def flatten_scores(flat: dict) -> dict[str, float]:
    """Metrics for MLflow, which takes numbers only: {class: score} becomes <key>_<class> (characters MLflow
    refuses in a name become _); None is left out."""
    out = {}
    for key, value in flat.items():
        for name, score in (value.items() if isinstance(value, dict) else [("", value)]):
            if score is not None:
                out[f"{key}_{re.sub(r'[^0-9A-Za-z_. -]', '_', name)}" if name else key] = score
    return out


def draw_plots(model: keras.Model, folder: Path, *, valid: pd.DataFrame, flat: dict, threshold: float,
               sweep: pd.DataFrame, totals: SplitTotals, num_classes: int, class_names: list[str],
               history: pd.DataFrame | None, num_samples: int, worst_k: int, **settings) -> pd.DataFrame:
    """Writes the plot folder; returns the worst images. The few images drawn (the first `num_samples` by id,
    the `worst_k` lowest IoU) are predicted again rather than every prediction kept."""
    table = per_image_table(valid, totals, class_names=class_names, threshold=threshold)
    worst = table.sort_values(["iou", "id"]).head(worst_k)
    shown = valid[valid["id"].isin(set(valid.sort_values("id")["id"][:num_samples]) | set(worst["id"]))]
    at = "_at_best_threshold" if num_classes == 1 else ""  # the threshold the per-image table uses
    class_scores = pd.DataFrame({"class": class_names, "iou": [flat[f"valid_class_iou{at}"][n] for n in class_names],
                                 "dice": [flat[f"valid_class_dice{at}"][n] for n in class_names]})
    overlays = {}
    for row_id, mask_path, (image, probabilities) in zip(shown["id"], shown["mask_path"], prediction.predict_files(
            model, list(shown["image_path"]), desc="evaluate overlays", **settings), strict=True):
        overlays[row_id] = (image, prediction.to_class_ids(probabilities, threshold=threshold), read_png(mask_path))
    matrix = totals.confusion_matrix(threshold=threshold)
    write_evaluation_plots(
        folder, sweep=sweep, per_image=table, worst=worst, best_threshold=threshold, histogram=iou_histogram(table),
        confusion=confusion_cells(matrix, class_names=class_names), matrix=matrix, class_names=class_names,
        num_classes=num_classes, class_scores=class_scores, history=history, overlays=overlays)
    return worst
