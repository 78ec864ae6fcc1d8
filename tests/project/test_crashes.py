"""kill -9 in every stage, and damaged state: `dvc repro` killed (the whole process group, by SIGKILL, at the
crash points of segpipe/core/faults.py) in each stage in turn; every next `dvc repro` picks up, and the last one
ends with outputs byte-identical to an uninterrupted run's, training resumed from its last finished epoch,
and no temp file left behind. Then the things a crash or a person can break outside the stages: the MLflow
database and DVC's cache."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pipeline_dag import dvc_env

from conftest import TINY_PREFLIGHT, TINY_TRAIN, copy_project, save_pair

OUTPUTS = ("data", "models", "metrics", "plots")
# (stage, crash point): where `dvc repro` dies, in pipeline order; see segpipe/core/faults.py for the points.
# DVC deletes a stage's outputs before it runs it, so a `swap` (an old output folder moved aside) never comes
# up under dvc repro: test_a_stage_killed_between_its_two_renames_recovers kills a stage there.
KILLS = [
    ("convert-to-png", "fill"),        # data/png complete in its temp folder, not yet renamed
    ("build-csv", "write"),            # train.csv written to its temp name
    ("split-balanced", "fill"),
    ("augment", "write"),              # augmented.csv, inside the temp folder of data/augmented
    ("train", "epoch-1-batch-1"),      # before the first epoch ends: nothing to resume
    ("train", "epoch-2-batch-1"),      # mid-epoch 2: epoch 1 is in the backup
    ("train", "fill"),                 # during the final export (the SavedModel folder)
    ("evaluate", "write"),
]


def dvc(repo: Path, *args: str, kill_at: str | None = None):
    env = {**dvc_env(), "SEGPIPE_KILL_AT": kill_at} if kill_at else dvc_env()
    # Its own session, so the crash point's SIGKILL takes dvc and the stage (and nothing of pytest's).
    return subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600,
                          start_new_session=True)


def make_repo(folder: Path) -> Path:
    """A git + DVC repo with the project's files, 12 tiny pairs in data/raw and a 2-epoch U-Net."""
    repo = copy_project(folder / "repo", skip=("tests/", "bench/", ".github/"))
    for index in range(12):
        save_pair(repo / "data/raw", f"images/c{index}.png", f"masks/c{index}.png", height=32, width=40, seed=index)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mlflow"] = False
    params["convert"]["num_workers"] = 2  # a pool of worker processes, killed with the rest
    params["train"].update(TINY_TRAIN)
    params["preflight"].update(TINY_PREFLIGHT)
    params["evaluate"].update(num_samples=1, worst_k=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for command in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
    return repo


def outputs(repo: Path) -> dict[str, str]:
    """Hash of every output file a rerun must reproduce exactly (everything but timings and the model's bytes,
    which hold a save time)."""
    found = {}
    for top in OUTPUTS:
        for path in sorted((repo / top).rglob("*")):
            rel = path.relative_to(repo).as_posix()
            if path.is_file() and not rel.startswith(("data/raw", "models/saved_model", "models/train_backup")) \
                    and rel not in ("models/model.keras", "models/train_facts.json", "models/mlflow_run.json"):
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def leftovers(repo: Path) -> list[str]:
    return sorted(p.relative_to(repo).as_posix() for top in OUTPUTS for p in (repo / top).rglob(".*")
                  if re.search(r"\.(tmp|old)$", p.name))


@pytest.mark.slow
def test_dvc_repro_killed_in_every_stage_finishes_as_if_never_killed(tmp_path):
    """Meanwhile, in another clone, an uninterrupted `dvc repro` of the same project: two pipelines (and
    trainings) at once on the machine, each with its own correct outputs."""
    repo = make_repo(tmp_path / "killed")
    reference = make_repo(tmp_path / "reference")
    uninterrupted = subprocess.Popen(["dvc", "repro"], cwd=reference, env=dvc_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
    logs = []
    for stage, point in KILLS:
        done = dvc(repo, "repro", kill_at=f"{stage}:{point}")
        logs.append(done.stdout)
        assert done.returncode == -signal.SIGKILL, f"{stage}:{point} was never reached:\n{done.stdout}{done.stderr}"
        assert f"Running stage '{stage}'" in done.stdout
    done = dvc(repo, "repro")
    assert done.returncode == 0, done.stdout + done.stderr
    logs.append(done.stdout)
    log = uninterrupted.communicate(timeout=600)[0]
    assert uninterrupted.returncode == 0, log
    expected = outputs(reference)
    assert len(expected) > 20 and leftovers(reference) == []

    # Training: started over after a kill in epoch 1, resumed after epoch 1, then after epoch 2 (export).
    train_logs = logs[KILLS.index(("train", "epoch-2-batch-1")):]
    assert "resuming" not in train_logs[0]
    assert "resuming the interrupted run after epoch 1" in train_logs[1], train_logs[1]
    assert "resuming the interrupted run after epoch 2" in train_logs[2], train_logs[2]
    assert outputs(repo) == expected
    assert leftovers(repo) == []
    assert [p.name for p in (repo / "models/train_backup").iterdir()] == ["README.txt"]
    assert dvc(repo, "status").stdout.strip().endswith("Data and pipelines are up to date.")


def test_a_stage_killed_between_its_two_renames_recovers(tmp_path):
    """Run by hand over its own outputs, a stage swaps folders in two renames; killed between them, the output
    is missing (the old one aside, the new one complete but not in place) and the next run rebuilds it."""
    repo = make_repo(tmp_path)
    command = [sys.executable, "-m", "stages.convert_to_png", "--raw-dir", "data/raw", "--output-dir", "data/png",
               "--skipped", "data/convert_skipped.csv", "--params", "params.yaml"]
    env = dict(os.environ, PYTHONPATH=str(repo))
    subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    expected = outputs(repo)
    killed = subprocess.run(command, cwd=repo, env={**env, "SEGPIPE_KILL_AT": "convert-to-png:swap"},
                            capture_output=True, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL
    assert not (repo / "data/png").exists() and (repo / "data/.png.old").is_dir()
    assert len(leftovers(repo)) == 2  # .png.old and the new folder's temp name
    subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    assert outputs(repo) == expected and leftovers(repo) == []


@pytest.mark.slow
def test_a_cache_entry_removed_by_hand_is_rebuilt_by_the_next_repro(tmp_path):
    repo = make_repo(tmp_path)
    assert dvc(repo, "repro", "augment").returncode == 0
    expected = outputs(repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    entry = next(out for out in lock["stages"]["convert-to-png"]["outs"] if out["path"] == "data/png")
    assert entry["md5"].endswith(".dir")
    cached = repo / ".dvc/cache/files/md5" / entry["md5"][:2] / entry["md5"][2:]
    assert cached.is_file()
    cached.unlink()  # the folder's listing, gone from the cache ...
    shutil.rmtree(repo / "data/png")  # ... and the folder from the workspace

    status = dvc(repo, "status")
    assert "deleted:" in status.stdout and "data/png" in status.stdout, status.stdout
    done = dvc(repo, "repro", "augment")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Running stage 'convert-to-png'" in done.stdout  # rebuilt, not restored from a cache it lacks
    assert "Running stage 'build-csv'" not in done.stdout  # the same bytes: nothing downstream reruns
    assert outputs(repo) == expected and cached.is_file()
