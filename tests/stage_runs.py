"""Running stages as subprocesses on a tiny project, for the train tests (test_train*.py) and others: each
run is its own process, because devices and precision are fixed per process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY_TRAIN, save_pair, write_params


def env_for(project: Path, **extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2",
               MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    env.pop("DVC_EXP_NAME", None)
    env.update(extra)
    return env


def run_stage(project: Path, module: str, *args: str, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=project, env=env or env_for(project),
                          capture_output=True, text=True, timeout=timeout)


def train_args(out: str = "out", params: str = "params.yaml") -> list[str]:
    return ["--subsets-summary", "data/subsets.json", "--subsets-dir", "data/subsets", "--augmented-csv",
            "data/augmented/augmented.csv", "--valid-csv", "data/csv/valid.csv", "--model", f"{out}/model.keras",
            "--metrics", f"{out}/train.json", "--facts", f"{out}/facts.json", "--history", f"{out}/history.csv",
            "--run-info", f"{out}/run.json",
            "--saved-model", f"{out}/saved_model", "--inference", f"{out}/inference.json",
            "--white-level", "data/png/white_level.json", "--backup-dir", f"{out}/backup", "--params", params]


def run_data_stages(project: Path) -> None:
    """convert-to-png, build-csv, split-balanced and augment on project/data/raw with project/params.yaml."""
    for module, args in (
            ("convert_to_png", ["--raw-dir", "data/raw", "--output-dir", "data/png", "--skipped", "data/skipped.csv"]),
            ("build_csv", ["--png-dir", "data/png", "--output-dir", "data/csv"]),
            ("split_balanced", ["--train-csv", "data/csv/train.csv", "--output-dir", "data/subsets",
                                "--summary", "data/subsets.json"]),
            ("augment", ["--train-csv", "data/csv/train.csv", "--output-dir", "data/augmented"])):
        done = run_stage(project, module, *args, "--params", "params.yaml")
        assert done.returncode == 0, done.stderr


def tiny_train_project(project: Path) -> Path:
    """`project` with the data stages already run on 2 groups of 32x40 images (boxes as masks) and tiny train
    params: what the train tests share (each test file builds its own, in its own pytest worker)."""
    for group, count in (("big", 8), ("small", 4)):
        for index in range(count):
            save_pair(project / "data/raw", f"images/{group}/{group}{index}.png", f"masks/{group}/{group}{index}.png",
                      height=32, width=40, seed=index + 10 * len(group))
    write_params(project, augment={"copies": 1, "num_workers": 1}, convert={"num_workers": 1}, train=TINY_TRAIN)
    run_data_stages(project)
    return project


def params_file(project: Path, name: str, **train) -> str:
    folder = project / name
    write_params(folder, augment={"copies": 1, "num_workers": 1}, convert={"num_workers": 1},
                 train={**TINY_TRAIN, **train})
    return f"{name}/params.yaml"
