"""Peak training memory of a model per device, and the batch size that fits: `train.batch_size: auto`.

The estimate splits one training step's memory the usual way (as in ZeRO, Rajbhandari et al. 2020, and the
activation-memory accounting of Korthikanti et al. 2022):
- weights: the float32 variables, plus their compute-dtype copies under mixed precision;
- gradients: one float32 value per trainable weight;
- optimizer slots: adam/adamw keep two per trainable weight, sgd with momentum one;
- activations kept for the backward pass: batch x the sum of every layer's output, in its compute dtype
  (under mixed precision BatchNorm also keeps a float32 copy of its input: it normalises in float32),
  times ACTIVATION_FACTOR (ops keep their input, their output or both); with `remat` a recomputed block
  keeps its output only, and the largest block's inner outputs exist once, while its gradient is taken;
- workspace: a constant (traced step functions, allocator pools, kernel scratch) plus the backward pass's
  working set, WORKSPACE_FACTOR x batch x the largest layer output (the gradients of the activations being
  back-propagated; with remat it is what is left of the activation memory, so remat needs this term).
ACTIVATION_FACTOR, WORKSPACE_FACTOR and WORKSPACE_BYTES were fitted on the CPU (peak RSS increase over a
few steps, each configuration in its own process) by `bench/memory_plan.py --calibrate`, which also checks the
estimate against configurations not used to fit it. Devices run one replica each, with its own copy of
everything: the plan is per replica, with the per-replica batch (train.batch_size is per replica).
"""
from __future__ import annotations

import os
import subprocess

from segpipe.preflight.capacity import leaf_layers, parameter_counts

# Fitted by bench/memory_plan.py --calibrate (see its docstring for the configurations and the errors).
ACTIVATION_FACTOR = 0.449
WORKSPACE_FACTOR = 8.2
WORKSPACE_BYTES = 160 * 2 ** 20
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "sgd": 1}
# batch_size auto: the share of the device's memory the plan may fill (the rest: the TF runtime, the
# tf.data pipeline and its cache on CPUs, fragmentation), and the caps on the batch it picks.
GPU_MEMORY_SHARE = 0.85
CPU_MEMORY_SHARE = 0.5
MAX_AUTO_BATCH = 64        # per replica: past it, steps get few and an unchanged learning rate generalises worse
MIN_STEPS_PER_EPOCH = 4    # the batch is also capped at a quarter of the training rows


def _bytes(leaf) -> int:
    import keras

    full = "float32" in str(leaf.layer.compute_dtype)
    nbytes = leaf.output_elements * (4 if full else 2)
    if not full and isinstance(leaf.layer, keras.layers.BatchNormalization):
        nbytes += 4 * leaf.output_elements  # it normalises a float32 copy of its input
    return nbytes


def largest_layer_bytes(model) -> int:
    """Bytes per image of the largest layer output (as kept_activation_bytes counts it)."""
    return max((_bytes(leaf) for leaf in leaf_layers(model)), default=0)


def kept_activation_bytes(model) -> int:
    """Bytes per image kept for the backward pass.

    Each layer's output counts in its compute dtype. A recomputed block keeps its last output (the next
    layer's input); its inner outputs are counted once, for the largest block, as they exist only while
    that block's gradient is taken."""
    leaves = leaf_layers(model)
    kept, inner_by_block = 0, {}
    for index, leaf in enumerate(leaves):
        nbytes = _bytes(leaf)
        last_of_block = index + 1 == len(leaves) or leaves[index + 1].block != leaf.block
        if leaf.block is None or last_of_block:
            kept += nbytes
        else:
            inner_by_block[leaf.block] = inner_by_block.get(leaf.block, 0) + nbytes
    return kept + max(inner_by_block.values(), default=0)


def estimate(model, *, batch_size: int, optimizer: str, mixed_precision: bool) -> dict[str, int]:
    """Peak memory of one training step on one replica, in bytes, split by what holds it.

    Args:
        model: the built keras.Model (its layers' output shapes give the activation sizes).
        batch_size: images per replica.
        optimizer: one of OPTIMIZER_SLOTS.
        mixed_precision: True under mixed_float16 / mixed_bfloat16 (weights also cast to 16 bits).

    Returns:
        {"weights", "gradients", "optimizer_slots", "activations", "workspace", "total"}; every value but
        "weights" is allocated by the step itself (what a measurement of the step's increase sees).
    """
    trainable, frozen = parameter_counts(model)
    kept = kept_activation_bytes(model)
    plan = {
        "weights": 4 * (trainable + frozen) + (2 * trainable if mixed_precision else 0),
        "gradients": 4 * trainable,
        "optimizer_slots": 4 * trainable * OPTIMIZER_SLOTS[optimizer],
        "activations": int(ACTIVATION_FACTOR * kept * batch_size),
        "workspace": int(WORKSPACE_BYTES + WORKSPACE_FACTOR * largest_layer_bytes(model) * batch_size),
    }
    plan["total"] = sum(plan.values())
    return plan


