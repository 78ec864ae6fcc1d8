"""Raw data versioned with DVC, as docs/how-to/data-versioning.md shows it: `dvc add` and `dvc push` to a
remote (here a local folder, as a shared drive would be) in one clone; `dvc pull` and `dvc repro` in another."""
from __future__ import annotations

import subprocess

import pytest
from test_pipeline_dag import ran_stages, repo_copy, sh, without_mlflow  # noqa: F401  (repo_copy is a fixture)


def files_under(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_raw_data_pushed_from_one_clone_is_pulled_and_reproduced_in_another(repo_copy, tmp_path):
    repo, remote, clone = repo_copy, tmp_path / "dvc-remote", tmp_path / "clone"
    without_mlflow(repo)
    sh(["dvc", "add", "data/raw"], repo)
    sh(["dvc", "remote", "add", "-d", "storage", str(remote)], repo)
    # params.yaml too: the clone trains the tiny test model, not the default one (it took 3 minutes).
    sh(["git", "add", "data/raw.dvc", "data/.gitignore", ".dvc/config", "params.yaml"], repo)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "Track raw data"], repo)
    sh(["dvc", "push", "data/raw.dvc"], repo)
    assert any(p.is_file() for p in remote.rglob("*"))

    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert not (clone / "data/raw").exists()  # git has only the pointer file
    sh(["dvc", "pull", "data/raw.dvc"], clone)
    assert files_under(clone / "data/raw") == files_under(repo / "data/raw")
    log = sh(["dvc", "repro"], clone)
    assert ran_stages(log) == ["convert-to-png", "build-csv", "split-balanced", "augment", "preflight", "train",
                               "evaluate"]
    assert (clone / "metrics/evaluate.json").is_file()
