"""segpipe/evaluation/intervals.py: bootstrap intervals over images and paired differences, from per-image parts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from segpipe.evaluation import intervals
from segpipe.evaluation.totals import SplitTotals


def scored_split(num_classes: int, count: int = 12, seed: int = 0) -> SplitTotals:
    rng = np.random.default_rng(seed)
    totals = SplitTotals(num_classes=num_classes, tolerance=1)
    for index in range(count):
        truth = rng.integers(0, max(2, num_classes), (20, 24)).astype(np.uint8)
        truth[:2] = 255  # void
        if index == 3:
            truth[truth != 255] = 0  # an image with nothing to find
        channels = max(1, num_classes)
        noise = rng.random((20, 24, channels)).astype(np.float32)
        if num_classes == 1:
            probabilities = np.clip(0.6 * (truth[..., None] == 1) + 0.5 * noise, 0, 1)
        else:
            probabilities = np.eye(channels, dtype=np.float32)[np.minimum(truth, channels - 1)] + noise
        totals.add(probabilities.astype(np.float32), truth)
    return totals


@pytest.mark.parametrize("num_classes, scores", [
    (1, ("iou", "dice", "precision", "recall", "mean_iou", "image_mean_iou", "image_mean_dice",
         "image_mean_boundary_f")),
    (3, ("mean_iou", "mean_dice", "image_mean_iou", "image_mean_dice", "image_mean_boundary_f"))])
def test_the_statistic_of_all_images_is_the_metric_evaluate_reports(num_classes, scores):
    totals = scored_split(num_classes)
    names = ["background", "foreground"] if num_classes == 1 else ["a", "b", "c"]
    for threshold in ((0.5, 0.35) if num_classes == 1 else (0.5,)):
        flat, _ = totals.scores("valid", class_names=names, threshold=threshold)
        table = totals.per_image(class_names=names, threshold=threshold)
        for score in scores:
            parts, statistic = intervals.metric_parts(table, score)
            assert statistic(parts.sum(axis=0)) == pytest.approx(flat[f"valid_{score}"], abs=1e-12), score


def test_bca_agrees_with_scipy_on_a_ratio_of_sums():
    rng = np.random.default_rng(1)
    tp, wrong = rng.integers(50, 400, 40).astype(float), rng.integers(5, 200, 40).astype(float)
    parts = np.column_stack([tp, tp + wrong])
    ours = intervals.bootstrap_interval(parts, lambda s: s[..., 0] / s[..., 1], resamples=20000, seed=3)
    theirs = stats.bootstrap((np.arange(40),), lambda i, axis=-1: tp[i].sum(axis) / (tp[i] + wrong[i]).sum(axis),
                             method="BCa", n_resamples=20000, random_state=4).confidence_interval
    assert ours[0] == pytest.approx(tp.sum() / parts[:, 1].sum())
    assert ours[1] == pytest.approx(theirs.low, abs=0.004) and ours[2] == pytest.approx(theirs.high, abs=0.004)
    assert ours[1] < ours[0] < ours[2]


def test_intervals_are_seeded_and_do_not_depend_on_how_many_resamples_are_held_at_once(monkeypatch):
    parts = np.column_stack([np.arange(1.0, 31.0), np.ones(30)])
    mean = lambda s: s[..., 0] / s[..., 1]  # noqa: E731
    whole = intervals.bootstrap_interval(parts, mean, resamples=500, seed=5)
    assert intervals.bootstrap_interval(parts, mean, resamples=500, seed=5) == whole
    monkeypatch.setattr(intervals, "_WEIGHTS_PER_CHUNK", 30 * 7)  # 7 resamples at a time
    assert intervals.bootstrap_interval(parts, mean, resamples=500, seed=5) == pytest.approx(whole)


def table_of(totals: SplitTotals, ids) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"id": ids}), totals.per_image(class_names=["bg", "fg"], threshold=0.5)], axis=1)


def test_a_run_against_itself_is_within_noise_and_a_planted_drop_is_worse():
    totals = scored_split(1, count=30)
    ids = [f"img{k:02d}" for k in range(30)]
    table = table_of(totals, ids)
    for score in ("iou", "dice", "mean_iou", "image_mean_iou"):
        difference, low, high = intervals.paired_difference(table, table.sample(frac=1, random_state=0), score,
                                                            resamples=500, seed=0)
        assert (difference, low, high) == (0.0, 0.0, 0.0)
        assert intervals.verdict(low, high) == "within noise"
    worse = table.copy()
    hurt = worse.index[:25]  # most images lose a fifth of their true positives to misses
    moved = (worse.loc[hurt, "tp"] * 0.2).round()
    worse.loc[hurt, "tp"] -= moved
    worse.loc[hurt, "fn"] += moved
    worse.loc[hurt, "iou"] *= 0.8
    for score in ("iou", "dice", "image_mean_iou"):
        difference, low, high = intervals.paired_difference(worse, table, score, resamples=500, seed=0)
        assert difference < 0 and intervals.verdict(low, high) == "worse", score
        assert intervals.verdict(*intervals.paired_difference(table, worse, score, resamples=500, seed=0)[1:]) \
            == "better"


def test_pairs_match_images_by_id_and_a_missing_column_means_no_comparison():
    totals = scored_split(1, count=10)
    table = table_of(totals, [f"img{k}" for k in range(10)])
    shifted = table.copy()
    shifted["id"] = [f"img{(k + 1) % 10}" for k in range(10)]  # the same scores on other images
    assert intervals.paired_difference(table, shifted, "iou", resamples=100, seed=0)[0] == 0.0  # pooled: same sums
    assert intervals.paired_difference(table, table.drop(columns=["tp"]), "iou", resamples=100, seed=0) is None
    assert intervals.paired_difference(table, table, "iou", suffix="_at_0.5", resamples=100, seed=0) is None


def test_resampling_whole_groups_widens_the_interval_of_alike_images_and_keeps_the_point():
    """Ten patients of eight near-identical images each: 80 images, but only ten independent draws."""
    rng = np.random.default_rng(2)
    patient_iou = rng.uniform(0.3, 0.95, 10)
    scores = np.repeat(patient_iou, 8) + rng.normal(0, 0.005, 80)
    parts = np.column_stack([scores, np.ones(80)])
    groups = np.repeat([f"patient{k}" for k in range(10)], 8)
    mean = lambda s: s[..., 0] / s[..., 1]  # noqa: E731
    by_image = intervals.bootstrap_interval(parts, mean, resamples=2000, seed=0)
    by_group = intervals.bootstrap_interval(intervals.group_sums(parts, groups), mean, resamples=2000, seed=0)
    assert by_group[0] == pytest.approx(by_image[0])
    assert by_group[2] - by_group[1] > 2 * (by_image[2] - by_image[1])
    np.testing.assert_allclose(intervals.group_sums(parts, groups)[:, 1], 8)


def test_a_paired_comparison_by_group_resamples_groups():
    totals = scored_split(1, count=30)
    table = table_of(totals, [f"img{k:02d}" for k in range(30)])
    table["group"] = [f"g{k // 3}" for k in range(30)]
    worse = table.copy()
    moved = (worse.loc[:20, "tp"] * 0.1).round()
    worse.loc[:20, "tp"] -= moved
    worse.loc[:20, "fn"] += moved
    by_image = intervals.paired_difference(worse, table, "iou", resamples=500, seed=0)
    by_group = intervals.paired_difference(worse, table, "iou", resamples=500, seed=0, by_group=True)
    assert by_group[0] == pytest.approx(by_image[0]) and by_group[1] != by_image[1]
