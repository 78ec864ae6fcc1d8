"""What evaluate's bootstrap intervals cost as the validation split grows: seconds and peak extra memory of
`bootstrap_intervals` for the binary headline scores (6 scores, one shared set of resamples) on synthetic
per-image counts, N images side by side in one run.

    .venv/bin/python bench/intervals.py [--images 1000 10000 100000] [--resamples 2000]
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import pandas as pd

from segpipe.evaluation import intervals


def table(count: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tp, fp, fn = (rng.integers(0, 5000, count) for _ in range(3))
    return pd.DataFrame({"iou": rng.random(count), "dice": rng.random(count), "boundary_f": rng.random(count),
                         "tp": tp, "fp": fp, "fn": fn, "tn": rng.integers(50000, 60000, count)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    for count in args.images:
        frame = table(count)
        named = {score: intervals.metric_parts(frame, score) for score in intervals.HEADLINE_SCORES["binary"]}
        tracemalloc.start()
        started = time.perf_counter()
        intervals.bootstrap_intervals(named, resamples=args.resamples, seed=0)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{count:>7} images: {seconds:6.2f} s, peak {peak / 2**20:6.1f} MiB "
              f"({seconds / count * 1e4:.2f} s per 10,000 images)")


if __name__ == "__main__":
    main()
