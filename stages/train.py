"""train: fit a U-Net on the balanced training subsets (original + augmented rows), keep the best epoch.

Reads:   --subsets-summary (data/subsets.json) and the subset CSVs in --subsets-dir, --augmented-csv,
         --valid-csv, and the PNGs they list.
Writes:  --model (best epoch by train.monitor, .keras), --metrics JSON (quality only: the train and
         valid values at the best epoch, `best_valid_iou`, `best_train_loss`, ...), --facts JSON (how
         the run went: best epoch, epochs run, stop reason, seconds, images/s, precision, devices; not
         a DVC metric, so `dvc metrics diff` shows no timing noise), --history CSV (one row per epoch:
         losses, metrics, learning rate), --run-info JSON (the MLflow run id, for evaluate); persists
         --backup-dir between runs to resume an interrupted one (segpipe/training.py); optional
         TensorBoard logs in --tensorboard-dir.
Params:  seed, num_classes, mlflow, convert.image_mode (channels), train.* (see params.yaml).

Distribution: train.batch_size is per replica; the global batch is batch_size x replicas, and with
train.scale_learning_rate the learning rate is multiplied by the replicas (linear scaling rule).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

from segpipe import devices as device_setup
from segpipe.cli import run_stage
from segpipe.outputs import write_bytes, write_csv, write_json
from segpipe.params import load_section, load_shared, read_params

SCHEMA = {
    "image_size": dict(kind=list, check=lambda v: len(v) == 2 and all(
        isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v), hint="expected [height, width]."),
    "batch_size": dict(kind=int, minimum=1),
    "steps_per_epoch": dict(kind=int, minimum=0),
    "sampling_weights": dict(kind=(list, type(None))),
    "cache": dict(kind=str, choices=("auto", "memory", "none")),
    "online_augment": dict(kind=bool),
    "encoder": dict(kind=str, choices=("plain", "resnet50", "efficientnetb0", "mobilenetv2")),
    "encoder_weights": dict(kind=(str, type(None)), choices=(None, "imagenet")),
    "freeze_encoder_epochs": dict(kind=int, minimum=0),
    "depth": dict(kind=int, minimum=1, maximum=7),
    "base_filters": dict(kind=int, minimum=1),
    "dropout": dict(kind=float, minimum=0.0, maximum=0.9),
    "upsampling": dict(kind=str, choices=("transpose", "bilinear")),
    "normalization": dict(kind=str, choices=("batch", "group")),
    "loss": dict(kind=dict),
    "focal_gamma": dict(kind=float, minimum=0.0),
    "optimizer": dict(kind=str, choices=("adam", "adamw", "sgd")),
    "learning_rate": dict(kind=float, minimum=0.0, check=lambda v: v > 0),
    "weight_decay": dict(kind=float, minimum=0.0),
    "momentum": dict(kind=float, minimum=0.0, maximum=1.0),
    "schedule": dict(kind=str, choices=("constant", "cosine", "plateau")),
    "warmup_epochs": dict(kind=int, minimum=0),
    "plateau_patience": dict(kind=int, minimum=1),
    "scale_learning_rate": dict(kind=bool),
    "epochs": dict(kind=int, minimum=1),
    "max_minutes": dict(kind=float, minimum=0.0),
    "patience": dict(kind=int, minimum=0),
    "monitor": dict(kind=str, choices=tuple(f"{p}{m}" for p in ("valid_", "") for m in
                                            ("iou", "dice", "precision", "recall", "loss")),
                    hint="(The validation split is `valid` everywhere: val_iou is now valid_iou.)"),
    "threshold": dict(kind=float, minimum=0.0, maximum=1.0),
    "precision": dict(kind=str, choices=device_setup.PRECISIONS),
    "devices": dict(kind=(str, list)),
    "jit_compile": dict(kind=bool),
    "deterministic": dict(kind=bool),
    "tensorboard": dict(kind=bool),
}


def load_training_rows(summary_path: Path, subsets_dir: Path, augmented_csv: Path) -> tuple[dict, list[pd.DataFrame]]:
    """(subsets summary, one frame per subset of original + augmented rows)."""
    import json

    from segpipe.input_pipeline import assign_subsets, read_rows

    if not summary_path.is_file():
        raise ValueError(f"'{summary_path}' not found; run the split-balanced stage first (dvc repro).")
    summary = json.loads(summary_path.read_text())
    originals = [read_rows(subsets_dir / subset["file"]) for subset in summary["subsets"]]
    augmented = read_rows(augmented_csv)
    extra = assign_subsets(augmented, summary) if len(augmented) else [augmented] * len(originals)
    subsets = [pd.concat([o, a], ignore_index=True) for o, a in zip(originals, extra)]
    empty = [s["file"] for s, rows in zip(summary["subsets"], subsets) if rows.empty]
    if empty:
        raise ValueError(f"subset file(s) {empty} in '{subsets_dir}' have no rows; rerun split-balanced (dvc repro).")
    return summary, subsets


def memory_budget_bytes() -> int:
    """A quarter of the machine's memory for the decoded-image cache."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 * 1024 ** 3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subsets-summary", type=Path, required=True)
    parser.add_argument("--subsets-dir", type=Path, required=True)
    parser.add_argument("--augmented-csv", type=Path, required=True)
    parser.add_argument("--valid-csv", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--facts", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--run-info", type=Path, required=True)
    parser.add_argument("--saved-model", type=Path, required=True, help="TF SavedModel export for TF Serving")
    parser.add_argument("--backup-dir", type=Path, required=True)
    parser.add_argument("--tensorboard-dir", type=Path, default=Path("logs/tensorboard"))
    parser.add_argument("--params", type=Path, required=True)
    args = parser.parse_args(argv)

    params = load_section(args.params, "train", SCHEMA)
    seed = load_shared(args.params, "seed", kind=int)
    num_classes = load_shared(args.params, "num_classes", kind=int, minimum=1)
    track = load_shared(args.params, "mlflow", kind=bool)
    image_mode = read_params(args.params).get("convert", {}).get("image_mode", "RGB")
    channels = 1 if image_mode == "L" else 3
    device_setup.parse_devices(params["devices"])
    from segpipe.losses import make_loss

    make_loss(weights=params["loss"], focal_gamma=params["focal_gamma"])  # validate before the slow part

    import tensorflow as tf

    if params["deterministic"]:
        # With several inter-op threads, independent ops run concurrently and on CPU their float results then
        # differ in the last bits from run to run (measured on the demo, float32 and bfloat16, oneDNN on and
        # off: epoch-1 losses differ at 1e-5 and grow over epochs). One inter-op thread makes them repeat.
        tf.config.threading.set_inter_op_parallelism_threads(1)
    # Devices and threads before anything else touches TensorFlow's runtime.
    placement = device_setup.setup_devices(params["devices"])
    import keras

    from segpipe import input_pipeline as pipeline
    from segpipe.keras_metrics import training_metrics
    from segpipe.model import build_unet, encoder_layers
    from segpipe.tracking import Tracker, experiment_name, git_tags, project_root
    from segpipe.training import (EpochRecorder, ResumeState, fingerprint, keras_name, make_optimizer,
                                  set_random_state, work_around_multi_worker_fit)

    on_gpu = placement.device_names[0].startswith("/gpu")
    policy, reason = device_setup.resolve_precision(
        params["precision"], on_gpu=on_gpu, gpu_capabilities=device_setup.gpu_compute_capabilities() if on_gpu else [],
        flags=device_setup.cpu_flags())
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(seed)
    if params["deterministic"]:
        tf.config.experimental.enable_op_determinism()

    summary, subsets = load_training_rows(args.subsets_summary, args.subsets_dir, args.augmented_csv)
    valid = pipeline.read_rows(args.valid_csv)
    if valid.empty:
        raise ValueError(f"'{args.valid_csv}' has no rows; training needs validation images to pick the best "
                         "epoch. Raise build_csv.valid_fraction or add a valid/ folder to data/raw.")
    train_rows = pd.concat(subsets, ignore_index=True)
    pipeline.check_files(train_rows, source="the training CSVs")
    pipeline.check_files(valid, source=str(args.valid_csv))
    if params["sampling_weights"] is not None and len(params["sampling_weights"]) != len(subsets):
        raise ValueError(f"param 'train.sampling_weights' has {len(params['sampling_weights'])} weights but "
                         f"{args.subsets_summary} lists {len(subsets)} subsets "
                         f"({[s['name'] for s in summary['subsets']]}); give one weight each, or null for equal.")

    image_size = tuple(params["image_size"])
    global_batch = params["batch_size"] * placement.num_replicas
    steps = pipeline.steps_per_epoch(num_rows=len(train_rows), batch_size=global_batch,
                                     requested=params["steps_per_epoch"])
    cache = pipeline.resolve_cache(params["cache"], num_rows=len(train_rows) + len(valid), image_size=image_size,
                                   channels=channels, memory_budget_bytes=memory_budget_bytes())
    learning_rate = params["learning_rate"] * (placement.num_replicas if params["scale_learning_rate"] else 1)
    valid_ds = pipeline.evaluation_dataset(valid, image_size=image_size, channels=channels, batch_size=global_batch,
                                           cache=cache)
    devices_used = ",".join(placement.device_names) + (f" x {placement.num_workers} workers"
                                                        if placement.num_workers > 1 else "")
    counts = ", ".join(f"{subset['name']}={len(rows)}" for subset, rows in zip(summary["subsets"], subsets))
    print(f"train: {len(train_rows)} training rows ({counts}), "
          f"{len(valid)} validation rows; input {image_size[0]}x{image_size[1]}x{channels}; global batch "
          f"{global_batch} ({params['batch_size']} x {placement.num_replicas} replica(s) on {devices_used}); "
          f"{steps} steps/epoch; precision {policy} ({reason})", flush=True)

    input_files = [args.subsets_summary, args.augmented_csv, args.valid_csv] + [
        args.subsets_dir / s["file"] for s in summary["subsets"]]
    shared = {"seed": seed, "num_classes": num_classes, "channels": channels}
    # Non-chief workers keep their (never resumed) state out of the DVC output.
    backup_dir = args.backup_dir if placement.is_chief else Path(tempfile.mkdtemp(prefix="segpipe-worker-"))
    resume = ResumeState(backup_dir, fingerprint=fingerprint(params={**params, **shared}, files=input_files))
    state = resume.load() or {}
    if state:
        print(f"train: resuming the interrupted run after epoch {state['history'][-1]['epoch'] if state.get('history') else 0}"
              f" (state in '{backup_dir}')", flush=True)

    tracker = Tracker(enabled=track and placement.is_chief)
    # The experiment's own record is evaluate's run (segpipe/tracking.py): this one is named after it.
    run_id = tracker.start(params=read_params(args.params), run_id=state.get("mlflow_run_id"),
                           run_name=f"{experiment_name()}-train",
                           tags={**git_tags(project_root()), "stage": "train", "trained_in": experiment_name(),
                                 "precision_policy": policy, "devices": devices_used})
    state["mlflow_run_id"] = run_id

    with placement.strategy.scope():
        model = build_unet(input_shape=(*image_size, channels), num_classes=num_classes, encoder=params["encoder"],
                           encoder_weights=params["encoder_weights"], depth=params["depth"],
                           base_filters=params["base_filters"], dropout=params["dropout"],
                           upsampling=params["upsampling"], normalization=params["normalization"])
    frozen_layers = encoder_layers(model)
    phases = [("frozen_encoder", min(params["freeze_encoder_epochs"], params["epochs"]))] if (
        frozen_layers and params["freeze_encoder_epochs"]) else []
    phases.append(("all_layers", params["epochs"]))
    mode = "min" if params["monitor"].endswith("loss") else "max"
    verbose = 1 if sys.stdout.isatty() else 2
    for phase, last_epoch in phases:
        done = state.setdefault("phases_done", [])
        weights_file = resume.folder / f"{phase}_done.weights.h5"
        if phase in done:
            model.load_weights(weights_file)
            continue
        # Where this phase starts, fixed on its first run so a resumed phase keeps its schedule.
        first_epoch = state.setdefault("phase_start", {}).setdefault(phase, len(state.get("history", [])))
        for layer in frozen_layers:
            layer.trainable = phase != "frozen_encoder"
        trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        print(f"train: epochs {first_epoch + 1}-{last_epoch} with {'the encoder frozen' if phase == 'frozen_encoder' else 'all layers trainable'}"
              f" ({trainable:,} trainable weights)", flush=True)
        with placement.strategy.scope():
            optimizer = make_optimizer(optimizer=params["optimizer"], learning_rate=learning_rate,
                                       schedule=params["schedule"], warmup_epochs=params["warmup_epochs"],
                                       epochs=last_epoch - first_epoch, steps_per_epoch=steps,
                                       weight_decay=params["weight_decay"], momentum=params["momentum"])
            model.compile(optimizer=optimizer, loss=make_loss(weights=params["loss"], focal_gamma=params["focal_gamma"]),
                          metrics=training_metrics(num_classes=num_classes, threshold=params["threshold"]),
                          jit_compile=params["jit_compile"])
        if placement.num_workers > 1:
            work_around_multi_worker_fit(model, placement.strategy)
        # The batches continue where this phase (or the interrupted run it resumes) left the stream.
        start_epoch = resume.keras_epoch(phase) or first_epoch
        if str(start_epoch) in state.get("random_states", {}):
            set_random_state(model, state["random_states"][str(start_epoch)])
        train_ds = pipeline.training_dataset(subsets, weights=params["sampling_weights"], image_size=image_size,
                                             channels=channels, batch_size=global_batch, seed=seed, cache=cache,
                                             online_augment=params["online_augment"],
                                             deterministic=params["deterministic"], first_batch=start_epoch * steps)
        recorder = EpochRecorder(resume=resume, state=state, monitor=params["monitor"], mode=mode,
                                 patience=params["patience"], max_minutes=params["max_minutes"],
                                 images_per_epoch=steps * global_batch, tracker=tracker, is_chief=placement.is_chief,
                                 multi_worker_strategy=placement.strategy if placement.num_workers > 1 else None)
        callbacks = [recorder, keras.callbacks.BackupAndRestore(str(resume.keras_dir / phase)),
                     keras.callbacks.TerminateOnNaN()]
        if params["schedule"] == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=keras_name(params["monitor"]), mode=mode, factor=0.5,
                                                               patience=params["plateau_patience"], min_lr=1e-6))
        if params["tensorboard"]:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(args.tensorboard_dir)))
        with pipeline.naming_bad_files(pd.concat([train_rows, valid], ignore_index=True)):
            model.fit(train_ds, validation_data=valid_ds, epochs=last_epoch, initial_epoch=first_epoch,
                      steps_per_epoch=steps, callbacks=callbacks, verbose=verbose, shuffle=False)
        state = recorder.state
        last_loss = state["history"][-1].get("loss", float("nan")) if state["history"] else float("nan")
        if not np.isfinite(last_loss):
            if not state["best_epoch"]:
                raise ValueError(f"training diverged (loss is not finite in epoch {len(state['history'])}) before "
                                 "any usable epoch; lower train.learning_rate, or set train.precision: float32 "
                                 "to rule out overflow.")
            state["stop_reason"] = f"loss not finite in epoch {len(state['history'])}; kept the best epoch before"
            break
        if phase == "frozen_encoder":
            model.save_weights(weights_file)
            done.append(phase)
            if state["stop_reason"] and state["stop_reason"].startswith("early stopping"):
                state.update(stop_reason=None, since_best=0)  # early stop ends the frozen phase only
            resume.save(state)
        if state["stop_reason"]:
            break
    if not placement.is_chief:
        return
    write_outputs(args, state=state, resume=resume, tracker=tracker, run_id=run_id, policy=policy,
                  devices_used=devices_used, num_replicas=placement.num_replicas, global_batch=global_batch,
                  images_per_epoch=steps * global_batch, valid=valid,
                  image_size=image_size, channels=channels)


