"""The resolution check: what a perfect network scores after the masks go to the resized network input
and back (segpipe/preflight/capacity.py resize_ceiling, segpipe/preflight/checks.py resolution_check)."""
from __future__ import annotations

import numpy as np
import pytest

from segpipe.preflight.capacity import resize_ceiling
from segpipe.preflight.checks import resolution_check


def lines(width: int) -> np.ndarray:
    mask = np.zeros((512, 512), np.uint8)
    for left in range(20, 500, 40):
        mask[:, left:left + width] = 1
    return mask


@pytest.mark.parametrize("width, size, status", [
    (2, (64, 64), "warn"),     # 2 px lines at 1/8 of the side: most vanish or double
    (2, (512, 512), "pass"),   # at native size nothing is lost
    (16, (128, 128), "pass"),  # 16 px lines at 1/4: 4 px wide, kept
])
def test_thin_structures_at_a_small_input_warn(width, size, status):
    ceiling = resize_ceiling([lines(width)] * 2, size=size, num_classes=1)
    check = resolution_check(ceiling=ceiling, size=size, class_names=["background", "line"], num_classes=1)
    assert check.status == status
    iou = check.details["class_iou"]["line"]
    assert (iou == 1.0) if size == (512, 512) else (iou < 0.9) == (status == "warn")
    assert check.details["image_mean_iou"] == pytest.approx(iou, abs=1e-6)  # two identical masks
    if status == "warn":
        assert "'line'" in check.summary and "train.image_size" in check.summary


def test_void_is_not_scored_and_each_class_is():
    mask = np.zeros((200, 200), np.uint8)
    mask[:, 100:] = 1
    mask[:100, :] = 2
    mask[150:, :] = 255  # void: neither class nor error
    intersections, unions, per_image = resize_ceiling([mask], size=(200, 200), num_classes=3)
    assert list(intersections) == list(unions) == [5000, 5000, 20000]
    assert per_image == [1.0]
    check = resolution_check(ceiling=(intersections, unions, per_image), size=(200, 200),
                             class_names=["a", "b", "c"], num_classes=3)
    assert check.status == "pass" and check.details["class_iou"] == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_patches_are_native():
    check = resolution_check(ceiling=None, size=(256, 256), class_names=["background", "x"], num_classes=1)
    assert check.status == "pass" and check.details == {"input": "patches"}