def device_memory_bytes(device_name: str) -> tuple[int, str]:
    """(bytes the plan may fill on one replica's device, where that figure comes from).

    GPUs: GPU_MEMORY_SHARE of the board's memory (nvidia-smi). CPUs: CPU_MEMORY_SHARE of the machine's RAM,
    shared by the logical CPU devices of one machine (each gets its part).
    """
    if device_name.startswith("/gpu"):
        index = int(device_name.split(":")[1])
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            index = int(visible.split(",")[index])
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                                  "-i", str(index)], capture_output=True, text=True, check=True, timeout=30).stdout
            total = int(float(out.strip().splitlines()[0])) * 2 ** 20
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
            raise ValueError(f"train.batch_size auto needs the memory of GPU {index}, and nvidia-smi could not "
                             f"tell it ({err}); set train.batch_size to a number.") from None
        return int(GPU_MEMORY_SHARE * total), f"{GPU_MEMORY_SHARE:.0%} of GPU {index}'s {total / 2 ** 30:.1f} GiB"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(CPU_MEMORY_SHARE * total), f"{CPU_MEMORY_SHARE:.0%} of {total / 2 ** 30:.1f} GiB RAM"


def replica_budget(placement) -> tuple[int, str]:
    """(bytes one replica may fill, where that figure comes from) for a segpipe.training.devices.Placement: a GPU's
    share of its own memory; on CPUs, the machine's share split among its logical devices (each worker of a
    multi-worker run is a machine of its own)."""
    device_bytes, source = device_memory_bytes(placement.device_names[0])
    if placement.device_names[0].startswith("/gpu"):
        return device_bytes, source
    sharing = placement.num_replicas // placement.num_workers
    return device_bytes // sharing, source + (f", split among {sharing} logical devices" if sharing > 1 else "")


def pick_batch_size(model, *, optimizer: str, mixed_precision: bool, budget: int, num_replicas: int,
                    training_rows: int) -> tuple[int, str]:
    """The largest per-replica batch whose estimate fits, capped; (batch, the plan in words).

    Args:
        budget: bytes one replica may fill (replica_budget).
        num_replicas: replicas in sync (the global batch is batch x replicas).
        training_rows: rows of one epoch; the global batch is capped to a quarter of them.
    """
    one, two = (estimate(model, batch_size=b, optimizer=optimizer, mixed_precision=mixed_precision)["total"]
                for b in (1, 2))
    per_image, fixed = two - one, one - (two - one)
    fits = (budget - fixed) // per_image if per_image else MAX_AUTO_BATCH
    if fits < 1:
        raise ValueError(f"train.batch_size auto: one image does not fit: the estimate is {_gib(one)} per replica, "
                         f"the budget {_gib(budget)}; set train.remat: true, or lower train.image_size or "
                         "train.base_filters.")
    row_cap = max(1, training_rows // (MIN_STEPS_PER_EPOCH * num_replicas))
    batch = int(min(fits, MAX_AUTO_BATCH, row_cap))
    cap = ("" if batch == fits else f", capped at {batch}: " + (
        f"{MAX_AUTO_BATCH} at most per replica" if batch == MAX_AUTO_BATCH else
        f"at least {MIN_STEPS_PER_EPOCH} steps per epoch over {training_rows} training rows"))
    chosen = estimate(model, batch_size=batch, optimizer=optimizer, mixed_precision=mixed_precision)
    parts = ", ".join(f"{k.replace('_', ' ')} {_gib(v)}" for k, v in chosen.items() if k != "total")
    return batch, (f"batch_size auto: {int(fits)} image(s) per replica fit in {_gib(budget)}{cap}; at batch "
                   f"{batch} the estimate is {_gib(chosen['total'])} ({parts})")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.2f} GiB"
