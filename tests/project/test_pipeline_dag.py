"""The whole DAG through `dvc repro` in a temporary git copy of the repo, on a small demo dataset."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY_PREFLIGHT, copy_project


def dvc_env() -> dict:
    """The environment a user's shell gives dvc: the venv's tools first, no test-runner leftovers."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", PYTHONPATH="")
    env.pop("MLFLOW_TRACKING_URI", None)  # runs go to the copy's own mlflow.db
    env.pop("SEGPIPE_KILL_AT", None)
    return env


def sh(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def ran_stages(log: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", log)


def set_param(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def without_mlflow(repo: Path) -> None:
    """mlflow: false in the repo's params: MLflow's logging (tests/project/test_experiments.py covers it) is half
    the time of a tiny training and its evaluation."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "mlflow": False}, sort_keys=False))


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """A git repo holding the project's files (as `git ls-files` sees them) and a small demo dataset."""
    repo = copy_project(tmp_path_factory.mktemp("dag") / "repo")
    sh(["git", "init", "-q"], repo)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], repo)
    sh([sys.executable, "-m", "stages.make_demo_data", "--output", "data/raw", "--scale", "0.3"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(image_size=[32, 32], depth=2, base_filters=4, epochs=2, warmup_epochs=0)
    params["preflight"].update(TINY_PREFLIGHT)
    params["evaluate"].update(tta="none", num_samples=1)  # the DVC tests time DVC, not evaluate's extras
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_and_is_incremental(repo_copy):
    repo = repo_copy
    without_mlflow(repo)  # eight trainings below
    log = sh(["dvc", "repro"], repo)
    assert ran_stages(log) == ["convert-to-png", "build-csv", "split-balanced", "augment", "preflight", "train",
                               "evaluate"]
    train = pd.read_csv(repo / "data/csv/train.csv")
    valid = pd.read_csv(repo / "data/csv/valid.csv")
    assert len(train) + len(valid) == len(list((repo / "data/raw/images").rglob("*.*")))
    assert train["image_path"].str.startswith("data/png/images/").all()
    assert all((repo / p).is_file() for p in train["image_path"])
    assert set(train["group"]) == {"hands", "closeups"}
    assert (repo / "data/subsets.json").is_file()
    assert pd.read_csv(repo / "data/convert_skipped.csv").empty
    augmented = pd.read_csv(repo / "data/augmented/augmented.csv")
    copies = yaml.safe_load((repo / "params.yaml").read_text())["augment"]["copies"]
    assert len(augmented) == copies * len(train)
    assert all((repo / p).is_file() for p in augmented["mask_path"])

    metrics = yaml.safe_load(sh(["dvc", "metrics", "show", "--json"], repo))
    assert set(metrics[""]["data"]["metrics/train.json"]["data"]) >= {"best_valid_iou",
                                                                      "best_train_loss"}  # "" = workspace
    assert json.loads((repo / "models/train_facts.json").read_text())["epochs_run"] == 2
    assert pd.read_csv(repo / "plots/train_history.csv")["epoch"].tolist() == [1, 2]
    assert (repo / "models/model.keras").is_file() and not (repo / "mlflow.db").exists()

    log = sh(["dvc", "repro"], repo)
    assert ran_stages(log) == [], log

    # `dvc plots show` draws exactly the charts dvc.yaml defines, and the overlay pictures.
    output = json.loads(sh(["dvc", "plots", "show", "--json"], repo))
    assert not output.get("errors"), output["errors"]
    shown = output["data"]
    charts = {name for name, plots in shown.items() if any(p["type"] == "vega" for p in plots)}
    images = {name for name, plots in shown.items() if all(p["type"] == "image" for p in plots)}
    assert charts == {"Loss", "IoU", "Learning rate", "Threshold curve (validation)", "Precision-recall (validation)",
                      "Confusion matrix (validation, every pixel)", "IoU per class (validation)",
                      "Validation images by IoU (bins of 0.05)"}, sorted(shown)
    # the project's template sums each cell's pixels (.dvc/plots/confusion_pixels.json), not one row per pixel
    confusion = json.dumps(shown["Confusion matrix (validation, every pixel)"])
    assert '\\"sum\\"' in confusion or '"sum"' in confusion, confusion[:2000]
    assert "plots/preflight/contact_sheet.png" in images
    overlays = images - {"plots/preflight/contact_sheet.png"}
    assert all(name.startswith("plots/evaluate/overlays/") for name in overlays), \
        sorted(images)
    assert set(shown) == charts | images

    assert metrics[""]["data"]["metrics/evaluate.json"]["data"]["valid_iou"] >= 0
    assert (repo / "plots/evaluate/png/threshold_curve.png").is_file()

    set_param(repo, "evaluate", "worst_k", 2)
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["evaluate"]

    set_param(repo, "train", "learning_rate", 0.002)
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["preflight", "train", "evaluate"]

    set_param(repo, "augment", "copies", 2)
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["augment", "preflight", "train", "evaluate"]

    set_param(repo, "split_balanced", "key", "foreground")
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["split-balanced", "preflight", "train", "evaluate"]

    set_param(repo, "build_csv", "valid_fraction", 0.3)
    assert set(ran_stages(sh(["dvc", "repro"], repo))) == {"build-csv", "split-balanced", "augment", "preflight",
                                                           "train",
                                                           "evaluate"}

    # A param that does not change the converted bytes reruns convert only: its outputs are identical.
    set_param(repo, "convert", "num_workers", 1)
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["convert-to-png"]

        # Gray images change data/png and the channels train reads from convert.image_mode.
    set_param(repo, "convert", "image_mode", "L")
    assert set(ran_stages(sh(["dvc", "repro"], repo))) == {"convert-to-png", "build-csv", "augment", "preflight",
                                                           "train",
                                                           "evaluate"}

    set_param(repo, "convert", "invert_mask", True)  # changes every foreground_fraction
    assert set(ran_stages(sh(["dvc", "repro"], repo))) == {"convert-to-png", "build-csv", "split-balanced", "augment",
                                                           "preflight", "train", "evaluate"}
    assert pd.read_csv(repo / "data/csv/train.csv")["foreground_fraction"].min() > 0.5


@pytest.mark.slow
def test_cross_validation_folds_are_stages_that_resume_after_a_kill_and_score_out_of_fold(repo_copy, tmp_path):
    repo = repo_copy
    without_mlflow(repo)
    sh(["dvc", "repro"], repo)
    single = json.loads((repo / "metrics/evaluate.json").read_text())
    assert json.loads((repo / "metrics/cv.json").read_text()) == {"folds": 0}
    assert json.loads((repo / "models/ensemble.json").read_text())["models"] == ["model.keras"]

    set_param(repo, "cv", "folds", [0, 1])
    killed = subprocess.run(["dvc", "repro"], cwd=repo, env={**dvc_env(), "SEGPIPE_KILL_AT": "predict-fold:fill"},
                            capture_output=True, text=True, start_new_session=True)  # the kill takes its group
    assert killed.returncode != 0 and "Running stage 'predict-fold@" in killed.stdout, killed.stdout[-3000:]
    trained_before_the_kill = set(ran_stages(killed.stdout)) & {"train-fold@0", "train-fold@1"}
    assert trained_before_the_kill
    log = sh(["dvc", "repro"], repo)
    assert not trained_before_the_kill & set(ran_stages(log)), log  # a finished fold is not trained again
    assert ran_stages(log)[-1] == "evaluate"

    cv = json.loads((repo / "metrics/cv.json").read_text())
    assert cv["folds"] == 2 and set(cv["fold"]) == {"0", "1"}
    assert cv["images"] == len(pd.read_csv(repo / "data/csv/train.csv")) + len(pd.read_csv(repo / "data/csv/valid.csv"))
    assert cv["oof"]["iou_ci_low"] <= cv["oof"]["iou"] <= cv["oof"]["iou_ci_high"]
    assert len(pd.read_csv(repo / "plots/evaluate/oof_per_image.csv")) == cv["images"]
    assert json.loads((repo / "metrics/evaluate.json").read_text()) == single  # the single split's scores stay
    ensemble = json.loads((repo / "models/ensemble.json").read_text())
    assert ensemble["models"] == ["../cv/fold-0/model/model.keras", "../cv/fold-1/model/model.keras"]
    assert ensemble["threshold"] == cv["best_threshold"]
    metrics = yaml.safe_load(sh(["dvc", "metrics", "show", "--json"], repo))[""]["data"]["metrics/cv.json"]["data"]
    assert metrics["oof"]["iou"] == cv["oof"]["iou"]

    set_param(repo, "evaluate", "bootstrap_resamples", 100)  # scoring only: no fold is trained or predicted again
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["evaluate"]
    done = subprocess.run([sys.executable, "-m", "segpipe.inference.predict", "--model", "models/ensemble.json",
                           "--input", "data/raw/images", "--output", str(tmp_path / "masks")],
                          cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert done.returncode == 0 and "an ensemble of 2 models" in done.stdout, done.stderr

    set_param(repo, "cv", "folds", [])  # preflight's estimate counts the trainings; its pass/fail is unchanged
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["preflight", "evaluate"]
    assert json.loads((repo / "metrics/cv.json").read_text()) == {"folds": 0}
