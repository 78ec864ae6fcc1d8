"""evaluate: measure the trained model on the validation split (and test, if the raw data has one).

Reads:   --model (from train), --inference (train's record of resize or patches), --csv-dir/{valid,test}.csv
         and their PNGs, --history (train's per-epoch CSV, for the learning-curve picture), --run-info (the
         MLflow id of the run that trained the model).
Writes:  --metrics JSON (flat keys: <split>_<score> at threshold 0.5 and <split>_<score>_at_best_threshold;
         the headline scores' 95% bootstrap intervals over images as <key>_ci_low and <key>_ci_high),
         --threshold JSON (the best validation threshold by IoU, and the tta and tile_overlap measured with:
         segpipe-predict uses them by default),
         --plots-dir/{threshold_curve,class_scores,iou_histogram,confusion}.csv (declared as DVC plots), per_image.csv
         (scores and pixel counts per image, which segpipe-report pairs by id) and worst.csv (tables),
         --plots-dir/overlays/*.png (binary: TP green / FP red / FN blue; multi-class: truth | prediction in
         class colours with a legend; void gray), --plots-dir/png/*.png rendered offline;
         --cv-metrics JSON (cross-validation, with cv.folds [0..k-1]: the out-of-fold scores with their
         intervals, each fold's, their mean and standard deviation; {"folds": 0} without) and
         --plots-dir/oof_per_image.csv (per_image.csv's columns and each image's fold) from the folds' stored
         predictions in --cv-dir (segpipe/evaluation/cross_validation.py);
         --ensemble JSON (what segpipe-predict --model deploys: the fold models with the threshold chosen on
         the out-of-fold predictions, or without folds --model with the validation threshold).
Params:  seed (the bootstrap's), num_classes, class_names, mlflow; evaluate.boundary_tolerance, num_samples,
         worst_k, batch_size (windows per model call), tta, tile_overlap, bootstrap_resamples, bootstrap_unit;
         cv.folds.
         MLflow: a new record of this experiment per run (all params, these metrics, a link to the training
         run), never a write into the training run (segpipe/tracking/runs.py).

Predictions go through segpipe/inference/prediction.py (as segpipe-predict's and the SavedModel's do): resized to the
model's input and back, or blended sliding windows at native resolution for patch-trained models, with
optional test-time augmentation, so every score is measured on the original masks. One pass over the
images keeps running totals (segpipe/evaluation/totals.py): memory does not grow with the number of images.
Void pixels (255) count nowhere. <split>_class_iou and <split>_class_dice are {class name: score}
(class_names; binary: background and foreground). Metric conventions: segpipe/evaluation/metrics.py and
segpipe/evaluation/totals.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from segpipe.core.cli import describe, run_stage, start_tensorflow
from segpipe.core.outputs import write_json
from segpipe.core.params import Params


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--model", type=Path, required=True, help="the trained model (.keras)")
    parser.add_argument("--inference", type=Path, required=True, help="train's inference JSON (resize/patches)")
    parser.add_argument("--csv-dir", type=Path, required=True, help="folder with valid.csv (and test.csv)")
    parser.add_argument("--history", type=Path, required=True, help="train's per-epoch history CSV")
    parser.add_argument("--run-info", type=Path, required=True, help="train's MLflow run id (JSON)")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--threshold", type=Path, required=True, help="best-threshold JSON to write")
    parser.add_argument("--plots-dir", type=Path, required=True, help="folder for plot CSVs, overlays, PNGs")
    parser.add_argument("--cv-dir", type=Path, default=None,
                        help="the cross-validation folds' folder (needed with cv.folds)")
    parser.add_argument("--cv-metrics", type=Path, default=None, help="cross-validated metrics JSON to write")
    parser.add_argument("--ensemble", type=Path, default=None, help="the deploy manifest JSON to write")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    all_params = Params(args.params)
    params = all_params.section("evaluate")
    num_classes, class_names = all_params.shared("num_classes"), all_params.class_names()
    folds = all_params.section("cv")["folds"]
    if folds and not (args.cv_dir and args.cv_metrics):
        raise ValueError(f"param 'cv.folds' is {folds}, but evaluate was not given --cv-dir and --cv-metrics to "
                         "score the folds with; run it through dvc repro (dvc.yaml passes them).")
    if not args.model.is_file():
        raise ValueError(f"model '{args.model}' not found; run the train stage first (dvc repro).")
    start_tensorflow()  # then the modules that use it: after the cheap checks (see its docstring)
    import keras
    import pandas as pd

    from segpipe.data.rows import read_rows
    from segpipe.evaluation.scoring import draw_plots, flat_scores, score_splits
    from segpipe.inference.prediction import read_input_mode

    model = keras.models.load_model(args.model, compile=False)
    if model.output_shape[-1] != max(1, num_classes):
        raise ValueError(f"model '{args.model}' has {model.output_shape[-1]} output channel(s) but num_classes is "
                         f"{num_classes}; retrain (dvc repro) after changing num_classes.")
    splits = {"valid": read_rows(args.csv_dir / "valid.csv", made_by="the build-csv stage")}
    test = read_rows(args.csv_dir / "test.csv") if (args.csv_dir / "test.csv").is_file() else None
    if test is not None and len(test):
        splits["test"] = test
    if splits["valid"].empty:
        raise ValueError(f"'{args.csv_dir / 'valid.csv'}' has no rows; nothing to evaluate.")
    settings = dict(input_mode=read_input_mode(args.inference), tile_overlap=params["tile_overlap"],
                    tta=params["tta"], batch_size=params["batch_size"])
    totals, seconds_per_image = score_splits(model, splits, num_classes=num_classes, csv_dir=args.csv_dir,
                                             boundary_tolerance=params["boundary_tolerance"], **settings)
    flat, threshold, sweep = flat_scores(totals, num_classes=num_classes, class_names=class_names,
                                         bootstrap_resamples=params["bootstrap_resamples"],
                                         seed=all_params.shared("seed"), groups=bootstrap_groups(splits, params))
    worst = draw_plots(model, args.plots_dir, valid=splits["valid"], flat=flat, threshold=threshold, sweep=sweep,
                       totals=totals["valid"], num_classes=num_classes,
                       class_names=class_names, history=pd.read_csv(args.history) if args.history.is_file() else None,
                       num_samples=params["num_samples"], worst_k=params["worst_k"], **settings)
    write_json(args.threshold, {"threshold": threshold, "chosen_by": "highest pooled IoU on the validation split"
                                if num_classes == 1 else "argmax (multi-class: no threshold)",
                                "tta": params["tta"], "tile_overlap": params["tile_overlap"]})
    write_json(args.metrics, flat)
    cv = write_cv_and_ensemble(args, folds=folds, params=params, num_classes=num_classes, class_names=class_names,
                               seed=all_params.shared("seed"), test=splits.get("test"), threshold=threshold)
    record_in_mlflow(args, all_params, flat=flat, cv=cv)
    headline = ", ".join(f"{k} {flat[k]:.4f}" for k in ("valid_iou", "valid_dice", "valid_image_mean_boundary_f",
                                                        "valid_iou_at_best_threshold", "valid_mean_iou") if k in flat)
    if num_classes > 1:
        headline += "; IoU per class: " + ", ".join(
            f"{name} {'-' if v is None else f'{v:.3f}'}" for name, v in flat["valid_class_iou"].items())
    print(f"evaluate: {headline}; best threshold {threshold:g}; worst: {', '.join(worst['id'])}; "
          f"input {settings['input_mode']}, tta {params['tta']}: {seconds_per_image:.2f} s/image")


def write_cv_and_ensemble(args, *, folds: list[int], params: dict, num_classes: int, class_names: list[str],
                          seed: int, test, threshold: float) -> dict:
    """Writes --cv-metrics and --ensemble (either may be left out) and returns metrics/cv.json's content:
    with folds, the cross-validated scores and the fold models with the out-of-fold threshold; without,
    {"folds": 0} and --model with the validation `threshold`."""
    from segpipe.evaluation.cross_validation import ensemble_manifest

    cv, models, chosen = {"folds": 0}, [args.model], "highest pooled IoU on the validation split"
    if folds:
        found, threshold = cross_validate(args, folds=folds, params=params, num_classes=num_classes,
                                          class_names=class_names, seed=seed, test=test)
        cv, models, chosen = found["scores"], found["models"], "highest pooled IoU on the out-of-fold predictions"
        key = "iou_at_best_threshold" if num_classes == 1 else "mean_iou"
        print(f"evaluate: {len(folds)}-fold cross-validation over {cv['images']} images: out-of-fold {key} "
              f"{cv['oof'][key]:.4f} [{cv['oof'].get(key + '_ci_low', float('nan')):.4f}, "
              f"{cv['oof'].get(key + '_ci_high', float('nan')):.4f}], per fold {cv['fold_mean'][key]:.4f} +- "
              f"{cv['fold_std'][key]:.4f}; ensemble of {len(folds)} models (threshold {threshold:g}) -> "
              f"{args.ensemble}", flush=True)
    if args.cv_metrics:
        write_json(args.cv_metrics, cv)
    if args.ensemble:
        write_json(args.ensemble, ensemble_manifest(models, manifest=args.ensemble, threshold=threshold,
                                                    chosen_by=chosen if num_classes == 1 else "argmax (multi-class)",
                                                    tta=params["tta"], tile_overlap=params["tile_overlap"]))
    return cv


def cross_validate(args, *, folds: list[int], params: dict, num_classes: int, class_names: list[str],
                   seed: int, test) -> tuple[dict, float]:
    """({"scores": metrics/cv.json's content, "models": the fold models}, the out-of-fold threshold); writes
    --plots-dir/oof_per_image.csv. With a test split (`test` rows), the fold ensemble is scored on it."""
    import keras

    from segpipe.core.outputs import write_csv
    from segpipe.evaluation.cross_validation import cv_scores, ensemble_totals, fold_models, fold_totals
    from segpipe.inference.prediction import read_input_mode

    models = fold_models(args.cv_dir, folds)
    missing = [str(model) for model in models if not model.is_file()]
    if missing:
        raise ValueError(f"cv.folds lists {len(folds)} folds but {len(missing)} fold model(s) are missing (e.g. "
                         f"'{missing[0]}'); run the train-fold stages (dvc repro).")
    parts, rows = fold_totals(args.cv_dir, folds, num_classes=num_classes, tolerance=params["boundary_tolerance"])
    test_totals = None
    if test is not None:
        test_totals = ensemble_totals(
            [keras.models.load_model(model, compile=False) for model in models],
            [read_input_mode(model.with_name("inference.json")) for model in models], test,
            num_classes=num_classes, tolerance=params["boundary_tolerance"], tile_overlap=params["tile_overlap"],
            tta=params["tta"], batch_size=params["batch_size"])
    groups = None
    if params["bootstrap_unit"] == "group":
        groups = {"oof": list(rows["group"]), **({"ensemble_test": list(test["group"])} if test is not None else {})}
    scores, threshold, table = cv_scores(
        parts, rows, folds=folds, num_classes=num_classes, class_names=class_names,
        bootstrap_resamples=params["bootstrap_resamples"], seed=seed, groups=groups, test=test_totals)
    write_csv(args.plots_dir / "oof_per_image.csv", table)
    return {"scores": scores, "models": models}, threshold


def bootstrap_groups(splits: dict, params: dict) -> dict[str, list] | None:
    """{split: each row's group} when evaluate.bootstrap_unit is group (whole groups are resampled), else None;
    warns when a split has too few groups for a group bootstrap to say much."""
    if params["bootstrap_unit"] != "group":
        return None
    for name, rows in splits.items():
        if rows["group"].nunique() < 10:
            print(f"evaluate: warning: the {name} split has {rows['group'].nunique()} group(s); an interval from "
                  "resampling fewer than about 10 groups is unreliable (evaluate.bootstrap_unit: image resamples "
                  "images instead).", flush=True)
    return {name: list(rows["group"]) for name, rows in splits.items()}


def record_in_mlflow(args, all_params: Params, *, flat: dict, cv: dict) -> None:
    """This experiment's MLflow record: a new run with every param, the flat scores (and the cross-validated
    ones as cv_oof_*, cv_fold_mean_*, cv_fold_std_*) and the files, linked to the run that trained the model."""
    from segpipe.evaluation.scoring import flatten_scores
    from segpipe.tracking.runs import Tracker, experiment_name, git_tags, project_root

    training_run_id = json.loads(args.run_info.read_text()).get("run_id") if args.run_info.is_file() else None
    tracker = Tracker(enabled=all_params.shared("mlflow"), stage="evaluate")
    run_id = tracker.start(params=all_params.values, run_name=experiment_name(),
                           tags={**git_tags(project_root()), "stage": "evaluate", "dvc_experiment": experiment_name(),
                                 "training_run_id": training_run_id or "none (trained without MLflow)"})
    if run_id:
        cv_scores = {f"cv_{part}_{key}": value for part in ("oof", "fold_mean", "fold_std")
                     for key, value in cv.get(part, {}).items()}
        tracker.log_metrics(flatten_scores({**flat, **cv_scores}), step=0)
        for path in [args.metrics, args.threshold, *(p for p in (args.cv_metrics, args.ensemble) if p),
                     *sorted(args.plots_dir.rglob("*.png")), *sorted(args.plots_dir.glob("*per_image.csv")),
                     args.plots_dir / "worst.csv"]:
            tracker.log_artifact(path)
        tracker.end()


if __name__ == "__main__":
    run_stage("evaluate", main)
