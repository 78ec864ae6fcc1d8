"""Precision `auto` resolution and the devices param (the multi-device run itself is in test_train_devices.py)."""
from __future__ import annotations

import pytest

from segpipe.training.devices import parse_devices, resolve_precision


@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512_bf16"}, "mixed_bfloat16"),
                                             ({"amx_bf16", "amx_tile"}, "mixed_bfloat16"),
                                             ({"avx2", "avx512f"}, "float32"), (set(), "float32")])
def test_auto_on_cpu_uses_bfloat16_only_where_native(flags, expected):
    policy, reason = resolve_precision("auto", on_gpu=False, gpu_capabilities=[], flags=flags, machine="x86_64")
    assert policy == expected and reason


@pytest.mark.parametrize("capabilities, expected", [([(8, 0)], "mixed_float16"), ([(7, 0), (8, 6)], "mixed_float16"),
                                                    ([(6, 1)], "float32"), ([(8, 0), (6, 1)], "float32")])
def test_auto_on_gpu_uses_float16_from_compute_capability_7(capabilities, expected):
    assert resolve_precision("auto", on_gpu=True, gpu_capabilities=capabilities, flags=set())[0] == expected


def test_explicit_precision_and_float16_on_cpu_is_refused():
    assert resolve_precision("float32", on_gpu=False, gpu_capabilities=[], flags={"avx512_bf16"})[0] == "float32"
    with pytest.raises(ValueError,
                       match="mixed_float16 but training runs on the CPU.*use auto, float32 or mixed_bfloat16"):
        resolve_precision("mixed_float16", on_gpu=False, gpu_capabilities=[], flags=set())
    with pytest.raises(ValueError, match="train.precision' must be one of"):
        resolve_precision("fp16", on_gpu=True, gpu_capabilities=[(8, 0)], flags=set())


def test_cpu_resolution_on_this_machine_matches_its_flags():
    from segpipe.training.devices import cpu_flags

    flags = cpu_flags()
    policy = resolve_precision("auto", on_gpu=False, gpu_capabilities=[], flags=flags)[0]
    assert policy == ("mixed_bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32")


@pytest.mark.parametrize("devices, expected", [("auto", ("auto", 0)), ("cpu", ("cpu", 1)), ("cpu:2", ("cpu", 2)),
                                               ([1, 2], ("gpu", [1, 2]))])
def test_devices_param(devices, expected):
    assert parse_devices(devices) == expected


@pytest.mark.parametrize("devices", ["gpu", "cpu:0", "cpu:x", [], [0, 0], [-1], [True]])
def test_bad_devices_param_is_explained(devices):
    with pytest.raises(ValueError, match="train.devices.*expected auto, cpu, cpu:N"):
        parse_devices(devices)
