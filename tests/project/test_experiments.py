"""`dvc exp run` in a temporary git copy of the repo: only the stages a change touches rerun, the metrics reach
`dvc exp show`, every experiment (workspace and queued) leaves one record in the project's one MLflow store,
and no experiment changes another's record."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_pipeline_dag import dvc_env, ran_stages, repo_copy, sh  # noqa: F401  (repo_copy is a fixture)


@pytest.fixture(scope="module")
def baseline(repo_copy) -> Path:
    repo = repo_copy
    # Queued and --temp experiments run in a copy that holds only what git and DVC track: the raw data must
    # be DVC-tracked (docs/how-to/experiments.md), or the copy has no data/raw.
    # Data a tiny model learns in a few steps (bright boxes on dark noise), so the evaluate-only experiment
    # below moves a boundary score: the tiny demo copy gives a model that predicts no edges at all.
    shutil.rmtree(repo / "data/raw")
    write_boxes(repo / "data/raw", count=30)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(epochs=3, learning_rate=0.003)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "add", "data/raw"], repo)
    sh(["dvc", "repro"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline"], repo)
    return repo


def write_boxes(folder: Path, *, count: int) -> None:
    """`count` 48x48 RGB images of one or two bright rectangles on dark noise, with their 0/255 masks."""
    rng = np.random.default_rng(0)
    for index in range(count):
        mask = np.zeros((48, 48), bool)
        for _ in range(2):
            top, left, height, width = rng.integers(2, 30, size=2).tolist() + rng.integers(8, 16, size=2).tolist()
            mask[top:top + height, left:left + width] = True
        image = (rng.normal(60, 20, (48, 48, 3)) + 120 * mask[..., None]).clip(0, 255).astype(np.uint8)
        for kind, array in (("images", image), ("masks", mask.astype(np.uint8) * 255)):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / kind / f"box{index:02d}.png")


def mlflow_runs(repo: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["segpipe"], output_format="list")


def records(repo: Path, experiment: str):
    """The experiment's record: evaluate's run tagged with its name."""
    return [r for r in mlflow_runs(repo) if r.data.tags.get("dvc_experiment") == experiment]


def snapshot(repo: Path, run_id: str) -> dict:
    """Everything a later experiment must not change in a run: params, tags, each metric's history, artifacts."""
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run = client.get_run(run_id)

    def artifacts(path=None):
        found = []
        for item in client.list_artifacts(run_id, path):
            found += artifacts(item.path) if item.is_dir else [(item.path, item.file_size)]
        return found

    return {"params": run.data.params, "tags": run.data.tags, "status": run.info.status,
            "metrics": {name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
                        for name in run.data.metrics},
            "artifacts": sorted(artifacts())}


@pytest.mark.slow
def test_an_evaluate_only_experiment_gets_its_own_record_and_changes_no_other(baseline):
    repo = baseline
    [base_record] = records(repo, "workspace")  # from the baseline's plain `dvc repro`
    training_run_id = base_record.data.tags["training_run_id"]
    before = {run_id: snapshot(repo, run_id) for run_id in (base_record.info.run_id, training_run_id)}
    assert before[training_run_id]["tags"]["trained_in"] == "workspace"

    log = sh(["dvc", "exp", "run", "-S", "evaluate.boundary_tolerance=4", "-n", "tolerance-4"], repo)
    assert ran_stages(log) == ["evaluate"], log  # the model is reused: train did not run
    assert {run_id: snapshot(repo, run_id) for run_id in before} == before
    [record] = records(repo, "tolerance-4")
    assert record.info.run_name == "tolerance-4" and record.data.tags["training_run_id"] == training_run_id
    assert record.data.params["evaluate.boundary_tolerance"] == "4" and record.data.params["train.epochs"] == "3"
    assert record.data.metrics["valid_iou"] == base_record.data.metrics["valid_iou"]  # the same model
    name = "valid_image_mean_boundary_f_at_best_threshold"  # a wider tolerance finds more edges
    assert record.data.metrics[name] > base_record.data.metrics[name] > 0
    count = len(mlflow_runs(repo))
    assert ran_stages(sh(["dvc", "repro"], repo)) == [] and len(mlflow_runs(repo)) == count  # nothing ran: no record
    assert not (repo / "models/mlflow_run.json").read_text().count("sqlite")  # no machine-specific URI in DVC outputs


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
    assert ran_stages(log) == ["preflight", "train", "evaluate"], log
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo))
    text = json.dumps(shown)
    assert "one-epoch" in text and "valid_iou" in text and "best_valid_iou" in text
    assert "images_per_second" not in text  # run facts are no DVC metric
    runs = records(repo, "one-epoch")
    assert len(runs) == 1 and runs[0].data.params["train.epochs"] == "1"
    assert "valid_iou" in runs[0].data.metrics
    [training] = [r for r in mlflow_runs(repo) if r.info.run_id == runs[0].data.tags["training_run_id"]]
    assert training.data.tags["trained_in"] == "one-epoch" and "best_valid_iou" in training.data.metrics


