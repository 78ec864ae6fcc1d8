"""Progress of a long loop: a tqdm bar on a terminal, plain lines in a log (CI, `dvc repro > log`), where
a bar's carriage returns would pile up as one unreadable line."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LINE_EVERY_SECONDS = 30.0


def progress(items: Iterable, *, desc: str, unit: str = "item", total: int | None = None) -> Iterator:
    """Yields `items`. On a terminal (stderr) shows a bar; otherwise prints `<desc>: k/N <unit>s (p%)` to
    stdout at every 25% and at least every 30 s of a slow loop, then once at the end."""
    total = len(items) if total is None and hasattr(items, "__len__") else total
    units = unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, unit=unit, total=total, mininterval=1.0)
        return
    start = last = time.monotonic()
    next_share = 0.25
    count = 0
    for item in items:
        yield item
        count += 1
        now = time.monotonic()
        share = count / total if total else 0.0
        if total and count == total:
            print(f"{desc}: {count}/{total} {units} done in {now - start:.0f} s", flush=True)
        elif share >= next_share or now - last >= LINE_EVERY_SECONDS:
            print(f"{desc}: {count}/{total or '?'} {units}" + (f" ({share:.0%})" if total else ""), flush=True)
            last = now
            while next_share <= share:
                next_share += 0.25
