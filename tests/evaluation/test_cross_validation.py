"""Cross-validation's scoring: stored out-of-fold predictions (size, round trip, index checks), out-of-fold totals
as the sum of the folds', cv.json's per-fold values, mean and spread."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segpipe.data.image_io import write_png
from segpipe.evaluation import metrics
from segpipe.evaluation import stored_predictions as stored
from segpipe.evaluation.cross_validation import cv_scores, ensemble_manifest, fold_totals
from segpipe.evaluation.totals import SplitTotals


@pytest.mark.parametrize("classes", [1, 5])
def test_stored_predictions_round_trip_within_half_a_level_and_stay_under_a_byte_per_value(tmp_path, classes):
    rng = np.random.default_rng(0)
    probabilities = rng.random((96, 80, classes), dtype=np.float32)  # noise: the worst case for compression
    if classes > 1:
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
    index = stored.write_predictions(tmp_path, ["a/b 1"], [probabilities])
    back = stored.read_prediction(tmp_path / index["file"][0])
    assert back.shape == probabilities.shape and back.dtype == np.float32
    assert np.abs(back - probabilities).max() <= 0.5 / 255 + 1e-6
    assert index["bytes"][0] <= 96 * 80 * classes + 1024
    confident = np.zeros((96, 80, classes), np.float32)
    confident[:40, ..., 0] = 1.0
    small = stored.write_predictions(tmp_path / "sure", ["x"], [confident])
    assert small["bytes"][0] < 96 * 80 * classes / 20  # a sure model's runs of 0 and 255 compress


def test_the_index_must_list_exactly_the_fold_rows(tmp_path):
    stored.write_predictions(tmp_path, ["a", "b"], [np.zeros((4, 4, 1), np.float32)] * 2)
    assert [p.name for p in stored.read_index(tmp_path, ids=["a", "b"])] == [
        stored.file_name("a", ".png"), stored.file_name("b", ".png")]
    with pytest.raises(ValueError, match="not this fold's 2 held-out rows"):
        stored.read_index(tmp_path, ids=["a", "c"])
    with pytest.raises(ValueError, match="predictions.csv' not found"):
        stored.read_index(tmp_path / "nothing", ids=["a"])


def fold_layout(tmp_path, *, folds: int, per_fold: int, seed: int = 0):
    """cv/fold-<k>/rows/valid.csv and predictions/ for random masks and noisy predictions of them; returns the
    (probabilities, mask) pairs of each fold."""
    rng = np.random.default_rng(seed)
    pairs = []
    for fold in range(folds):
        rows, mine = [], []
        for index in range(per_fold):
            mask = (rng.random((24, 20)) < 0.3).astype(np.uint8)
            mask[0, :3] = 255  # void
            probabilities = np.clip(mask[..., None] * 0.4 + rng.random((24, 20, 1)) * 0.6, 0, 1).astype(np.float32)
            probabilities = stored.quantise(probabilities).astype(np.float32) / 255  # as stored
            row_id = f"f{fold}_{index}"
            write_png(tmp_path / "png" / f"{row_id}.png", mask)
            rows.append({"id": row_id, "image_path": "unused.png", "mask_path": str(tmp_path / "png" / f"{row_id}.png"),
                         "group": f"g{index % 3}", "height": 24, "width": 20,
                         "foreground_fraction": float((mask == 1).mean()), "class_pixels": ""})
            mine.append((probabilities, mask))
        folder = tmp_path / "cv" / f"fold-{fold}"
        (folder / "rows").mkdir(parents=True)
        pd.DataFrame(rows).to_csv(folder / "rows" / "valid.csv", index=False)
        stored.write_predictions(folder / "predictions", [r["id"] for r in rows], [p for p, _ in mine])
        pairs.append(mine)
    return pairs


def test_out_of_fold_totals_are_the_sum_of_the_folds_and_cv_json_holds_each_fold_its_mean_and_spread(tmp_path):
    pairs = fold_layout(tmp_path, folds=3, per_fold=4)
    parts, rows = fold_totals(tmp_path / "cv", [0, 1, 2], num_classes=1, tolerance=1)
    assert list(rows["fold"]) == [0] * 4 + [1] * 4 + [2] * 4
    in_one_pass = SplitTotals(num_classes=1, tolerance=1)
    for probabilities, mask in (pair for fold in pairs for pair in fold):
        in_one_pass.add(probabilities, mask)
    np.testing.assert_array_equal(SplitTotals.merged(parts).counts, in_one_pass.counts)
    np.testing.assert_array_equal(SplitTotals.merged(parts).counts, sum(part.counts for part in parts))

    scores, threshold, table = cv_scores(parts, rows, folds=[0, 1, 2], num_classes=1, class_names=["fg"],
                                         bootstrap_resamples=200, seed=0)
    assert threshold == metrics.best_threshold(in_one_pass.sweep())  # chosen on all out-of-fold images
    whole = in_one_pass.scores("oof", class_names=["fg"], threshold=threshold, suffix="_at_best_threshold")[0]
    assert scores["oof"]["iou_at_best_threshold"] == pytest.approx(whole["oof_iou_at_best_threshold"], abs=1e-6)
    low, high = scores["oof"]["iou_at_best_threshold_ci_low"], scores["oof"]["iou_at_best_threshold_ci_high"]
    assert low < scores["oof"]["iou_at_best_threshold"] < high
    per_fold = [part.scores("f", class_names=["fg"], threshold=threshold)[0]["f_iou"] for part in parts]
    key = "iou_at_best_threshold"  # each fold scored at the out-of-fold threshold
    assert [scores["fold"][str(k)][key] for k in range(3)] == pytest.approx(per_fold, abs=1e-6)
    assert scores["fold_mean"][key] == pytest.approx(np.mean(per_fold), abs=1e-6)
    assert scores["fold_std"][key] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-6)
    at_half = [part.scores("f", class_names=["fg"], threshold=0.5)[0]["f_iou"] for part in parts]
    assert [scores["fold"][str(k)]["iou"] for k in range(3)] == pytest.approx(at_half, abs=1e-6)
    assert scores["folds"] == 3 and scores["images"] == 12
    assert list(table["fold"]) == list(rows["fold"]) and list(table["id"]) == list(rows["id"])


def test_a_fold_without_its_predictions_is_named(tmp_path):
    fold_layout(tmp_path, folds=2, per_fold=2)
    (tmp_path / "cv/fold-1/predictions/predictions.csv").unlink()
    with pytest.raises(ValueError, match="fold-1.predictions.predictions.csv' not found"):
        fold_totals(tmp_path / "cv", [0, 1], num_classes=1, tolerance=1)


def test_the_ensemble_manifest_points_at_the_models_from_its_own_folder(tmp_path):
    manifest = ensemble_manifest([tmp_path / "cv/fold-0/model/model.keras", tmp_path / "cv/fold-1/model/model.keras"],
                                 manifest=tmp_path / "models/ensemble.json", threshold=0.55, chosen_by="x", tta="flips",
                                 tile_overlap=0.5)
    assert manifest["models"] == ["../cv/fold-0/model/model.keras", "../cv/fold-1/model/model.keras"]
    assert manifest["threshold"] == 0.55


def test_the_ensemble_on_a_test_split_scores_the_averaged_probabilities(tmp_path):
    import keras

    from segpipe.evaluation.cross_validation import ensemble_totals
    from segpipe.inference.prediction import predict_files

    rng = np.random.default_rng(1)
    rows = []
    for index in range(3):
        write_png(tmp_path / f"image{index}.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
        write_png(tmp_path / f"mask{index}.png", (rng.random((20, 24)) < 0.4).astype(np.uint8))
        rows.append({"image_path": str(tmp_path / f"image{index}.png"),
                     "mask_path": str(tmp_path / f"mask{index}.png")})
    rows = pd.DataFrame(rows)
    models = []
    for seed in (0, 1):  # two different random networks
        keras.utils.set_random_seed(seed)
        image = keras.Input((16, 16, 3))
        models.append(keras.Model(image, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(image)))
    settings = dict(tile_overlap=0.5, tta="none", batch_size=4)
    found = ensemble_totals(models, ["resize", "patches"], rows, num_classes=1, tolerance=1, **settings)
    expected = SplitTotals(num_classes=1, tolerance=1)
    streams = [predict_files(model, list(rows["image_path"]), input_mode=mode, desc="x", **settings)
               for model, mode in zip(models, ["resize", "patches"])]
    for index, ((_, first), (_, second)) in enumerate(zip(*streams)):
        expected.add((first + second) / 2, stored.read_png(rows["mask_path"][index]))
    np.testing.assert_array_equal(found.counts, expected.counts)
    alone = ensemble_totals(models[:1], ["resize"], rows, num_classes=1, tolerance=1, **settings)
    assert not np.array_equal(alone.counts, found.counts)  # the second model changes what is predicted
