"""What params.yaml may hold: every key of every section, its type, range and choices. The one list.

The library takes its lists of choices from here (the model its encoders, the optimizer builder its
optimizers, ...), so a choice is added in one place. This module imports nothing heavy: params are
validated before TensorFlow starts, so a typo fails in a second, not after the TF import.
Each rule is the keyword arguments of `segpipe.core.params.check_value`.
"""
from __future__ import annotations

IMAGE_MODES = ("RGB", "L")
ON_ERROR = ("fail", "skip")
SPLIT_BY = ("image", "group")
BALANCING_KEYS = ("auto", "group", "foreground", "rarest_class")
CLASS_WEIGHTS = (None, "auto")
CACHE_MODES = ("auto", "memory", "disk", "none")
INPUTS = ("auto", "resize", "patches")
TTA_MODES = ("none", "flips", "flips_rotations")
ENCODERS = ("plain", "resnet50", "efficientnetb0", "mobilenetv2")
ENCODER_WEIGHTS = (None, "imagenet")
UPSAMPLING = ("transpose", "bilinear")
NORMALIZATIONS = ("batch", "group")
LOSSES = ("bce", "dice", "jaccard", "focal")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "plateau")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
PREFLIGHT_ON_FAILURE = ("fail", "warn")
MONITORS = tuple(f"{split}{score}" for split in ("valid_", "") for score in ("iou", "dice", "precision", "recall",
                                                                             "loss"))


def _image_size(value) -> bool:
    return len(value) == 2 and all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in value)


def _folder(value) -> bool:
    bare = value.replace("{split}", "")
    return bool(value) and not any(c in bare for c in "/\\{}")


def _ignore_value(value) -> bool:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value is None or 0 <= value <= 255
    return len(value) == 3 and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)


def _scale_range(value) -> bool:
    return (len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and 0 < value[0] <= value[1])


def _fold_list(value) -> bool:
    """[] (one split) or the fold numbers 0..k-1 in order, k >= 2: DVC's foreach makes one stage per item."""
    return value == [] or (value == list(range(len(value))) and len(value) >= 2
                           and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def _class_weights(value) -> bool:
    if value is None or isinstance(value, str):
        return value in CLASS_WEIGHTS
    return all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in value) and sum(value) > 0


SHARED = {
    "seed": dict(kind=int),
    "num_classes": dict(kind=int, minimum=1, maximum=255, hint="(Mask value 255 marks void pixels.)"),
    "class_names": dict(kind=(list, type(None)), check=lambda v: v is None or all(isinstance(n, str) and n for n in v),
                        hint="Expected null or a list of names, one per class."),
    "mlflow": dict(kind=bool),
}

