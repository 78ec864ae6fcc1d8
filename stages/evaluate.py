"""evaluate: measure the trained model on the validation split (and test, if the raw data has one).

Reads:   --model (from train), --csv-dir/{valid,test}.csv and their PNGs, --history (train's per-epoch
         CSV, for the learning-curve picture), --run-info (the MLflow id of the run that trained the model).
Writes:  --metrics JSON (flat keys: <split>_<score> at threshold 0.5 and <split>_<score>_at_best_threshold),
         --threshold JSON (the best validation threshold by IoU; predict uses it by default),
         --plots-dir/{threshold_curve,per_image,worst,confusion}.csv (declared as DVC plots),
         --plots-dir/overlays/*.png (TP green / FP red / FN blue), --plots-dir/png/*.png rendered offline.
Params:  seed, num_classes, mlflow; evaluate.boundary_tolerance, num_samples, worst_k, confusion_pixels,
         batch_size. MLflow: a new record of this experiment per run (all params, these metrics, a link
         to the training run), never a write into the training run (segpipe/tracking.py).

Predictions are made at the model's input size, and their probabilities resized (bilinear) back to each
image's own size, so every score is measured on the original masks. Metric conventions: segpipe/metrics.py.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
from PIL import Image

from segpipe import metrics as m
from segpipe.balancing import safe_name
from segpipe.cli import run_stage
from segpipe.image_io import write_png
from segpipe.outputs import replace_dir, write_csv, write_json
from segpipe.params import load_section, load_shared, read_params

SCHEMA = {
    "boundary_tolerance": dict(kind=int, minimum=0),
    "num_samples": dict(kind=int, minimum=0),
    "worst_k": dict(kind=int, minimum=0),
    "confusion_pixels": dict(kind=int, minimum=1),
    "batch_size": dict(kind=int, minimum=1),
}


def predict_native(model, rows: pd.DataFrame, *, batch_size: int) -> list[np.ndarray]:
    """Per row, probabilities (H, W, C) at the row's own size."""
    from segpipe.input_pipeline import evaluation_dataset, naming_bad_files, resize_probabilities

    height, width, channels = model.input_shape[1:]
    dataset = evaluation_dataset(rows, image_size=(height, width), channels=channels, batch_size=batch_size,
                                 cache=False)
    out = []
    with naming_bad_files(rows):
        for images, _ in dataset:
            probabilities = model(images, training=False)
            for probability, (_, row) in zip(probabilities, rows.iloc[len(out):].iterrows()):
                out.append(resize_probabilities(probability, int(row["height"]), int(row["width"])))
    return out


