"""What training on one input (resize or patches) needs, built the same way by train, its pilot and preflight:
the network input size, the model, the batch (the memory plan's with `batch_size: auto`), the steps per
epoch and where decoded rows are kept (`set_up_input`); and the fit of such a setup with the train params
(`fit_setup`, around segpipe/training/loop.py's `fit_in_phases`).

Both take the `train` params section as keyword arguments (`**train`): each names the keys it reads, with
the same names as params.yaml, and ignores the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from segpipe.core import faults
from segpipe.core.schema import downsampling_levels
from segpipe.data import decoded_cache, input_plan
from segpipe.data import input_pipeline as pipeline
from segpipe.data.bad_files import naming_bad_files
from segpipe.data.balancing import AUGMENTED_ID
from segpipe.data.crops import Patches
from segpipe.training.devices import Placement
from segpipe.training.input_mode import network_input_size
from segpipe.training.keras_metrics import training_metrics
from segpipe.training.loop import Outcome, fit_in_phases, make_optimizer, plateau_callback, training_phases
from segpipe.training.memory_plan import pick_batch_size, replica_budget
from segpipe.training.model import build_unet
from segpipe.training.resume import ResumeState


@dataclass
class TrainingRows:
    """The rows train reads: the balancing subsets (originals and augmented copies) and the validation rows."""
    subsets: list[pd.DataFrame]
    valid: pd.DataFrame
    names: list[str]  # of the subsets, in data/subsets.json order

    @cached_property
    def rows(self) -> pd.DataFrame:
        return pd.concat(self.subsets, ignore_index=True)

    @cached_property
    def originals(self) -> pd.DataFrame:
        """Training rows without augment's copies (what the data's fingerprint is measured on)."""
        rows = self.rows
        return rows[~rows["id"].str.contains(AUGMENTED_ID, regex=False)]


@dataclass
class InputSetup:
    input_mode: str                  # resize | patches
    image_size: tuple[int, int]      # the network input
    size_reason: str
    model: keras.Model
    batch_size: int                  # per replica
    batch_plan: str | None           # the memory plan's words, with batch_size: auto
    global_batch: int
    patches: Patches | None
    steps: int                       # per epoch
    epoch_words: str
    cache: str                       # memory | disk | none
    cache_reason: str

    def describe(self, data: TrainingRows, *, placement: Placement, channels: int) -> list[str]:
        """Two lines for the log: the data, input, batch and epoch; the input mode, size and cache, with why."""
        epoch = f"{self.steps} steps/epoch" + (f" ({self.epoch_words})" if self.epoch_words else "")
        counts = ", ".join(f"{name}={len(rows)}" for name, rows in zip(data.names, data.subsets))
        return [f"{len(data.rows)} training rows ({counts}), {len(data.valid)} validation rows; input "
                f"{self.image_size[0]}x{self.image_size[1]}x{channels}; global batch {self.global_batch} "
                f"({self.batch_size} x {placement.num_replicas} replica(s) on {placement.description}); {epoch}",
                f"input {self.input_mode}; size {self.image_size[0]}x{self.image_size[1]} ({self.size_reason}); "
                f"decoded rows kept: {self.cache} ({self.cache_reason})"]


def architecture(*, num_classes: int, encoder: str, encoder_weights: str | None, depth: int, base_filters: int,
                 dropout: float, upsampling: str, normalization: str, **_) -> dict:
    """build_unet's keyword arguments from the train params (all but the input shape and remat)."""
    return dict(num_classes=num_classes, encoder=encoder, encoder_weights=encoder_weights, depth=depth,
                base_filters=base_filters, dropout=dropout, upsampling=upsampling, normalization=normalization)


