"""Preflight: each check on hand-made cases (a broken config must fail, a sound one pass), the capacity numbers
on networks small enough to work out by hand, and the stage end to end: it passes on a sound tiny project,
and stops the pipeline (exit 2, no checks file) when the masks are 0/255 images, or only records it with
preflight.on_failure: warn."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, TINY_TRAIN, write_params
from segpipe.preflight import checks as preflight
from segpipe.preflight.capacity import (
    flops_per_image,
    object_sizes,
    output_stride,
    parameter_counts,
    receptive_field,
    typical_size,
)
from segpipe.training.losses import make_loss
from segpipe.training.model import build_unet


def learnable_batch(count: int = 4, side: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images that show their masks: bright squares on dark noise; masks {0, 1} of the squares."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, (count, side, side, 3)).astype(np.float32)
    masks = np.zeros((count, side, side, 1), np.uint8)
    for index in range(count):
        top, left = rng.integers(2, side - 12, 2)
        images[index, top:top + 9, left:left + 9] += 0.6
        masks[index, top:top + 9, left:left + 9] = 1
    return images, masks


def overfit(masks: np.ndarray, images: np.ndarray, *, trainable: bool = True, max_steps: int = 150):
    keras.utils.set_random_seed(0)
    model = build_unet(input_shape=images.shape[1:], num_classes=1, depth=2, base_filters=8)
    model.trainable = trainable
    return preflight.overfit_one_batch(model, images, masks, loss=make_loss(weights={"bce": 1.0, "dice": 1.0}),
                                       optimizer=keras.optimizers.Adam(3e-3), num_classes=1, target_iou=0.9,
                                       max_steps=max_steps, max_seconds=300)


def test_overfit_check_passes_on_a_batch_the_model_can_fit():
    images, masks = learnable_batch()
    check = overfit(masks, images)
    assert check.status == "pass", check.summary
    assert check.details["iou"] >= 0.9 and check.details["steps"] < 150


def test_overfit_check_fails_when_masks_are_0_255_under_a_sigmoid():
    """The classic wiring bug: masks saved as 0/255 images. 255 is void here, so the foreground is never
    seen: the loss falls (on the background) while the IoU stays at 0; both checks name it."""
    images, masks = learnable_batch()
    broken = masks * 255
    check = overfit(broken, images, max_steps=40)
    assert check.status == "fail" and check.details["iou"] < 0.5
    assert "wiring" in check.summary and "mask_values" in check.summary
    curve = check.details["curve"]
    assert curve[-1]["loss"] < curve[0]["loss"]  # the loss alone would have looked fine
    values = preflight.mask_value_check(broken, num_classes=1)
    assert values.status == "fail" and "0/255" in values.summary


def test_overfit_check_fails_for_a_frozen_model():
    images, masks = learnable_batch()
    check = overfit(masks, images, trainable=False, max_steps=20)
    assert check.status == "fail"


def test_overfit_check_that_learns_too_slowly_warns():
    """Rising but short of the target when the steps end (many classes, thin structures): a warning."""
    images, masks = learnable_batch()
    check = overfit(masks, images, max_steps=10)
    curve = check.details["curve"]
    assert check.details["iou"] < 0.9 and check.details["iou"] - curve[0]["iou"] >= preflight.LEARNING_RISE
    assert check.status == "warn" and "overfit_steps" in check.summary


@pytest.mark.parametrize("values, num_classes, status, fragment", [
    ([0, 1], 1, "pass", "class ids"),
    ([0, 1, 255], 1, "pass", "class ids"),
    ([0, 7], 1, "fail", "values [7]"),
    ([0, 2, 4], 3, "fail", "values [4]"),
    ([0, 2, 255, 255, 255, 255], 3, "warn", "void"),
])
def test_mask_value_check(values, num_classes, status, fragment):
    masks = np.array(values, np.uint8).reshape(1, 1, -1, 1)
    check = preflight.mask_value_check(masks, num_classes=num_classes)
    assert check.status == status and fragment in check.summary


def rows(fractions: list[float], pixels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(fractions))], "group": "", "foreground_fraction": fractions,
                         "class_pixels": pixels})


def test_data_check_warns_of_inverted_polarity_and_imbalance():
    sound = preflight.data_check({"train": rows([0.2, 0.3], ["80 20", "70 30"]), "valid": rows([0.2], ["8 2"])},
                                 num_classes=1, class_names=["background", "cell"])
    assert sound.status == "pass" and sound.details["rows"] == {"train": 2, "valid": 1}
    assert sound.details["class_pixel_share"] == {"background": 0.75, "cell": 0.25}
    inverted = preflight.data_check({"train": rows([0.8, 0.9], ["20 80", "10 90"])}, num_classes=1,
                                    class_names=["background", "cell"])
    assert inverted.status == "warn" and "invert_mask" in inverted.summary
    rare = preflight.data_check({"train": rows([0.001, 0.3], ["9990 10 0", "7000 3000 0"])}, num_classes=3,
                                class_names=["a", "b", "c"])
    assert rare.status == "warn" and "['c'] have no training pixels" in rare.summary


def test_run_time_check_warns_for_hours_on_a_cpu_only():
    slow = preflight.run_time_check(on_gpu=False, images_per_second=2.0, images_per_epoch=3600, epochs=30,
                                    max_minutes=0)
    assert slow.status == "warn" and slow.details["minutes"] == 900.0  # 30 min per epoch x 30
    assert preflight.run_time_check(on_gpu=True, images_per_second=2.0, images_per_epoch=3600, epochs=30,
                                    max_minutes=0).status == "pass"
    assert preflight.run_time_check(on_gpu=False, images_per_second=2.0, images_per_epoch=3600, epochs=30,
                                    max_minutes=20).status == "pass"  # a budget bounds it
    folds = preflight.run_time_check(on_gpu=False, images_per_second=2.0, images_per_epoch=3600, epochs=30,
                                     max_minutes=20, trainings=6)  # 5 folds and the single split: 6 budgets
    assert folds.status == "warn" and folds.details["minutes"] == 120.0 and "6 models" in folds.summary


def small_network(side: int) -> keras.Model:
    """conv 3x3 -> pool 2 -> conv 3x3 -> nearest up-sampling 2: receptive field 3, then 3 + 1 = 4 at stride 2,
    then 4 + 2 x 2 = 8 (up-sampling copies pixels: no change)."""
    inputs = keras.Input((side, side, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer="ones")(inputs)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Conv2D(3, 3, padding="same", kernel_initializer="ones")(x)
    return keras.Model(inputs, keras.layers.UpSampling2D()(x))


def test_capacity_numbers_of_a_network_worked_out_by_hand():
    model = small_network(16)
    assert parameter_counts(model) == (2 * 9 * 4 + 4 + 4 * 9 * 3 + 3, 0)
    # 2 x multiply-adds: 16x16 outputs x 4 filters x 3x3x2, then 8x8 x 3 x 3x3x4
    assert flops_per_image(model) == 2 * (16 * 16 * 4 * 18 + 8 * 8 * 3 * 36)
    assert output_stride(model) == 2
    assert receptive_field(small_network, side=32) == (8, False)
    assert receptive_field(small_network, side=8)[1] is True  # the field reaches the input's edge


def test_receptive_field_of_the_unet_grows_with_depth():
    def unet(depth):
        return lambda side: build_unet(input_shape=(side, side, 1), num_classes=1, depth=depth, base_filters=2)
    shallow, deep = receptive_field(unet(2), side=128)[0], receptive_field(unet(3), side=128)[0]
    # depth 2: 2 convs x 3 levels on the way down and up ... (theory 45 px); each level adds twice as much
    assert 30 < shallow < deep < 128


def test_object_sizes_per_class_in_network_pixels():
    mask = np.zeros((20, 20), np.uint8)
    mask[1:4, 1:4] = 1      # 3 x 3
    mask[10:15, 5:8] = 1    # 5 x 3: extent 5
    mask[16:18, 16:20] = 2  # 2 x 4
    mask[0, 19] = 255       # void: not an object
    binary = object_sizes([np.where(mask == 2, 1, mask)], num_classes=1, scales=[0.5])
    assert sorted(binary[1].tolist()) == [[1.5, 2.25], [2.0, 2.0], [2.5, 3.75]]  # (extent, area) scaled
    classes = object_sizes([mask], num_classes=3, scales=[1.0])
    assert sorted(classes[1][:, 0].tolist()) == [3, 5] and classes[2].tolist() == [[4, 8]] and len(classes[0]) == 1
    # the typical size is the median pixel's region: 9 px of the 3-region and 15 of the 5-region -> 5
    assert typical_size(classes[1]) == 5 and typical_size(np.array([[2.0, 1], [2, 1], [30, 100]])) == 30
    # a thin line 40 px long and 2 px wide: 4 x 80 / 80 boundary pixels = 4, twice its width, not 40
    line = np.zeros((10, 50), np.uint8)
    line[4:6, 5:45] = 1
    assert object_sizes([line], num_classes=1, scales=[1.0])[1].tolist() == [[4.0, 80.0]]


# -------------------------------------------------------------------------------------------- the stage
# The tiny U-Net of the stage tests, wide enough to fit a batch of these squares in well under 150 steps.
SOUND_TRAIN = {**TINY_TRAIN, "base_filters": 8, "learning_rate": 0.01}
COMMAND = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["preflight"]["cmd"])


def save_project_pair(root: Path, name: str, seed: int) -> None:
    images, masks = learnable_batch(count=1, side=40, seed=seed)
    for folder, array in (("images", (images[0] * 255).astype(np.uint8)), ("masks", masks[0, ..., 0] * 255)):
        (root / "data/raw" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / "data/raw" / folder / f"{name}.png")


def run(project: Path, *command: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *command], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny project through the data stages: 12 pairs of 40x40 images that show their squares."""
    project = tmp_path_factory.mktemp("preflight")
    shutil.copytree(REPO / "stages", project / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    for index in range(12):
        save_project_pair(project, f"sq{index}", seed=index)
    write_params(project, mlflow=False, convert={"num_workers": 1}, augment={"num_workers": 1},
                 train=SOUND_TRAIN)
    for stage in ("convert_to_png", "build_csv", "split_balanced", "augment"):
        command = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage.replace("_", "-")]["cmd"])
        done = run(project, *command[1:])
        assert done.returncode == 0, done.stderr
    return project