def export_saved_model(model, folder: Path) -> None:
    """The model as a TF SavedModel (signature `serve`: float32 images in [0, 1] -> probabilities)."""
    from segpipe.outputs import replace_dir

    with replace_dir(folder) as tmp:
        model.export(str(tmp), format="tf_saved_model", verbose=False)


def write_outputs(args, *, state, resume, tracker, run_id, policy, devices_used, num_replicas, global_batch,
                  images_per_epoch, valid, image_size, channels) -> None:
    """Model, history, metrics, facts and run info from the finished state; then MLflow; then clear the backup."""
    import keras

    from segpipe.training import TIMING_COLUMNS

    history = pd.DataFrame(state["history"])
    best_row = history[history["epoch"] == state["best_epoch"]].iloc[0]
    write_bytes(args.model, resume.best_model.read_bytes())
    write_csv(args.history, history.drop(columns=list(TIMING_COLUMNS)))
    best_model = keras.models.load_model(args.model, compile=False)  # once, for the export and MLflow
    export_saved_model(best_model, args.saved_model)
    metrics = {f"best_{key}" if key.startswith("valid_") else f"best_train_{key}": round(float(best_row[key]), 6)
               for key in best_row.index if key not in ("epoch", "learning_rate", *TIMING_COLUMNS)}
    # Steady-state speed: the first epoch of a process includes graph tracing.
    steady = history.iloc[1:] if len(history) > 1 else history
    facts = {
        "best_epoch": int(state["best_epoch"]),
        "epochs_run": int(len(history)),
        "stop_reason": state["stop_reason"] or "all epochs run",
        "train_seconds": round(float(history["train_seconds"].sum()), 2),
        "wall_seconds": round(float(history["elapsed_seconds"].iloc[-1]), 2),
        "images_per_second": round(len(steady) * images_per_epoch / float(steady["train_seconds"].sum()), 2),
        "precision_policy": policy,
        "devices": devices_used,
        "num_replicas": num_replicas,
        "global_batch_size": global_batch,
    }
    write_json(args.metrics, metrics)
    write_json(args.facts, facts)
    write_json(args.run_info, {"run_id": run_id})  # no tracking URI: it is machine-specific, and DVC caches this
    if run_id:
        tracker.log_metrics({**metrics, **{k: v for k, v in facts.items() if isinstance(v, (int, float))}},
                            step=len(history))
        tracker.set_tags({"stop_reason": facts["stop_reason"]})
        for path in (args.history, args.metrics, args.facts):
            tracker.log_artifact(path)
        from segpipe.input_pipeline import evaluation_dataset

        example = next(iter(evaluation_dataset(valid.head(2), image_size=image_size, channels=channels,
                                               batch_size=2, cache=False)))[0].numpy()
        tracker.log_keras_model(best_model, example_input=example)
        tracker.end()
    resume.clear()
    print(f"train: best epoch {facts['best_epoch']} of {facts['epochs_run']} "
          f"({facts['stop_reason']}); " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                    if k.startswith("best_valid_")) +
          f"; {facts['images_per_second']} images/s; model -> {args.model}"
          + (f"; MLflow run {run_id}" if run_id else ""), flush=True)


if __name__ == "__main__":
    run_stage("train", main)
