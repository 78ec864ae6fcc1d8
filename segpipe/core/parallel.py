"""Run a function over many items in input order: on all cores with a progress bar (`map_in_order`), or a few
items ahead in threads while the caller works on the current one (`read_ahead`)."""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context

from segpipe.core.progress import progress


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


def read_ahead(function: Callable, items: Iterable, *, depth: int = 4) -> Iterator:
    """Yields function(item) for each item, in order, with up to `depth` calls running ahead in threads, so
    decoding the next files (I/O and C decoders, which release the GIL) overlaps the caller's work on the
    current one. Memory: at most `depth` + 1 results at a time, whatever the number of items."""
    with ThreadPoolExecutor(max(1, min(depth, available_cores()))) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
