"""make-demo-data: write a small synthetic segmentation dataset that looks like the real problem.

Not a DVC stage: it is the setup step that fills data/raw/ on a fresh clone (setup.sh runs it only
when data/raw/ does not exist), so a user with real data just puts their folders there instead.

Writes:  --output/images/<group>/<stem>.<ext> and --output/masks/<group>/<stem>.<ext>
         Bright elongated objects (like fingernails) on skin-like or noisy textured backgrounds, 1-4
         per image, some tiny, some large. Two groups of different size ("hands" and "closeups") so
         balancing matters. Images mix JPEG, PNG, BMP and TIFF (LZW) at several sizes; masks mix PNG
         (0/255), 1-bit BMP and lossy RGB JPEG, which exercises the real conversion paths.
Deterministic: the same --seed gives byte-identical files.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.core.cli import describe, run_stage

GROUPS = {"hands": 36, "closeups": 12}  # unequal on purpose
SIZES = [(128, 128), (160, 120), (120, 160), (144, 112), (112, 144)]  # (width, height)
IMAGE_FORMATS = [("jpg", "JPEG"), ("png", "PNG"), ("bmp", "BMP"), ("tif", "TIFF")]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    if rng.random() < 0.7:  # skin-like: warm base colour with blotches and pores
        base = np.array([200, 150, 120]) + rng.normal(0, 18, 3)
        texture = 0.75 + 0.35 * _smooth_noise(rng, height, width, 5)
        image = base[None, None, :] * texture[..., None]
        image += rng.normal(0, 6, (height, width, 1))
    else:  # noisy gray-green bench background
        base = np.array([110, 120, 110]) + rng.normal(0, 15, 3)
        image = base[None, None, :] * (0.6 + 0.6 * _smooth_noise(rng, height, width, 9))[..., None]
        image += rng.normal(0, 14, (height, width, 3))
    return image


def make_example(rng: np.random.Generator, width: int, height: int, large: bool):
    """Returns (uint8 RGB image (H, W, 3), bool mask (H, W))."""
    image = _background(rng, height, width)
    mask = np.zeros((height, width), dtype=bool)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(1, 5))):
        major = rng.uniform(0.18, 0.32) * min(width, height) if large else rng.uniform(4.0, 8.0)
        minor = major / rng.uniform(1.5, 2.6)
        center_y, center_x = rng.uniform(major, height - major), rng.uniform(major, width - major)
        angle = rng.uniform(0, np.pi)
        dy, dx = rows - center_y, cols - center_x
        along = dx * np.cos(angle) + dy * np.sin(angle)
        across = -dx * np.sin(angle) + dy * np.cos(angle)
        radius = (along / major) ** 2 + (across / minor) ** 2
        inside = radius <= 1.0
        shine = np.clip(1.0 - radius, 0, 1)[..., None]  # brighter towards the middle, like a nail
        colour = np.array([235, 215, 210]) + rng.normal(0, 8, 3)
        alpha = np.clip((1.08 - radius) / 0.08, 0, 1)[..., None]  # soft, anti-aliased rim
        image = image * (1 - alpha) + (colour * (0.85 + 0.15 * shine)) * alpha
        mask |= inside
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _save_mask(mask: np.ndarray, path_stem: Path, index: int) -> None:
    if index % 7 == 3:  # lossy RGB JPEG mask, as exported by some annotation tools
        Image.fromarray(np.repeat(mask[..., None] * np.uint8(255), 3, axis=2)).save(
            path_stem.with_suffix(".jpg"), quality=90)
    elif index % 5 == 1:  # 1-bit BMP
        Image.fromarray(mask).convert("1").save(path_stem.with_suffix(".bmp"))
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path_stem.with_suffix(".png"))


def write_dataset(output: Path, *, seed: int, scale: float = 1.0) -> int:
    """Writes the demo dataset into `output` (which must not exist). Returns the number of pairs."""
    rng = np.random.default_rng(seed)
    count = 0
    for group, size in GROUPS.items():
        (output / "images" / group).mkdir(parents=True)
        (output / "masks" / group).mkdir(parents=True)
        for index in range(max(2, round(size * scale))):
            width, height = SIZES[int(rng.integers(len(SIZES)))]
            image, mask = make_example(rng, width, height, large=(group == "closeups") or rng.random() < 0.5)
            ext, pil_format = IMAGE_FORMATS[index % len(IMAGE_FORMATS)]
            stem = f"{group}_{index:03d}"
            options = ({"quality": 92} if pil_format == "JPEG" else {"compression": "tiff_lzw"} if pil_format == "TIFF"
                       else {})
            Image.fromarray(image).save(output / "images" / group / f"{stem}.{ext}", pil_format, **options)
            _save_mask(mask, output / "masks" / group / stem, index)
            count += 1
    return count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--output", type=Path, required=True, help="folder to create, e.g. data/raw")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images (default 0)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of images per group")
    args = parser.parse_args(argv)
    if args.output.exists():
        raise ValueError(f"'{args.output}' already exists; the demo data never overwrites data. "
                         "Remove it first to regenerate.")
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    count = write_dataset(tmp, seed=args.seed, scale=args.scale)
    tmp.rename(args.output)
    print(f"make-demo-data: wrote {count} image/mask pairs to {args.output}")


if __name__ == "__main__":
    run_stage("make-demo-data", main)