@pytest.mark.slow
def test_queued_experiment_lands_in_the_same_store(baseline):
    repo = baseline
    sh(["dvc", "exp", "run", "--queue", "-S", "train.learning_rate=0.003", "-S", "train.epochs=1", "-n", "queued-lr"],
       repo)
    sh(["dvc", "queue", "start"], repo)
    status = wait_for_queue(repo, timeout=420)
    assert "Success" in status, status
    runs = records(repo, "queued-lr")
    assert len(runs) == 1, status
    assert runs[0].data.params["train.learning_rate"] == "0.003"
    assert runs[0].info.artifact_uri.startswith((repo / "mlartifacts").as_uri())  # not inside .dvc/tmp/exps
    assert not list((repo / ".dvc/tmp/exps").rglob("mlflow.db"))


def kill_one_training(repo: Path, *, timeout: float) -> str:
    """SIGKILLs the first `stages.train` process running in one of the repo's queued-experiment copies (as the
    OOM killer would) once it has run a second; returns the learning rate of the experiment it belonged to."""
    exps = str(repo / ".dvc/tmp/exps")
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                command = (proc / "cmdline").read_bytes().split(b"\0")
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if b"stages.train" in command and cwd.startswith(exps):
                time.sleep(1)
                rate = yaml.safe_load((Path(cwd) / "params.yaml").read_text())["train"]["learning_rate"]
                os.kill(int(proc.name), signal.SIGKILL)
                return str(rate)
        time.sleep(0.1)
    raise AssertionError("no queued training started")


@pytest.mark.slow
def test_three_experiments_on_two_workers_one_killed_lose_no_other_run(baseline):
    """`dvc queue start -j 2` on three experiments; one training is killed mid-run: DVC reports that one as
    failed, and the other two complete, with their records, and can be compared and applied."""
    repo = baseline
    before = {r.info.run_id for r in mlflow_runs(repo)}
    earlier_tasks = set(re.findall(r"^([0-9a-f]{7}) ", sh(["dvc", "queue", "status"], repo), re.M))
    sh(["dvc", "exp", "run", "--queue", "-S", "train.learning_rate=0.001,0.002,0.004", "-S", "train.epochs=2"], repo)
    # Not sh(): the workers inherit its output pipes, so reading them to the end waits for the whole queue.
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=dvc_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = kill_one_training(repo, timeout=240)
    status = wait_for_queue(repo, timeout=600)
    ours = [state for task, state in re.findall(r"^([0-9a-f]{7}) .* (\w+)$", status, re.M) if task not in earlier_tasks]
    assert sorted(ours) == ["Failed", "Success", "Success"], status
    new = [r for r in mlflow_runs(repo) if r.info.run_id not in before and r.data.tags["stage"] == "evaluate"]
    survivors = sorted({"0.001", "0.002", "0.004"} - {killed})
    assert sorted(r.data.params["train.learning_rate"] for r in new) == survivors
    assert all(r.info.status == "FINISHED" and "valid_iou" in r.data.metrics for r in new)
    names = [r.data.tags["dvc_experiment"] for r in new]
    assert len(set(names)) == 2
    shown = sh(["dvc", "exp", "show", "--only-changed", "--drop", ".*", "--keep",
                "Experiment|valid_iou|best_valid_iou|train.learning_rate"], repo)
    assert all(name in shown for name in names) and "valid_iou" in shown
    assert "train.learning_rate" in sh(["dvc", "exp", "diff", names[0], names[1]], repo)  # lists what differs
    sh(["dvc", "exp", "apply", names[1]], repo)

    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["learning_rate"] == float(
        new[1].data.params["train.learning_rate"])
