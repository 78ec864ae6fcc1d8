"""The pull-request workflow, as far as it can be checked off GitHub: a workflow linter (zizmor: schema and
security audits) and the promises docs/how-to/reports-and-ci.md makes about it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

WORKFLOW = REPO / ".github/workflows/pr-report.yml"


def zizmor(path: Path) -> subprocess.CompletedProcess:
    executable = shutil.which("zizmor", path=str(Path(sys.executable).parent)) or "zizmor"
    return subprocess.run([executable, "--offline", "--config", str(REPO / ".github/zizmor.yml"), str(path)],
                          capture_output=True, text=True)


def test_the_workflow_passes_the_linter():
    done = zizmor(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_linter_catches_a_broken_or_unsafe_workflow(tmp_path):
    unsafe = tmp_path / "unsafe.yml"
    unsafe.write_text(WORKFLOW.read_text().replace('"origin/$BASE_REF"', '"origin/${{ github.head_ref }}"'))
    assert zizmor(unsafe).returncode != 0  # template injection from a branch name
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs-onn:"))
    assert zizmor(broken).returncode != 0


def steps(job: dict) -> list[dict]:
    return job["steps"]


def test_gate_compares_numbers_made_on_the_same_runner_and_guards_forks():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["concurrency"]["cancel-in-progress"] is True
    tests, report = workflow["jobs"]["tests"], workflow["jobs"]["report"]
    readme_test_command = (REPO / ".ci/run").read_text().strip().splitlines()[-1]
    assert [s["run"] for s in steps(tests) if "run" in s] == [readme_test_command]
    for job in (tests, report):
        python = [s for s in steps(job) if s.get("uses", "").startswith("actions/setup-python")]
        assert python and python[0]["with"]["cache"] == "pip"
    runs = "\n".join(s.get("run", "") for s in steps(report))
    # both sides reproduced here, then compared as workspaces; the committed lock is checked for freshness
    assert runs.count("dvc repro") == 2 and "--base-dir ../base" in runs
    assert "segpipe.tracking.lockcheck --committed HEAD" in runs
    comment = next(s for s in steps(report) if "cml comment" in s.get("run", ""))
    assert comment["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") and "if" not in s for s in steps(report))
    last = steps(report)[-1]
    assert "gate_status" in last["if"] and "exit 1" in last["run"]
