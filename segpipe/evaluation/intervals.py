"""How sure a score is: bootstrap intervals over images, alone (evaluate) or paired between two runs (the report).

Every headline score is a function of sums over images: pooled IoU is sum(tp) / sum(tp + fp + fn), an
image-mean is sum(score) / sum(1), mean IoU is a mean of per-class ratios of sums. `metric_parts` gives, for a
score and the per-image table that evaluate writes (plots/evaluate/per_image.csv), the per-image parts (N, D)
and the function of their sums; a resample of the images is then a weight per image (how often it was drawn),
and its score is that function of `weights @ parts`: memory is the per-image numbers, never pixels.

The interval is the bias-corrected and accelerated (BCa) bootstrap (Efron & Tibshirani 1993, ch. 14), as
`scipy.stats.bootstrap(method="BCa")` computes it (tests/evaluation/test_intervals.py compares the two). It is
computed here rather than by scipy because BCa's acceleration needs the N leave-one-out scores, which scipy
recomputes from N samples of N - 1 images each (N^2 work: hours at 10^5 images), while a function of sums
gets each one by subtracting one image's parts from the totals (N work).

With `group_sums` the unit resampled is a group of images (a patient, a scene), not an image.

A paired comparison resamples the same images on both sides: the interval of (this run's score - the base's)
on images both scored. It is "better" or "worse" when the interval excludes 0, else "within noise".
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import norm

LEVEL = 0.95
# The scores that evaluate gives an interval (<key>_ci_low, <key>_ci_high) in the metrics file.
HEADLINE_SCORES = {"binary": ("iou", "dice", "mean_iou", "image_mean_iou", "image_mean_dice", "image_mean_boundary_f"),
                   "multi_class": ("mean_iou", "mean_dice", "image_mean_iou", "image_mean_dice",
                                   "image_mean_boundary_f")}
_WEIGHTS_PER_CHUNK = 2_000_000  # resamples x images held at once (16 MB of int64 weights)


def _ratio(numerator, denominator, *, empty: float = 1.0):
    """numerator / denominator elementwise; `empty` where the denominator is 0 (metrics.py's convention:
    nothing to find and nothing found scores 1.0)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), empty)


def _mean_of_classes(ratios_and_present):
    """Mean over the classes that have a score (metrics.class_scores); 1.0 when none has."""
    ratios, present = ratios_and_present
    count = present.sum(axis=-1)
    return np.where(count > 0, np.where(present, ratios, 0.0).sum(axis=-1) / np.maximum(count, 1), 1.0)


def _class_ratio(sums, *, classes: int, dice: bool):
    """Per-class IoU (or Dice) and whether the class has one, from sums (..., classes * 3) of [tp, fp, fn]."""
    tp, fp, fn = (sums[..., k::3][..., :classes] for k in range(3))
    union = (2 * tp if dice else tp) + fp + fn
    return _ratio(2 * tp if dice else tp, union), union > 0


def count_columns(class_names: list[str], *, binary: bool) -> list[str]:
    """The count columns of per_image.csv: binary tp, fp, fn, tn; multi-class tp/fp/fn per class."""
    if binary:
        return ["tp", "fp", "fn", "tn"]
    return [f"{kind}_{name}" for name in class_names for kind in ("tp", "fp", "fn")]


def metric_parts(table: pd.DataFrame, metric: str, *, suffix: str = "") -> tuple[np.ndarray, Callable] | None:
    """(parts (N, D) float64, statistic of their sums (..., D) -> (...)) for `metric` (iou, dice, precision,
    recall, mean_iou, mean_dice, image_mean_iou, image_mean_dice, image_mean_boundary_f) from a per-image
    table, reading its columns `<column><suffix>`; None when the table lacks them."""
    def columns(*names):
        wanted = [name + suffix for name in names]
        return table[wanted].to_numpy(np.float64) if all(name in table for name in wanted) else None

    if metric.startswith("image_mean_"):
        scores = columns(metric[len("image_mean_"):])
        return None if scores is None else (np.column_stack([scores[:, 0], np.ones(len(scores))]),
                                            lambda s: _ratio(s[..., 0], s[..., 1]))
    counts = columns("tp", "fp", "fn", "tn")
    if counts is not None:  # binary
        statistics = {
            "iou": lambda s: _ratio(s[..., 0], s[..., 0] + s[..., 1] + s[..., 2]),
            "dice": lambda s: _ratio(2 * s[..., 0], 2 * s[..., 0] + s[..., 1] + s[..., 2]),
            "precision": lambda s: _ratio(s[..., 0], s[..., 0] + s[..., 1]),
            "recall": lambda s: _ratio(s[..., 0], s[..., 0] + s[..., 2]),
            "mean_iou": lambda s: _mean_of_classes((
                np.stack([_ratio(s[..., 3], s[..., 3] + s[..., 1] + s[..., 2]),
                          _ratio(s[..., 0], s[..., 0] + s[..., 1] + s[..., 2])], axis=-1),
                np.stack([s[..., 3] + s[..., 1] + s[..., 2] > 0, s[..., 0] + s[..., 1] + s[..., 2] > 0], axis=-1)))}
        return (counts, statistics[metric]) if metric in statistics else None
    names = [column[3:len(column) - len(suffix)] for column in table
             if column.startswith("tp_") and column.endswith(suffix) and not column.startswith("tp_at_")]
    if not names or metric not in ("mean_iou", "mean_dice"):
        return None
    counts = columns(*[f"{kind}_{name}" for name in names for kind in ("tp", "fp", "fn")])
    if counts is None:
        return None
    return counts, lambda s: _mean_of_classes(_class_ratio(s, classes=len(names), dice=metric == "mean_dice"))


