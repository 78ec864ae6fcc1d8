"""Whether a path holds a model that `segpipe-predict` can load, told before TensorFlow starts.

Keras' own loader says "File not found" for a `.keras` file that is there but cut off, and a long traceback for
a SavedModel folder or an HDF5 file; these checks read the file's zip directory (and its checksums) instead,
and name what the path holds and what to give instead.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

_RESTORE = "copy it again, or restore it with `dvc checkout models/model.keras` (or retrain: dvc repro)"


def check_model_file(path: Path) -> None:
    """A ValueError naming `path`, what it holds and the fix, unless it is a whole Keras `.keras` archive with
    train's inference.json beside it."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            raise ValueError(f"--model '{path}' is a TensorFlow SavedModel folder; segpipe-predict takes the Keras "
                             f"file that train writes beside it ('{path.parent / 'model.keras'}'); the SavedModel is "
                             "for TensorFlow Serving (docs/how-to/predict-and-export.md).")
        raise ValueError(f"--model '{path}' is a folder; expected the Keras file that train writes "
                         "(models/model.keras).")
    if not path.is_file():
        raise ValueError(f"--model '{path}' not found; train one first (dvc repro), or give the path of "
                         "models/model.keras.")
    with open(path, "rb") as fh:
        head = fh.read(8)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        if head.startswith(b"PK"):
            raise ValueError(f"--model '{path}' is truncated or damaged: it starts as a .keras (zip) archive but "
                             f"is not a whole one ({err}); {_RESTORE}.") from None
        kind = "an HDF5 file (the Keras 2 .h5 format)" if head.startswith(b"\x89HDF") else "not a Keras model file"
        raise ValueError(f"--model '{path}' is {kind}; expected a Keras 3 .keras file (a zip archive holding "
                         "config.json and model.weights.h5), as train writes it (models/model.keras).") from None
    if damaged is not None:
        raise ValueError(f"--model '{path}' is damaged: its part '{damaged}' fails its checksum; {_RESTORE}.")
    if "config.json" not in names:
        raise ValueError(f"--model '{path}' is a zip archive but not a Keras model (no config.json in it); "
                         "expected the .keras file that train writes (models/model.keras).")
    record = path.with_name("inference.json")
    try:
        json.loads(record.read_text())
    except (OSError, ValueError):
        state = "is missing" if not record.exists() else "is unreadable"
        raise ValueError(f"'{record}' {state}: train writes it beside the model (how the model takes images: "
                         "resize or patches, and their white level); copy models/inference.json (and "
                         "models/threshold.json) into the model's folder along with the model.") from None
