"""Atomic writes: a crash or a failed check leaves the previous output, or none, never half a file.

A write goes to a temp name beside its target (`.<name>.<random>.tmp`) and is renamed into place. A process
killed before the rename (kill -9, a power cut) leaves that temp behind; the next write of the same target
removes it, so a rerun leaves no litter. Only one writer per target is assumed (DVC locks the repo).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from segpipe.core import faults


def naming(err: OSError, path: Path) -> OSError:
    """`err`, with `path` as its file when it names none: a full disk (ENOSPC, EFBIG) is reported by write(),
    which knows no file name, and an error that names no file leaves the user guessing."""
    return err if err.filename is not None else OSError(err.errno, err.strerror, str(path))


def _remove_leftovers(path: Path) -> None:
    """Deletes the temp files or folders an interrupted write of `path` left beside it."""
    pattern = f".{glob.escape(path.name)}.*"
    for leftover in path.parent.glob(pattern):
        if leftover.name.endswith(".tmp") or leftover.name == f".{path.name}.old":
            shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()


def write_text(path: Path, text: str) -> None:
    """Writes `text` (UTF-8, `\\n` line ends as given) atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes, *, clean: bool = True) -> None:
    """Writes `data` to `path` through a temp file in the same folder and an atomic rename. `clean=False`
    skips looking for a killed write's leftovers (a scan of the folder): for a caller that writes many files
    into one folder and removes leftovers once itself (segpipe-predict's output record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean:
        _remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        faults.reached("write")
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise naming(err, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    """Sorted keys, fixed indent: the same data always gives the same bytes."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """CSV with `\\n` line ends and no index, written atomically."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))


@contextmanager
def replace_dir(path: Path):
    """Yields an empty temp folder beside `path`; on success it replaces `path`, on error it is removed.

    The swap is two renames (old out of the way, new in place) so `path` is never half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    faults.reached("fill")
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        os.replace(path, old)
        faults.reached("swap")
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
