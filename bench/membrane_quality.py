"""Quality per budget: the default recipe (the real pipeline, convert -> ... -> train) against the
keras-io reference recipe, each trained for the same wall-clock budget on the ISBI-2012 membranes.

Both use the reference's split (24 train / 6 valid, listed in its JSON). Scores are those of the
MEMBRANE class (the dark, 0-valued mask pixels; our convert.invert_mask: true), measured the same
way for both: best-epoch model, probabilities resized bilinearly to the native 512x512, threshold 0.5,
pooled IoU and Dice over the 6 validation images (the reference's `val_metrics_native`).

Our run uses params.yaml as committed, except the dataset's polarity (convert.invert_mask: true) and
the budget (train.max_minutes). Runs one after the other, same session, so the machine is the same.

    .venv/bin/python bench/membrane_quality.py [--minutes 8] [--reference-json FILE] [--set train.key=YAML]
Target: ours >= reference + 0.05 IoU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from run_stages import run, run_stages

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MEMBRANE = SHARED / "datasets" / "membrane_isbi2012"
REFERENCE = SHARED / "refbench" / "keras_io_baseline.py"


def pooled_scores(pairs) -> dict:
    tp = fp = fn = 0
    for predicted, truth in pairs:
        tp += int(np.count_nonzero(predicted & truth))
        fp += int(np.count_nonzero(predicted & ~truth))
        fn += int(np.count_nonzero(~predicted & truth))
    return {"iou": tp / max(1, tp + fp + fn), "dice": 2 * tp / max(1, 2 * tp + fp + fn)}


def score_ours(project: Path, valid_names: list[str]) -> dict:
    """Membrane IoU/Dice of models/model.keras on the validation images at native resolution."""
    sys.path.insert(0, str(ROOT))
    import keras
    import pandas as pd

    from segpipe.input_pipeline import evaluation_dataset

    params = yaml.safe_load((project / "params.yaml").read_text())
    model = keras.models.load_model(project / "models/model.keras", compile=False)
    valid = pd.read_csv(project / "data/csv/valid.csv", dtype={"id": str, "group": str}, keep_default_na=False)
    os.chdir(project)
    channels = model.input_shape[-1]
    dataset = evaluation_dataset(valid, image_size=tuple(params["train"]["image_size"]), channels=channels,
                                 batch_size=2, cache=False)
    probabilities = model.predict(dataset, verbose=0)[..., 0]
    pairs = []
    for probability, name in zip(probabilities, valid["id"]):
        with Image.open(MEMBRANE / "masks" / f"{Path(name).name}.png") as mask:
            truth = np.asarray(mask.convert("L")) <= 127  # membranes: the dark pixels
        up = Image.fromarray(probability.astype(np.float32), mode="F").resize(truth.shape[::-1], Image.BILINEAR)
        pairs.append((np.asarray(up) > 0.5, truth))
    assert sorted(f"{Path(i).name}.png" for i in valid["id"]) == sorted(valid_names)
    return pooled_scores(pairs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--reference-json", type=Path, default=None,
                        help="reuse a reference result instead of running it (it must be from this session)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=YAML",
                        help="override a param of our recipe (to explore; the target is for the defaults)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not MEMBRANE.is_dir():
        raise SystemExit(f"{MEMBRANE} not found; this benchmark needs the shared ISBI-2012 membranes.")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segpipe-membrane-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    print(f"work folder {work} (log: {log})", flush=True)

    reference_json = args.reference_json
    if reference_json is None:
        reference_json = work / "reference.json"
        started = time.perf_counter()
        run([sys.executable, str(REFERENCE), "--minutes", str(args.minutes), "--out", str(reference_json)], ROOT, log)
        print(f"reference done in {time.perf_counter() - started:.0f}s", flush=True)
    reference = json.loads(reference_json.read_text())
    split = reference["split"]

    project = work / "ours"
    shutil.rmtree(project, ignore_errors=True)
    for part, names in (("train", split["train"]), ("valid", split["val"])):
        for kind in ("images", "masks"):
            (project / "data/raw" / part / kind).mkdir(parents=True)
            for name in names:
                shutil.copy(MEMBRANE / kind / name, project / "data/raw" / part / kind / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["convert"]["invert_mask"] = True
    params["train"]["max_minutes"] = args.minutes
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        params[section][name] = yaml.safe_load(value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds = run_stages(project, log, evaluate=False)
    ours = score_ours(project, split["val"])
    train_metrics = json.loads((project / "models/train_facts.json").read_text())
    theirs = reference["val_metrics_native"]
    print(f"\nbudget {args.minutes:g} min of training each; membrane class, 6 validation images, native 512x512")
    print(f"  reference keras-io: IoU {theirs['iou']:.4f}  Dice {theirs['dice']:.4f}  "
          f"(best epoch {reference['best_epoch']}/{reference['epochs_run']}, {reference['images_per_s_train']} img/s)")
    print(f"  segpipe default:    IoU {ours['iou']:.4f}  Dice {ours['dice']:.4f}  "
          f"(best epoch {train_metrics['best_epoch']}/{train_metrics['epochs_run']}, "
          f"{train_metrics['images_per_second']} img/s, {train_metrics['precision_policy']}; data stages "
          f"{seconds['data']:.0f}s, train stage {seconds['train']:.0f}s)")
    print(f"DIFFERENCE IoU {ours['iou'] - theirs['iou']:+.4f}  Dice {ours['dice'] - theirs['dice']:+.4f} "
          f"(target: IoU >= +0.05)")
    (work / "result.json").write_text(json.dumps({"ours": ours, "reference": theirs, "train": train_metrics,
                                                  "overrides": args.set}, indent=2))


if __name__ == "__main__":
    main()
