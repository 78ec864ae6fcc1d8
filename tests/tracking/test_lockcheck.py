"""The freshness check of a committed dvc.lock against the one `dvc repro` just wrote."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

from segpipe.tracking.lockcheck import stale_stages

LOCK = {"schema": "2.0", "stages": {
    "prepare": {"cmd": "python -m stages.prepare", "deps": [{"path": "data/raw", "md5": "a.dir"},
                                                          {"path": "stages/prepare.py", "md5": "p1"}],
                "params": {"params.yaml": {"seed": 1}}, "outs": [{"path": "data/png", "md5": "png.dir"}]},
    "train": {"cmd": "python -m stages.train", "deps": [{"path": "data/png", "md5": "png.dir"},
                                                      {"path": "stages/train.py", "md5": "t1"}],
              "params": {"params.yaml": {"train": {"epochs": 3}}}, "outs": [{"path": "models/model.keras",
                                                                             "md5": "m1"}]},
}}


def changed(**edits) -> dict:
    lock = copy.deepcopy(LOCK)
    for stage, (key, value) in edits.items():
        if key == "dep":
            lock["stages"][stage]["deps"][1]["md5"] = value
        elif key == "params":
            lock["stages"][stage]["params"]["params.yaml"] = value
        else:
            lock["stages"][stage][key] = value
    return lock


def test_identical_locks_and_machine_dependent_hashes_are_fresh():
    assert stale_stages(LOCK, copy.deepcopy(LOCK)) == {}
    other_machine = copy.deepcopy(LOCK)
    other_machine["stages"]["train"]["outs"][0]["md5"] = "m2"  # other weights
    other_machine["stages"]["prepare"]["outs"][0]["md5"] = "png2.dir"
    other_machine["stages"]["train"]["deps"][0]["md5"] = "png2.dir"  # a produced dep
    assert stale_stages(LOCK, other_machine) == {}


def test_changed_code_params_or_command_are_stale():
    assert stale_stages(LOCK, changed(train=("dep", "t2"))) == {"train": ["dep stages/train.py"]}
    assert stale_stages(LOCK, changed(train=("params", {"train": {"epochs": 4}}))) == {"train": ["param train.epochs"]}
    assert stale_stages(LOCK, changed(prepare=("cmd", "python -m stages.prepare --fast"))) == {"prepare": ["command"]}
    new_stage = copy.deepcopy(LOCK)
    new_stage["stages"]["evaluate"] = {"cmd": "x", "deps": []}
    assert stale_stages(LOCK, new_stage) == {"evaluate": ["not in the committed dvc.lock"]}


def test_command_line_names_the_stale_stage(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    run = lambda *args: subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)  # noqa: E731
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(LOCK))
    assert run("git", "init", "-q").returncode == 0
    run("git", "add", "dvc.lock")
    assert run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock").returncode == 0
    fresh = run(sys.executable, "-m", "segpipe.tracking.lockcheck", "--committed", "HEAD")
    assert fresh.returncode == 0 and "is up to date" in fresh.stdout
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(changed(train=("dep", "t2"))))
    stale = run(sys.executable, "-m", "segpipe.tracking.lockcheck", "--committed", "HEAD")
    assert stale.returncode == 1 and "train (dep stages/train.py)" in stale.stdout and "run `dvc repro`" in stale.stdout
    bad = run(sys.executable, "-m", "segpipe.tracking.lockcheck", "--committed", "no-such-rev")
    assert bad.returncode == 2 and "lockcheck: error: cannot read dvc.lock at 'no-such-rev'" in bad.stderr
