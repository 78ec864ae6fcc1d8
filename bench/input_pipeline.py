"""Input pipeline benchmark: prints two ratios measured side by side in one run.

1. loader speed-up = images/s of segpipe's tf.data pipeline (parallel decode + prefetch, no cache)
   / images/s of a plain sequential PIL loader (a keras.utils.PyDataset, no workers, no prefetch).
   Target on a 2-core machine: >= 1.6.
2. input stall ratio = training step time of the U-Net fed by the pipeline (as train feeds it:
   cached, shuffled, balanced, prefetched) / step time fed by the same batches pre-loaded in memory.
   Target: <= 1.05.
3. deterministic / non-deterministic = images/s of the uncached pipeline in a process set up as
   `train.deterministic: true` sets it up (one inter-op thread, op determinism, ordered parallel maps)
   / the same in a process set up with `deterministic: false`; each in its own process, since threads
   are fixed when TensorFlow starts. Target: >= 0.9 (parallel decoding survives deterministic mode).
4. disk cache / PNG decode = images/s of the training stream reading decoded rows from the disk cache
   (`train.cache: disk`) / the same stream decoding the PNGs, resized and as native-size patches (for
   data that does not fit in memory: what the disk cache buys).

Data: ../shared/datasets/membrane_isbi2012 (30 real 512x512 EM images) when present, else the
synthetic demo data, run through the real convert-to-png stage into a temp folder.

    .venv/bin/python bench/input_pipeline.py [--image-size 256] [--batch-size 8] [--steps 12]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from segpipe.data import input_pipeline as ip  # noqa: E402
from segpipe.data.crops import Patches  # noqa: E402
from segpipe.training.devices import configure_runtime  # noqa: E402
from segpipe.training.model import build_unet  # noqa: E402
from stages import convert_to_png, make_demo_data  # noqa: E402

MEMBRANE = ROOT.parent / "shared" / "datasets" / "membrane_isbi2012"


def prepare_rows(work: Path) -> tuple[pd.DataFrame, int, str]:
    """Converts the benchmark data with the real stage; returns (rows, channels, name)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if MEMBRANE.is_dir():
        raw, name = MEMBRANE, "membrane_isbi2012 (30 x 512x512 gray PNG)"
        params["convert"].update(image_mode="L", invert_mask=True)
    else:
        raw, name = work / "raw", "synthetic demo data (48 small mixed-format images)"
        make_demo_data.main(["--output", str(raw)])
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    convert_to_png.main(["--raw-dir", str(raw), "--output-dir", str(work / "png"), "--skipped",
                         str(work / "skipped.csv"), "--params", str(work / "params.yaml")])
    rows = pd.read_csv(work / "png" / "manifest.csv", dtype=str, keep_default_na=False)
    for column in ("image_path", "mask_path"):
        rows[column] = [str(work / "png" / p) for p in rows[column]]
    return rows, 1 if params["convert"]["image_mode"] == "L" else 3, name


class SequentialLoader(keras.utils.PyDataset):
    """The plain baseline: PIL decode + resize + normalise, one batch at a time, in this process."""

    def __init__(self, rows: pd.DataFrame, *, image_size: int, batch_size: int, channels: int):
        super().__init__(workers=1, use_multiprocessing=False)
        self.rows, self.image_size, self.batch_size, self.channels = rows, image_size, batch_size, channels

    def __len__(self):
        return len(self.rows) // self.batch_size

    def __getitem__(self, index):
        chunk = self.rows.iloc[index * self.batch_size:(index + 1) * self.batch_size]
        size = (self.image_size, self.image_size)
        images = [np.asarray(Image.open(p).convert("L" if self.channels == 1 else "RGB").resize(size, Image.BILINEAR),
                             np.float32) / 255.0 for p in chunk["image_path"]]
        masks = [np.asarray(Image.open(p).resize(size, Image.NEAREST), np.uint8) for p in chunk["mask_path"]]
        images = np.stack(images)
        return images.reshape(images.shape[:3] + (self.channels,)), np.stack(masks)[..., None]


def images_per_second(batches, count: int) -> float:
    batches = iter(batches)
    next(batches)  # warm-up: graph tracing and thread start-up are not loading speed
    start, seen = time.perf_counter(), 0
    for images, _ in batches:
        seen += len(images)
        if seen >= count:
            break
    return seen / (time.perf_counter() - start)


