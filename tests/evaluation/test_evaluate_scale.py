"""The evaluate stage streams: its peak memory does not grow with the number of validation images."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from conftest import REPO, write_params

SIDE = 256  # the old path held ~0.5 MB per image of this size (image, mask, float32 probabilities)


def evaluate_project(folder: Path, *, images: int) -> Path:
    """A project with `images` validation pairs of SIDE x SIDE and an untrained tiny resize model."""
    import keras

    from segpipe.training.model import build_unet

    rng = np.random.default_rng(0)
    rows = []
    for index in range(images):
        mask = np.zeros((SIDE, SIDE), np.uint8)
        top, left = rng.integers(0, SIDE // 2, 2)
        mask[top:top + SIDE // 3, left:left + SIDE // 4] = 1
        image = (rng.random((SIDE, SIDE, 3)) * 60 + mask[..., None] * 150).astype(np.uint8)
        for kind, array in (("images", image), ("masks", mask)):
            (folder / "data/png" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / "data/png" / kind / f"v{index:04d}.png")
        rows.append({"id": f"v{index:04d}", "image_path": f"data/png/images/v{index:04d}.png",
                     "mask_path": f"data/png/masks/v{index:04d}.png", "group": "none", "height": SIDE,
                     "width": SIDE, "foreground_fraction": float(mask.mean()),
                     "class_pixels": f"{int((mask == 0).sum())} {int(mask.sum())}"})
    (folder / "data/csv").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "data/csv/valid.csv", index=False)
    (folder / "models").mkdir()
    keras.utils.set_random_seed(0)
    build_unet(input_shape=(32, 32, 3), num_classes=1, depth=2, base_filters=4).save(folder / "models/model.keras")
    (folder / "models/inference.json").write_text(json.dumps({"input": "resize", "image_size": [32, 32],
                                                              "white_level": None}))
    write_params(folder, mlflow=False, evaluate={"tta": "none", "num_samples": 1, "worst_k": 1})
    return folder


def peak_of_evaluate(project: Path) -> tuple[int, dict]:
    """(peak resident KiB of the evaluate process, its metrics)."""
    arguments = ["--model", "models/model.keras", "--inference", "models/inference.json", "--csv-dir", "data/csv",
                 "--history", "none.csv", "--run-info", "none.json", "--metrics", "metrics.json", "--threshold",
                 "threshold.json", "--plots-dir", "plots", "--params", "params.yaml"]
    code = ("import resource, runpy, sys\n"
            f"sys.argv = ['evaluate', *{arguments!r}]\n"
            "try:\n    runpy.run_module('stages.evaluate', run_name='__main__')\n"
            "finally:\n    print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    peak = int(done.stdout.split("PEAK_KIB")[-1].split()[0])
    return peak, json.loads((project / "metrics.json").read_text())


def test_evaluate_memory_does_not_grow_with_the_number_of_images(tmp_path):
    small, small_metrics = peak_of_evaluate(evaluate_project(tmp_path / "small", images=20))
    large, large_metrics = peak_of_evaluate(evaluate_project(tmp_path / "large", images=200))
    # Holding the 180 extra images' predictions would add about 90 MB; TensorFlow's own noise is a few MB.
    assert large - small < 30 * 1024, f"peak {small / 1024:.0f} MiB with 20 images, {large / 1024:.0f} MiB with 200"
    for metrics in (small_metrics, large_metrics):
        assert 0 <= metrics["valid_iou"] <= 1 and metrics["best_threshold"] in np.round(np.arange(0.05, 0.96, 0.05), 2)
    histogram = pd.read_csv(tmp_path / "large/plots/iou_histogram.csv")
    assert histogram["images"].sum() == 200 and len(histogram) == 20
