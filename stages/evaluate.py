"""evaluate: measure the trained model on the validation split (and test, if the raw data has one).

Reads:   --model (from train), --inference (train's record of resize or patches), --csv-dir/{valid,test}.csv
         and their PNGs, --history (train's per-epoch CSV, for the learning-curve picture), --run-info (the
         MLflow id of the run that trained the model).
Writes:  --metrics JSON (flat keys: <split>_<score> at threshold 0.5 and <split>_<score>_at_best_threshold),
         --threshold JSON (the best validation threshold by IoU, and the tta and tile_overlap measured with:
         segpipe-predict uses them by default),
         --plots-dir/{threshold_curve,class_scores,iou_histogram,confusion}.csv (declared as DVC plots), per_image.csv
         and worst.csv (tables),
         --plots-dir/overlays/*.png (binary: TP green / FP red / FN blue; multi-class: truth | prediction in
         class colours with a legend; void gray), --plots-dir/png/*.png rendered offline.
Params:  num_classes, class_names, mlflow; evaluate.boundary_tolerance, num_samples, worst_k,
         batch_size (windows per model call), tta, tile_overlap. MLflow: a new record of this experiment per run
         (all params, these metrics, a link to the training run), never a write into the training run
         (segpipe/tracking.py).

Predictions go through segpipe/inference.py (as segpipe-predict's and the SavedModel's do): resized to the
model's input and back, or blended sliding windows at native resolution for patch-trained models, with
optional test-time augmentation, so every score is measured on the original masks. One pass over the
images keeps running totals (segpipe/evaluation.py): memory does not grow with the number of images.
Void pixels (255) count nowhere. <split>_class_iou and <split>_class_dice are {class name: score}
(class_names; binary: background and foreground). Metric conventions: segpipe/metrics.py and
segpipe/evaluation.py.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from segpipe.cli import run_stage, start_tensorflow
from segpipe.outputs import write_json
from segpipe.params import Params


def rounded(value):
    """A score (or {class: score}) rounded to 6 digits for the metrics file; None (no score) stays None."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return None if value is None else round(float(value), 6)


