"""Peak memory of training on native-resolution patches and predicting by sliding windows, on 4096x4096 images.

Builds a project with three 4096x4096 training images and one validation image (thin bright curves on
noise, masks of the curves), runs the data stages, then train (train.input: patches, 2 short epochs) and
segpipe-predict on a 4096x4096 image, each in its own process, and prints each process's peak resident
memory (ru_maxrss). Target: every process under 3 GiB.

    .venv/bin/python bench/large_image_memory.py [--size 4096] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from run_stages import DATA_STAGES, TRAIN  # noqa: E402


def write_pair(folder: Path, name: str, *, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(40, 120, (size, size, 3), dtype=np.uint8))
    mask = Image.new("L", (size, size), 0)
    for draw, fill in ((ImageDraw.Draw(image), (230, 220, 200)), (ImageDraw.Draw(mask), 255)):
        curve = np.random.default_rng(seed + 1)
        for _ in range(60):
            points = [tuple(int(v) for v in curve.integers(0, size, 2)) for _ in range(4)]
            draw.line(points, fill=fill, width=int(curve.integers(3, 9)))
    for kind, picture in (("images", image), ("masks", mask)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        picture.save(folder / kind / f"{name}.png")


def peak_of(command: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """(peak RSS in GiB, seconds) of `command` run in a fresh process (a child of a fresh Python)."""
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    with open(log, "a") as fh:
        done = subprocess.run([sys.executable, "-c", probe, *command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=fh, text=True)
        fh.write(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}; see {log}")
    return int(done.stdout.strip().splitlines()[-1]) / 1024 ** 2, time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segpipe-large-"))
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    for index in range(3):
        write_pair(project / "data/raw/train", f"big{index}", size=args.size, seed=index)
    write_pair(project / "data/raw/valid", "big_valid", size=args.size, seed=10)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["mlflow"] = False
    params["train"].update(input="patches", epochs=2, steps_per_epoch=4, warmup_epochs=0)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = work / "log.txt"
    print(f"work folder {work} (log: {log}); {args.size}x{args.size} images, 3 train + 1 valid", flush=True)
    rows = []
    for command in DATA_STAGES:
        rows.append((command[0], *peak_of([sys.executable, "-m", *command, "--params", "params.yaml"], project, log)))
    rows.append(("stages.train", *peak_of([sys.executable, "-m", *TRAIN, "--params", "params.yaml"], project, log)))
    rows.append(("segpipe.inference.predict", *peak_of([sys.executable, "-m", "segpipe.inference.predict",
                                                       "--model", "models/model.keras",
                                              "--input", "data/raw/valid/images", "--output", "predicted"],
                                             project, log)))
    facts = json.loads((project / "models/train_facts.json").read_text())
    print(f"\ntrain: input {facts['input']}, {facts['epochs_run']} epochs of 4 steps")
    for name, gib, seconds in rows:
        print(f"  {name:28s} peak RSS {gib:5.2f} GiB  {seconds:6.1f} s  {'OK' if gib < 3 else 'OVER 3 GiB'}")
    print(f"PEAK {max(gib for _, gib, _ in rows):.2f} GiB (target < 3 GiB)")


if __name__ == "__main__":
    main()
