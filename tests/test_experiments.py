"""`dvc exp run` in a temporary git copy of the repo: only train and evaluate rerun, the metrics reach
`dvc exp show`, and every experiment (workspace and queued) lands in the project's one MLflow store."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from test_pipeline_dag import ran_stages, repo_copy, sh  # noqa: F401  (repo_copy is a fixture)


@pytest.fixture(scope="module")
def baseline(repo_copy) -> Path:
    repo = repo_copy
    # Queued and --temp experiments run in a copy that holds only what git and DVC track: the raw data must
    # be DVC-tracked (README: "Experiments"), or the copy has no data/raw.
    sh(["dvc", "add", "data/raw"], repo)
    sh(["dvc", "repro"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline"], repo)
    return repo


def mlflow_runs(repo: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["segpipe"], output_format="list")


def wait_for_queue(repo: Path, *, timeout: float) -> str:
    """Polls `dvc queue status` until nothing is queued or running; returns the last status text."""
    deadline = time.time() + timeout
    while True:
        status = sh(["dvc", "queue", "status"], repo)
        if ("Queued" not in status and "Running" not in status) or time.time() > deadline:
            return status
        time.sleep(3)


@pytest.mark.slow
def test_exp_run_reruns_train_and_evaluate_and_lands_in_mlflow(baseline):
    repo = baseline
    log = sh(["dvc", "exp", "run", "-S", "train.epochs=1", "-n", "one-epoch"], repo)
    assert ran_stages(log) == ["train", "evaluate"], log
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo))
    text = json.dumps(shown)
    assert "one-epoch" in text and "valid_iou" in text and "best_val_iou" in text
    runs = [r for r in mlflow_runs(repo) if r.data.tags.get("dvc_experiment") == "one-epoch"]
    assert len(runs) == 1 and runs[0].data.params["train.epochs"] == "1"
    assert "eval_valid_iou" in runs[0].data.metrics  # evaluate logged into the same run


@pytest.mark.slow
def test_queued_experiment_lands_in_the_same_store(baseline):
    repo = baseline
    sh(["dvc", "exp", "run", "--queue", "-S", "train.learning_rate=0.003", "-S", "train.epochs=1", "-n", "queued-lr"],
       repo)
    sh(["dvc", "queue", "start"], repo)
    status = wait_for_queue(repo, timeout=420)
    assert "Success" in status, status
    runs = [r for r in mlflow_runs(repo) if r.data.tags.get("dvc_experiment") == "queued-lr"]
    assert len(runs) == 1, status
    assert runs[0].data.params["train.learning_rate"] == "0.003"
    assert runs[0].info.artifact_uri.startswith((repo / "mlartifacts").as_uri())  # not inside .dvc/tmp/exps
    assert not list((repo / ".dvc/tmp/exps").rglob("mlflow.db"))


@pytest.mark.slow
def test_grid_on_two_parallel_workers_loses_no_run_and_can_be_compared_and_applied(baseline):
    repo = baseline
    before = {r.info.run_id for r in mlflow_runs(repo)}
    sh(["dvc", "exp", "run", "--queue", "-S", "train.learning_rate=0.001,0.002", "-S", "train.epochs=1"], repo)
    sh(["dvc", "queue", "start", "-j", "2"], repo)
    status = wait_for_queue(repo, timeout=480)
    assert status.count("Success") >= 2 and "Failed" not in status, status
    new = [r for r in mlflow_runs(repo) if r.info.run_id not in before]
    assert sorted(r.data.params["train.learning_rate"] for r in new) == ["0.001", "0.002"]
    assert all(r.info.status == "FINISHED" and "eval_valid_iou" in r.data.metrics for r in new)
    names = [r.data.tags["dvc_experiment"] for r in new]
    assert len(set(names)) == 2
    shown = sh(["dvc", "exp", "show", "--only-changed", "--drop", ".*", "--keep",
                "Experiment|valid_iou|best_val_iou|train.learning_rate"], repo)
    assert all(name in shown for name in names) and "valid_iou" in shown
    assert "train.learning_rate" in sh(["dvc", "exp", "diff", names[0], names[1]], repo)  # lists what differs
    sh(["dvc", "exp", "apply", names[1]], repo)
    import yaml

    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["learning_rate"] == float(
        new[1].data.params["train.learning_rate"])
