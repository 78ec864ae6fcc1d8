"""The checks an engineer runs by hand before a long training, as functions that each return a `Check`:
its status (pass, warn or fail), one line for the terminal, and its numbers for preflight.json.

- devices: what TensorFlow sees, its CUDA/cuDNN build, the precision and strategy train will use, and why;
- data: rows per split, group and class, foreground or class frequencies, imbalance and polarity warnings;
- capacity: parameters, FLOPs, output stride and receptive field against the size of the objects;
- resolution: resized input only: what a perfect network would score after the masks go to the network input
  and back, the input size's cost before any learning;
- memory: the memory plan of the configured batch against the device;
- mask values: the class ids of a training batch, as the input pipeline yields them;
- overfit one batch: the model, loss and optimizer of train must fit one batch (IoU >= a target); a falling
  loss is not enough (a loss on wrong targets falls too); an IoU that rose a lot but not to the target
  within the steps is a warning (slow, not broken), one that stayed flat a failure;
- run time: a CPU-only run of a config that needs hours is a warning.
Only `fail` statuses stop the pipeline (stages/preflight.py); warnings are printed and recorded.
"""
from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from segpipe.data.image_io import IGNORE_ID
from segpipe.data.rows import class_pixel_table

IMBALANCE_RATIO = 100     # most frequent / least frequent class pixels above this: a warning
POLARITY_SHARE = 0.5      # binary: foreground above this share of the pixels in most images: a warning
CPU_HOURS_WARNING = 1.0   # a CPU-only run estimated longer than this: a warning
RESIZE_CEILING = 0.9      # resized input: a class whose perfect-network IoU is below this: a warning
LEARNING_RISE = 0.2       # overfit check: an IoU below the target that rose this much is a warning, not a fail


@dataclass
class Check:
    name: str
    status: str                      # pass | warn | fail
    summary: str                     # one line for the terminal
    details: dict = field(default_factory=dict)


def device_check(*, placement, precision: str, precision_reason: str) -> Check:
    """What train will run on: GPUs (name, compute capability, memory), TF's CUDA/cuDNN build, strategy, precision."""
    import tensorflow as tf

    from segpipe.training.memory_plan import device_memory_bytes

    build = tf.sysconfig.get_build_info()
    gpus = []
    for index, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(gpu)
        try:
            memory = round(device_memory_bytes(f"/gpu:{index}")[0] / 2 ** 30, 1)
        except ValueError:
            memory = None
        gpus.append({"name": details.get("device_name", gpu.name), "memory_gib_usable": memory,
                     "compute_capability": ".".join(map(str, details.get("compute_capability", ())))})
    facts = {"gpus": gpus, "tensorflow": tf.__version__, "cuda_build": bool(build.get("is_cuda_build")),
             "cuda_version": build.get("cuda_version"), "cudnn_version": build.get("cudnn_version"),
             "devices": placement.description, "num_replicas": placement.num_replicas,
             "strategy": type(placement.strategy).__name__, "precision": precision,
             "precision_reason": precision_reason}
    where = (", ".join(f"{g['name']} (cc {g['compute_capability']})" for g in gpus) if gpus
             else "no GPU: CPU only" + (" (TensorFlow has CUDA, no GPU is seen)" if build.get("is_cuda_build")
                                        else ""))
    return Check("devices", "pass", f"{where}; {facts['strategy']} on {placement.description}; precision "
                 f"{precision} ({precision_reason})", facts)


