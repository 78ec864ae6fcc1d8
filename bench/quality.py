"""Quality per training budget on any dataset folder: our default recipe against a reference, same split,
same wall-clock budget, one after the other, both scored at native resolution.

    .venv/bin/python bench/quality.py --data ../shared/datasets/membrane_isbi2012 --set convert.invert_mask=true
    .venv/bin/python bench/quality.py --data data/raw
    .venv/bin/python bench/quality.py --data ../shared/datasets/camvid_street --set num_classes=11 \\
        --set convert.ignore_value=11 \\
        --set 'class_names=[sky, building, pole, road, pavement, tree, sign_symbol, fence, car, pedestrian, bicyclist]'

The folder goes in as shipped (copied to a work folder's data/raw); --set gives the dataset's polarity and
naming params (and, to explore, anything else). Our run is the real pipeline (bench/run_stages.py) with
params.yaml as committed plus train.max_minutes = --minutes; its score is evaluate's, at native resolution:
binary: IoU of the positive class at threshold 0.5 (`valid_iou`); multi-class: the mean IoU over the real
classes, void excluded (`valid_mean_iou`).
The reference:
- binary: ../shared/refbench/keras_io_baseline.py on a flat copy of OUR split (images/ + masks/ with
  --split-csv; the masks are our converted ones, positive class 255, so polarity and naming params apply to
  both), for the same minutes; its `val_metrics_native` IoU (pooled, threshold 0.5, native size);
- multi-class (the reference is binary only): our own pipeline with the recipe of the day issue 13 was
  written, MULTI_CLASS_REFERENCE (train.input: resize, batch 8, no test-time augmentation), on the same
  data for the same minutes; the --set params apply to it too, then these.
Run it alone on the machine (no tests, no other training): the budget turns into epochs at the machine's pace.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from run_stages import apply_sets, run, run_stages

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "refbench" / "keras_io_baseline.py"
# Multi-class reference: whole images resized to the input, 8 per batch, predictions without TTA (the
# defaults before native-resolution patches, TTA and the batch of 4), on today's code.
MULTI_CLASS_REFERENCE = ["train.input=resize", "train.batch_size=8", "evaluate.tta=none"]


def write_params(project: Path, *, minutes: float, overrides: list[str]) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["mlflow"] = False
    params["train"]["max_minutes"] = minutes
    apply_sets(params, overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def flat_copy_for_reference(project: Path, folder: Path) -> Path:
    """images/<n>.png + masks/<n>.png (positive = 255) of our train and valid rows, and split.csv; the path
    of split.csv. Training rows are the originals only: augmented copies are our recipe's, not the split."""
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
    with open(folder / "split.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "split"])
        for split in ("train", "valid"):
            rows = pd.read_csv(project / f"data/csv/{split}.csv", dtype={"id": str}, keep_default_na=False)
            for row in rows.itertuples():
                name = row.id.replace("/", "__") + ".png"
                shutil.copy(project / row.image_path, folder / "images" / name)
                mask = np.asarray(Image.open(project / row.mask_path))
                Image.fromarray(((mask == 1) * 255).astype(np.uint8)).save(folder / "masks" / name)
                writer.writerow([name, split])
    return folder / "split.csv"


def our_score(project: Path, *, num_classes: int) -> tuple[float, dict, dict]:
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    facts = json.loads((project / "models/train_facts.json").read_text())
    return metrics["valid_iou" if num_classes == 1 else "valid_mean_iou"], metrics, facts


def describe(facts: dict) -> str:
    return (f"input {facts['input']}, best epoch {facts['best_epoch']}/{facts['epochs_run']} "
            f"(planned {facts.get('planned_epochs')}), {facts['images_per_second']} img/s, "
            f"validation {facts['validation_share']:.0%} of the epochs' time" + (
                "; pilot " + ", ".join(f"{k} {v:.3f}" for k, v in facts["input_pilot"]["scores"].items())
                + f" in {facts['input_pilot']['seconds']:.0f}s" if facts.get("input_pilot") else ""))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder, as shipped")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget of each run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="a param for our runs: section.key=value or a shared key (num_classes=11)")
    parser.add_argument("--reference-json", type=Path, default=None,
                        help="reuse the reference of an earlier run on the same data and split (same session, same "
                             "machine) instead of training it again: binary, its keras-io reference.json; "
                             "multi-class, its result.json")
    parser.add_argument("--no-reference", action="store_true",
                        help="our run only (a second seed, or an alternative of auto's choice): no reference")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data} is not a folder.")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segpipe-quality-"))
    log = work / "log.txt"
    project = work / "ours"
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(args.data, project / "data/raw")
    print(f"work folder {work} (log: {log})", flush=True)
    params = write_params(project, minutes=args.minutes, overrides=args.set)
    num_classes = params["num_classes"]

    started = time.perf_counter()
    seconds = run_stages(project, log, evaluate=True)
    ours, metrics, facts = our_score(project, num_classes=num_classes)
    print(f"ours done in {time.perf_counter() - started:.0f}s: {describe(facts)}", flush=True)
    result = {"data": str(args.data), "minutes": args.minutes, "overrides": args.set, "ours": ours, "train": facts,
              "evaluate": metrics}
    if args.no_reference:
        print(f"\n{args.data.name}: segpipe {ours:.4f} ({describe(facts)}); params {args.set or 'defaults'}")
        (work / "result.json").write_text(json.dumps(result, indent=2))
        return
    if num_classes == 1:
        if not REFERENCE.is_file():
            raise SystemExit(f"{REFERENCE} not found: the binary reference is the shared keras-io recipe.")
        split_csv = flat_copy_for_reference(project, work / "reference_data")
        result = args.reference_json or work / "reference.json"
        started = time.perf_counter()
        if args.reference_json is None:
            run([sys.executable, str(REFERENCE), "--dataset-dir", str(work / "reference_data"), "--positive",
                 "bright", "--split-csv", str(split_csv), "--minutes", str(args.minutes), "--out", str(result)],
                ROOT, log)
        reference = json.loads(result.read_text())
        expected = sorted(row["image"] for row in csv.DictReader(open(split_csv)) if row["split"] == "valid")
        if sorted(reference["split"]["val"]) != expected:
            raise SystemExit(f"{result} was measured on another validation split; run without --reference-json.")
        theirs = reference["val_metrics_native"]["iou"]
        their_words = (f"keras-io reference (best epoch {reference['best_epoch']}/{reference['epochs_run']}, "
                       f"{reference['images_per_s_train']} img/s)")
        print(f"reference done in {time.perf_counter() - started:.0f}s", flush=True)
        score_name = "IoU of the positive class"
    elif args.reference_json is not None:
        earlier = json.loads(args.reference_json.read_text())
        if Path(earlier["data"]).resolve() != args.data.resolve() or earlier["minutes"] != args.minutes:
            raise SystemExit(f"{args.reference_json} measured {earlier['data']} for {earlier['minutes']} minutes; "
                             "run without --reference-json.")
        theirs, their_words = earlier["reference"], earlier["reference_words"]
        score_name = f"mean IoU over {num_classes} classes"
    else:
        resized = work / "reference_recipe"
        shutil.rmtree(resized, ignore_errors=True)
        shutil.copytree(project, resized, ignore=shutil.ignore_patterns("models", "metrics", "plots"))
        write_params(resized, minutes=args.minutes, overrides=[*args.set, *MULTI_CLASS_REFERENCE])
        run_stages(resized, log, evaluate=True, data=False)
        theirs, _, reference_facts = our_score(resized, num_classes=num_classes)
        their_words = f"our earlier recipe {MULTI_CLASS_REFERENCE} ({describe(reference_facts)})"
        score_name = f"mean IoU over {num_classes} classes"
    print(f"\n{args.data.name}: {score_name} on the validation split at native resolution; {args.minutes:g} "
          f"minutes of training each; params {args.set or 'defaults'}")
    print(f"  reference: {theirs:.4f}  {their_words}")
    print(f"  segpipe:   {ours:.4f}  ({describe(facts)}; data stages {seconds['data']:.0f}s)")
    if num_classes > 1:
        print("  segpipe IoU per class: " + ", ".join(
            f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in metrics["valid_class_iou"].items()))
    print(f"DIFFERENCE {ours - theirs:+.4f} (target: >= +0.05)")
    result.update(reference=theirs, reference_words=their_words)
    (work / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
