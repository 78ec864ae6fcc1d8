"""Trust in train's numbers: the same params give the same metrics, on a quiet or a loaded machine; a killed
run resumes to what an uninterrupted one gives; a stale or damaged backup is not resumed."""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import cpu_load, write_params
from stage_runs import env_for, params_file, run_data_stages, run_stage, tiny_train_project, train_args


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_train_project(tmp_path_factory.mktemp("train"))


def test_same_params_give_identical_metrics_on_a_loaded_machine(project):
    """Every epoch of two trainings matches exactly, the second run while every core is busy elsewhere."""
    params = params_file(project, "p_det", online_augment=True, dropout=0.2, epochs=3)
    runs = []
    for out in ("det_quiet", "det_loaded"):
        with cpu_load() if out == "det_loaded" else contextlib.nullcontext():
            done = run_stage(project, "train", *train_args(out, params), env=env_for(project, MLFLOW_TRACKING_URI=""))
        assert done.returncode == 0, done.stderr
        runs.append(pd.read_csv(project / out / "history.csv"))
    columns = ["loss", "valid_loss", "iou", "valid_iou", "valid_dice"]
    pd.testing.assert_frame_equal(runs[0][columns], runs[1][columns])


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory) -> Path:
    """The bundled demo data at full size through the data stages, with the default params (1 epoch, no MLflow)."""
    project = tmp_path_factory.mktemp("demo")
    assert run_stage(project, "make_demo_data", "--output", "data/raw").returncode == 0
    write_params(project, mlflow=False, augment={"num_workers": 1}, convert={"num_workers": 1},
                 train={"epochs": 1, "patience": 0})
    run_data_stages(project)
    return project


@pytest.mark.slow
def test_default_recipe_gives_identical_metrics_on_a_loaded_machine(demo_project):
    """The default model and precision on the demo data: big enough that concurrent ops change the last bits
    of their sums (the tiny model above is not), which one inter-op thread under deterministic: true prevents."""
    histories = []
    for out in ("quiet", "loaded"):
        with cpu_load() if out == "loaded" else contextlib.nullcontext():
            done = run_stage(demo_project, "train", *train_args(out), timeout=600)
        assert done.returncode == 0, done.stderr
        histories.append(pd.read_csv(demo_project / out / "history.csv"))
    pd.testing.assert_frame_equal(histories[0], histories[1])


def test_killed_run_resumes_from_its_last_epoch(project):
    params = params_file(project, "p_resume", epochs=6, steps_per_epoch=30, schedule="constant")
    args = train_args("resume", params)
    metadata = project / "resume/backup/keras/all_layers/training_metadata.json"
    process = subprocess.Popen([sys.executable, "-m", "stages.train", *args], cwd=project, env=env_for(project),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if metadata.is_file() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    saved_epoch = json.loads(metadata.read_text())["epoch"]
    assert 2 <= saved_epoch < 6, "the run finished or never got to epoch 2 before the kill"
    before = pd.read_csv(project / "resume/backup/history.csv").to_dict("records")[:saved_epoch]

    done = run_stage(project, "train", *args)
    assert done.returncode == 0, done.stderr
    assert "resuming the interrupted run after epoch" in done.stdout
    history = pd.read_csv(project / "resume/history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6]  # no epoch twice, none missing
    assert history["loss"].iloc[:saved_epoch].tolist() == pytest.approx([row["loss"] for row in before])
    assert f"Epoch {saved_epoch + 1}/6" in done.stdout and "Epoch 1/6" not in done.stdout
    assert [p.name for p in (project / "resume/backup").iterdir()] == ["README.txt"]
    # The resumed run continues the same batch stream from the saved weights: it equals an uninterrupted run.
    done = run_stage(project, "train", *train_args("uninterrupted", params), env=env_for(project,
                                                                                         MLFLOW_TRACKING_URI=""))
    assert done.returncode == 0, done.stderr
    columns = ["loss", "valid_loss", "iou", "valid_iou", "valid_dice"]
    pd.testing.assert_frame_equal(history[columns], pd.read_csv(project / "uninterrupted/history.csv")[columns])
    # Both attempts are one MLflow run.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    run_id = json.loads((project / "resume/run.json").read_text())["run_id"]
    steps = [m.step for m in mlflow.tracking.MlflowClient().get_metric_history(run_id, "valid_iou")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5, 6]


def test_backup_from_other_params_is_not_resumed(project):
    backup = project / "stale/backup"
    backup.mkdir(parents=True)
    (backup / "state.json").write_text(json.dumps({"fingerprint": "other", "history": [{"epoch": 1}]}))
    done = run_stage(project, "train", *train_args("stale", params_file(project, "p_stale", epochs=1)),
                     env=env_for(project, MLFLOW_TRACKING_URI=""))
    assert done.returncode == 0, done.stderr
    assert "used other params or data; starting afresh" in done.stdout
    assert json.loads((project / "stale/facts.json").read_text())["epochs_run"] == 1


def test_garbage_backup_is_not_resumed_and_the_run_completes(project):
    backup = project / "garbage/backup"
    (backup / "keras/all_layers").mkdir(parents=True)
    (backup / "state.json").write_text('{"fingerprint": "trunc')  # cut off mid-write
    (backup / "keras/all_layers/latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    done = run_stage(project, "train", *train_args("garbage", params_file(project, "p_garbage", epochs=1)),
                     env=env_for(project, MLFLOW_TRACKING_URI=""))
    assert done.returncode == 0, done.stderr
    assert "state.json' of the interrupted run cannot be read back" in done.stdout and "Traceback" not in done.stderr
    assert json.loads((project / "garbage/facts.json").read_text())["epochs_run"] == 1
