"""preflight: the checklist before a long training (segpipe/preflight.py): devices, data, capacity, memory, mask
values, overfitting one batch, run time. Stops `dvc repro` before train when a check fails.

Reads:   --csv-dir/{train,valid,test}.csv and their PNGs, --subsets-summary and --subsets-dir (the training
         subsets, to draw the overfit batch the way train draws), --augmented-csv (rows per epoch).
Writes:  --report JSON (every check's status and numbers: device facts, timings; not a DVC metric),
         --contact-sheet PNG (training pairs with the mask outlines drawn on the images: alignment and
         polarity at a glance), --checks JSON (pass/fail only: what train depends on, so device facts or
         timings never make train rerun on another machine).
Params:  seed, num_classes, class_names, convert.image_mode, train (the model, loss, optimizer, input, devices,
         precision: as train builds them), preflight.*.

On a failed check: with preflight.on_failure: fail (default) the report and contact sheet are written, --checks
is not, and the stage exits 2 naming the failures; with warn, the failures are recorded and train runs.
Also a console script, run from the project root: segpipe-preflight (no arguments: those of dvc.yaml's command).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from segpipe.cli import run_stage, start_tensorflow
from segpipe.outputs import write_json
from segpipe.params import Params
from segpipe.schema import check_architecture, downsampling_levels

RECEPTIVE_FIELD_MAX_SIDE = 1024  # the receptive field is measured on inputs up to this side


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv-dir", type=Path, required=True, help="build-csv's folder: train/valid/test.csv")
    parser.add_argument("--subsets-summary", type=Path, required=True, help="data/subsets.json")
    parser.add_argument("--subsets-dir", type=Path, required=True, help="folder of the subset CSVs")
    parser.add_argument("--augmented-csv", type=Path, required=True, help="augment's CSV of extra rows")
    parser.add_argument("--report", type=Path, required=True, help="report JSON to write")
    parser.add_argument("--contact-sheet", type=Path, required=True, help="contact sheet PNG to write")
    parser.add_argument("--checks", type=Path, required=True, help="pass/fail JSON to write (train's dependency)")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    return parser.parse_args(argv)


def print_report(checks) -> None:
    for check in checks:
        print(f"preflight: [{check.status.upper():4}] {check.name}: {check.summary}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    all_params = Params(args.params)
    train, preflight = all_params.section("train"), all_params.section("preflight")
    seed, num_classes = all_params.shared("seed"), all_params.shared("num_classes")
    class_names = all_params.class_names()
    channels = 1 if all_params.section("convert")["image_mode"] == "L" else 3
    check_architecture(image_size=train["image_size"], encoder=train["encoder"],
                       encoder_weights=train["encoder_weights"], depth=train["depth"])
    from segpipe.balancing import training_rows
    from segpipe.image_io import read_png, write_png
    from segpipe.plots import contact_sheet
    from segpipe.rows import read_rows

    rows = {split: read_rows(args.csv_dir / f"{split}.csv", made_by="build-csv")
            for split in ("train", "valid", "test") if (args.csv_dir / f"{split}.csv").is_file()}
    summary, subsets, _ = training_rows(summary_path=args.subsets_summary, subsets_dir=args.subsets_dir,
                                        augmented_csv=args.augmented_csv, valid_csv=args.csv_dir / "valid.csv",
                                        sampling_weights=train["sampling_weights"])
    training_rows_count = sum(len(s) for s in subsets)

    start_tensorflow()
    import numpy as np
    import pandas as pd

    from segpipe import input_pipeline as pipeline
    from segpipe import memory_plan
    from segpipe import preflight as checks
    from segpipe.capacity import object_sizes, receptive_field
    from segpipe.devices import configure_runtime
    from segpipe.input_mode import input_candidates, network_input_size
    from segpipe.losses import make_loss, resolve_class_weights
    from segpipe.model import build_unet
    from segpipe.rows import class_pixel_table
    from segpipe.training import make_optimizer

    placement, policy, reason = configure_runtime(devices=train["devices"], precision=train["precision"],
                                                  deterministic=train["deterministic"], seed=seed)
    report = [checks.device_check(placement=placement, precision=policy, precision_reason=reason),
              checks.data_check(rows, num_classes=num_classes, class_names=class_names)]

    originals = rows["train"]
    # With a pilot (train.input: auto on large images) train tries both inputs; resize, the first, is checked.
    candidates, input_reason = input_candidates(train["input"], rows=originals, image_size=tuple(train["image_size"]),
                                                num_classes=num_classes, seed=seed, pilot=train["input_pilot"])
    input_mode = candidates[0]
    factor = 2 ** downsampling_levels(encoder=train["encoder"], depth=train["depth"])  # sides' multiple
    image_size, _ = network_input_size(train["image_size"], input_mode=input_mode, keep_aspect=train["keep_aspect"],
                                       upscale=train["upscale_small_images"], rows=originals, multiple=factor)
    architecture = dict(num_classes=num_classes, encoder=train["encoder"], encoder_weights=train["encoder_weights"],
                        depth=train["depth"], base_filters=train["base_filters"], dropout=train["dropout"],
                        upsampling=train["upsampling"], normalization=train["normalization"], remat=train["remat"])
    with placement.strategy.scope():
        model = build_unet(input_shape=(*image_size, channels), **architecture)

    # Receptive field: measured on a separate copy at twice the input side (the field may exceed the input).
    side = min(RECEPTIVE_FIELD_MAX_SIDE, 2 * max(image_size)) // factor * factor
    field = receptive_field(lambda s: build_unet(input_shape=(s, s, channels), **{**architecture, "remat": False}),
                            side=side, seed=seed)
    sample = originals.sample(n=min(len(originals), 200), random_state=seed).sort_values("id")
    scales = ([1.0] * len(sample) if input_mode == "patches" else
              np.minimum(image_size[0] / sample["height"].astype(float), image_size[1] / sample["width"].astype(float)))
    sizes = object_sizes((read_png(p) for p in sample["mask_path"]), num_classes=num_classes, scales=scales)
    report.append(checks.capacity_check(model=model, receptive_field=field, object_sizes=sizes,
                                        class_names=class_names, num_classes=num_classes))

    mixed = policy != "float32"
    budget, budget_source = memory_plan.replica_budget(placement)
    if train["batch_size"] == "auto":
        batch, plan_line = memory_plan.pick_batch_size(
            model, optimizer=train["optimizer"], mixed_precision=mixed, budget=budget,
            num_replicas=placement.num_replicas, training_rows=training_rows_count)
        print(f"preflight: {plan_line}", flush=True)
    else:
        batch = train["batch_size"]
    global_batch = batch * placement.num_replicas
    report.append(checks.memory_check(
        plan=memory_plan.estimate(model, batch_size=batch, optimizer=train["optimizer"], mixed_precision=mixed),
        batch_size=batch, budget_bytes=budget, budget_source=budget_source))

    # One batch drawn as train draws (its pipeline, patches included), from images that have foreground.
    with_foreground = originals[originals["foreground_fraction"].astype(float) > 0]
    chosen = (with_foreground if len(with_foreground) else originals).sample(
        n=min(preflight["overfit_images"], len(originals)), random_state=seed).sort_values("id")
    patches = pipeline.Patches(foreground_share=1.0, scale_range=(1.0, 1.0), num_classes=num_classes) \
        if input_mode == "patches" else None
    batch_images, batch_masks = next(iter(pipeline.training_dataset(
        [chosen], weights=None, image_size=image_size, channels=channels, batch_size=len(chosen), seed=seed,
        cache=False, online_augment=False, deterministic=True, patches=patches)))
    batch_images, batch_masks = batch_images.numpy(), batch_masks.numpy()
    report.append(checks.mask_value_check(batch_masks, num_classes=num_classes))
    if preflight["overfit_steps"] > 0:
        class_weights = resolve_class_weights(
            train["class_weights"], num_classes=num_classes,
            pixels_per_class=class_pixel_table(originals, num_classes=num_classes).sum(0))
        with placement.strategy.scope():
            optimizer = make_optimizer(optimizer=train["optimizer"], learning_rate=train["learning_rate"],
                                       schedule="constant", warmup_epochs=0, epochs=1, steps_per_epoch=1,
                                       weight_decay=train["weight_decay"], momentum=train["momentum"])
            overfit = checks.overfit_one_batch(
                model, batch_images, batch_masks, num_classes=num_classes, optimizer=optimizer,
                loss=make_loss(weights=train["loss"], focal_gamma=train["focal_gamma"], class_weights=class_weights),
                target_iou=preflight["overfit_target_iou"], max_steps=preflight["overfit_steps"],
                max_seconds=preflight["overfit_max_seconds"])
        report.append(overfit)
        per_second = overfit.details.get("images_per_second")
        report.append(checks.run_time_check(
            on_gpu=placement.device_names[0].startswith("/gpu"),
            images_per_second=per_second * placement.num_replicas if per_second else None,
            images_per_epoch=global_batch * pipeline.steps_per_epoch(
                pd.concat(subsets), batch_size=global_batch, requested=train["steps_per_epoch"],
                patch_size=image_size if input_mode == "patches" else None, time_budget=train["max_minutes"] > 0,
                validation_inputs=pipeline.validation_windows(rows["valid"], image_size=image_size)
                if input_mode == "patches" else len(rows["valid"]))[0],
            epochs=train["epochs"], max_minutes=train["max_minutes"]))

    picked = originals.sample(n=min(preflight["contact_sheet_pairs"], len(originals)), random_state=seed)
    sheet = contact_sheet([(row.id, read_png(row.image_path), read_png(row.mask_path))
                           for row in picked.sort_values("id").itertuples()], num_classes=num_classes)
    print_report(report)
    failed = [c.name for c in report if c.status == "fail"]
    write_png(args.contact_sheet, sheet)
    write_json(args.report, {
        "passed": not failed, "failed_checks": failed, "input": input_mode, "input_candidates": candidates,
        "input_reason": input_reason,
        "checks": {c.name: {"status": c.status, "summary": c.summary, **c.details} for c in report}})
    if failed and preflight["on_failure"] == "fail":
        args.checks.unlink(missing_ok=True)  # a passing verdict from an earlier run must not stay behind
        raise ValueError(f"{len(failed)} check(s) failed: {', '.join(failed)} (see above and {args.report}; the "
                         f"contact sheet {args.contact_sheet}); fix the cause, or set preflight.on_failure: warn "
                         "to train anyway.")
    write_json(args.checks, {"passed": not failed, "failed_checks": failed})
    print(f"preflight: {'passed' if not failed else 'FAILED (on_failure: warn)'}; report -> {args.report}, "
          f"contact sheet -> {args.contact_sheet}", flush=True)


if __name__ == "__main__":
    run_stage("preflight", main)