def outputs(project: Path) -> list[Path]:
    return [project / "reports/preflight.json", project / "reports/preflight_checks.json",
            project / "plots/preflight/contact_sheet.png"]


def test_the_console_script_runs_the_stage_and_it_passes_on_a_sound_project(project: Path):
    done = run(project, "-c", "from segpipe.preflight.checks import cli; cli()")  # segpipe-preflight, no arguments
    assert done.returncode == 0, done.stderr
    report, checks, sheet = outputs(project)
    assert json.loads(checks.read_text()) == {"passed": True, "failed_checks": []}
    facts = json.loads(report.read_text())["checks"]
    assert facts["overfit_one_batch"]["status"] == "pass" and facts["mask_values"]["status"] == "pass"
    assert facts["capacity"]["receptive_field_px"] > 10 and facts["data"]["rows"]["train"] >= 8
    assert facts["memory"]["estimate_gib"]["total"] > 0
    picture = np.asarray(Image.open(sheet))
    assert picture.ndim == 3 and (picture == (255, 230, 0)).all(axis=-1).any()  # outlines drawn
    for name in ("devices", "data", "capacity", "resolution", "memory", "mask_values", "overfit_one_batch",
                 "run_time"):
        assert f"] {name}: " in done.stdout


def test_masks_written_as_0_255_stop_the_pipeline_before_train(project: Path, tmp_path: Path):
    """Masks in data/png replaced by 0/255 images (as a hand-made data/png would be): exit 2, one error line
    naming the failed checks, the report written, the checks file (train's dependency) not, and an earlier
    one removed."""
    for path in sorted((project / "data/png/masks").glob("*.png")):
        (tmp_path / path.name).write_bytes(path.read_bytes())
        Image.fromarray((np.asarray(Image.open(path)) * 255).astype(np.uint8)).save(path)
    try:
        report, checks, sheet = outputs(project)
        for output in (report, sheet):
            output.unlink(missing_ok=True)
        checks.write_text('{"passed": true, "failed_checks": []}')  # an earlier run's verdict must not stay
        done = run(project, *COMMAND[1:])
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("preflight: error:")]
        assert len(errors) == 1 and "mask_values" in errors[0] and "overfit_one_batch" in errors[0]
        assert "preflight.on_failure: warn" in errors[0] and "Traceback" not in done.stderr
        assert report.is_file() and sheet.is_file() and not checks.exists()
        write_params(project, mlflow=False, convert={"num_workers": 1}, augment={"num_workers": 1},
                     train=SOUND_TRAIN, preflight={"on_failure": "warn"})
        done = run(project, *COMMAND[1:])
        assert done.returncode == 0, done.stderr
        assert json.loads(checks.read_text()) == {"passed": False,
                                                  "failed_checks": ["mask_values", "overfit_one_batch"]}
    finally:
        for saved in tmp_path.glob("*.png"):
            (project / "data/png/masks" / saved.name).write_bytes(saved.read_bytes())
        write_params(project, mlflow=False, convert={"num_workers": 1}, augment={"num_workers": 1},
                     train=SOUND_TRAIN)
