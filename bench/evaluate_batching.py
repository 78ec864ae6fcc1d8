"""Resized prediction, one image per model call against `batch_size` per call (evaluate's and predict's path,
segpipe/inference/prediction.py predict_files), side by side in one run on the same images and model.

    .venv/bin/python bench/evaluate_batching.py [--images 200] [--batch-sizes 1 8 32] [--tta flips]

The model is params.yaml's (train.encoder, depth, base_filters; random weights) at --input; the images are
random PNGs of --min-side to --max-side pixels, written once to a temporary folder. Each batch size runs
twice after a warm-up; the faster pass counts. Prints images/s and the ratio to one image per call.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--input", type=int, default=128, help="the model's input side")
    parser.add_argument("--min-side", type=int, default=112)
    parser.add_argument("--max-side", type=int, default=480)
    parser.add_argument("--tta", default="flips")
    args = parser.parse_args(argv)

    from segpipe.inference.prediction import predict_files
    from segpipe.training.model import build_unet

    train = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    model = build_unet(input_shape=(args.input, args.input, 3), num_classes=1, encoder=train["encoder"],
                       depth=train["depth"], base_filters=train["base_filters"], encoder_weights=None)
    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="segpipe-batching-"))
    paths = []
    for index in range(args.images):
        height, width = rng.integers(args.min_side, args.max_side + 1, 2)
        paths.append(folder / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    print(f"{args.images} images of {args.min_side}-{args.max_side} px, model input {args.input}, tta {args.tta}")

    def run(batch_size: int, files: list[Path]) -> float:
        started = time.perf_counter()
        for _ in predict_files(model, files, input_mode="resize", tile_overlap=0.5, tta=args.tta,
                               batch_size=batch_size, desc=f"batch {batch_size}"):
            pass
        return len(files) / (time.perf_counter() - started)

    rates = {}
    for batch_size in args.batch_sizes:
        run(batch_size, paths[:max(batch_size, 4)])  # trace
        rates[batch_size] = max(run(batch_size, paths) for _ in range(2))
    base = rates[args.batch_sizes[0]]
    for batch_size, rate in rates.items():
        print(f"batch {batch_size:3d}: {rate:7.1f} images/s, {rate / base:.2f}x batch {args.batch_sizes[0]}")


if __name__ == "__main__":
    main()