SECTIONS = {
    "convert": {
        "image_mode": dict(kind=str, choices=IMAGE_MODES),
        "image_folder": dict(kind=str, check=_folder, hint="Expected auto, a folder name or glob pattern "
                             "(no '/'), or a name with '{split}' such as '{split}'."),
        "mask_folder": dict(kind=str, check=_folder, hint="Expected auto, a folder name or glob pattern "
                            "(no '/'), or a name with '{split}' such as '{split}annot'."),
        "mask_stem_pattern": dict(kind=str, check=lambda s: "{stem}" in s,
                                  hint="It must contain '{stem}', e.g. '{stem}_mask'."),
        "image_key": dict(kind=(str, type(None))),
        "mask_key": dict(kind=(str, type(None))),
        "palette": dict(kind=(list, str, type(None))),
        "palette_tolerance": dict(kind=int, minimum=0, maximum=255),
        "ignore_value": dict(kind=(int, list, type(None)), check=_ignore_value,
                             hint="Expected null, a mask value (e.g. 255) or a colour [r, g, b] with convert.palette."),
        "mask_threshold": dict(kind=int, minimum=1, maximum=255),
        "invert_mask": dict(kind=bool),
        "max_gray_fraction": dict(kind=float, minimum=0.0, maximum=1.0),
        "white_level": dict(kind=(str, int, float), check=lambda v: v == "auto" if isinstance(v, str) else v > 0,
                            hint="Expected auto or the positive raw value that should become white (255), "
                                 "e.g. 4095 for 12-bit data."),
        "mask_alpha": dict(kind=bool),
        "max_image_pixels": dict(kind=int, minimum=1),
        "on_error": dict(kind=str, choices=ON_ERROR),
        "num_workers": dict(kind=int, minimum=0),
    },
    "build_csv": {
        "valid_fraction": dict(kind=float, minimum=0.01, maximum=0.9),
        "stratify_bins": dict(kind=int, minimum=1),
        "split_by": dict(kind=str, choices=SPLIT_BY),
    },
    "split_balanced": {
        "key": dict(kind=str, choices=BALANCING_KEYS),
        "num_bins": dict(kind=int, minimum=1),
    },
    "augment": {
        "copies": dict(kind=int, minimum=0),
        "group_multipliers": dict(kind=dict),
        "transforms": dict(kind=list),
        "num_workers": dict(kind=int, minimum=0),
    },
    "train": {
        "image_size": dict(kind=list, check=_image_size, hint="expected [height, width]."),
        "batch_size": dict(kind=(int, str), check=lambda v: v == "auto" if isinstance(v, str) else v >= 1,
                           hint="Expected a positive number of images per replica, or auto (the memory plan "
                                "picks it: docs/explanations/training.md)."),
        "input": dict(kind=str, choices=INPUTS),
        "input_pilot": dict(kind=float, minimum=0.0, maximum=0.5,
                            hint="The share of the training spent piloting both inputs; the rest trains the better."),
        "keep_aspect": dict(kind=bool),
        "upscale_small_images": dict(kind=bool),
        "patch_foreground_share": dict(kind=float, minimum=0.0, maximum=1.0),
        "patch_scale_range": dict(kind=list, check=_scale_range, hint="expected [low, high], 0 < low <= high, "
                                  "e.g. [0.8, 1.25]."),
        "steps_per_epoch": dict(kind=int, minimum=0),
        "sampling_weights": dict(kind=(list, type(None))),
        "class_weights": dict(kind=(str, list, type(None)), check=_class_weights,
                              hint="Expected auto (multi-class: from the training masks' class frequencies), null "
                                   "or one non-negative weight per class."),
        "cache": dict(kind=str, choices=CACHE_MODES),
        "online_augment": dict(kind=bool),
        "encoder": dict(kind=str, choices=ENCODERS),
        "encoder_weights": dict(kind=(str, type(None)), choices=ENCODER_WEIGHTS),
        "freeze_encoder_epochs": dict(kind=int, minimum=0),
        "depth": dict(kind=int, minimum=1, maximum=7),
        "base_filters": dict(kind=int, minimum=1),
        "dropout": dict(kind=float, minimum=0.0, maximum=0.9),
        "upsampling": dict(kind=str, choices=UPSAMPLING),
        "normalization": dict(kind=str, choices=NORMALIZATIONS),
        "remat": dict(kind=bool),
        # names and weights: segpipe.training.losses.make_loss, the one function that reads them
        "loss": dict(kind=dict),
        "focal_gamma": dict(kind=float, minimum=0.0),
        "optimizer": dict(kind=str, choices=OPTIMIZERS),
        "learning_rate": dict(kind=float, minimum=0.0, check=lambda v: v > 0, hint="It must be positive."),
        "weight_decay": dict(kind=float, minimum=0.0),
        "momentum": dict(kind=float, minimum=0.0, maximum=1.0),
        "schedule": dict(kind=str, choices=SCHEDULES),
        "warmup_epochs": dict(kind=int, minimum=0),
        "plateau_patience": dict(kind=int, minimum=1),
        "scale_learning_rate": dict(kind=bool),
        "epochs": dict(kind=int, minimum=1),
        "max_minutes": dict(kind=float, minimum=0.0),
        "patience": dict(kind=int, minimum=0),
        "monitor": dict(kind=str, choices=MONITORS,
                        hint="(The validation split is `valid` everywhere: val_iou is now valid_iou.)"),
        "threshold": dict(kind=float, minimum=0.0, maximum=1.0),
        "precision": dict(kind=str, choices=PRECISIONS),
        "devices": dict(kind=(str, list)),
        "jit_compile": dict(kind=bool),
        "deterministic": dict(kind=bool),
        "tensorboard": dict(kind=bool),
    },
    "preflight": {
        "on_failure": dict(kind=str, choices=PREFLIGHT_ON_FAILURE),
        "overfit_images": dict(kind=int, minimum=1),
        "overfit_steps": dict(kind=int, minimum=0),
        "overfit_target_iou": dict(kind=float, minimum=0.0, maximum=1.0),
        "overfit_max_seconds": dict(kind=float, minimum=1.0),
        "contact_sheet_pairs": dict(kind=int, minimum=1),
    },
    "evaluate": {
        "boundary_tolerance": dict(kind=int, minimum=0),
        "num_samples": dict(kind=int, minimum=0),
        "worst_k": dict(kind=int, minimum=0),
        "batch_size": dict(kind=int, minimum=1),
        "tta": dict(kind=str, choices=TTA_MODES),
        "tile_overlap": dict(kind=float, minimum=0.0, maximum=0.9),
        "bootstrap_resamples": dict(kind=int, minimum=0),
        "bootstrap_unit": dict(kind=str, choices=("image", "group")),
    },
    "cv": {
        "folds": dict(kind=list, check=_fold_list,
                      hint="Expected [] (one train/valid split) or the fold numbers 0..k-1 with k >= 2, e.g. "
                           "[0, 1, 2, 3, 4] for 5 folds: dvc exp run -S 'cv.folds=[0,1,2,3,4]' (DVC makes one "
                           "stage per item, so a bare number cannot work)."),
    },
}


def downsampling_levels(*, encoder: str, depth: int) -> int:
    """How many times the model halves its input: train.depth for the plain encoder, 5 for the
    keras.applications encoders; the input's sides must be multiples of 2 to that power."""
    return depth if encoder == "plain" else 5


def check_architecture(*, image_size, encoder: str, encoder_weights, depth: int) -> None:
    """Rules across train keys that the model needs, checked before TensorFlow starts: pretrained weights only
    for keras.applications encoders, and an input size that every down-sampling step halves exactly."""
    if encoder == "plain" and encoder_weights is not None:
        raise ValueError("param 'train.encoder_weights' must be null for encoder 'plain' (it has no pretrained "
                         f"weights); use one of {list(ENCODERS[1:])} for ImageNet weights.")
    levels = downsampling_levels(encoder=encoder, depth=depth)
    height, width = image_size
    factor = 2 ** levels
    if height % factor or width % factor:
        raise ValueError(f"param 'train.image_size' {list(image_size)} is not divisible by 2**depth = {factor} ("
                         + (f"train.depth {levels}" if encoder == "plain" else f"5 levels in encoder {encoder}")
                         + f"); use a size that is a multiple of {factor}, e.g. "
                         f"[{max(factor, height // factor * factor)}, {max(factor, width // factor * factor)}].")