def group_sums(parts: np.ndarray, groups) -> np.ndarray:
    """(G, D): the parts of each group's images added up, groups in order of first appearance. Resampling
    these resamples whole groups (a cluster bootstrap): images of one patient, scene or slide are not
    independent, and drawing them one by one gives too narrow an interval."""
    codes, _ = pd.factorize(pd.Series(list(groups)), sort=False)
    summed = np.zeros((codes.max() + 1 if len(codes) else 0, parts.shape[1]))
    np.add.at(summed, codes, parts)
    return summed


def bootstrap_intervals(named: dict[str, tuple[np.ndarray, Callable]], *, resamples: int, seed: int,
                        level: float = LEVEL) -> dict[str, tuple[float, float, float]]:
    """{name: (point, low, high)}: each statistic of all images and its BCa bootstrap interval over images
    (module docstring). Every statistic sees the same `resamples` seeded resamples of the same N images."""
    named = {name: (np.asarray(parts, np.float64), statistic) for name, (parts, statistic) in named.items()}
    count = len(next(iter(named.values()))[0]) if named else 0
    totals = {name: parts.sum(axis=0) for name, (parts, _) in named.items()}
    points = {name: float(statistic(totals[name])) for name, (_, statistic) in named.items()}
    if count < 2 or resamples < 1:
        return {name: (point, point, point) for name, point in points.items()}
    rng = np.random.default_rng(seed)
    chunk, drawn = max(1, _WEIGHTS_PER_CHUNK // count), {name: [] for name in named}
    for start in range(0, resamples, chunk):
        weights = rng.multinomial(count, np.full(count, 1.0 / count), size=min(chunk, resamples - start))
        for name, (parts, statistic) in named.items():
            drawn[name].append(statistic(weights @ parts))
    found = {}
    for name, (parts, statistic) in named.items():
        boot, point = np.concatenate(drawn[name]), points[name]
        below = (np.count_nonzero(boot < point) + 0.5 * np.count_nonzero(boot == point)) / len(boot)
        bias = norm.ppf(np.clip(below, 0.5 / len(boot), 1 - 0.5 / len(boot)))
        leave_one_out = statistic(totals[name][None] - parts)
        spread = leave_one_out.mean() - leave_one_out
        squares = float(np.sum(spread ** 2))
        acceleration = float(np.sum(spread ** 3)) / (6 * squares ** 1.5) if squares > 0 else 0.0
        z = norm.ppf([(1 - level) / 2, (1 + level) / 2])
        low, high = np.quantile(boot, norm.cdf(bias + (bias + z) / (1 - acceleration * (bias + z))))
        found[name] = (point, float(min(low, point)), float(max(high, point)))
    return found


def bootstrap_interval(parts: np.ndarray, statistic: Callable, *, resamples: int, seed: int,
                       level: float = LEVEL) -> tuple[float, float, float]:
    """(point, low, high) of one statistic: see bootstrap_intervals."""
    return bootstrap_intervals({"": (parts, statistic)}, resamples=resamples, seed=seed, level=level)[""]


def paired_difference(new: pd.DataFrame, old: pd.DataFrame, metric: str, *, suffix: str = "", resamples: int,
                      seed: int, level: float = LEVEL, by_group: bool = False) -> tuple[float, float, float] | None:
    """(this - base, low, high) of `metric` on the images both tables scored (matched by id), resampled
    together (`by_group`: whole groups of this side's `group` column, see group_sums); None when either table
    lacks the metric's columns."""
    common = new["id"][new["id"].isin(old["id"])]
    found_new = metric_parts(new.set_index("id").loc[common], metric, suffix=suffix)
    found_old = metric_parts(old.set_index("id").loc[common], metric, suffix=suffix)
    if found_new is None or found_old is None:
        return None
    (parts_new, statistic), (parts_old, _) = found_new, found_old
    width, parts = parts_new.shape[1], np.hstack([parts_new, parts_old])
    if by_group:
        parts = group_sums(parts, new.set_index("id").loc[common, "group"])
    return bootstrap_interval(parts,
                              lambda s: statistic(s[..., :width]) - statistic(s[..., width:]),
                              resamples=resamples, seed=seed, level=level)


def verdict(low: float, high: float, *, higher_is_better: bool = True) -> str:
    """better / worse when the difference's interval excludes 0, else within noise."""
    if low > 0 or high < 0:
        return "better" if (low > 0) == higher_is_better else "worse"
    return "within noise"
