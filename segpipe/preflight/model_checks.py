"""The preflight checks that need the model train will build (segpipe/training/setup.py's InputSetup): its
capacity against the objects, what its input size costs, its memory plan, the mask values of a batch drawn as
train draws, overfitting that batch, and the run time it implies. The checks themselves are
segpipe/preflight/checks.py's."""
from __future__ import annotations

import numpy as np
import pandas as pd

from segpipe.core.schema import downsampling_levels
from segpipe.data import input_pipeline as pipeline
from segpipe.data.crops import Patches
from segpipe.data.image_io import read_png
from segpipe.data.rows import class_pixel_table
from segpipe.preflight import checks
from segpipe.preflight.capacity import object_sizes, receptive_field, resize_ceiling
from segpipe.training import memory_plan
from segpipe.training.devices import Placement
from segpipe.training.loop import make_optimizer
from segpipe.training.losses import make_loss, resolve_class_weights
from segpipe.training.model import build_unet
from segpipe.training.setup import InputSetup, architecture

RECEPTIVE_FIELD_MAX_SIDE = 1024  # the receptive field is measured on inputs up to this side
OBJECT_SIZE_SAMPLE = 200         # training masks whose objects are measured


def model_checks(setup: InputSetup, *, originals: pd.DataFrame, placement: Placement, mixed_precision: bool,
                 channels: int, num_classes: int, class_names: list[str], seed: int, overfit_images: int,
                 overfit_steps: int, overfit_target_iou: float, overfit_max_seconds: float, trainings: int = 1,
                 **train) -> list[checks.Check]:
    """Capacity, memory, mask values and (with `overfit_steps` > 0) overfit one batch and run time, for the
    model of `setup` on the training images `originals`; `trainings`: how many models the pipeline trains
    (1 + the cross-validation folds); `**train`: the train params."""
    model, size = setup.model, setup.image_size
    factor = 2 ** downsampling_levels(encoder=train["encoder"], depth=train["depth"])  # sides' multiple
    # Receptive field: measured on a separate copy at twice the input side (the field may exceed the input).
    side = min(RECEPTIVE_FIELD_MAX_SIDE, 2 * max(size)) // factor * factor
    plain = architecture(num_classes=num_classes, **train)
    field = receptive_field(lambda s: build_unet(input_shape=(s, s, channels), remat=False, **plain), side=side,
                            seed=seed)
    sample = originals.sample(n=min(len(originals), OBJECT_SIZE_SAMPLE), random_state=seed).sort_values("id")
    scales = ([1.0] * len(sample) if setup.patches else
              np.minimum(size[0] / sample["height"].astype(float), size[1] / sample["width"].astype(float)))
    sizes = object_sizes((read_png(p) for p in sample["mask_path"]), num_classes=num_classes, scales=scales)
    ceiling = None if setup.patches else resize_ceiling((read_png(p) for p in sample["mask_path"]), size=size,
                                                         num_classes=num_classes)
    budget, budget_source = memory_plan.replica_budget(placement)
    report = [checks.capacity_check(model=model, receptive_field=field, object_sizes=sizes, class_names=class_names,
                                    num_classes=num_classes),
              checks.resolution_check(ceiling=ceiling, size=size, class_names=class_names, num_classes=num_classes),
              checks.memory_check(plan=memory_plan.estimate(model, batch_size=setup.batch_size,
                                                            optimizer=train["optimizer"],
                                                            mixed_precision=mixed_precision),
                                  batch_size=setup.batch_size, budget_bytes=budget, budget_source=budget_source)]

    # One batch drawn as train draws (its pipeline, patches included), from images that have foreground.
    with_foreground = originals[originals["foreground_fraction"].astype(float) > 0]
    chosen = (with_foreground if len(with_foreground) else originals).sample(
        n=min(overfit_images, len(originals)), random_state=seed).sort_values("id")
    patches = Patches(foreground_share=1.0, scale_range=(1.0, 1.0), num_classes=num_classes) \
        if setup.patches else None
    images, masks = next(iter(pipeline.training_dataset(
        [chosen], weights=None, image_size=size, channels=channels, batch_size=len(chosen), seed=seed,
        cache=False, online_augment=False, deterministic=True, patches=patches)))
    images, masks = images.numpy(), masks.numpy()
    report.append(checks.mask_value_check(masks, num_classes=num_classes))
    if overfit_steps <= 0:
        return report
    class_weights = resolve_class_weights(train["class_weights"], num_classes=num_classes, pixels_per_class=(
        class_pixel_table(originals, num_classes=num_classes).sum(0)))
    with placement.strategy.scope():
        optimizer = make_optimizer(optimizer=train["optimizer"], learning_rate=train["learning_rate"],
                                   schedule="constant", warmup_epochs=0, epochs=1, steps_per_epoch=1,
                                   weight_decay=train["weight_decay"], momentum=train["momentum"])
        overfit = checks.overfit_one_batch(
            model, images, masks, num_classes=num_classes, optimizer=optimizer,
            loss=make_loss(weights=train["loss"], focal_gamma=train["focal_gamma"], class_weights=class_weights),
            target_iou=overfit_target_iou, max_steps=overfit_steps, max_seconds=overfit_max_seconds)
    per_second = overfit.details.get("images_per_second")
    return [*report, overfit, checks.run_time_check(
        on_gpu=placement.device_names[0].startswith("/gpu"),
        images_per_second=per_second * placement.num_replicas if per_second else None,
        images_per_epoch=setup.global_batch * setup.steps, epochs=train["epochs"],
        max_minutes=train["max_minutes"], trainings=trainings)]
