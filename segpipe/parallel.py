"""Run a picklable function over many items on all cores, in input order, with a progress bar."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Sequence

from segpipe.progress import progress


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_in_order(function: Callable, items: Sequence, *, num_workers: int, desc: str,
                 min_items_per_worker: int = 8) -> list:
    """[function(item) for item in items], spread over processes when there is enough work.

    Args:
        num_workers: processes to use; 0 = all available cores.
        min_items_per_worker: fewer items than this per worker are run in this process (start-up cost).
    """
    workers = min(num_workers or available_cores(), max(1, len(items) // min_items_per_worker))
    if workers <= 1:
        return [function(item) for item in progress(items, desc=desc)]
    # spawn, not fork: the caller may have TensorFlow loaded, which is not fork-safe.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(progress(pool.map(function, items, chunksize=4), desc=desc, total=len(items)))
