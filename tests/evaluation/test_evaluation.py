"""segpipe/evaluation/totals.py: running totals give the numbers that scoring every prediction at once gives."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segpipe.data.image_io import IGNORE_ID
from segpipe.evaluation import metrics as m
from segpipe.evaluation.totals import SplitTotals, boundary_f_by_threshold, threshold_levels


def reference_scores(name, predictions, truths, *, num_classes, class_names, tolerance, suffix=""):
    """Every image's prediction held at once, scored with segpipe.evaluation.metrics' primitives: what evaluate computed
    before it streamed."""
    flat, per_image = {}, []
    labelled = [t != IGNORE_ID for t in truths]
    size = max(2, num_classes)
    matrix = sum(m.class_confusion(p[keep], t[keep], num_classes=size)
                 for p, t, keep in zip(predictions, truths, labelled))
    classes = m.class_scores(matrix)
    if num_classes == 1:
        counts = [m.confusion_counts(p[keep] > 0, t[keep] == 1) for p, t, keep in zip(predictions, truths, labelled)]
        for prediction, truth, keep, count in zip(predictions, truths, labelled, counts):
            scores = m.scores_from_counts(count)
            per_image.append({"iou": scores["iou"], "dice": scores["dice"], "boundary_f": m.boundary_f_score(
                prediction > 0, truth == 1, tolerance=tolerance, labelled=keep)})
        flat.update({f"{name}_{k}{suffix}": v for k, v in m.scores_from_counts(sum(counts)).items()})
    else:
        flat[f"{name}_pixel_accuracy{suffix}"] = float(np.trace(matrix) / max(1, matrix.sum()))
        flat[f"{name}_mean_dice{suffix}"] = classes["mean_dice"]
        for prediction, truth, keep in zip(predictions, truths, labelled):
            image = m.class_scores(m.class_confusion(prediction[keep], truth[keep], num_classes=num_classes))
            per_image.append({"iou": image["mean_iou"], "dice": image["mean_dice"], "boundary_f": m.boundary_f_score(
                prediction, truth, tolerance=tolerance, labelled=keep, multi_class=True)})
    flat[f"{name}_class_iou{suffix}"] = dict(zip(class_names, classes["iou_per_class"]))
    flat[f"{name}_class_dice{suffix}"] = dict(zip(class_names, classes["dice_per_class"]))
    flat[f"{name}_mean_iou{suffix}"] = classes["mean_iou"]
    flat[f"{name}_frequency_weighted_iou{suffix}"] = classes["frequency_weighted_iou"]
    for key in ("iou", "dice", "boundary_f"):
        flat[f"{name}_image_mean_{key}{suffix}"] = float(np.mean([row[key] for row in per_image]))
    return flat, per_image


def blobby(rng, shape, *, void: bool):
    """Smooth random probabilities (so edges are regions, not noise) and a mask that mostly agrees."""
    from scipy import ndimage

    probabilities = ndimage.gaussian_filter(rng.random(shape), 2.0)
    probabilities = (probabilities - probabilities.min()) / (np.ptp(probabilities) + 1e-9)
    truth = (ndimage.gaussian_filter(rng.random(shape), 2.0) * 0.3 + probabilities * 0.7 > 0.5).astype(np.uint8)
    if void:
        truth[:3, :5] = IGNORE_ID
    return probabilities.astype(np.float32), truth


@pytest.mark.parametrize("tolerance", [0, 1, 2, 4])
def test_boundary_f_at_every_threshold_equals_scoring_each_threshold(tolerance):
    rng = np.random.default_rng(tolerance)
    for index, shape in enumerate([(24, 31), (1, 9), (9, 1), (40, 40)]):
        probabilities, truth = blobby(rng, shape, void=index % 2 == 0 and shape[0] > 3)
        labelled = truth != IGNORE_ID
        levels = threshold_levels(probabilities)
        got = boundary_f_by_threshold(levels, truth == 1, labelled, tolerance=tolerance, steps=len(m.THRESHOLDS))
        expected = [m.boundary_f_score(probabilities >= t, truth == 1, tolerance=tolerance, labelled=labelled)
                    for t in m.THRESHOLDS]
        assert got.tolist() == pytest.approx(expected, abs=1e-12)


def test_boundary_f_empty_cases():
    steps = len(m.THRESHOLDS)
    empty = np.zeros((5, 5), np.float32)
    no_truth = np.zeros((5, 5), bool)
    everywhere = np.ones((5, 5), bool)
    scores = boundary_f_by_threshold(threshold_levels(empty), no_truth, everywhere, tolerance=1, steps=steps)
    assert scores.tolist() == [1.0] * steps  # nothing predicted, nothing true: nothing to get wrong
    blob = np.zeros((5, 5), np.float32)
    blob[1:4, 1:4] = 0.7
    scores = boundary_f_by_threshold(threshold_levels(blob), no_truth, everywhere, tolerance=1, steps=steps)
    assert scores[m.THRESHOLDS.index(0.5)] == 0.0 and scores[m.THRESHOLDS.index(0.75)] == 1.0


@pytest.mark.parametrize("num_classes", [1, 4])
def test_split_totals_equal_scoring_all_predictions_at_once(num_classes):
    rng = np.random.default_rng(7)
    class_names = ["background", "foreground"] if num_classes == 1 else ["a", "b", "c", "d"]
    totals = SplitTotals(num_classes=num_classes, tolerance=2)
    probabilities, truths = [], []
    for index, shape in enumerate([(20, 30), (33, 17), (8, 8), (25, 25), (12, 40)]):
        if num_classes == 1:
            p, truth = blobby(rng, shape, void=index == 1)
            p = p[..., None]
        else:
            p = rng.random((*shape, num_classes)).astype(np.float32)
            truth = rng.integers(0, num_classes, shape).astype(np.uint8)
            truth[0, :3] = IGNORE_ID
        if index == 2:  # an empty mask
            truth[truth != IGNORE_ID] = 0
        totals.add(p, truth)
        probabilities.append(p)
        truths.append(truth)
    for threshold, suffix in ((0.5, ""), (0.35, "_at_best_threshold")) if num_classes == 1 else ((0.5, ""),):
        predictions = [(p[..., 0] >= threshold).astype(np.uint8) if num_classes == 1 else
                       np.argmax(p, axis=-1).astype(np.uint8) for p in probabilities]
        expected, expected_rows = reference_scores("valid", predictions, truths, num_classes=num_classes,
                                                   class_names=class_names, tolerance=2, suffix=suffix)
        got, rows = totals.scores("valid", class_names=class_names, threshold=threshold, suffix=suffix)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == (pytest.approx(value, abs=1e-12) if not isinstance(value, dict) else
                                {k: v if v is None else pytest.approx(v, abs=1e-12) for k, v in value.items()}), key
        assert pd.DataFrame(rows).to_numpy() == pytest.approx(pd.DataFrame(expected_rows).to_numpy(), abs=1e-12)
    if num_classes == 1:
        labelled = [t != IGNORE_ID for t in truths]
        assert totals.sweep() == m.threshold_sweep([p[..., 0] for p in probabilities], [t == 1 for t in truths],
                                                   labelled=labelled)


def test_split_totals_keep_a_few_numbers_per_image_not_the_images():
    totals = SplitTotals(num_classes=1, tolerance=2)
    probabilities, truth = blobby(np.random.default_rng(0), (256, 256), void=False)
    totals.add(probabilities[..., None], truth)
    assert sum(a.nbytes for a in totals.image_scores) <= 3 * len(m.THRESHOLDS) * 8


def test_split_totals_reject_a_mask_of_another_size():
    with pytest.raises(ValueError, match="differs from mask shape"):
        SplitTotals(num_classes=1, tolerance=1).add(np.zeros((4, 5, 1), np.float32), np.zeros((5, 4), np.uint8))


def test_iou_histogram_counts_every_image_once():
    from segpipe.evaluation.charts import iou_histogram

    table = pd.DataFrame({"iou": [0.0, 0.04, 0.05, 0.5, 0.99, 1.0]})
    histogram = iou_histogram(table)
    assert len(histogram) == 20 and histogram["images"].sum() == 6
    assert histogram.set_index("iou")["images"].to_dict()[0.0] == 2
    assert histogram["images"].iloc[-1] == 2  # 0.99 and 1.0 share the last bin


def test_read_ahead_keeps_order_and_runs_a_few_items_ahead():
    import threading

    from segpipe.core.parallel import read_ahead

    started, lock = [], threading.Lock()

    def load(item):
        with lock:
            started.append(item)
        return item * 10

    results = []
    for result in read_ahead(load, range(20), depth=3):
        results.append(result)
        assert len(started) <= len(results) + 3  # never more than `depth` items ahead of the consumer
    assert results == [i * 10 for i in range(20)]
