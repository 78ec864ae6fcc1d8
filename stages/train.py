"""train: fit a U-Net on the balanced training subsets (original + augmented rows), keep the best epoch.

Reads:   --subsets-summary (data/subsets.json) and the subset CSVs in --subsets-dir, --augmented-csv,
         --valid-csv, and the PNGs they list.
Writes:  --model (best epoch by train.monitor, .keras), --saved-model (TF SavedModel of it), --metrics
         JSON (quality only: the train and valid values at the best epoch, `best_valid_iou`, ...),
         --facts JSON (how the run went: best epoch, epochs run, stop reason, seconds, images/s, precision,
         devices; not a DVC metric, so `dvc metrics diff` shows no timing noise), --history CSV (one row
         per epoch: losses, metrics, learning rate), --run-info JSON (the MLflow run id, for evaluate);
         persists --backup-dir between runs to resume an interrupted one (segpipe/resume.py); optional
         TensorBoard logs in --tensorboard-dir; --inference JSON (how the model takes images: `resize` or
         `patches`, from train.input, with the reason, and the white level of images of more than 8 bits
         from --white-level (convert-to-png's white_level.json); evaluate and segpipe-predict read it).
Params:  seed, num_classes, mlflow, convert.image_mode (channels), train.* (see params.yaml).

train.batch_size is per replica (global batch = batch_size x replicas; auto: segpipe/memory_plan.py picks
it); train.remat trains with recomputed blocks and writes the plain model (same weights); the training loop
(phases, resume, callbacks, the time-budget plan) is segpipe/training.py. `train.input: auto`
(segpipe/input_mode.py): resize for images under 1.5x the input; for larger ones, with
train.input_pilot > 0, a pilot of each input (that share of the budget or the epochs, split evenly) scored at
native resolution (segpipe/input_pilot.py) picks the input, and the better pilot's weights go on for the rest;
the outcome is in --facts (`input_pilot`) and a resumed run keeps it.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from segpipe import faults
from segpipe.cli import run_stage, start_tensorflow
from segpipe.image_io import read_white_level
from segpipe.outputs import write_bytes, write_csv, write_json
from segpipe.params import Params
from segpipe.schema import check_architecture, downsampling_levels


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subsets-summary", type=Path, required=True, help="data/subsets.json from split-balanced")
    parser.add_argument("--subsets-dir", type=Path, required=True, help="folder of the subset CSVs")
    parser.add_argument("--augmented-csv", type=Path, required=True, help="augment's CSV of extra rows")
    parser.add_argument("--valid-csv", type=Path, required=True, help="validation rows (picks the best epoch)")
    parser.add_argument("--model", type=Path, required=True, help="the best epoch's model (.keras) to write")
    parser.add_argument("--metrics", type=Path, required=True, help="quality metrics JSON to write")
    parser.add_argument("--facts", type=Path, required=True, help="run facts JSON to write (timings, devices)")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch history CSV to write")
    parser.add_argument("--run-info", type=Path, required=True, help="MLflow run id JSON to write")
    parser.add_argument("--saved-model", type=Path, required=True, help="TF SavedModel export for TF Serving")
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
    seed, num_classes, track = (all_params.shared(name) for name in ("seed", "num_classes", "mlflow"))
    channels = 1 if all_params.section("convert")["image_mode"] == "L" else 3
    white_level = read_white_level(args.white_level) if args.white_level else None
    check_architecture(image_size=train["image_size"], encoder=train["encoder"],
                       encoder_weights=train["encoder_weights"], depth=train["depth"])
    start_tensorflow()  # then the modules that use it: after the cheap checks (see its docstring)
    import keras
    import pandas as pd
    import tensorflow as tf

    from segpipe import decoded_cache
    from segpipe import input_pipeline as pipeline
    from segpipe.balancing import AUGMENTED_ID, training_rows
    from segpipe.callbacks import LogToMlflow
    from segpipe.devices import configure_runtime
    from segpipe.input_mode import input_candidates, network_input_size
    from segpipe.input_pilot import native_score, pick, pilot_length
    from segpipe.keras_metrics import training_metrics
    from segpipe.losses import make_loss, resolve_class_weights
    from segpipe.memory_plan import pick_batch_size, replica_budget
    from segpipe.model import build_unet, export_saved_model
    from segpipe.resume import ResumeState, open_backup
    from segpipe.rows import class_pixel_table
    from segpipe.tracking import Tracker, experiment_name, git_tags, project_root
    from segpipe.training import fit_in_phases, make_optimizer, plateau_callback, run_summary, training_phases

    placement, policy, reason = configure_runtime(devices=train["devices"], precision=train["precision"],
                                                  deterministic=train["deterministic"], seed=seed)
    summary, subsets, valid = training_rows(
        summary_path=args.subsets_summary, subsets_dir=args.subsets_dir, augmented_csv=args.augmented_csv,
        valid_csv=args.valid_csv, sampling_weights=train["sampling_weights"])
    train_rows = pd.concat(subsets, ignore_index=True)
    originals = train_rows[~train_rows["id"].str.contains(AUGMENTED_ID, regex=False)]
    # Several workers would each have to score a pilot and agree on the outcome: the rule decides there.
    pilot = train["input_pilot"] if placement.num_workers == 1 else 0.0
    candidates, input_reason = input_candidates(train["input"], rows=originals, image_size=tuple(train["image_size"]),
                                                num_classes=num_classes, seed=seed, pilot=pilot)
    architecture = dict(num_classes=num_classes, encoder=train["encoder"], encoder_weights=train["encoder_weights"],
                        depth=train["depth"], base_filters=train["base_filters"], dropout=train["dropout"],
                        upsampling=train["upsampling"], normalization=train["normalization"])
    class_weights = resolve_class_weights(train["class_weights"], num_classes=num_classes,
                                          pixels_per_class=class_pixel_table(
                                              train_rows, num_classes=num_classes).sum(0))
    loss = make_loss(weights=train["loss"], focal_gamma=train["focal_gamma"], class_weights=class_weights)
    cache_dir = args.decoded_cache if args.decoded_cache.is_absolute() else project_root() / args.decoded_cache
    decoded = tf.Variable(0, dtype=tf.int64, trainable=False)  # training pairs this process decodes

    def prepare(input_mode: str) -> SimpleNamespace:
        """What training on `input_mode` needs: the network input, the model, the batch, the epoch, the data."""
        image_size, size_reason = network_input_size(
            train["image_size"], input_mode=input_mode, keep_aspect=train["keep_aspect"],
            upscale=train["upscale_small_images"], rows=originals,
            multiple=2 ** downsampling_levels(encoder=train["encoder"], depth=train["depth"]))
        with placement.strategy.scope():
            model = build_unet(input_shape=(*image_size, channels), remat=train["remat"], **architecture)
        batch_size, batch_plan = train["batch_size"], None
        if batch_size == "auto":  # the largest the memory plan fits: depends on the machine (docs: training)
            budget, source = replica_budget(placement)
            batch_size, batch_plan = pick_batch_size(
                model, optimizer=train["optimizer"], mixed_precision=policy != "float32", budget=budget,
                num_replicas=placement.num_replicas, training_rows=len(train_rows))
            batch_plan += f" (the budget: {source})"
            print(f"train: {batch_plan}", flush=True)
        global_batch = batch_size * placement.num_replicas
        if global_batch > len(train_rows):
            raise ValueError(f"param 'train.batch_size' {batch_size} gives a global batch of {global_batch} "
                             f"({batch_size} x {placement.num_replicas} replica(s)), more than the "
                             f"{len(train_rows)} training rows (originals + augmented copies); set train.batch_size "
                             f"to at most {len(train_rows) // placement.num_replicas}, or add data (augment.copies).")
        patches = pipeline.Patches(foreground_share=train["patch_foreground_share"],
                                   scale_range=tuple(train["patch_scale_range"]),
                                   num_classes=num_classes) if input_mode == "patches" else None
        steps, epoch_words = pipeline.steps_per_epoch(
            train_rows, batch_size=global_batch, requested=train["steps_per_epoch"],
            patch_size=image_size if patches else None, time_budget=train["max_minutes"] > 0,
            validation_inputs=pipeline.validation_windows(valid, image_size=image_size) if patches else len(valid))
        cache, cache_reason = pipeline.resolve_cache(
            train["cache"], channels=channels, memory_budget_bytes=pipeline.cache_budget_bytes(),
            disk_free_bytes=decoded_cache.free_bytes(cache_dir),
            pixels=sum(pipeline.cached_pixels(rows, image_size=image_size, patches=patches is not None)
                       for rows in subsets) // placement.num_workers  # each worker caches its share
            + pipeline.cached_pixels(valid, image_size=image_size, patches=patches is not None))
        epoch = f"{steps} steps/epoch" + (f" ({epoch_words})" if epoch_words else "")
        counts = ", ".join(f"{subset['name']}={len(rows)}" for subset, rows in zip(summary["subsets"], subsets))
        print(f"train: {len(train_rows)} training rows ({counts}), {len(valid)} validation rows; input "
              f"{image_size[0]}x{image_size[1]}x{channels}; global batch {global_batch} ({batch_size} x "
              f"{placement.num_replicas} replica(s) on {placement.description}); {epoch}; precision {policy} "
              f"({reason})" + (f"; class weights {class_weights}" if class_weights else ""), flush=True)
        print(f"train: input {input_mode}; size {image_size[0]}x{image_size[1]} ({size_reason}); decoded rows "
              f"kept: {cache} ({cache_reason})", flush=True)
        return SimpleNamespace(input_mode=input_mode, image_size=image_size, size_reason=size_reason, model=model,
                               batch_size=batch_size, batch_plan=batch_plan, global_batch=global_batch,
                               patches=patches, steps=steps, cache=cache)

    def fit(setup: SimpleNamespace, *, resume, state: dict, epochs: int, max_minutes: float, patience: int,
            callbacks: list):
        """Trains `setup.model` (segpipe/training.py's phases, resume and budget)."""
        learning_rate = train["learning_rate"] * (placement.num_replicas if train["scale_learning_rate"] else 1)
        optimizer = partial(make_optimizer, optimizer=train["optimizer"], learning_rate=learning_rate,
                            schedule=train["schedule"], warmup_epochs=train["warmup_epochs"],
                            steps_per_epoch=setup.steps, weight_decay=train["weight_decay"],
                            momentum=train["momentum"])

        def compile_phase(model, *, epochs: int) -> None:
            with placement.strategy.scope():
                model.compile(optimizer=optimizer(epochs=epochs), loss=loss, jit_compile=train["jit_compile"],
                              metrics=training_metrics(num_classes=num_classes, threshold=train["threshold"]))

        if faults.armed():
            callbacks = [*callbacks, faults.keras_callback()]
        if train["schedule"] == "plateau":
            callbacks = [*callbacks, plateau_callback(monitor=train["monitor"], patience=train["plateau_patience"])]
        with pipeline.naming_bad_files(pd.concat([train_rows, valid], ignore_index=True)):
            return fit_in_phases(
                setup.model, phases=training_phases(setup.model, freeze_encoder_epochs=train["freeze_encoder_epochs"],
                                                    epochs=epochs, max_minutes=max_minutes),
                compile_phase=compile_phase, steps_per_epoch=setup.steps,
                training_data=partial(pipeline.training_dataset, subsets, weights=train["sampling_weights"],
                                      image_size=setup.image_size, channels=channels, batch_size=setup.global_batch,
                                      seed=seed, cache=setup.cache == "memory", online_augment=train["online_augment"],
                                      disk_cache=cache_dir if setup.cache == "disk" else None,
                                      deterministic=train["deterministic"], patches=setup.patches, decoded=decoded),
                validation_data=pipeline.evaluation_dataset(valid, image_size=setup.image_size, channels=channels,
                                                            batch_size=setup.global_batch,
                                                            cache=setup.cache == "memory",
                                                            windows=setup.patches is not None),
                monitor=train["monitor"], patience=patience, max_minutes=max_minutes, callbacks=callbacks,
                resume=resume, state=state)

    inputs = [args.subsets_summary, args.augmented_csv, args.valid_csv,
              *(args.subsets_dir / subset["file"] for subset in summary["subsets"])]
    resume, state = open_backup(args.backup_dir, is_chief=placement.is_chief, files=inputs,
                                several_workers=placement.num_workers > 1,
                                params={**train, "seed": seed, "num_classes": num_classes, "channels": channels})
    tracker = Tracker(enabled=track and placement.is_chief)
    # The experiment's own record is evaluate's run (segpipe/tracking.py): this one is named after it.
    state["mlflow_run_id"] = tracker.start(
        params=all_params.values, run_id=state.get("mlflow_run_id"), run_name=f"{experiment_name()}-train",
        tags={**git_tags(project_root()), "stage": "train", "trained_in": experiment_name(),
              "precision_policy": policy, "devices": placement.description})
    print(f"train: input {' or '.join(candidates)} ({input_reason})", flush=True)

    if len(candidates) > 1 and "input_pilot" not in state:  # a resumed run keeps its pilot's outcome
        minutes, epochs = pilot_length(pilot=pilot, candidates=len(candidates), max_minutes=train["max_minutes"],
                                       epochs=train["epochs"])
        started, scores = time.perf_counter(), {}
        for mode in candidates:
            print(f"train: pilot of {mode}: " + (f"{minutes:.2f} minutes" if minutes else f"{epochs} epoch(s)"),
                  flush=True)
            setup = prepare(mode)
            trial = ResumeState(resume.folder / f"pilot_{mode}", fingerprint=resume.fingerprint)
            trial.clear()
            fit(setup, resume=trial, state={}, epochs=epochs, max_minutes=minutes, patience=0, callbacks=[])
            if not trial.best_model.is_file():  # no epoch with a finite monitor: diverged
                raise ValueError(f"the pilot of train.input {mode} diverged before any usable epoch; lower "
                                 "train.learning_rate, or set train.input to the other input.")
            best = keras.models.load_model(trial.best_model, compile=False)
            scores[mode], scored = native_score(best, valid, input_mode=mode, num_classes=num_classes,
                                                batch_size=setup.global_batch, seed=seed)
            best.save_weights(resume.folder / f"pilot_{mode}.weights.h5")
            shutil.rmtree(trial.folder)
            print(f"train: pilot of {mode}: {scores[mode]:.4f} at native resolution on {scored} validation images",
                  flush=True)
        state["input_pilot"] = {"chosen": pick(scores), "scores": scores, "images_scored": scored,
                                "seconds": round(time.perf_counter() - started, 1),
                                **({"minutes_each": round(minutes, 3)} if minutes else {"epochs_each": epochs})}
        resume.save(state)
    pilot_run = state.get("input_pilot")
    input_mode = pilot_run["chosen"] if pilot_run else candidates[0]
    if pilot_run:
        input_reason += "; pilot ({}): {} -> {}".format(
            f"{pilot_run['minutes_each']:g} minutes each" if "minutes_each" in pilot_run else
            f"{pilot_run['epochs_each']} epoch(s) each",
            ", ".join(f"{mode} {score:.4f}" for mode, score in pilot_run["scores"].items()), input_mode)
        print(f"train: {input_reason}", flush=True)
    setup = prepare(input_mode)
    if pilot_run:  # the better pilot goes on; a resumed run's Keras backup then restores its own weights
        setup.model.load_weights(resume.folder / f"pilot_{input_mode}.weights.h5")
    max_minutes = max(0.0, train["max_minutes"] - pilot_run["seconds"] / 60) if (
        pilot_run and train["max_minutes"]) else train["max_minutes"]
    epochs = max(1, train["epochs"] - pilot_run.get("epochs_each", 0)) if pilot_run else train["epochs"]
    outcome = fit(setup, resume=resume, state=state, epochs=epochs, max_minutes=max_minutes,
                  patience=train["patience"], callbacks=[LogToMlflow(tracker)] + (
                      [keras.callbacks.TensorBoard(log_dir=str(args.tensorboard_dir))] if train["tensorboard"] else []))
    print(f"train: decoded {int(decoded.numpy()):,} training images" + (
        " on this worker" if placement.num_workers > 1 else "") + (
        f" (then cached: {setup.cache})" if setup.cache != "none" else ""), flush=True)
    if not placement.is_chief:
        return

    image_size = setup.image_size
    history, metrics, facts = run_summary(outcome, images_per_epoch=setup.steps * setup.global_batch)
    facts.update(precision_policy=policy, devices=placement.description, num_replicas=placement.num_replicas,
                 global_batch_size=setup.global_batch, class_weights=class_weights, input=input_mode,
                 input_reason=input_reason, input_pilot=pilot_run, input_size=list(image_size),
                 input_size_reason=setup.size_reason, cache=setup.cache, planned_epochs=state.get("planned_epochs"),
                 steps_per_epoch=setup.steps, batch_size=setup.batch_size, batch_plan=setup.batch_plan)
    if train["remat"]:
        # The model users get is the plain variant (same layers, names and weights): recomputation only
        # matters while training, and loading it then needs no segpipe class.
        best_model = build_unet(input_shape=(*image_size, channels), remat=False, **architecture)
        best_model.set_weights(keras.models.load_model(resume.best_model, compile=False).get_weights())
        with tempfile.TemporaryDirectory() as folder:
            best_model.save(Path(folder) / "model.keras")
            write_bytes(args.model, (Path(folder) / "model.keras").read_bytes())
    else:
        write_bytes(args.model, resume.best_model.read_bytes())
        best_model = keras.models.load_model(args.model, compile=False)
    inference = {"input": input_mode, "reason": input_reason, "image_size": list(image_size),
                 "white_level": white_level}
    export_saved_model(best_model, args.saved_model, input_mode=input_mode)
    write_json(args.inference, inference)
    write_csv(args.history, history)
    write_json(args.metrics, metrics)
    write_json(args.facts, facts)
    write_json(args.run_info, {"run_id": state["mlflow_run_id"]})  # no tracking URI: machine-specific
    if state["mlflow_run_id"]:
        tracker.finish_training(metrics=metrics, facts=facts,
                                files=[args.history, args.metrics, args.facts, args.inference],
                                model=best_model, example_input=pipeline.example_batch(
                                    valid, image_size=image_size, channels=channels))
    resume.clear()
    print(f"train: best epoch {facts['best_epoch']} of {facts['epochs_run']} ({facts['stop_reason']}); "
          + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("best_valid_"))
          + f"; {facts['images_per_second']} images/s; validation {facts['validation_share']:.0%} of the epochs' "
          f"time; model -> {args.model}"
          + (f"; MLflow run {state['mlflow_run_id']}" if state["mlflow_run_id"] else ""), flush=True)


if __name__ == "__main__":
    run_stage("train", main)