def read_mask(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def split_scores(name: str, probabilities, truths, *, num_classes: int, threshold: float, tolerance: int,
                 suffix: str) -> tuple[dict, list[dict]]:
    """Flat metrics for one split at one threshold, and per-image rows."""
    flat, per_image = {}, []
    if num_classes == 1:
        predictions = [p[..., 0] >= threshold for p in probabilities]
        truths_bool = [t > 0 for t in truths]
        counts = [m.confusion_counts(p, t) for p, t in zip(predictions, truths_bool)]
        pooled = m.scores_from_counts(sum(counts))
        classes = m.class_scores(sum(m.class_confusion(p.astype(int), t.astype(int), num_classes=2)
                                     for p, t in zip(predictions, truths_bool)))
        for prediction, truth, count in zip(predictions, truths_bool, counts):
            scores = m.scores_from_counts(count)
            per_image.append({"iou": scores["iou"], "dice": scores["dice"],
                              "boundary_f": m.boundary_f_score(prediction, truth, tolerance=tolerance)})
        flat.update({f"{name}_{k}{suffix}": v for k, v in pooled.items()})
    else:
        ids = [np.argmax(p, axis=-1) for p in probabilities]
        matrix = sum(m.class_confusion(p, t, num_classes=num_classes) for p, t in zip(ids, truths))
        classes = m.class_scores(matrix)
        flat[f"{name}_pixel_accuracy{suffix}"] = float(np.trace(matrix) / max(1, matrix.sum()))
        for k, (iou, dice) in enumerate(zip(classes["iou_per_class"], classes["dice_per_class"])):
            flat[f"{name}_iou_class_{k}{suffix}"] = iou
            flat[f"{name}_dice_class_{k}{suffix}"] = dice
        for prediction, truth in zip(ids, truths):
            image_classes = m.class_scores(m.class_confusion(prediction, truth, num_classes=num_classes))
            per_image.append({"iou": image_classes["mean_iou"], "dice": float(np.mean(image_classes["dice_per_class"])),
                              "boundary_f": m.boundary_f_score(prediction > 0, truth > 0, tolerance=tolerance)})
    flat[f"{name}_mean_iou{suffix}"] = classes["mean_iou"]
    flat[f"{name}_frequency_weighted_iou{suffix}"] = classes["frequency_weighted_iou"]
    for key in ("iou", "dice", "boundary_f"):
        flat[f"{name}_image_mean_{key}{suffix}"] = float(np.mean([row[key] for row in per_image]))
    return flat, per_image


def confusion_sample(probabilities, truths, *, num_classes: int, threshold: float, pixels: int,
                     seed: int) -> pd.DataFrame:
    """A seeded sample of pixels (actual, predicted class names) for DVC's confusion template."""
    names = ["background", "foreground"] if num_classes == 1 else [f"class_{k}" for k in range(num_classes)]
    predicted = np.concatenate([(p[..., 0] >= threshold).astype(int).ravel() if num_classes == 1
                                else np.argmax(p, axis=-1).ravel() for p in probabilities])
    actual = np.concatenate([(t > 0).astype(int).ravel() if num_classes == 1 else t.ravel() for t in truths])
    index = np.random.default_rng(seed).choice(len(actual), size=min(pixels, len(actual)), replace=False)
    index.sort()
    return pd.DataFrame({"actual": [names[i] for i in actual[index]], "predicted": [names[i] for i in predicted[index]]})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--csv-dir", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--run-info", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--threshold", type=Path, required=True)
    parser.add_argument("--plots-dir", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_section(args.params, "evaluate", SCHEMA)
    num_classes = load_shared(args.params, "num_classes", kind=int, minimum=1)
    seed = load_shared(args.params, "seed", kind=int)
    track = load_shared(args.params, "mlflow", kind=bool)
    if not args.model.is_file():
        raise ValueError(f"model '{args.model}' not found; run the train stage first (dvc repro).")

    import keras

    from segpipe.input_pipeline import check_files, read_rows
    from segpipe.plots import chart_specs, overlay, write_specs
    from segpipe.tracking import Tracker, experiment_name, git_tags, project_root

    model = keras.models.load_model(args.model, compile=False)
    if model.output_shape[-1] != max(1, num_classes):
        raise ValueError(f"model '{args.model}' has {model.output_shape[-1]} output channel(s) but num_classes is "
                         f"{num_classes}; retrain (dvc repro) after changing num_classes.")
    splits = {"valid": read_rows(args.csv_dir / "valid.csv")}
    test_csv = args.csv_dir / "test.csv"
    if test_csv.is_file() and len(read_rows(test_csv)):
        splits["test"] = read_rows(test_csv)
    if splits["valid"].empty:
        raise ValueError(f"'{args.csv_dir / 'valid.csv'}' has no rows; nothing to evaluate.")
    for name, rows in splits.items():
        check_files(rows, source=f"{args.csv_dir / name}.csv")

    results = {name: (predict_native(model, rows, batch_size=params["batch_size"]),
                      [read_mask(p) for p in rows["mask_path"]]) for name, rows in splits.items()}
    valid_probabilities, valid_truths = results["valid"]
    threshold, sweep = 0.5, pd.DataFrame()
    if num_classes == 1:
        sweep = pd.DataFrame(m.threshold_sweep([p[..., 0] for p in valid_probabilities], [t > 0 for t in valid_truths]))
        threshold = m.best_threshold(sweep.to_dict("records"))
    flat = {"best_threshold": threshold}
    per_image = None
    for name, (probabilities, truths) in results.items():
        for value, suffix in ((0.5, ""), (threshold, "_at_best_threshold")):
            if num_classes > 1 and suffix:
                continue  # argmax has no threshold
            scores, rows = split_scores(name, probabilities, truths, num_classes=num_classes, threshold=value,
                                        tolerance=params["boundary_tolerance"], suffix=suffix)
            flat.update(scores)
            if name == "valid" and (suffix or num_classes > 1):
                per_image = rows
    flat = {k: round(float(v), 6) for k, v in sorted(flat.items())}

    valid = splits["valid"]
    table = valid[["id", "group", "foreground_fraction"]].copy()
    table["threshold"] = threshold
    for key in ("iou", "dice", "boundary_f"):
        table[key] = [round(row[key], 6) for row in per_image]
    worst = table.sort_values(["iou", "id"]).head(params["worst_k"])
    confusion = confusion_sample(valid_probabilities, valid_truths, num_classes=num_classes, threshold=threshold,
                                 pixels=params["confusion_pixels"], seed=seed)
    history = pd.read_csv(args.history) if args.history.is_file() else None
    chosen = list(dict.fromkeys(list(valid.sort_values("id")["id"][:params["num_samples"]]) + list(worst["id"])))
    with replace_dir(args.plots_dir) as folder:
        if not sweep.empty:
            write_csv(folder / "threshold_curve.csv", sweep.round(6))
        write_csv(folder / "per_image.csv", table)
        write_csv(folder / "worst.csv", worst)
        write_csv(folder / "confusion.csv", confusion)
        for row_index, row in valid.iterrows():
            if row["id"] not in chosen:
                continue
            with Image.open(row["image_path"]) as im:
                image = np.asarray(im)
            probability, truth = valid_probabilities[row_index], valid_truths[row_index]
            predicted = probability[..., 0] >= threshold if num_classes == 1 else np.argmax(probability, -1) > 0
            write_png(folder / "overlays" / f"{safe_name(row['id'])}.png", overlay(image, predicted, truth > 0))
        write_specs(chart_specs(history=history, sweep=sweep, per_image=table, confusion=confusion,
                                best_threshold=threshold), folder / "png")
    write_json(args.threshold, {"threshold": threshold, "chosen_by": "highest pooled IoU on the validation split"
                                if num_classes == 1 else "argmax (multi-class: no threshold)"})
    write_json(args.metrics, flat)

    training_run_id = json.loads(args.run_info.read_text()).get("run_id") if args.run_info.is_file() else None
    tracker = Tracker(enabled=track, stage="evaluate")
    run_id = tracker.start(params=read_params(args.params), run_name=experiment_name(),
                           tags={**git_tags(project_root()), "stage": "evaluate", "dvc_experiment": experiment_name(),
                                 "training_run_id": training_run_id or "none (trained without MLflow)"})
    if run_id:
        tracker.log_metrics(flat, step=0)
        for path in [args.metrics, args.threshold, *sorted(args.plots_dir.rglob("*.png")),
                     args.plots_dir / "per_image.csv", args.plots_dir / "worst.csv"]:
            tracker.log_artifact(path)
        tracker.end()
    headline = ", ".join(f"{k} {flat[k]:.4f}" for k in ("valid_iou", "valid_dice", "valid_image_mean_boundary_f",
                                                        "valid_iou_at_best_threshold", "valid_mean_iou")
                         if k in flat)
    print(f"evaluate: {headline}; best threshold {threshold:g}; worst: {', '.join(worst['id'])}")


if __name__ == "__main__":
    run_stage("evaluate", main)
