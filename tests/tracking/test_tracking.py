"""Tracking helpers: where the store is, param flattening, and retries on a locked sqlite store."""
from __future__ import annotations

import sqlite3

import pytest

from segpipe.tracking import runs as tracking


def test_project_root_from_a_dvc_experiment_copy(monkeypatch, tmp_path):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    copy = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    assert tracking.project_root(copy) == tmp_path / "proj"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "elsewhere"))
    assert tracking.project_root(copy) == (tmp_path / "elsewhere").resolve()


def test_default_uri_is_the_project_database_unless_overridden(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.default_tracking_uri(tmp_path) == "http://mlflow.example:5000"


def test_flatten_params():
    flat = tracking.flatten_params({"seed": 1, "train": {"loss": {"bce": 1.0}, "image_size": [64, 64]}, "x": {}})
    assert flat == {"seed": "1", "train.loss.bce": "1.0", "train.image_size": "[64, 64]", "x": "{}"}


def test_a_locked_store_is_retried_and_other_errors_turn_tracking_off(capsys):
    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    tracker = tracking.Tracker(tracking_uri="sqlite:///x.db")
    tracking_retry = tracking._retry_when_locked
    assert tracking_retry(locked_twice, first_wait=0.001) == "ok" and len(calls) == 3
    assert tracker._call("testing", lambda: (_ for _ in ()).throw(RuntimeError("server down"))) is None
    assert not tracker.enabled and "failed while testing (RuntimeError: server down)" in capsys.readouterr().err
    assert tracker._call("again", lambda: "never called") is None  # one warning, then silent
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_costs_one_warning_that_names_it_and_the_fix(tmp_path, capsys, damage):
    database = tmp_path / "mlflow.db"
    if damage == "garbage":
        database.write_bytes(b"this is not a database" * 100)
    else:  # a sound store cut off (a full disk, a copy stopped halfway)
        sound = tracking.Tracker(tracking_uri=f"sqlite:///{database}")
        assert sound.start(params={"seed": 1}, tags={}, run_name="first") is not None
        sound.end()
        database.write_bytes(database.read_bytes()[: database.stat().st_size // 3])
    tracker = tracking.Tracker(tracking_uri=f"sqlite:///{database}", stage="train")
    assert tracker.start(params={"seed": 1}, tags={}, run_name="second") is None
    tracker.log_metrics({"iou": 0.5}, step=1)  # silent once off
    tracker.end()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: warning:")]
    assert len(warnings) == 1, warnings
    assert f"The store '{database}' is damaged: move it aside (mv {database} {database}.damaged)" in warnings[0]
