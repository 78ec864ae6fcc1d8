"""Where and in which precision training runs: the distribution strategy and the mixed-precision policy.

Both must be decided before TensorFlow initialises its devices, so `configure_runtime` is the first
TF call the train stage makes.

devices:   "auto" = all visible GPUs, else the CPU; "cpu"; "cpu:N" = the CPU split into N logical
           devices (to run the multi-device code path without GPUs: tests, debugging); or a list of
           GPU ids such as [1, 2] (ids as nvidia-smi numbers them, any subset).
           More than one device -> tf.distribute.MirroredStrategy; TF_CONFIG naming several workers
           -> MultiWorkerMirroredStrategy (each worker uses its own devices).
precision: "auto" = mixed_float16 on NVIDIA GPUs of compute capability >= 7.0, mixed_bfloat16 on CPUs
           with native bf16 (AVX512-BF16 or AMX), float32 otherwise; or one of the policies by name.
           mixed_float16 on a CPU is refused: it is emulated there and several times slower.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass

import keras
import tensorflow as tf

from segpipe.core.schema import PRECISIONS

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass
class Placement:
    strategy: tf.distribute.Strategy
    device_names: list[str]     # what training actually runs on, e.g. ["/gpu:0", "/gpu:1"] or ["/cpu:0"]
    num_replicas: int
    num_workers: int
    is_chief: bool               # the worker that writes outputs (always True without TF_CONFIG)

    @property
    def description(self) -> str:
        """E.g. "/gpu:0,/gpu:1" or "/cpu:0 x 2 workers"."""
        return ",".join(self.device_names) + (f" x {self.num_workers} workers" if self.num_workers > 1 else "")


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (Linux); empty where it is unavailable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def parse_devices(devices) -> tuple[str, list[int] | int]:
    """Validates the `train.devices` param -> ("auto", 0) | ("cpu", n_logical) | ("gpu", [ids])."""
    hint = "expected auto, cpu, cpu:N (N logical CPU devices) or a list of GPU ids such as [0, 1]."
    if devices == "auto":
        return "auto", 0
    if devices == "cpu":
        return "cpu", 1
    if isinstance(devices, str) and devices.startswith("cpu:") and devices[4:].isdigit() and int(devices[4:]) >= 1:
        return "cpu", int(devices[4:])
    if (isinstance(devices, list) and devices and len(set(devices)) == len(devices)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in devices)):
        return "gpu", list(devices)
    raise ValueError(f"param 'train.devices' is {devices!r}; {hint}")


def _worker_count() -> tuple[int, bool]:
    """(number of workers, is this the chief) from TF_CONFIG; (1, True) when it is not set."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 1, True
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"environment variable TF_CONFIG is not valid JSON with 'cluster' and 'task' ({err}); "
                         'expected e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                         '"task": {"type": "worker", "index": 0}}.') from None
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    is_chief = task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index") == 0
                                                and not cluster.get("chief"))
    return max(1, workers), is_chief


def setup_devices(devices) -> Placement:
    """Configures visible/logical devices and returns the strategy. Call before any other TF use."""
    kind, spec = parse_devices(devices)
    gpus = tf.config.list_physical_devices("GPU")
    if kind == "gpu":
        missing = [i for i in spec if i >= len(gpus)]
        if missing:
            raise ValueError(f"param 'train.devices' asks for GPU ids {missing}, but this machine has "
                             f"{len(gpus)} visible GPU(s) (ids 0..{len(gpus) - 1}); fix the list or use auto.")
        tf.config.set_visible_devices([gpus[i] for i in spec], "GPU")
    elif kind == "cpu":
        tf.config.set_visible_devices([], "GPU")
        cpu = tf.config.list_physical_devices("CPU")[0]
        if spec > 1:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * spec)
    num_workers, is_chief = _worker_count()
    if kind == "auto" and gpus:
        names = [f"/gpu:{i}" for i in range(len(gpus))]
    elif kind == "gpu":
        names = [f"/gpu:{i}" for i in range(len(spec))]  # visible GPUs are renumbered from 0
    else:
        names = [f"/cpu:{i}" for i in range(max(1, spec))]
    if num_workers > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif len(names) > 1:
        strategy = tf.distribute.MirroredStrategy(devices=names)
    else:
        strategy = tf.distribute.OneDeviceStrategy(names[0])
    return Placement(strategy=strategy, device_names=names, num_replicas=strategy.num_replicas_in_sync,
                     num_workers=num_workers, is_chief=is_chief)


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) of each visible GPU (empty on CPU-only machines)."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    return capabilities


def resolve_precision(precision: str, *, on_gpu: bool, gpu_capabilities: list[tuple[int, int]],
                      flags: set[str], machine: str | None = None) -> tuple[str, str]:
    """(policy name, reason) for the `train.precision` param. Pure function: inputs describe the hardware."""
    if precision not in PRECISIONS:
        raise ValueError(f"param 'train.precision' must be one of {list(PRECISIONS)}, got {precision!r}.")
    machine = machine or platform.machine()
    if precision == "mixed_float16" and not on_gpu:
        raise ValueError("param 'train.precision' is mixed_float16 but training runs on the CPU, where float16 is "
                         "emulated (measured 6x slower than float32); use auto, float32 or mixed_bfloat16.")
    if precision != "auto":
        return precision, "set in params"
    if on_gpu:
        if gpu_capabilities and min(gpu_capabilities) >= (7, 0):
            return "mixed_float16", f"NVIDIA GPU(s) with compute capability {min(gpu_capabilities)} >= 7.0"
        return "float32", f"GPU compute capability {min(gpu_capabilities, default=(0, 0))} < 7.0 (no fast float16)"
    native = sorted(flags & set(BF16_CPU_FLAGS))
    if native:
        return "mixed_bfloat16", f"CPU with native bfloat16 ({', '.join(native)})"
    return "float32", f"CPU without native bfloat16 ({machine}: no {' / '.join(BF16_CPU_FLAGS)})"


def configure_runtime(*, devices, precision: str, deterministic: bool, seed: int) -> tuple[Placement, str, str]:
    """Threads, devices, strategy, precision policy and seeds for this process, in the order TF needs.

    Returns:
        (placement, precision policy name, why that policy).
    """
    if deterministic:
        # With several inter-op threads, independent ops run concurrently and on CPU their float results then
        # differ in the last bits from run to run (measured on the demo, float32 and bfloat16, oneDNN on and
        # off: epoch-1 losses differ at 1e-5 and grow over epochs). One inter-op thread makes them repeat.
        tf.config.threading.set_inter_op_parallelism_threads(1)
    placement = setup_devices(devices)
    on_gpu = placement.device_names[0].startswith("/gpu")
    policy, reason = resolve_precision(precision, on_gpu=on_gpu, flags=cpu_flags(),
                                       gpu_capabilities=gpu_compute_capabilities() if on_gpu else [])
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return placement, policy, reason
