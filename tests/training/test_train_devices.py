"""train on several devices (logical CPUs, two workers on localhost), with batch_size auto and remat, and
with an application encoder frozen for its first epochs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stage_runs import env_for, params_file, run_stage, tiny_train_project, train_args


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_train_project(tmp_path_factory.mktemp("train"))


def test_two_logical_cpu_devices_train_two_replicas(project):
    params = params_file(project, "p_mirror", devices="cpu:2", batch_size=2, epochs=1)
    done = run_stage(project, "train", *train_args("mirror", params), env=env_for(project, MLFLOW_TRACKING_URI=""))
    assert done.returncode == 0, done.stderr
    metrics = json.loads((project / "mirror/facts.json").read_text())
    assert metrics["num_replicas"] == 2 and metrics["devices"] == "/cpu:0,/cpu:1"
    assert metrics["global_batch_size"] == 4  # batch_size is per replica
    assert "global batch 4 (2 x 2 replica(s) on /cpu:0,/cpu:1)" in done.stdout
    # Every training row decoded once, into the cache (Keras' build no longer reads a batch of its own).
    rows = re.search(r"train: (\d+) training rows", done.stdout).group(1)
    assert f"train: decoded {rows} training images (then cached: memory)" in done.stdout


def test_a_disk_cache_is_filled_by_the_first_run_and_read_by_the_next(project):
    params = params_file(project, "p_disk", cache="disk", epochs=1)
    logs = []
    for out in ("disk1", "disk2"):
        done = run_stage(project, "train", *train_args(out, params), "--decoded-cache", "decoded",
                         env=env_for(project, MLFLOW_TRACKING_URI=""))
        assert done.returncode == 0, done.stderr
        logs.append(done.stdout)
    rows = re.search(r"train: (\d+) training rows", logs[0]).group(1)
    assert f"train: decoded {rows} training images (then cached: disk)" in logs[0]
    assert "train: decoded 0 training images (then cached: disk)" in logs[1]
    assert "decoded rows kept: disk (set in params)" in logs[1]
    assert json.loads((project / "disk2/facts.json").read_text())["cache"] == "disk"
    # One file per distinct row (rows are named by content: an augmented copy equal to its original shares one).
    assert 0 < len(list((project / "decoded").glob("*/*.rgbm"))) <= int(rows)


def test_auto_batch_size_and_remat_train_and_write_a_plain_model(project):
    """batch_size auto: the memory plan picks (here capped at a quarter of the training rows), and the facts
    record it; remat trains with recomputed blocks and writes the plain model, which loads without segpipe."""
    params = params_file(project, "p_auto", batch_size="auto", remat=True)
    done = run_stage(project, "train", *train_args("auto", params), env=env_for(project))
    assert done.returncode == 0, done.stderr
    facts = json.loads((project / "auto/facts.json").read_text())
    assert "batch_size auto:" in done.stdout and facts["batch_plan"].startswith("batch_size auto:")
    assert facts["batch_size"] == facts["global_batch_size"] >= 1 and "steps per epoch" in facts["batch_plan"]
    with zipfile.ZipFile(project / "auto/model.keras") as archive:
        config = archive.read("config.json").decode()
    assert "RecomputedBlock" not in config and "down0_conv1" in config
    probe = subprocess.run([sys.executable, "-c", "import keras, sys; m = keras.models.load_model(sys.argv[1], "
                            "compile=False); print(m.count_params())", str(project / "auto/model.keras")],
                           capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert probe.returncode == 0, probe.stderr  # a process that never imported segpipe loads it


def test_pretrained_style_encoder_is_frozen_first_then_fine_tuned(project):
    params = params_file(project, "p_freeze", encoder="mobilenetv2", freeze_encoder_epochs=1, epochs=2)
    done = run_stage(project, "train", *train_args("freeze", params), env=env_for(project, MLFLOW_TRACKING_URI=""))
    assert done.returncode == 0, done.stderr
    phases = re.findall(r"train: epochs (\d+)-(\d+) with (the encoder frozen|all layers trainable) "
                        r"\(([\d,]+) trainable",
                        done.stdout)
    assert [(a, b, what) for a, b, what, _ in phases] == [("1", "1", "the encoder frozen"),
                                                          ("2", "2", "all layers trainable")]
    frozen, full = (int(count.replace(",", "")) for *_, count in phases)
    import keras

    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    encoder_weights = sum(int(np.prod(w.shape)) for w in backbone.trainable_weights)
    assert full - frozen == encoder_weights  # exactly the encoder was frozen
    assert pd.read_csv(project / "freeze/history.csv")["epoch"].tolist() == [1, 2]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_workers_on_localhost_train_together(project):
    """MultiWorkerMirroredStrategy: two processes on 127.0.0.1, one replica each; only the chief writes outputs."""
    params = params_file(project, "p_workers", devices="cpu", batch_size=2, epochs=2)
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = env_for(project, TF_CONFIG=tf_config, MLFLOW_TRACKING_URI="")
        processes.append(subprocess.Popen([sys.executable, "-m", "stages.train", *train_args(f"worker{index}", params)],
                                          cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=300))
        finally:
            for other in processes:
                if other.poll() is None and process.returncode is None:
                    other.kill()
    assert [p.returncode for p in processes] == [0, 0], outputs
    metrics = json.loads((project / "worker0/facts.json").read_text())
    assert metrics["num_replicas"] == 2 and metrics["global_batch_size"] == 4
    assert metrics["devices"] == "/cpu:0 x 2 workers" and metrics["epochs_run"] == 2
    assert not (project / "worker1/model.keras").exists()  # only the chief writes the DVC outputs
    # Each worker decoded only its share: one cached pass over its rows, adding up to the training rows.
    decoded = [int(re.search(r"train: decoded ([\d,]+) training images on this worker", out).group(1).replace(",", ""))
               for out, _ in outputs]
    rows = int(re.search(r"train: (\d+) training rows", outputs[0][0]).group(1))
    assert sum(decoded) == rows and min(decoded) > 0, (decoded, rows)
