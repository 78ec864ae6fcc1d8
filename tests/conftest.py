"""Shared test helpers: params files and tiny synthetic datasets written into tmp_path."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# A U-Net small enough to train 2 epochs on 32x32 inputs in seconds: the stage tests' default.
TINY_TRAIN = dict(image_size=[32, 32], batch_size=4, depth=2, base_filters=4, epochs=2, patience=0,
                  warmup_epochs=0, cache="memory", precision="float32")
# Preflight in the tests of other things: no overfit check (a 4-filter U-Net on noise images needs far more
# than 150 steps to fit a batch; tests/preflight/test_preflight.py tests that check on data it can fit).
TINY_PREFLIGHT = dict(overfit_steps=0, contact_sheet_pairs=2)


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages by name; a foreach stage (the cross-validation folds) as `<name>@<k>`, its template
    with ${item} written <k>."""
    found = {}
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        if "foreach" in stage:
            found[f"{name}@<k>"] = yaml.safe_load(yaml.safe_dump(stage["do"]).replace("${item}", "<k>"))
        else:
            found[name] = stage
    return found


def write_params(folder: Path, **overrides) -> Path:
    """Writes the repo's params.yaml into `folder` with `section={key: value}` or `key=value` overrides."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    for key, value in overrides.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    path = Path(folder) / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def copy_project(dest: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """Copies the project's files as git sees them (tracked and untracked, not ignored) into `dest`, leaving
    out paths that start with one of `skip`; returns `dest`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(skip):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def pattern_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image (H, W, 3) with distinct values, so misplaced pixels are detectable."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int, width: int, top: int = 2, left: int = 3, size: int = 5) -> np.ndarray:
    """A bool mask (H, W) with one filled square."""
    mask = np.zeros((height, width), dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def save_pair(root: Path, rel_image: str, rel_mask: str, *, height: int = 16, width: int = 20, seed: int = 0):
    """Writes a PNG image and a {0,255} PNG mask under root; returns (image array, bool mask)."""
    image, mask = pattern_image(height, width, seed), box_mask(height, width)
    for rel in (rel_image, rel_mask):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / rel_image)
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / rel_mask)
    return image, mask


@pytest.fixture
def pooled_dataset(tmp_path: Path) -> Path:
    """raw/images/<group>/*.png + raw/masks/<group>/*.png: 6 'big' and 3 'small' pairs."""
    raw = tmp_path / "raw"
    for group, count in (("big", 6), ("small", 3)):
        for index in range(count):
            save_pair(raw, f"images/{group}/{group}{index}.png", f"masks/{group}/{group}{index}.png", seed=index)
    return raw


@pytest.fixture(autouse=True)
def restore_mlflow_uri():
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ, which later subprocesses (dvc repro
    in another test's repo) would inherit and log into the wrong store: restore it after every test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(before)  # None clears both MLflow's global and the environment variable
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@contextmanager
def cpu_load():
    """Keeps every core busy (one spinning process each) for the duration: a shared, loaded machine."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