def data_check(rows_by_split: dict[str, pd.DataFrame], *, num_classes: int, class_names: list[str]) -> Check:
    """Rows per split and group, class pixel frequencies; imbalance and (binary) inverted-polarity warnings."""
    warnings = []
    counts = {split: len(rows) for split, rows in rows_by_split.items()}
    train = rows_by_split["train"]
    groups = {str(g): int(n) for g, n in train["group"].value_counts().sort_index().items()}
    pixels = class_pixel_table(train, num_classes=num_classes)
    totals = pixels.sum(axis=0)
    frequencies = {name: round(float(t) / max(1, totals.sum()), 6) for name, t in zip(class_names, totals)}
    images_with = {name: int(n) for name, n in zip(class_names, (pixels > 0).sum(axis=0))}
    present = totals[totals > 0]
    ratio = float(present.max() / present.min()) if len(present) > 1 else 1.0
    fractions = train["foreground_fraction"].astype(float)
    if len(present) < len(totals):
        missing = [name for name, t in zip(class_names, totals) if t == 0]
        warnings.append(f"classes {missing} have no training pixels: the model cannot learn them")
    if ratio > IMBALANCE_RATIO:
        warnings.append(f"class pixels are imbalanced {ratio:.0f}:1 (most : least frequent); consider "
                        "train.class_weights, dice or focal in train.loss, or augment.group_multipliers")
    if num_classes == 1 and (fractions > POLARITY_SHARE).mean() > 0.5:
        warnings.append(f"the foreground covers more than {POLARITY_SHARE:.0%} of most training images (median "
                        f"{fractions.median():.0%}): if the background is what is white in the masks, set "
                        "convert.invert_mask: true (see the contact sheet)")
    facts = {"rows": counts, "train_groups": groups, "class_pixel_share": frequencies,
             "train_images_with_class": images_with, "imbalance_ratio": round(ratio, 1),
             "foreground_fraction": {"min": float(fractions.min()), "median": float(fractions.median()),
                                     "max": float(fractions.max())}, "warnings": warnings}
    summary = (", ".join(f"{split} {n}" for split, n in counts.items()) + f" rows; {len(groups)} group(s); "
               + ", ".join(f"{name} {share:.1%}" for name, share in frequencies.items()))
    return Check("data", "warn" if warnings else "pass", summary + "".join(f"\n    warning: {w}" for w in warnings),
                 facts)


def capacity_check(*, model, receptive_field: tuple[int, bool], object_sizes: dict[int, np.ndarray],
                   class_names: list[str], num_classes: int) -> Check:
    """Parameters, FLOPs per image, output stride, and the receptive field against the objects' sizes."""
    from segpipe.preflight.capacity import flops_per_image, output_stride, parameter_counts, typical_size

    trainable, frozen = parameter_counts(model)
    extent, at_edge = receptive_field
    names = class_names[1:] if num_classes == 1 else class_names
    sizes = {}
    warnings = []
    for (_, regions), name in zip(sorted(object_sizes.items()), names):
        if not len(regions):
            continue
        median, p90 = typical_size(regions, 0.5), typical_size(regions, 0.9)
        sizes[name] = {"objects": int(len(regions)), "median_px": round(median, 1), "p90_px": round(p90, 1)}
        if median > extent and not at_edge:
            warnings.append(f"'{name}' regions are {median:.0f} px across (the median pixel's region, in network "
                            f"input pixels), more than the {extent} px receptive field: the network sees parts "
                            "of them; a deeper encoder (train.depth, or a keras.applications encoder) sees more")
    if trainable == 0:
        return Check("capacity", "fail", "the model has no trainable weights: nothing can learn; check "
                     "train.freeze_encoder_epochs and the encoder", {"trainable_parameters": 0})
    facts = {"trainable_parameters": trainable, "frozen_parameters": frozen,
             "gflops_per_image": round(flops_per_image(model) / 1e9, 3), "output_stride": output_stride(model),
             "receptive_field_px": extent, "receptive_field_at_least": at_edge, "object_sizes": sizes,
             "warnings": warnings}
    summary = (f"{trainable:,} trainable + {frozen:,} frozen parameters; {facts['gflops_per_image']} GFLOPs "
               f"per image; output stride {facts['output_stride']}; receptive field "
               f"{'>= ' if at_edge else ''}{extent} px; regions (median pixel's) "
               + (", ".join(f"{n} {s['median_px']:.0f} px" for n, s in sizes.items()) or "none"))
    return Check("capacity", "warn" if warnings else "pass",
                 summary + "".join(f"\n    warning: {w}" for w in warnings), facts)


def resolution_check(*, ceiling: tuple[np.ndarray, np.ndarray, list[float]] | None, size: tuple[int, int],
                     class_names: list[str], num_classes: int) -> Check:
    """The IoU a perfect network would score at the network input `size` (capacity.resize_ceiling's
    `ceiling`; None with patches, which train at native resolution), per class and image-mean."""
    if ceiling is None:
        return Check("resolution", "pass", "patches: trained and predicted at native resolution",
                     {"input": "patches"})
    intersections, unions, per_image = ceiling
    names = class_names if num_classes > 1 else ["background", class_names[-1]]
    per_class = {name: round(float(i / u), 4) for name, i, u in zip(names, intersections, unions) if u}
    # Binary: the foreground alone is scored (the background's IoU is near 1 on any data).
    scored = per_class if num_classes > 1 else {k: v for k, v in per_class.items() if k == names[1]}
    image_mean = round(float(np.mean(per_image)), 4) if per_image else None
    low = {name: iou for name, iou in scored.items() if iou < RESIZE_CEILING}
    facts = {"input": f"{size[0]}x{size[1]}", "class_iou": per_class, "image_mean_iou": image_mean,
             "warnings": [f"'{name}' keeps IoU {iou:.3f} at most" for name, iou in low.items()]}
    summary = (f"masks resized to the network input {size[0]}x{size[1]} and back: a perfect network scores "
               + (", ".join(f"{name} {iou:.3f}" for name, iou in scored.items()) or "nothing (no labelled pixels)")
               + (f"; image-mean IoU {image_mean:.3f}" if image_mean is not None else ""))
    if low:
        summary += (f"\n    warning: at {size[0]}x{size[1]} {', '.join(repr(n) for n in low)} cannot score above "
                    f"{max(low.values()):.3f} IoU at native resolution, however well it learns: a larger "
                    "train.image_size (the memory plan shrinks the batch to fit) or train.input: patches keeps "
                    "more of it")
    return Check("resolution", "warn" if low else "pass", summary, facts)


