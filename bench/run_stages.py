"""Runs the pipeline's stages in a benchmark's project folder, as `dvc repro` would, logging to one file.

The quality benchmark (quality.py) and the memory benchmark build a project folder with data/raw and
params.yaml and call these; the commands are dvc.yaml's, with the project's own output paths.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

DATA_STAGES = (
    ["stages.convert_to_png", "--raw-dir", "data/raw", "--output-dir", "data/png", "--skipped", "data/skipped.csv"],
    ["stages.build_csv", "--png-dir", "data/png", "--output-dir", "data/csv"],
    ["stages.split_balanced", "--train-csv", "data/csv/train.csv", "--output-dir", "data/subsets",
     "--summary", "data/subsets.json"],
    ["stages.augment", "--train-csv", "data/csv/train.csv", "--output-dir", "data/augmented"],
)
TRAIN = ["stages.train", "--subsets-summary", "data/subsets.json", "--subsets-dir", "data/subsets",
         "--augmented-csv", "data/augmented/augmented.csv", "--valid-csv", "data/csv/valid.csv",
         "--model", "models/model.keras", "--metrics", "metrics/train.json", "--facts", "models/train_facts.json",
         "--history", "plots/train_history.csv", "--run-info", "models/run.json", "--saved-model",
         "models/saved_model", "--inference", "models/inference.json", "--backup-dir", "models/backup"]
EVALUATE = ["stages.evaluate", "--model", "models/model.keras", "--inference", "models/inference.json", "--csv-dir",
            "data/csv", "--history",
            "plots/train_history.csv", "--run-info", "models/run.json", "--metrics", "metrics/evaluate.json",
            "--threshold", "models/threshold.json", "--plots-dir", "plots/evaluate"]


def apply_sets(params: dict, overrides: list[str]) -> dict:
    """params.yaml's dict with each --set `section.key=YAML` (or `key=YAML` for a shared key) applied."""
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        (params[section] if name else params)[name or section] = yaml.safe_load(value)
    return params


def run(command: list[str], cwd: Path, log: Path) -> None:
    """Runs `command` in `cwd` with segpipe importable and MLflow's own default store; exits naming the log."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(command)}\n")
        fh.flush()
        done = subprocess.run(command, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}; see {log}")


def run_stages(project: Path, log: Path, *, evaluate: bool, data: bool = True) -> dict[str, float]:
    """The data stages (unless `data` is False: they ran already), train and (optionally) evaluate on
    project/params.yaml; seconds per part."""
    seconds = {}
    for part, commands in (("data", DATA_STAGES if data else []), ("train", [TRAIN]),
                           ("evaluate", [EVALUATE] if evaluate else [])):
        started = time.perf_counter()
        for command in commands:
            run([sys.executable, "-m", *command, "--params", "params.yaml"], project, log)
        seconds[part] = time.perf_counter() - started
    return seconds