def step_time(model, dataset, steps: int, warmup_steps: int) -> float:
    # warm-up: tracing, and one full pass so the pipeline's cache is filled as in a real epoch 2+
    model.fit(dataset, steps_per_epoch=warmup_steps, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps


def loader_speed_in_a_process(*, deterministic: bool, image_size: int, batch_size: int, passes: int) -> float:
    """Images/s of the uncached pipeline in a fresh process set up as train sets it up (ratio 3)."""
    done = subprocess.run([sys.executable, __file__, "--loader-only", "true" if deterministic else "false",
                           "--image-size", str(image_size), "--batch-size", str(batch_size), "--passes", str(passes)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1].split()[-1])


def loader_only(*, deterministic: bool, image_size: int, batch_size: int, passes: int) -> None:
    configure_runtime(devices="cpu", precision="float32", deterministic=deterministic, seed=0)
    with tempfile.TemporaryDirectory() as work:
        rows, channels, _ = prepare_rows(Path(work))
        dataset = ip.training_dataset([rows], weights=None, image_size=(image_size, image_size), channels=channels,
                                      batch_size=batch_size, seed=0, cache=False, online_augment=True,
                                      deterministic=deterministic)
        print(f"images/s {images_per_second(dataset, passes * (len(rows) // batch_size) * batch_size):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loader-only", choices=["true", "false"],
                        help="(internal) print the uncached pipeline's images/s with this train.deterministic")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per feeding mode")
    parser.add_argument("--passes", type=int, default=20, help="passes over the data for the loader speed")
    args = parser.parse_args()
    if args.loader_only:
        loader_only(deterministic=args.loader_only == "true", image_size=args.image_size,
                    batch_size=args.batch_size, passes=args.passes)
        return
    measured = [(flag, loader_speed_in_a_process(deterministic=flag, image_size=args.image_size,
                                                 batch_size=args.batch_size, passes=args.passes))
                for flag in (True, False, True)]  # deterministic twice, around the other, against drift
    speeds = {flag: float(np.mean([speed for f, speed in measured if f == flag])) for flag in (True, False)}
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as work:
        rows, channels, name = prepare_rows(Path(work))
        size, batch = (args.image_size, args.image_size), args.batch_size
        count = args.passes * (len(rows) // batch) * batch

        sequential = SequentialLoader(rows, image_size=args.image_size, batch_size=batch, channels=channels)
        sequential_speed = images_per_second((sequential[i % len(sequential)] for i in range(10**6)), count)
        ours = ip.training_dataset([rows], weights=None, image_size=size, channels=channels, batch_size=batch,
                                   seed=0, cache=False, online_augment=False, deterministic=False)
        ours_speed = images_per_second(ours, count)
        kept = {}
        for mode, patches in (("resized", None), ("patches", Patches(foreground_share=0.5, scale_range=(0.7, 1.4),
                                                                          num_classes=1))):
            for where in ("png", "disk"):
                stream = ip.training_dataset([rows], weights=None, image_size=size, channels=channels,
                                             batch_size=batch, seed=0, cache=False, online_augment=False,
                                             deterministic=True, patches=patches,
                                             disk_cache=Path(work) / "decoded" if where == "disk" else None)
                kept[mode, where] = images_per_second(stream, count)

        model = build_unet(input_shape=size + (channels,), num_classes=1, depth=4, base_filters=args.base_filters)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        fed = ip.training_dataset([rows], weights=None, image_size=size, channels=channels, batch_size=batch,
                                  seed=0, cache=True, online_augment=True, deterministic=False)
        preloaded = [(x.numpy(), y.numpy()) for x, y in fed.take(4)]
        in_memory = tf.data.Dataset.from_tensor_slices(
            (np.concatenate([x for x, _ in preloaded]), np.concatenate([y for _, y in preloaded]))
        ).batch(batch, drop_remainder=True).cache().repeat()
        warmup = len(rows) // batch + 2
        memory_step = step_time(model, in_memory, args.steps, warmup)
        pipeline_step = step_time(model, fed, args.steps, warmup)
        memory_step_again = step_time(model, in_memory, args.steps, warmup)  # brackets the pipeline run against drift
        memory_step = (memory_step + memory_step_again) / 2

    print(f"data: {name}; image size {args.image_size}, batch {batch}, {os.cpu_count()} CPU cores")
    print(f"sequential PIL loader: {sequential_speed:8.1f} images/s")
    print(f"segpipe tf.data:       {ours_speed:8.1f} images/s")
    print(f"loader speed-up: {ours_speed / sequential_speed:.2f}x   (target >= 1.6)")
    print(f"train step, pre-loaded batches: {memory_step * 1000:8.1f} ms")
    print(f"train step, segpipe pipeline:   {pipeline_step * 1000:8.1f} ms")
    print(f"input stall ratio: {pipeline_step / memory_step:.3f}   (target <= 1.05)")
    print(f"uncached pipeline, deterministic: true:  {speeds[True]:8.1f} images/s (mean of two processes)")
    print(f"uncached pipeline, deterministic: false: {speeds[False]:8.1f} images/s")
    print(f"deterministic / non-deterministic: {speeds[True] / speeds[False]:.2f}   (target >= 0.9)")
    for mode in ("resized", "patches"):
        print(f"{mode}: PNG decode {kept[mode, 'png']:8.1f} images/s, disk cache {kept[mode, 'disk']:8.1f} images/s; "
              f"disk cache / PNG decode: {kept[mode, 'disk'] / kept[mode, 'png']:.2f}")


if __name__ == "__main__":
    main()