def mask_value_check(masks: np.ndarray, *, num_classes: int) -> Check:
    """The class ids of a training batch as the pipeline yields them: in 0..num_classes-1 or 255 (void), and
    (binary) some foreground, as the batch is drawn from images that have some."""
    values, counts = np.unique(masks, return_counts=True)
    allowed = set(range(max(2, num_classes))) | {IGNORE_ID}
    share = dict(zip(values.tolist(), (counts / masks.size).round(6).tolist()))
    facts = {"values": share}
    bad = [int(v) for v in values if int(v) not in allowed]
    if bad:
        return Check("mask_values", "fail", f"the batch's masks hold values {bad[:5]}; expected class ids "
                     f"0..{max(2, num_classes) - 1} and {IGNORE_ID} (void); rerun convert-to-png (it maps mask "
                     "values to class ids) or check num_classes", facts)
    void = share.get(IGNORE_ID, 0.0)
    if num_classes == 1 and share.get(1, 0.0) == 0:
        return Check("mask_values", "fail", f"the batch's masks hold no foreground (1) though its images were "
                     f"picked for having some, and {void:.0%} void ({IGNORE_ID}): masks written as 0/255 "
                     "images instead of class ids? Rerun convert-to-png (dvc repro -f convert-to-png)", facts)
    summary = "class ids " + ", ".join(f"{v}: {s:.1%}" for v, s in share.items())
    if void > 0.5:
        return Check("mask_values", "warn", summary + f"\n    warning: {void:.0%} of the batch's pixels are void: "
                     "check convert.ignore_value", facts)
    return Check("mask_values", "pass", summary, facts)


def overfit_one_batch(model, images: np.ndarray, masks: np.ndarray, *, loss, optimizer, num_classes: int,
                      target_iou: float, max_steps: int, max_seconds: float, check_every: int = 5) -> Check:
    """Trains `model` on one batch until its IoU on that batch reaches `target_iou` (fail if `max_steps` end
    first; a warning if `max_seconds` ends it first, as the check did not finish).

    IoU is the training metric of each step (segpipe.training.keras_metrics: binary foreground IoU at 0.5, multi-class
    mean IoU), on the training-mode outputs the loss sees, so slow BatchNorm moving averages do not hide a fit.

    Args:
        images: float32 (B, H, W, C) in [0, 1]; masks: uint8 (B, H, W, 1) class ids (255 void).
    Returns:
        The check, with the steps, the IoU and loss curves, seconds and images/s measured.
    """
    from segpipe.training.keras_metrics import training_metrics

    model.compile(optimizer=optimizer, loss=loss, metrics=training_metrics(num_classes=num_classes, threshold=0.5))
    curve, start, step, iou = [], time.perf_counter(), 0, 0.0
    timed_from, timed_steps = None, 0
    while step < max_steps:
        result = model.train_on_batch(images, masks, return_dict=True)
        step += 1
        if step == 2:
            timed_from = time.perf_counter()  # the first step traces the graph
        elif step > 2:
            timed_steps += 1
        iou = float(result["iou"])
        if step % check_every == 0 or step == 1:
            curve.append({"step": step, "loss": round(float(result["loss"]), 5), "iou": round(iou, 4)})
        if iou >= target_iou or time.perf_counter() - start > max_seconds:
            break
    seconds = time.perf_counter() - start
    per_second = (timed_steps * len(images) / (time.perf_counter() - timed_from)) if timed_steps else None
    facts = {"steps": step, "iou": round(iou, 4), "target_iou": target_iou, "seconds": round(seconds, 1),
             "images_per_second": round(per_second, 2) if per_second else None, "curve": curve,
             "batch": list(images.shape)}
    what = f"IoU {iou:.3f} on one batch of {len(images)} after {step} steps ({seconds:.0f} s)"
    if iou >= target_iou:
        return Check("overfit_one_batch", "pass", what + f", target {target_iou}", facts)
    if step < max_steps:
        return Check("overfit_one_batch", "warn", what + f": the {max_seconds:.0f} s budget "
                     "(preflight.overfit_max_seconds) ended it before the target; not a verdict", facts)
    if curve and iou - curve[0]["iou"] >= LEARNING_RISE:
        return Check("overfit_one_batch", "warn", what + f", below the target {target_iou} but still rising (from "
                     f"{curve[0]['iou']:.3f}): it learns, slowly (many classes, thin structures); raise "
                     "preflight.overfit_steps for a verdict", facts)
    first = curve[0]["loss"] if curve else float("nan")
    return Check("overfit_one_batch", "fail", what + f", below the target {target_iou} (loss {first} -> "
                 f"{facts['curve'][-1]['loss'] if curve else 'n/a'}): the model cannot fit data it sees "
                 "over and over. Look for wiring bugs: masks not class ids (the mask_values check), masks "
                 "misaligned or inverted (the contact sheet), a frozen model, or a learning rate far off "
                 "(train.learning_rate)", facts)


