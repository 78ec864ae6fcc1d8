"""Several models that predict together: models/ensemble.json (evaluate writes it), read and checked.

{"models": [paths relative to the manifest's folder], "threshold": t, "tta": ..., "tile_overlap": ...,
"chosen_by": ...}. With cross-validation it lists the k fold models and the threshold chosen on their
out-of-fold predictions; without, the one model and the validation threshold. Each model predicts the way
it was trained (its own inference.json: resize or sliding windows) and their probabilities are averaged at
the image's own size; an ensemble of one model is that model.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from segpipe.inference.model_file import check_model_file


def read_ensemble(path: Path) -> tuple[list[Path], dict]:
    """(the member models' paths, {threshold, tta, tile_overlap}) of the manifest at `path`, every member
    checked with check_model_file; a ValueError naming the manifest or the member otherwise."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--model '{path}' is not a readable ensemble manifest ({err.__class__.__name__}); give a "
                         "model (.keras) or the models/ensemble.json that the evaluate stage writes.") from None
    models = manifest.get("models") if isinstance(manifest, dict) else None
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise ValueError(f"--model '{path}' has no \"models\" list of model paths; give a model (.keras) or the "
                         "models/ensemble.json that the evaluate stage writes.")
    members = [Path(os.path.normpath(path.parent / member)) for member in models]
    missing = [str(member) for member in members if not member.is_file()]
    if missing:
        raise ValueError(f"ensemble '{path}' lists {len(members)} models, of which {len(missing)} are missing: "
                         f"{', '.join(missing)}; run the pipeline (dvc repro: the train-fold stages write them) or "
                         "copy the whole folder the paths are relative to.")
    for member in members:
        check_model_file(member)
    settings = {key: manifest[key] for key in ("threshold", "tta", "tile_overlap") if key in manifest}
    return members, settings


def averaged(streams: list[Iterator[tuple[np.ndarray, np.ndarray]]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image, mean probabilities) per image from one (image, probabilities) stream per model, in step."""
    for outputs in zip(*streams, strict=True):
        if len(outputs) == 1:
            yield outputs[0]
            continue
        total = outputs[0][1].astype(np.float32)
        for _, probabilities in outputs[1:]:
            total = total + probabilities
        yield outputs[0][0], total / len(outputs)
