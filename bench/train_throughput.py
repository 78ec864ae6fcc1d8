"""Training throughput benchmark: images/s of the default model, float32 vs the `auto` precision, and
`auto` with vs without `deterministic: true` (TensorFlow op determinism), measured side by side in one
run (each configuration in its own process: the precision policy and device setup are per process).
On a GPU it also compares mixed_float16 and XLA (jit_compile).

The model and batch come from params.yaml (train.*: encoder, depth, base_filters, image_size,
batch_size, loss); the batches are random, pre-loaded in memory, so only the training step is timed.

    .venv/bin/python bench/train_throughput.py [--steps 30] [--warmup 5] [--repeats 2]
Target on the 2-core CPU machine: auto / float32 >= 1.3. The determinism ratio says what exact
reproducibility costs (the train stage applies op determinism whenever deterministic is true).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def measure(policy: str, jit_compile: bool, steps: int, warmup: int, deterministic: bool) -> dict:
    """Runs in a child process: one configuration, returns images/s."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    import time

    import tensorflow as tf

    if deterministic:  # as the train stage does for train.deterministic: true
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    import numpy as np
    import yaml

    from segpipe.training import devices
    from segpipe.training.keras_metrics import training_metrics
    from segpipe.training.losses import make_loss
    from segpipe.training.model import build_unet

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    train = {**params["train"], **json.loads(os.environ.get("BENCH_TRAIN_OVERRIDES", "{}"))}
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if policy == "auto":
        policy = devices.resolve_precision("auto", on_gpu=on_gpu, flags=devices.cpu_flags(),
                                           gpu_capabilities=devices.gpu_compute_capabilities())[0]
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    height, width = train["image_size"]
    channels = 1 if params["convert"]["image_mode"] == "L" else 3
    model = build_unet(input_shape=(height, width, channels), num_classes=params["num_classes"],
                       encoder=train["encoder"], depth=train["depth"], base_filters=train["base_filters"],
                       dropout=train["dropout"], upsampling=train["upsampling"], normalization=train["normalization"])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss(weights=train["loss"]),
                  metrics=training_metrics(num_classes=params["num_classes"], threshold=0.5), jit_compile=jit_compile)
    batch = train["batch_size"]
    rng = np.random.default_rng(0)
    x = rng.random((batch, height, width, channels), dtype=np.float32)
    y = (rng.random((batch, height, width, 1)) > 0.7).astype(np.uint8)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"policy": policy, "jit_compile": jit_compile, "deterministic": deterministic,
            "images_per_second": steps * batch / seconds, "device": "gpu" if on_gpu else "cpu"}


def run_child(policy: str, jit_compile: bool, deterministic: bool, args) -> dict:
    command = [sys.executable, __file__, "--child", policy, "--jit" if jit_compile else "--no-jit",
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if not deterministic:
        command.append("--no-deterministic")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed ({policy}, jit={jit_compile}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--jit", dest="jit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-jit", dest="jit", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="override a train.* param for this benchmark, e.g. --set base_filters=32")
    parser.add_argument("--no-deterministic", dest="deterministic", action="store_false",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.jit, args.steps, args.warmup, args.deterministic)))
        return

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    os.environ["BENCH_TRAIN_OVERRIDES"] = json.dumps(overrides)
    import tensorflow as tf

    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    configs = [("float32", False, True), ("auto", False, True), ("auto", False, False)]
    if on_gpu:
        configs += [("mixed_float16", False, True), ("float32", True, True), ("mixed_float16", True, True)]
    best: dict[tuple, dict] = {}
    for round_index in range(args.repeats):  # alternate configs so machine noise hits them alike
        for policy, jit, deterministic in configs:
            result = run_child(policy, jit, deterministic, args)
            key = (policy, jit, deterministic)
            if key not in best or result["images_per_second"] > best[key]["images_per_second"]:
                best[key] = result
            print(f"round {round_index + 1}: {policy:>14} (-> {result['policy']}) jit={jit!s:5} "
                  f"deterministic={deterministic!s:5} {result['images_per_second']:8.2f} images/s", flush=True)
    base = best[("float32", False, True)]["images_per_second"]
    print(f"\ndevice: {best[('float32', False, True)]['device']}; best of {args.repeats} rounds, "
          f"{args.steps} timed steps each")
    for (policy, jit, deterministic), result in best.items():
        print(f"  {policy:>14} -> {result['policy']:<15} jit={jit!s:5} deterministic={deterministic!s:5} "
              f"{result['images_per_second']:8.2f} images/s  "
              f"ratio vs float32 {result['images_per_second'] / base:5.2f}x")
    auto, fast = best[("auto", False, True)], best[("auto", False, False)]
    print(f"RATIO auto ({auto['policy']}) / float32: {auto['images_per_second'] / base:.2f}x (target >= 1.3 on CPU)")
    print(f"RATIO deterministic / not, {auto['policy']}: {auto['images_per_second'] / fast['images_per_second']:.2f}x")


if __name__ == "__main__":
    main()
