"""Is the committed dvc.lock up to date? Compares it with the dvc.lock that `dvc repro` just wrote.

    python -m segpipe.tracking.lockcheck --committed HEAD     (after `dvc repro`, from the project root)

A stage is stale when its command, its params, or a source dep (a dep that no stage produces: code,
params, the raw data) differs between the two locks: the committed metrics then do not describe the
committed code. Outputs and the deps that stages produce (data/png, the model, ...) are left out: their
hashes differ between machines (the model's weights do) without anything being stale.
Exit 0 when every stage is fresh, 1 when some are stale (each is named with what changed), 2 on errors.
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import yaml

from segpipe.core.cli import describe, run_stage
from segpipe.core.params import flatten


def _produced(lock: dict) -> set[str]:
    return {out["path"] for stage in lock.get("stages", {}).values() for out in stage.get("outs", [])}


def stale_stages(committed: dict, current: dict) -> dict[str, list[str]]:
    """{stage: [what changed]} for the stages whose committed lock entry does not match the current one."""
    produced = _produced(current) | _produced(committed)
    stale = {}
    for name, now in current.get("stages", {}).items():
        before = committed.get("stages", {}).get(name)
        if before is None:
            stale[name] = ["not in the committed dvc.lock"]
            continue
        changes = []
        if before.get("cmd") != now.get("cmd"):
            changes.append("command")
        for params_file, values in now.get("params", {}).items():
            new, old = flatten(values), flatten(before.get("params", {}).get(params_file, {}))
            changes += [f"param {key}" for key in sorted(set(new) | set(old)) if new.get(key) != old.get(key)]
        hashes = {dep["path"]: dep.get("md5") for dep in before.get("deps", [])}
        for dep in now.get("deps", []):
            if dep["path"] not in produced and hashes.get(dep["path"]) != dep.get("md5"):
                changes.append(f"dep {dep['path']}")
        if changes:
            stale[name] = changes
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--committed", required=True, help="git revision whose dvc.lock to check, e.g. HEAD")
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"), help="the dvc.lock `dvc repro` just wrote")
    args = parser.parse_args(argv)
    shown = subprocess.run(["git", "show", f"{args.committed}:dvc.lock"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise ValueError(f"cannot read dvc.lock at '{args.committed}' ({shown.stderr.strip()}); expected a git "
                         "revision that has a dvc.lock.")
    if not args.lock.is_file():
        raise ValueError(f"'{args.lock}' not found; run `dvc repro` first.")
    stale = stale_stages(yaml.safe_load(shown.stdout) or {}, yaml.safe_load(args.lock.read_text()) or {})
    if not stale:
        print(f"dvc.lock at {args.committed} is up to date: its metrics describe this code, params and data.")
        return 0
    print(f"dvc.lock at {args.committed} is stale: " + "; ".join(
        f"{stage} ({', '.join(changes)})" for stage, changes in stale.items())
        + ". Its committed metrics do not describe this code: run `dvc repro` and commit dvc.lock and metrics/.")
    return 1


def cli() -> None:
    """The `segpipe-lockcheck` command."""
    run_stage("lockcheck", main)


if __name__ == "__main__":
    cli()
