"""preflight: the checklist before a long training (segpipe/preflight/checks.py): devices, data, capacity,
resolution, memory, mask values, overfitting one batch, run time. Stops `dvc repro` before train when a check fails.

Reads:   --csv-dir/{train,valid,test}.csv and their PNGs, --subsets-summary and --subsets-dir (the training
         subsets, to draw the overfit batch the way train draws), --augmented-csv (rows per epoch).
Writes:  --report JSON (every check's status and numbers: device facts, timings; not a DVC metric),
         --contact-sheet PNG (training pairs with the mask outlines drawn on the images: alignment and
         polarity at a glance), --checks JSON (pass/fail only: what train depends on, so device facts or
         timings never make train rerun on another machine).
Params:  seed, num_classes, class_names, convert.image_mode, train (the model, loss, optimizer, input, devices,
         precision: as train builds them), preflight.*, cv.folds (the run-time check estimates every training
         of a cross-validation; --checks stays pass/fail, so a new cv.folds reruns no training through it).

On a failed check: with preflight.on_failure: fail (default) the report and contact sheet are written, --checks
is not, and the stage exits 2 naming the failures; with warn, the failures are recorded and train runs.
Also a console script, run from the project root: segpipe-preflight (no arguments: those of dvc.yaml's command).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from segpipe.core.cli import describe, run_stage, start_tensorflow
from segpipe.core.outputs import write_json
from segpipe.core.params import Params
from segpipe.core.schema import check_architecture


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=describe(__doc__))
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
    from segpipe.data.balancing import training_rows
    from segpipe.data.image_io import read_png, write_png
    from segpipe.data.rows import read_rows
    from segpipe.evaluation.overlays import contact_sheet

    rows = {split: read_rows(args.csv_dir / f"{split}.csv", made_by="build-csv")
            for split in ("train", "valid", "test") if (args.csv_dir / f"{split}.csv").is_file()}
    summary, subsets, valid = training_rows(summary_path=args.subsets_summary, subsets_dir=args.subsets_dir,
                                            augmented_csv=args.augmented_csv, valid_csv=args.csv_dir / "valid.csv",
                                            sampling_weights=train["sampling_weights"])
    start_tensorflow()
    from segpipe.preflight import checks
    from segpipe.preflight.model_checks import model_checks
    from segpipe.training.devices import configure_runtime
    from segpipe.training.input_mode import input_candidates
    from segpipe.training.setup import TrainingRows, set_up_input

    placement, policy, reason = configure_runtime(devices=train["devices"], precision=train["precision"],
                                                  deterministic=train["deterministic"], seed=seed)
    # With a pilot (train.input: auto on large images) train tries both inputs; resize, the first, is checked.
    candidates, input_reason = input_candidates(train["input"], rows=rows["train"], seed=seed, num_classes=num_classes,
                                                image_size=tuple(train["image_size"]), pilot=train["input_pilot"])
    data = TrainingRows(subsets=subsets, valid=valid, names=[subset["name"] for subset in summary["subsets"]])
    setup = set_up_input(candidates[0], data=data, placement=placement, mixed_precision=policy != "float32",
                         channels=channels, num_classes=num_classes, cache_dir=None, **train)
    if setup.batch_plan:
        print(f"preflight: {setup.batch_plan}", flush=True)
    report = [checks.device_check(placement=placement, precision=policy, precision_reason=reason),
              checks.data_check(rows, num_classes=num_classes, class_names=class_names),
              *model_checks(setup, originals=rows["train"], placement=placement, mixed_precision=policy != "float32",
                            channels=channels, num_classes=num_classes, class_names=class_names, seed=seed,
                            trainings=1 + len(all_params.section("cv")["folds"]),  # the run-time estimate
                            **{k: v for k, v in preflight.items() if k.startswith("overfit_")}, **train)]
    picked = rows["train"].sample(n=min(preflight["contact_sheet_pairs"], len(rows["train"])), random_state=seed)
    write_png(args.contact_sheet, contact_sheet([(row.id, read_png(row.image_path), read_png(row.mask_path))
                                                 for row in picked.sort_values("id").itertuples()],
                                                num_classes=num_classes))
    print_report(report)
    failed = [c.name for c in report if c.status == "fail"]
    write_json(args.report, {
        "passed": not failed, "failed_checks": failed, "input": candidates[0], "input_candidates": candidates,
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