def flatten_scores(flat: dict) -> dict[str, float]:
    """Metrics for MLflow, which takes numbers only: {class: score} becomes <key>_<class> (characters MLflow
    refuses in a name become _); None is left out."""
    out = {}
    for key, value in flat.items():
        for name, score in (value.items() if isinstance(value, dict) else [("", value)]):
            if score is not None:
                out[f"{key}_{re.sub(r'[^0-9A-Za-z_. -]', '_', name)}" if name else key] = score
    return out


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the trained model (.keras)")
    parser.add_argument("--inference", type=Path, required=True, help="train's inference JSON (resize/patches)")
    parser.add_argument("--csv-dir", type=Path, required=True, help="folder with valid.csv (and test.csv)")
    parser.add_argument("--history", type=Path, required=True, help="train's per-epoch history CSV")
    parser.add_argument("--run-info", type=Path, required=True, help="train's MLflow run id (JSON)")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--threshold", type=Path, required=True, help="best-threshold JSON to write")
    parser.add_argument("--plots-dir", type=Path, required=True, help="folder for plot CSVs, overlays, PNGs")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    all_params = Params(args.params)
    params = all_params.section("evaluate")
    num_classes, track = (all_params.shared(name) for name in ("num_classes", "mlflow"))
    class_names = all_params.class_names()
    if not args.model.is_file():
        raise ValueError(f"model '{args.model}' not found; run the train stage first (dvc repro).")
    start_tensorflow()  # then the modules that use it: after the cheap checks (see its docstring)
    import keras
    import pandas as pd

    from segpipe import inference, metrics
    from segpipe.evaluation import SplitTotals, per_image_table
    from segpipe.image_io import read_png
    from segpipe.parallel import read_ahead
    from segpipe.plots import confusion_cells, iou_histogram, write_evaluation_plots
    from segpipe.rows import check_files, read_rows
    from segpipe.tracking import Tracker, experiment_name, git_tags, project_root

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
    input_mode = inference.read_input_mode(args.inference)
    settings = dict(input_mode=input_mode, tile_overlap=params["tile_overlap"], tta=params["tta"],
                    batch_size=params["batch_size"])
    totals = {}
    started = time.perf_counter()
    for name, rows in splits.items():  # one pass: each image is predicted, scored and let go
        check_files(rows, source=f"{args.csv_dir / name}.csv")
        totals[name] = SplitTotals(num_classes=num_classes, tolerance=params["boundary_tolerance"])
        predictions = inference.predict_files(model, list(rows["image_path"]), desc=f"evaluate {name}", **settings)
        for (_, probabilities), truth in zip(predictions, read_ahead(read_png, rows["mask_path"]), strict=True):
            totals[name].add(probabilities, truth)
    seconds_per_image = (time.perf_counter() - started) / sum(len(rows) for rows in splits.values())

    threshold, sweep = 0.5, pd.DataFrame()
    if num_classes == 1:
        sweep = pd.DataFrame(totals["valid"].sweep())
        threshold = metrics.best_threshold(sweep.to_dict("records"))
    flat, per_image = {"best_threshold": threshold}, None
    for name in splits:
        # Binary models are scored at 0.5 and at the best validation threshold; argmax has no threshold.
        for value, suffix in ((0.5, ""), (threshold, "_at_best_threshold")) if num_classes == 1 else ((0.5, ""),):
            scores, rows = totals[name].scores(name, class_names=class_names, threshold=value, suffix=suffix)
            flat.update(scores)
            if name == "valid" and value == threshold:
                per_image = rows
    flat = {k: rounded(v) for k, v in sorted(flat.items())}

    valid = splits["valid"]
    table = per_image_table(valid, per_image, threshold=threshold)
    worst = table.sort_values(["iou", "id"]).head(params["worst_k"])
    shown = valid[valid["id"].isin(set(valid.sort_values("id")["id"][:params["num_samples"]]) | set(worst["id"]))]
    at = "_at_best_threshold" if num_classes == 1 else ""  # the threshold the per-image table uses
    class_scores = pd.DataFrame({"class": class_names, "iou": [flat[f"valid_class_iou{at}"][n] for n in class_names],
                                 "dice": [flat[f"valid_class_dice{at}"][n] for n in class_names]})
    overlays = {}  # the few images drawn are predicted again rather than every prediction kept
    for row_id, mask_path, (image, probabilities) in zip(shown["id"], shown["mask_path"], inference.predict_files(
            model, list(shown["image_path"]), desc="evaluate overlays", **settings), strict=True):
        overlays[row_id] = (image, inference.to_class_ids(probabilities, threshold=threshold), read_png(mask_path))
    matrix = totals["valid"].confusion_matrix(threshold=threshold)
    write_evaluation_plots(
        args.plots_dir, sweep=sweep, per_image=table, worst=worst, best_threshold=threshold,
        histogram=iou_histogram(table), confusion=confusion_cells(matrix, class_names=class_names), matrix=matrix,
        class_names=class_names, num_classes=num_classes, class_scores=class_scores,
        history=pd.read_csv(args.history) if args.history.is_file() else None, overlays=overlays)
    write_json(args.threshold, {"threshold": threshold, "chosen_by": "highest pooled IoU on the validation split"
                                if num_classes == 1 else "argmax (multi-class: no threshold)",
                                "tta": params["tta"], "tile_overlap": params["tile_overlap"]})
    write_json(args.metrics, flat)

    training_run_id = json.loads(args.run_info.read_text()).get("run_id") if args.run_info.is_file() else None
    tracker = Tracker(enabled=track, stage="evaluate")
    run_id = tracker.start(params=all_params.values, run_name=experiment_name(),
                           tags={**git_tags(project_root()), "stage": "evaluate", "dvc_experiment": experiment_name(),
                                 "training_run_id": training_run_id or "none (trained without MLflow)"})
    if run_id:
        tracker.log_metrics(flatten_scores(flat), step=0)
        for path in [args.metrics, args.threshold, *sorted(args.plots_dir.rglob("*.png")),
                     args.plots_dir / "per_image.csv", args.plots_dir / "worst.csv"]:
            tracker.log_artifact(path)
        tracker.end()
    headline = ", ".join(f"{k} {flat[k]:.4f}" for k in ("valid_iou", "valid_dice", "valid_image_mean_boundary_f",
                                                        "valid_iou_at_best_threshold", "valid_mean_iou") if k in flat)
    if num_classes > 1:
        headline += "; IoU per class: " + ", ".join(
            f"{name} {'-' if v is None else f'{v:.3f}'}" for name, v in flat["valid_class_iou"].items())
    print(f"evaluate: {headline}; best threshold {threshold:g}; worst: {', '.join(worst['id'])}; "
          f"input {input_mode}, tta {params['tta']}: {seconds_per_image:.2f} s/image")


if __name__ == "__main__":
    run_stage("evaluate", main)
