"""How every stage's cost grows with the dataset: the same synthetic data at two sizes, side by side.

Writes N and 10N (by default) synthetic image/mask pairs into two throw-away DVC projects, runs each stage
there with `dvc repro -s <stage>` (dvc.yaml's command, as a user's `dvc repro` runs it; a tiny model and one
short epoch: this measures the data path, not learning), and prints per stage: seconds per image, the peak
resident memory of the stage's process tree (DVC, the stage, its workers; sampled every 0.1 s), and the bytes
it added on disk (workspace and DVC cache together, a hard-linked file once) and how much of that DVC's cache
holds; then the ratios of the large run to the small one.

    .venv/bin/python bench/scale.py --images 500 --size 512                  # binary, N = 500 and 5,000
    .venv/bin/python bench/scale.py --images 200 --size 256 --classes 150    # 150 classes, 200 and 2,000
    .venv/bin/python bench/scale.py --images 500 --factor 10 --cache-type copy   # DVC's default cache

Targets (issue 29): per-image time at 10N within 1.2x of N, peak memory within 1.1x, evaluate's peak flat.
Nothing else may use the CPU while it runs (2-core machines: no tests beside it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("convert-to-png", "build-csv", "split-balanced", "augment", "preflight", "train", "evaluate")


def synthetic_pair(args: tuple[Path, int, int, int]) -> None:
    """One image and its mask: a few ellipses (binary) or Voronoi cells of random classes, over noise."""
    raw, index, size, classes = args
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[:size, :size]
    if classes == 1:
        mask = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            cy, cx, ry, rx = rng.uniform(0, size, 2).tolist() + rng.uniform(size / 20, size / 6, 2).tolist()
            mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
        saved = mask * 255
    else:
        seeds = rng.uniform(0, size, (12, 2))
        nearest = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
        mask = rng.integers(0, classes, 12).astype(np.uint8)[nearest]
        saved = mask
    image = (rng.normal(90, 25, (size, size, 3)) + (mask.astype(np.float32) * 97 % 160)[..., None])
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(raw / "images" / f"img{index:06d}.png")
    Image.fromarray(saved).save(raw / "masks" / f"img{index:06d}.png")


def make_project(folder: Path, *, images: int, size: int, classes: int, cache_type: str) -> None:
    """A git + DVC project with segpipe's stages, tiny training params and `images` synthetic pairs."""
    folder.mkdir(parents=True)
    for name in ("stages", "segpipe"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(mlflow=False, num_classes=classes, class_names=None)
    params["train"].update(image_size=[64, 64], input="resize", batch_size=8, depth=2, base_filters=4, epochs=1,
                           patience=0, warmup_epochs=0, precision="float32")
    params["preflight"].update(overfit_steps=0)
    params["augment"]["copies"] = 1
    params["evaluate"]["tta"] = "none"
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "cache.type", cache_type],
                    ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(command, cwd=folder, check=True, capture_output=True, env=tool_env(folder))
    shutil.copytree(ROOT / ".dvc" / "plots", folder / ".dvc" / "plots")
    raw = folder / "data" / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    with ProcessPoolExecutor() as pool:
        list(pool.map(synthetic_pair, [(raw, i, size, classes) for i in range(images)], chunksize=16))


def disk_bytes(path: Path) -> int:
    """Bytes that the files under `path` take on disk, each inode once (hard links share their blocks)."""
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(root, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def tree_peak_rss(process: subprocess.Popen) -> tuple[int, int]:
    """Waits for `process`; (its return code, the peak over time of the summed RSS of it and its children)."""
    peak, root = 0, psutil.Process(process.pid)
    while process.poll() is None:
        try:
            members = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in members if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    return process.returncode, peak


def tool_env(folder: Path) -> dict[str, str]:
    """This interpreter's environment (dvc and python on PATH) with the project's stages importable."""
    env = dict(os.environ, PYTHONPATH=str(folder), TF_CPP_MIN_LOG_LEVEL="2",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_stages(folder: Path, *, log: Path) -> dict[str, dict[str, float]]:
    """Each stage by `dvc repro -s`: seconds, peak memory of its process tree, bytes added on disk."""
    env = tool_env(folder)
    results = {}
    for stage in STAGES:
        disk, cache = disk_bytes(folder), disk_bytes(folder / ".dvc" / "cache")
        started = time.perf_counter()
        with open(log, "a") as fh:
            process = subprocess.Popen(["dvc", "repro", "-s", stage], cwd=folder, env=env, stdout=fh,
                                       stderr=subprocess.STDOUT)
            code, peak = tree_peak_rss(process)
        if code != 0:
            raise SystemExit(f"dvc repro -s {stage} failed in {folder}; see {log}")
        results[stage] = {"seconds": time.perf_counter() - started, "peak_mib": peak / 2**20,
                          "disk_mib": (disk_bytes(folder) - disk) / 2**20,
                          "cache_mib": (disk_bytes(folder / ".dvc" / "cache") - cache) / 2**20}
    return results


def repo_cache_type() -> str:
    """cache.type in the project's .dvc/config ("copy", DVC's default, when it sets none)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return config.get("cache", "type", fallback="copy").strip('"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500, help="N, the smaller dataset")
    parser.add_argument("--factor", type=int, default=10, help="the larger dataset has factor x N images")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--classes", type=int, default=1, help="num_classes: 1 = binary")
    parser.add_argument("--cache-type", default=repo_cache_type(), help="DVC's cache.type for both projects "
                        "(default: the project's .dvc/config)")
    parser.add_argument("--keep", type=Path, help="build the projects here and keep them (default: a temp folder)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="segpipe-scale-"))
    sizes = (args.images, args.images * args.factor)
    runs = {}
    for count in sizes:
        folder = base / f"n{count}"
        started = time.perf_counter()
        make_project(folder, images=count, size=args.size, classes=args.classes, cache_type=args.cache_type)
        print(f"{count} synthetic pairs of {args.size}x{args.size} written in {time.perf_counter() - started:.0f} s",
              flush=True)
        runs[count] = run_stages(folder, log=base / f"n{count}.log")
    kind = "binary" if args.classes == 1 else f"{args.classes} classes"
    print(f"\n{kind}, {args.size}x{args.size}, DVC cache.type {args.cache_type}; per stage at N = {sizes[0]} | "
          f"{sizes[1]} | ratio (large / small)")
    print(f"{'stage':15} {'s/image':>23} {'peak MiB':>23} {'disk MiB added':>21} {'in the cache':>19}")
    for stage in STAGES:
        small, large = runs[sizes[0]][stage], runs[sizes[1]][stage]
        per_image = [run["seconds"] / count for run, count in ((small, sizes[0]), (large, sizes[1]))]
        cells = [f"{per_image[0]:.4f} {per_image[1]:.4f} {per_image[1] / per_image[0]:4.2f}x",
                 f"{small['peak_mib']:6.0f} {large['peak_mib']:6.0f} {large['peak_mib'] / small['peak_mib']:5.2f}x",
                 f"{small['disk_mib']:8.1f} {large['disk_mib']:8.1f}",
                 f"{small['cache_mib']:7.1f} {large['cache_mib']:7.1f}"]
        print(f"{stage:15} {cells[0]:>23} {cells[1]:>23} {cells[2]:>21} {cells[3]:>19}")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
