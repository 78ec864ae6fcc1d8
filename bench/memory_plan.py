"""Training memory: the plan's estimate (segpipe/training/memory_plan.py) against measurement, and what `train.remat`
saves and costs. Every configuration runs in its own process.

Measured: on a GPU, the step's peak from tf.config.experimental.get_memory_info; on a CPU, the peak resident
memory over the first steps (VmHWM, reset after the model and the batch exist) minus the resident memory
before them. The estimate compared is the step's own part: everything but the weights, which exist before.

    .venv/bin/python bench/memory_plan.py              # estimate vs measured on the check configurations
    .venv/bin/python bench/memory_plan.py --calibrate  # first fit the plan's constants on other ones
    .venv/bin/python bench/memory_plan.py --remat      # remat on/off: activation memory and step time ratios

Targets: estimate within +-30% of measured on configurations not used to fit it; remat: >= 30% less
activation memory (per-image memory: the slope between two batch sizes) at <= 1.3x step time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# (image side, batch, base_filters, depth, precision, remat)
CALIBRATION = [(128, 2, 16, 4, "float32", False), (128, 8, 16, 4, "float32", False),
               (256, 4, 16, 4, "mixed_bfloat16", False), (256, 8, 8, 3, "float32", False),
               (192, 8, 16, 4, "mixed_bfloat16", False), (128, 16, 32, 4, "mixed_bfloat16", False),
               (192, 8, 16, 4, "mixed_bfloat16", True), (128, 8, 16, 4, "float32", True)]
CHECK = [(256, 8, 16, 4, "mixed_bfloat16", False), (256, 8, 16, 4, "float32", False),
         (320, 4, 16, 5, "float32", False), (160, 12, 24, 4, "mixed_bfloat16", False),
         (512, 2, 16, 4, "mixed_bfloat16", False), (224, 6, 32, 3, "float32", False),
         (256, 8, 16, 4, "mixed_bfloat16", True), (384, 4, 16, 4, "float32", True)]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(config: tuple, steps: int) -> dict:
    """One configuration: build, measure `steps` training steps, return estimate and measurement."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    import keras
    import tensorflow as tf

    from segpipe.training import memory_plan
    from segpipe.training.keras_metrics import training_metrics
    from segpipe.training.losses import make_loss
    from segpipe.training.model import build_unet

    side, batch, base_filters, depth, precision, remat = config
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_unet(input_shape=(side, side, 3), num_classes=1, depth=depth, base_filters=base_filters,
                       dropout=0.1, remat=remat)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss(weights={"bce": 1.0, "dice": 1.0}),
                  metrics=training_metrics(num_classes=1, threshold=0.5))
    rng = np.random.default_rng(0)
    x = rng.random((batch, side, side, 3), dtype=np.float32)
    y = (rng.random((batch, side, side, 1)) > 0.7).astype(np.float32)
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if on_gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
        before = tf.config.experimental.get_memory_info("GPU:0")["current"]
    else:
        before = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    if on_gpu:
        measured = tf.config.experimental.get_memory_info("GPU:0")["peak"] - before
    else:
        measured = _status_kib("VmHWM") * 1024 - before
    plan = memory_plan.estimate(model, batch_size=batch, optimizer="adam",
                                mixed_precision=precision != "float32")
    return {"config": list(config), "measured": measured, "plan": plan,
            "kept_per_image": memory_plan.kept_activation_bytes(model),
            "largest_per_image": memory_plan.largest_layer_bytes(model),
            "step_seconds": float(np.median(times[2:])) if steps > 3 else None,
            "device": "gpu" if on_gpu else "cpu"}


def run(config: tuple, steps: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(list(config)), "--steps", str(steps)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed for {config}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_part(result: dict) -> int:
    """The estimate of what the step allocates: everything but the weights, which exist before it."""
    return result["plan"]["total"] - result["plan"]["weights"]


def calibrate(steps: int) -> None:
    """Least-squares fit of measured - (gradients + slots) = (a * kept + w * largest layer) * batch + c."""
    rows, targets = [], []
    for config in CALIBRATION:
        result = run(config, steps)
        plan, batch = result["plan"], result["config"][1]
        known = plan["gradients"] + plan["optimizer_slots"]
        rows.append([result["kept_per_image"] * batch, result["largest_per_image"] * batch, 1.0])
        targets.append(result["measured"] - known)
        print(f"calibration {config}: measured {result['measured'] / 2 ** 20:7.1f} MiB", flush=True)
    (a, w, c), *_ = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)
    print(f"FIT ACTIVATION_FACTOR = {a:.3f}, WORKSPACE_FACTOR = {w:.3f}, WORKSPACE_BYTES = {int(c)} "
          f"({c / 2 ** 20:.0f} MiB); put them in segpipe/training/memory_plan.py and rerun without --calibrate")


def check(steps: int) -> None:
    errors = []
    for config in CHECK:
        result = run(config, steps)
        estimate, measured = step_part(result), result["measured"]
        errors.append(estimate / measured - 1)
        print(f"{str(config):42} measured {measured / 2 ** 20:7.1f} MiB  estimate {estimate / 2 ** 20:7.1f} MiB  "
              f"error {errors[-1]:+6.1%}", flush=True)
    worst = max(errors, key=abs)
    print(f"RESULT estimate vs measured over {len(errors)} configurations not used to fit: worst {worst:+.1%}, "
          f"mean |error| {np.mean(np.abs(errors)):.1%} (target within +-30%)")


def remat(steps: int) -> None:
    """Per-image memory (slope between batch 4 and 12) and step time, with and without remat."""
    found = {}
    for flag in (False, True):
        small, large = (run((256, b, 16, 4, "mixed_bfloat16", flag), steps) for b in (4, 12))
        found[flag] = ((large["measured"] - small["measured"]) / 8, large["step_seconds"])
        print(f"remat {flag!s:5}: {found[flag][0] / 2 ** 20:6.1f} MiB per image, step {found[flag][1]:.3f} s "
              "at batch 12", flush=True)
    print(f"RATIO remat / plain: activation memory {found[True][0] / found[False][0]:.2f}x (target <= 0.70), "
          f"step time {found[True][1] / found[False][1]:.2f}x (target <= 1.3)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibrate", action="store_true", help="fit the constants first")
    parser.add_argument("--remat", action="store_true", help="measure remat's saving and cost only")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(tuple(json.loads(args.child)), args.steps)))
    elif args.remat:
        remat(args.steps)
    else:
        if args.calibrate:
            calibrate(args.steps)
        check(args.steps)


if __name__ == "__main__":
    main()
