"""Cross-validation against one split on any dataset folder: the spread of the fold scores beside the single
split's score, and the fold ensemble against the single model on a test split that no run chose anything on.

    .venv/bin/python bench/cross_validation.py --data <datasets>/membrane_isbi2012 --set convert.invert_mask=true \\
        --epochs 15 --test-share 0.2
    .venv/bin/python bench/cross_validation.py --data data/raw --epochs 30

A git clone of this commit gets the dataset in data/raw (with --test-share, a flat images/ + masks/ dataset is
split first: a seeded share of the pairs goes to images/test/ and masks/test/, the rest to .../train/, so
build-csv's own train/valid split and the folds see only the rest), params.yaml as committed with mlflow off,
`train.epochs` = --epochs (no time budget: the epoch count, not the machine's load, decides what is learned),
`cv.folds` = [0..k-1] and the --set overrides; then `dvc repro` twice:
1. every model (the single split's and each fold's) trains --epochs epochs: the single split's scores
   (metrics/evaluate.json), the cross-validated ones (metrics/cv.json: out-of-fold, per fold, mean, std) and
   the ensemble at equal time per model;
2. with a test split only: every model trains --epochs / k epochs: the ensemble of k such models costs what
   the single model of run 1 cost (k x epochs / k, and the fold models train on (k-1)/k of train + valid,
   about the rows of train.csv).
Scores: binary IoU at the chosen threshold (evaluate's `_at_best_threshold`: the single model's chosen on its
validation split, the ensemble's on the out-of-fold predictions); multi-class mean IoU. Prints one table and
writes it as JSON to --workdir/result.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from run_stages import apply_sets

ROOT = Path(__file__).resolve().parents[1]


def split_flat_dataset(source: Path, raw: Path, *, test_share: float, seed: int) -> int:
    """images/ + masks/ (pairs by stem) -> raw/images/{train,test}/ and raw/masks/{train,test}/; returns the
    number of test pairs."""
    images = {path.stem: path for path in sorted((source / "images").iterdir()) if path.is_file()}
    masks = {path.stem: path for path in sorted((source / "masks").iterdir()) if path.is_file()}
    stems = sorted(set(images) & set(masks))
    if not stems:
        raise SystemExit(f"--test-share needs a flat dataset: images/ and masks/ with the same stems in '{source}'")
    test = set(np.random.default_rng(seed).permutation(stems)[: round(len(stems) * test_share)])
    for stem in stems:
        split = "test" if stem in test else "train"
        for kind, found in (("images", images), ("masks", masks)):
            (raw / kind / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(found[stem], raw / kind / split / found[stem].name)
    return len(test)


def set_params(project: Path, *, epochs: int, folds: int, overrides: list[str]) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["mlflow"] = False
    params["train"].update(epochs=epochs, max_minutes=0)
    params["cv"]["folds"] = list(range(folds))
    apply_sets(params, overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def repro(project: Path, log: Path) -> float:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    with open(log, "a") as fh:
        done = subprocess.run(["dvc", "repro"], cwd=project, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"dvc repro failed; see {log}")
    return time.perf_counter() - started


def scores(project: Path, *, key: str) -> dict:
    single = json.loads((project / "metrics/evaluate.json").read_text())
    cv = json.loads((project / "metrics/cv.json").read_text())
    test = cv.get("ensemble_test", {})
    return {"single_valid": single[f"valid_{key}"], "single_test": single.get(f"test_{key}"),
            "single_test_ci": [single.get(f"test_{key}_ci_low"), single.get(f"test_{key}_ci_high")],
            "oof": cv["oof"][key], "oof_ci": [cv["oof"].get(f"{key}_ci_low"), cv["oof"].get(f"{key}_ci_high")],
            "fold_mean": cv["fold_mean"][key], "fold_std": cv["fold_std"][key],
            "folds": [cv["fold"][fold][key] for fold in sorted(cv["fold"], key=int)],
            "ensemble_test": test.get(key), "ensemble_test_ci": [test.get(f"{key}_ci_low"), test.get(f"{key}_ci_high")]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder, as shipped")
    parser.add_argument("--epochs", type=int, required=True, help="epochs of each model in the first run")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--test-share", type=float, default=0.0,
                        help="share of a flat images/ + masks/ dataset held out as a test split (0: none)")
    parser.add_argument("--has-test", action="store_true",
                        help="the dataset ships a test split (as build-csv reads it): compare the ensemble there")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="a param for every run")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="segpipe-cv-"))
    project, log = workdir / "project", workdir / "log.txt"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=project, capture_output=True, text=True,
                            check=True).stdout.strip()
    if args.test_share:
        tested = split_flat_dataset(args.data, project / "data/raw", test_share=args.test_share, seed=0)
    else:
        shutil.copytree(args.data, project / "data/raw", dirs_exist_ok=True)
        tested = "given" if args.has_test else 0
    result = {"data": str(args.data), "commit": commit, "folds": args.folds, "test_pairs": tested, "runs": {}}
    for epochs in (args.epochs, max(1, round(args.epochs / args.folds)))[: 2 if tested else 1]:
        params = set_params(project, epochs=epochs, folds=args.folds, overrides=args.set)
        key = "iou_at_best_threshold" if params["num_classes"] == 1 else "mean_iou"
        seconds = repro(project, log)
        result["runs"][epochs] = {"seconds": round(seconds), "key": key, **scores(project, key=key)}
        print(f"epochs {epochs}: {json.dumps(result['runs'][epochs])}", flush=True)
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    print(f"result: {workdir / 'result.json'}")


if __name__ == "__main__":
    main()
