"""train: fit a U-Net on the balanced training subsets (original + augmented rows), keep the best epoch.

Reads:   --subsets-summary (data/subsets.json) and the subset CSVs in --subsets-dir, --augmented-csv,
         --valid-csv, and the PNGs they list.
Writes:  --model (best epoch by train.monitor, .keras), --saved-model (TF SavedModel of it; optional: the
         cross-validation folds' train-fold@k stages leave it out), --metrics
         JSON (quality only: the train and valid values at the best epoch, `best_valid_iou`, ...),
         --facts JSON (how the run went: best epoch, epochs run, stop reason, seconds, images/s, precision,
         devices; not a DVC metric, so `dvc metrics diff` shows no timing noise), --history CSV (one row
         per epoch: losses, metrics, learning rate), --run-info JSON (the MLflow run id, for evaluate);
         persists --backup-dir between runs to resume an interrupted one (segpipe/training/resume.py); optional
         TensorBoard logs in --tensorboard-dir; --inference JSON (how the model takes images: `resize` or
         `patches`, from train.input, with the reason, and the white level of images of more than 8 bits
         from --white-level (convert-to-png's white_level.json); evaluate and segpipe-predict read it).
Params:  seed, num_classes, mlflow, convert.image_mode (channels), train.* (see params.yaml).

train.batch_size is per replica (global batch = batch_size x replicas; auto: segpipe/training/memory_plan.py picks
it); train.remat trains with recomputed blocks and writes the plain model (same weights); the training loop
(phases, resume, callbacks, the time-budget plan) is segpipe/training/loop.py. `train.input: auto`
(segpipe/training/input_mode.py): resize for images under 1.5x the input; for larger ones, with
train.input_pilot > 0, a pilot of each input (that share of the budget or the epochs, split evenly) scored at
native resolution (segpipe/training/input_pilot.py) picks the input, and the better pilot's weights go on for the rest;
the outcome is in --facts (`input_pilot`) and a resumed run keeps it.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from segpipe.core.cli import describe, run_stage, start_tensorflow
from segpipe.core.outputs import write_csv, write_json
from segpipe.core.params import Params
from segpipe.core.schema import check_architecture
from segpipe.data.image_io import read_white_level


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--subsets-summary", type=Path, required=True, help="data/subsets.json from split-balanced")
    parser.add_argument("--subsets-dir", type=Path, required=True, help="folder of the subset CSVs")
    parser.add_argument("--augmented-csv", type=Path, required=True, help="augment's CSV of extra rows")
    parser.add_argument("--valid-csv", type=Path, required=True, help="validation rows (picks the best epoch)")
    parser.add_argument("--model", type=Path, required=True, help="the best epoch's model (.keras) to write")
    parser.add_argument("--metrics", type=Path, required=True, help="quality metrics JSON to write")
    parser.add_argument("--facts", type=Path, required=True, help="run facts JSON to write (timings, devices)")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch history CSV to write")
    parser.add_argument("--run-info", type=Path, required=True, help="MLflow run id JSON to write")
    parser.add_argument("--saved-model", type=Path, default=None, help="TF SavedModel export for TF Serving")
    parser.add_argument("--inference", type=Path, required=True, help="JSON to write: how the model takes images")
    parser.add_argument("--white-level", type=Path, default=None,
                        help="convert-to-png's white_level.json, recorded in --inference for predict")
    parser.add_argument("--backup-dir", type=Path, required=True, help="resume state of an interrupted run")
    parser.add_argument("--decoded-cache", type=Path, default=Path("data/decoded_cache"),
                        help="folder of decoded training rows, with train.cache: disk (or auto, when they do not "
                             "fit in memory); relative to the DVC project (also from an experiment's temporary "
                             "copy); not a DVC output, safe to delete between runs")
    parser.add_argument("--tensorboard-dir", type=Path, default=Path("logs/tensorboard"),
                        help="TensorBoard logs, with train.tensorboard: true")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    all_params = Params(args.params)
    train = all_params.section("train")
    seed, num_classes = all_params.shared("seed"), all_params.shared("num_classes")
    channels = 1 if all_params.section("convert")["image_mode"] == "L" else 3
    check_architecture(image_size=train["image_size"], encoder=train["encoder"],
                       encoder_weights=train["encoder_weights"], depth=train["depth"])
    start_tensorflow()  # then the modules that use it: after the cheap checks (see its docstring)
    import keras
    import tensorflow as tf

    from segpipe.data.balancing import training_rows
    from segpipe.data.rows import class_pixel_table
    from segpipe.tracking.runs import project_root
    from segpipe.training.callbacks import LogToMlflow
    from segpipe.training.devices import configure_runtime
    from segpipe.training.input_mode import input_candidates
    from segpipe.training.input_pilot import pilot_weights, settle_input
    from segpipe.training.losses import make_loss, resolve_class_weights
    from segpipe.training.setup import TrainingRows, fit_setup, set_up_input

    placement, policy, reason = configure_runtime(devices=train["devices"], precision=train["precision"],
                                                  deterministic=train["deterministic"], seed=seed)
    summary, subsets, valid = training_rows(
        summary_path=args.subsets_summary, subsets_dir=args.subsets_dir, augmented_csv=args.augmented_csv,
        valid_csv=args.valid_csv, sampling_weights=train["sampling_weights"])
    data = TrainingRows(subsets=subsets, valid=valid, names=[subset["name"] for subset in summary["subsets"]])
    # Several workers would each have to score a pilot and agree on the outcome: the rule decides there.
    pilot = train["input_pilot"] if placement.num_workers == 1 else 0.0
    candidates, input_reason = input_candidates(train["input"], rows=data.originals, seed=seed, pilot=pilot,
                                                image_size=tuple(train["image_size"]), num_classes=num_classes)
    class_weights = resolve_class_weights(train["class_weights"], num_classes=num_classes, pixels_per_class=(
        class_pixel_table(data.rows, num_classes=num_classes).sum(0)))
    cache_dir = args.decoded_cache if args.decoded_cache.is_absolute() else project_root() / args.decoded_cache
    decoded = tf.Variable(0, dtype=tf.int64, trainable=False)  # training pairs this process decodes
    shared = dict(data=data, placement=placement, channels=channels, num_classes=num_classes, cache_dir=cache_dir)
    set_up = partial(set_up_input, mixed_precision=policy != "float32", **shared, **train)
    fit = partial(fit_setup, seed=seed, decoded=decoded, callbacks=[], **shared, **{**train, "loss": make_loss(
        weights=train["loss"], focal_gamma=train["focal_gamma"], class_weights=class_weights)})

    resume, state, tracker = start_run(args, all_params, summary=summary, placement=placement, policy=policy)
    print(f"train: input {' or '.join(candidates)} ({input_reason})", flush=True)
    input_mode, pilot_words, max_minutes, epochs = settle_input(
        candidates, state=state, resume=resume, pilot=pilot, max_minutes=train["max_minutes"], epochs=train["epochs"],
        set_up=set_up, fit=fit, valid=valid, num_classes=num_classes, seed=seed)
    setup = set_up(input_mode)
    for line in ([setup.batch_plan] if setup.batch_plan else []) + setup.describe(data, placement=placement,
                                                                                  channels=channels):
        print(f"train: {line}", flush=True)
    print(f"train: precision {policy} ({reason})" + (f"; class weights {class_weights}" if class_weights else "")
          + (f"; {input_reason}{pilot_words}" if pilot_words else ""), flush=True)
    if pilot_words:  # the better pilot goes on; a resumed run's Keras backup then restores its own weights
        setup.model.load_weights(pilot_weights(resume, input_mode))
    outcome = fit(setup, resume=resume, state=state, epochs=epochs, max_minutes=max_minutes,
                  patience=train["patience"], callbacks=[LogToMlflow(tracker)] + (
                      [keras.callbacks.TensorBoard(log_dir=str(args.tensorboard_dir))] if train["tensorboard"] else []))
    print(f"train: decoded {int(decoded.numpy()):,} training images" + (
        " on this worker" if placement.num_workers > 1 else "") + (
        f" (then cached: {setup.cache})" if setup.cache != "none" else ""), flush=True)
    if placement.is_chief:
        write_outputs(args, outcome=outcome, setup=setup, state=state, tracker=tracker, resume=resume, train=train,
                      facts=dict(precision_policy=policy, devices=placement.description,
                                 num_replicas=placement.num_replicas, class_weights=class_weights, input=input_mode,
                                 input_reason=input_reason + pilot_words, input_pilot=state.get("input_pilot")),
                      channels=channels, num_classes=num_classes, valid=valid)


def start_run(args, all_params: Params, *, summary: dict, placement, policy: str):
    """(the backup folder, its resume state, the MLflow tracker with this run started or resumed)."""
    from segpipe.tracking.runs import Tracker, experiment_name, git_tags, project_root
    from segpipe.training.resume import open_backup

    train, seed, num_classes = all_params.section("train"), all_params.shared("seed"), all_params.shared("num_classes")
    channels = 1 if all_params.section("convert")["image_mode"] == "L" else 3
    resume, state = open_backup(args.backup_dir, is_chief=placement.is_chief, several_workers=placement.num_workers > 1,
                                files=[args.subsets_summary, args.augmented_csv, args.valid_csv,
                                       *(args.subsets_dir / subset["file"] for subset in summary["subsets"])],
                                params={**train, "seed": seed, "num_classes": num_classes, "channels": channels})
    tracker = Tracker(enabled=all_params.shared("mlflow") and placement.is_chief)
    # The experiment's own record is evaluate's run (segpipe/tracking/runs.py): this one is named after it.
    state["mlflow_run_id"] = tracker.start(
        params=all_params.values, run_id=state.get("mlflow_run_id"), run_name=f"{experiment_name()}-train",
        tags={**git_tags(project_root()), "stage": "train", "trained_in": experiment_name(),
              "precision_policy": policy, "devices": placement.description})
    return resume, state, tracker


def write_outputs(args, *, outcome, setup, state: dict, tracker, resume, train: dict, facts: dict, channels: int,
                  num_classes: int, valid) -> None:
    """The chief's outputs: the best model (.keras and SavedModel), how it takes images, history, metrics,
    facts and run id; the MLflow record; the backup folder emptied."""
    from segpipe.data.input_pipeline import example_batch
    from segpipe.training.export import export_saved_model, save_best_model
    from segpipe.training.loop import run_summary
    from segpipe.training.setup import architecture

    history, metrics, run_facts = run_summary(outcome, images_per_epoch=setup.steps * setup.global_batch)
    facts = {**run_facts, **facts, "global_batch_size": setup.global_batch, "input_size": list(setup.image_size),
             "input_size_reason": setup.size_reason, "cache": setup.cache,
             "planned_epochs": state.get("planned_epochs"), "steps_per_epoch": setup.steps,
             "batch_size": setup.batch_size, "batch_plan": setup.batch_plan}
    best_model = save_best_model(resume.best_model, args.model, remat=train["remat"],
                                 input_shape=(*setup.image_size, channels),
                                 architecture=architecture(num_classes=num_classes, **train))
    white_level = read_white_level(args.white_level) if args.white_level else None
    if args.saved_model:
        export_saved_model(best_model, args.saved_model, input_mode=setup.input_mode)
    write_json(args.inference, {"input": setup.input_mode, "reason": facts["input_reason"],
                                "image_size": list(setup.image_size), "white_level": white_level})
    write_csv(args.history, history)
    write_json(args.metrics, metrics)
    write_json(args.facts, facts)
    write_json(args.run_info, {"run_id": state["mlflow_run_id"]})  # no tracking URI: machine-specific
    if state["mlflow_run_id"]:
        tracker.finish_training(metrics=metrics, facts=facts, files=[args.history, args.metrics, args.facts,
                                                                     args.inference], model=best_model,
                                example_input=example_batch(valid, image_size=setup.image_size,
                                                            channels=channels))
    resume.clear()
    print(f"train: best epoch {facts['best_epoch']} of {facts['epochs_run']} ({facts['stop_reason']}); "
          + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("best_valid_"))
          + f"; {facts['images_per_second']} images/s; validation {facts['validation_share']:.0%} of the epochs' "
          f"time; model -> {args.model}"
          + (f"; MLflow run {state['mlflow_run_id']}" if state["mlflow_run_id"] else ""), flush=True)


if __name__ == "__main__":
    run_stage("train", main)
