"""predict-fold: out-of-fold predictions of one cross-validation fold (stage predict-fold@<k>).

Reads:   --model and --inference (train-fold@k's model and its record of resize or patches), --rows (the
         fold's held-out rows, fold-rows@k's valid.csv) and their PNGs.
Writes:  --output-dir/ (replaced whole): one file per held-out image, its probabilities quantised to uint8
         (binary: 8-bit PNG; multi-class: .npz; segpipe/evaluation/stored_predictions.py), and predictions.csv
         (id, file, bytes).
Params:  num_classes; evaluate.tta, evaluate.tile_overlap, evaluate.batch_size: the held-out images go through
         the same prediction path as evaluate's (segpipe/inference/prediction.py).

Evaluate scores them against the masks (metrics/cv.json) without running a model, so an evaluate param that
changes no prediction (boundary_tolerance, bootstrap_resamples, ...) reruns neither training nor this stage.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from segpipe.core.cli import describe, run_stage, start_tensorflow
from segpipe.core.outputs import replace_dir
from segpipe.core.params import Params


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--model", type=Path, required=True, help="the fold's model (.keras)")
    parser.add_argument("--inference", type=Path, required=True, help="the fold's inference JSON")
    parser.add_argument("--rows", type=Path, required=True, help="the fold's held-out rows (CSV)")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder of predictions to write")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    all_params = Params(args.params)
    params, num_classes = all_params.section("evaluate"), all_params.shared("num_classes")
    if not args.model.is_file():
        raise ValueError(f"model '{args.model}' not found; run its train-fold stage first (dvc repro).")
    start_tensorflow()  # then the modules that use it: after the cheap checks (see its docstring)
    import keras

    from segpipe.data.rows import check_files, read_rows
    from segpipe.evaluation.stored_predictions import write_predictions
    from segpipe.inference.prediction import predict_files, read_input_mode

    rows = read_rows(args.rows, made_by="the fold-rows stage")
    check_files(rows, source=str(args.rows))
    model = keras.models.load_model(args.model, compile=False)
    if model.output_shape[-1] != max(1, num_classes):
        raise ValueError(f"model '{args.model}' has {model.output_shape[-1]} output channel(s) but num_classes is "
                         f"{num_classes}; rerun its train-fold stage (dvc repro).")
    predictions = predict_files(model, list(rows["image_path"]), input_mode=read_input_mode(args.inference),
                                tile_overlap=params["tile_overlap"], tta=params["tta"],
                                batch_size=params["batch_size"], desc="predict-fold")
    with replace_dir(args.output_dir) as tmp:
        index = write_predictions(tmp, rows["id"], (probabilities for _, probabilities in predictions))
    print(f"predict-fold: {len(index)} held-out images, {index['bytes'].sum() / max(1, len(index)) / 1024:.1f} KiB "
          f"each on average, in {args.output_dir}")


if __name__ == "__main__":
    run_stage("predict-fold", main)