def run_time_check(*, on_gpu: bool, images_per_second: float | None, images_per_epoch: int, epochs: int,
                   max_minutes: float, trainings: int = 1) -> Check:
    """How long training will take at the speed measured here, for each of `trainings` models (cross-validation:
    the folds' and the single split's, each with train.max_minutes or train.epochs); a CPU-only run of hours
    in all is a warning."""
    if not images_per_second:
        return Check("run_time", "pass", "not measured (the overfit check did not time its steps)", {})
    epoch_minutes = images_per_epoch / images_per_second / 60
    one = max_minutes if max_minutes > 0 else epoch_minutes * epochs
    minutes = one * trainings
    facts = {"minutes_per_epoch": round(epoch_minutes, 2), "minutes": round(minutes, 1),
             "images_per_second": images_per_second, "trainings": trainings}
    summary = (f"about {epoch_minutes:.1f} min per epoch at {images_per_second:.1f} images/s; "
               + (f"{max_minutes:g} min budget" if max_minutes > 0 else f"{epochs} epochs: about {one:.0f} min")
               + (f" a model, {trainings} models (cv.folds and the single split): about {minutes:.0f} min"
                  if trainings > 1 else ""))
    if not on_gpu and minutes > 60 * CPU_HOURS_WARNING:
        return Check("run_time", "warn", summary + f"\n    warning: a CPU-only run of about {minutes / 60:.1f} h; a "
                     "GPU, a smaller train.image_size or base_filters, or a train.max_minutes budget", facts)
    return Check("run_time", "pass", summary, facts)


def memory_check(*, plan: dict[str, int], batch_size: int, budget_bytes: int, budget_source: str) -> Check:
    """The memory plan of the configured batch (segpipe/training/memory_plan.py) against what the device offers."""
    facts = {"batch_size": batch_size, "estimate_gib": {k: round(v / 2 ** 30, 3) for k, v in plan.items()},
             "budget_gib": round(budget_bytes / 2 ** 30, 2), "budget": budget_source}
    summary = (f"batch {batch_size}: about {plan['total'] / 2 ** 30:.2f} GiB per replica (activations "
               f"{plan['activations'] / 2 ** 30:.2f}); the budget is {budget_source}")
    if plan["total"] > budget_bytes:
        return Check("memory", "warn", summary + "\n    warning: the estimate exceeds the budget: lower "
                     "train.batch_size (or set it to auto), or set train.remat: true", facts)
    return Check("memory", "pass", summary, facts)


def cli() -> None:
    """segpipe-preflight: runs the project's preflight stage (`python -m stages.preflight`) from the project
    root, with the arguments given or, with none, those of its command in dvc.yaml; no DVC bookkeeping (dvc
    repro preflight records it). The stage runs as its own process: the library never imports `stages`."""
    import subprocess

    import yaml

    argv = sys.argv[1:]
    if not Path("stages/preflight.py").is_file() or not Path("dvc.yaml").is_file():
        sys.exit("segpipe-preflight: error: no stages/preflight.py and dvc.yaml here; run it from the project "
                 "root (the folder with dvc.yaml).")
    if not argv:
        command = shlex.split(yaml.safe_load(Path("dvc.yaml").read_text())["stages"]["preflight"]["cmd"])
        argv = command[command.index("stages.preflight") + 1:]
    sys.exit(subprocess.run([sys.executable, "-m", "stages.preflight", *argv], cwd=Path.cwd()).returncode)
