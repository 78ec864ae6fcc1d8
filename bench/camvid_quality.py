"""Multi-class quality per budget: the real pipeline (convert -> ... -> train -> evaluate) on the shared CamVid
street scenes, trained for a wall-clock budget, scored by evaluate at native 480x360.

The dataset goes in as shipped (train/ and valid/ with images/ and masks/, class ids 0..10, 11 = Unlabelled)
and is described by params only: num_classes 11, class_names, convert.ignore_value 11. Everything else is
params.yaml as committed, except the budget (train.max_minutes) and any --set.

Prints the mean IoU over the 11 classes (void excluded; evaluate's valid_mean_iou) and the IoU of each
class. Compare variants in one session, one after the other (never beside tests or another run):

    .venv/bin/python bench/camvid_quality.py [--minutes 8] [--set train.class_weights=auto] ...
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import yaml
from run_stages import run_stages

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid_street"
CLASS_NAMES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
               "bicyclist"]
VOID = 11


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget (train.max_minutes)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=YAML",
                        help="override a param (e.g. train.class_weights=auto, split_balanced.key=foreground)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not CAMVID.is_dir():
        raise SystemExit(f"{CAMVID} not found; this benchmark needs the shared CamVid street scenes.")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segpipe-camvid-"))
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    (project / "data").mkdir(parents=True)
    shutil.copytree(CAMVID, project / "data/raw", ignore=shutil.ignore_patterns("SOURCE.txt"))
    log = work / "log.txt"
    print(f"work folder {work} (log: {log})", flush=True)

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES, mlflow=False)
    params["convert"]["ignore_value"] = VOID
    params["train"]["max_minutes"] = args.minutes
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        (params[section] if name else params)[name or section] = yaml.safe_load(value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    seconds = run_stages(project, log, evaluate=True)
    scores = json.loads((project / "metrics/evaluate.json").read_text())
    facts = json.loads((project / "models/train_facts.json").read_text())
    subsets = json.loads((project / "data/subsets.json").read_text())
    print(f"\nCamVid street scenes: 90 train / 30 valid, 11 classes + void, scored at native 480x360; "
          f"budget {args.minutes:g} min of training; overrides {args.set or 'none'}")
    print(f"  balancing key {subsets['key']} ({len(subsets['subsets'])} subsets); class weights "
          f"{facts.get('class_weights')}; best epoch {facts['best_epoch']}/{facts['epochs_run']}, "
          f"{facts['images_per_second']} img/s; data stages {seconds['data']:.0f}s, train {seconds['train']:.0f}s")
    ious = scores["valid_class_iou"]
    print("  IoU per class: " + ", ".join(f"{name} {'-' if ious[name] is None else f'{ious[name]:.3f}'}"
                                          for name in CLASS_NAMES))
    print(f"MEAN IoU (11 classes, void excluded) {scores['valid_mean_iou']:.4f}; pixel accuracy "
          f"{scores['valid_pixel_accuracy']:.4f}; image-mean IoU {scores['valid_image_mean_iou']:.4f}")
    (work / "result.json").write_text(json.dumps({"overrides": args.set, "evaluate": scores, "train": facts,
                                                  "balancing": subsets["key"]}, indent=2))


if __name__ == "__main__":
    main()
