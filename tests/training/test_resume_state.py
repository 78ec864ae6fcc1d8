"""A backup folder with a file that cannot be read back is discarded with one line naming the file, never
resumed from and never a traceback (segpipe/training/resume.py)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from segpipe.training.resume import ResumeState


def healthy_backup(folder: Path) -> ResumeState:
    resume = ResumeState(folder, fingerprint="abc")
    resume.clear()
    resume.save({"mlflow_run_id": None, "phases_done": []})
    (folder / "history.csv").write_text("epoch,loss,val_iou\n0,0.5,0.7\n1,0.4,0.8\n")
    with zipfile.ZipFile(folder / "best.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    phase = folder / "keras" / "all_layers"
    phase.mkdir(parents=True)
    (phase / "training_metadata.json").write_text(json.dumps({"epoch": 1}))
    with h5py.File(phase / "latest.weights.h5", "w") as weights:
        weights.create_dataset("w", data=np.arange(100, dtype=np.float32))
    return resume


def test_a_healthy_backup_is_resumed(tmp_path):
    state = healthy_backup(tmp_path / "backup").load()
    assert state["fingerprint"] == "abc"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


@pytest.mark.parametrize("name, damage", [
    ("state.json", lambda p: p.write_text('{"fingerprint": "ab')),
    ("state.json", lambda p: p.write_bytes(b"\xff\xfe garbage")),
    ("state.json", lambda p: p.write_text("[1, 2]")),
    ("history.csv", lambda p: p.write_text("\x00\x01 not a csv")),
    ("history.csv", lambda p: p.write_text("")),
    ("best.keras", _truncate),
    ("keras/all_layers/training_metadata.json", lambda p: p.write_text("{")),
    ("keras/all_layers/training_metadata.json", lambda p: p.write_text('{"epoch": "two"}')),
    ("keras/all_layers/latest.weights.h5", _truncate),
    ("keras/all_layers/latest.weights.h5", lambda p: p.write_text("garbage")),
])
def test_an_unreadable_file_means_a_fresh_start_named_in_one_line(tmp_path, capsys, name, damage):
    folder = tmp_path / "backup"
    resume = healthy_backup(folder)
    damage(folder / name)
    assert resume.load() == {}
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and f"'{folder / name}'" in printed[0] and "starting afresh" in printed[0]
    assert [p.name for p in folder.iterdir()] == ["README.txt"]  # nothing of it is resumed later


def test_a_multi_worker_run_is_never_resumed(tmp_path, capsys):
    """Workers other than the chief keep no backup: a chief resuming alone would wait for them forever."""
    from segpipe.training.resume import fingerprint, open_backup

    backup = healthy_backup(tmp_path / "backup")
    backup.fingerprint = fingerprint(params={}, files=[])
    backup.save({"mlflow_run_id": None, "phases_done": []})
    assert open_backup(tmp_path / "backup", is_chief=True, params={}, files=[])[1]  # alone: resumed
    resume, state = open_backup(tmp_path / "backup", is_chief=True, params={}, files=[], several_workers=True)
    assert state == {} and not resume.state_file.exists()
    assert "not resuming the interrupted run" in capsys.readouterr().out