def set_up_input(input_mode: str, *, data: TrainingRows, placement: Placement, mixed_precision: bool,
                 channels: int, num_classes: int, cache_dir: Path | None, image_size: list[int], keep_aspect: bool,
                 upscale_small_images: bool, remat: bool, batch_size: int | str, optimizer: str, steps_per_epoch: int,
                 max_minutes: float, patch_foreground_share: float, patch_scale_range: list[float], cache: str,
                 **train) -> InputSetup:
    """Builds what training on `input_mode` needs (module docstring); `**train`: the rest of the train params.
    `cache_dir` None: where decoded rows would be kept is not planned (preflight, which keeps none)."""
    rows, valid = data.rows, data.valid
    size, size_reason = network_input_size(
        image_size, input_mode=input_mode, keep_aspect=keep_aspect, upscale=upscale_small_images,
        rows=data.originals, multiple=2 ** downsampling_levels(encoder=train["encoder"], depth=train["depth"]))
    with placement.strategy.scope():
        model = build_unet(input_shape=(*size, channels), remat=remat,
                           **architecture(num_classes=num_classes, **train))
    batch_plan = None
    if batch_size == "auto":  # the largest the memory plan fits: depends on the machine (docs: training)
        budget, source = replica_budget(placement)
        batch_size, batch_plan = pick_batch_size(model, optimizer=optimizer, mixed_precision=mixed_precision,
                                                 budget=budget, num_replicas=placement.num_replicas,
                                                 training_rows=len(rows))
        batch_plan += f" (the budget: {source})"
    global_batch = batch_size * placement.num_replicas
    if global_batch > len(rows):
        raise ValueError(f"param 'train.batch_size' {batch_size} gives a global batch of {global_batch} "
                         f"({batch_size} x {placement.num_replicas} replica(s)), more than the {len(rows)} training "
                         "rows (originals + augmented copies); set train.batch_size to at most "
                         f"{len(rows) // placement.num_replicas}, or add data (augment.copies).")
    patches = Patches(foreground_share=patch_foreground_share, scale_range=tuple(patch_scale_range),
                      num_classes=num_classes) if input_mode == "patches" else None
    steps, epoch_words = input_plan.steps_per_epoch(
        rows, batch_size=global_batch, requested=steps_per_epoch, patch_size=size if patches else None,
        time_budget=max_minutes > 0,
        validation_inputs=input_plan.validation_windows(valid, image_size=size) if patches else len(valid))
    where, cache_reason = ("none", "not planned: no cache folder given") if cache_dir is None else \
        input_plan.resolve_cache(
            cache, channels=channels, memory_budget_bytes=input_plan.cache_budget_bytes(),
            disk_free_bytes=decoded_cache.free_bytes(cache_dir),
            pixels=sum(input_plan.cached_pixels(subset, image_size=size, patches=patches is not None)
                       for subset in data.subsets) // placement.num_workers  # each worker caches its share
            + input_plan.cached_pixels(valid, image_size=size, patches=patches is not None))
    return InputSetup(input_mode=input_mode, image_size=size, size_reason=size_reason, model=model,
                      batch_size=batch_size, batch_plan=batch_plan, global_batch=global_batch, patches=patches,
                      steps=steps, epoch_words=epoch_words, cache=where, cache_reason=cache_reason)


def fit_setup(setup: InputSetup, *, data: TrainingRows, placement: Placement, loss, num_classes: int, channels: int,
              seed: int, cache_dir: Path | None, decoded: tf.Variable | None, resume: ResumeState, state: dict,
              callbacks: list, epochs: int, max_minutes: float, patience: int, **train) -> Outcome:
    """Trains `setup.model` through segpipe/training/loop.py's phases (resume, budget, best epoch) with the train
    params in `**train`; `epochs`, `max_minutes` and `patience` as given (a pilot's differ from the params')."""
    learning_rate = train["learning_rate"] * (placement.num_replicas if train["scale_learning_rate"] else 1)
    optimizer = partial(make_optimizer, optimizer=train["optimizer"], learning_rate=learning_rate,
                        schedule=train["schedule"], warmup_epochs=train["warmup_epochs"], steps_per_epoch=setup.steps,
                        weight_decay=train["weight_decay"], momentum=train["momentum"])

    def compile_phase(model, *, epochs: int) -> None:
        with placement.strategy.scope():
            model.compile(optimizer=optimizer(epochs=epochs), loss=loss, jit_compile=train["jit_compile"],
                          metrics=training_metrics(num_classes=num_classes, threshold=train["threshold"]))

    if faults.armed():
        callbacks = [*callbacks, faults.keras_callback()]
    if train["schedule"] == "plateau":
        callbacks = [*callbacks, plateau_callback(monitor=train["monitor"], patience=train["plateau_patience"])]
    memory = setup.cache == "memory"
    with naming_bad_files(pd.concat([data.rows, data.valid], ignore_index=True)):
        return fit_in_phases(
            setup.model, phases=training_phases(setup.model, freeze_encoder_epochs=train["freeze_encoder_epochs"],
                                                epochs=epochs, max_minutes=max_minutes),
            compile_phase=compile_phase, steps_per_epoch=setup.steps,
            training_data=partial(pipeline.training_dataset, data.subsets, weights=train["sampling_weights"],
                                  image_size=setup.image_size, channels=channels, batch_size=setup.global_batch,
                                  seed=seed, cache=memory, online_augment=train["online_augment"],
                                  disk_cache=cache_dir if setup.cache == "disk" else None,
                                  deterministic=train["deterministic"], patches=setup.patches, decoded=decoded),
            validation_data=pipeline.evaluation_dataset(data.valid, image_size=setup.image_size, channels=channels,
                                                        batch_size=setup.global_batch, cache=memory,
                                                        windows=setup.patches is not None),
            monitor=train["monitor"], patience=patience, max_minutes=max_minutes, callbacks=callbacks,
            resume=resume, state=state)
