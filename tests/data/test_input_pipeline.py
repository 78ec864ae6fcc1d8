"""The tf.data pipeline: dtypes/shapes/ranges, balanced sampling, determinism, alignment, errors."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from segpipe.data import input_pipeline as ip
from segpipe.data import input_plan
from segpipe.data.bad_files import naming_bad_files
from segpipe.data.rows import check_files


def write_rows(folder: Path, group: str, count: int, value: int, size=(12, 16)) -> pd.DataFrame:
    """Rows of constant images (every pixel = value, so a drawn sample tells its group) and box masks."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        image = np.full(size + (3,), value, np.uint8)
        image[..., 2] = index  # distinct images within a group
        mask = np.zeros(size, np.uint8)
        mask[2:6, 3:9] = 1
        image_path, mask_path = folder / f"{group}{index}_i.png", folder / f"{group}{index}_m.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray(mask).save(mask_path)
        rows.append({"id": f"{group}{index}", "image_path": str(image_path), "mask_path": str(mask_path),
                     "group": group, "height": size[0], "width": size[1], "foreground_fraction": mask.mean()})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def three_groups(tmp_path_factory) -> list[pd.DataFrame]:
    folder = tmp_path_factory.mktemp("rows")
    return [write_rows(folder, "a", 40, 20), write_rows(folder, "b", 8, 120), write_rows(folder, "c", 2, 220)]


def make_training(subsets, **overrides):
    options = dict(weights=None, image_size=(8, 8), channels=3, batch_size=100, seed=1, cache=True,
                   online_augment=False, deterministic=True) | overrides
    return ip.training_dataset(subsets, **options)


def kept(where: str, folder: Path) -> dict:
    """training_dataset's options that keep decoded rows in memory, on disk (in `folder`) or nowhere."""
    return dict(cache=where == "memory", disk_cache=folder / "decoded" if where == "disk" else None)


WHERE = ["memory", "disk", "none"]


def test_batches_have_documented_shapes_dtypes_and_ranges(three_groups):
    images, masks = next(iter(make_training(three_groups, batch_size=4, image_size=(8, 10))))
    assert images.dtype == tf.float32 and images.shape == (4, 8, 10, 3)
    assert masks.dtype == tf.uint8 and masks.shape == (4, 8, 10, 1)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert set(np.unique(masks.numpy())) <= {0, 1}


def test_equal_weights_balance_unequal_groups(three_groups):
    values = np.concatenate([batch[0][:, 0, 0, 0].numpy() for batch in make_training(three_groups).take(60)])
    assert values.size == 6000
    shares = np.array([np.mean(np.isclose(values, v / 255, atol=0.01)) for v in (20, 120, 220)])
    assert shares.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(shares, 1 / 3, rtol=0.05)  # 40 : 8 : 2 rows, drawn 1 : 1 : 1


def test_weights_set_the_proportions(three_groups):
    values = np.concatenate([b[0][:, 0, 0, 0].numpy() for b in make_training(three_groups, weights=[2, 1, 1]).take(40)])
    assert np.mean(np.isclose(values, 20 / 255, atol=0.01)) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="one per subset"):
        make_training(three_groups, weights=[1, 1])


def test_seeded_and_deterministic(three_groups):
    first = [b[0].numpy() for b in make_training(three_groups, batch_size=8).take(3)]
    second = [b[0].numpy() for b in make_training(three_groups, batch_size=8).take(3)]
    other = [b[0].numpy() for b in make_training(three_groups, batch_size=8, seed=2).take(3)]
    assert all(np.array_equal(x, y) for x, y in zip(first, second))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other))


def batches(dataset, count: int) -> list[np.ndarray]:
    return [np.concatenate([images.numpy().ravel(), masks.numpy().ravel()]) for images, masks in dataset.take(count)]


@pytest.mark.parametrize("where", WHERE)
def test_an_earlier_iterator_does_not_change_the_batches(three_groups, where, tmp_path):
    """Keras' fit iterated a dataset twice (build, then train) while the first iterator kept prefetching.
    With a shared shuffle-seed state the second iterator's batches depended on how far the first got."""
    dataset = make_training(three_groups, batch_size=8, online_augment=True, **kept(where, tmp_path))
    alone = batches(dataset, 6)
    for wait in (0.0, 0.5):
        first = iter(dataset)
        next(first)
        time.sleep(wait)  # let the abandoned iterator prefetch (and pass the end of the 2-row subset)
        assert all(np.array_equal(x, y) for x, y in zip(batches(dataset, 6), alone)), f"after {wait} s"
        del first


@pytest.mark.parametrize("where", ["disk", "none"])
def test_memory_disk_and_uncached_streams_are_the_same(three_groups, where, tmp_path):
    cached = batches(make_training(three_groups, batch_size=8, online_augment=True, cache=True), 12)
    other = batches(make_training(three_groups, batch_size=8, online_augment=True, **kept(where, tmp_path)), 12)
    assert all(np.array_equal(x, y) for x, y in zip(cached, other))


@pytest.mark.parametrize("where", WHERE)
def test_first_batch_starts_the_same_stream_later(three_groups, where, tmp_path):
    options = dict(batch_size=8, online_augment=True, **kept(where, tmp_path))
    whole = batches(make_training(three_groups, **options), 9)
    later = batches(make_training(three_groups, first_batch=5, **options), 4)
    assert all(np.array_equal(x, y) for x, y in zip(whole[5:], later))


def test_the_disk_cache_is_written_once_per_data_version(tmp_path):
    """Rows are decoded into the disk cache once; a later run reads them without decoding; a PNG that
    changes gets a new file; the folder holds nothing half-written."""
    rows = write_rows(tmp_path / "rows", "a", 6, 50)
    counts = []
    for _ in range(2):
        decoded = tf.Variable(0, dtype=tf.int64)
        first = batches(make_training([rows], batch_size=3, decoded=decoded, **kept("disk", tmp_path)), 4)
        counts.append(int(decoded.numpy()))
    assert counts == [6, 0]
    files = sorted((tmp_path / "decoded").glob("*/*"))
    assert len(files) == 6 and all(f.stat().st_size == 8 * 8 * 4 for f in files)  # 8x8, RGB + mask
    Image.fromarray(np.full((12, 16, 3), 99, np.uint8)).save(rows["image_path"][0])  # the data changes
    decoded = tf.Variable(0, dtype=tf.int64)
    again = batches(make_training([rows], batch_size=3, decoded=decoded, **kept("disk", tmp_path)), 4)
    assert int(decoded.numpy()) == 1 and len(list((tmp_path / "decoded").glob("*/*"))) == 7
    assert any(np.any(np.isclose(b, 99 / 255)) for b in again) and not any(np.any(np.isclose(b,
                                                                                             99 / 255)) for b in first)


def test_a_copy_of_the_data_elsewhere_finds_the_disk_cache(tmp_path):
    """Rows are named by their PNGs' contents, not their paths or times, so DVC's temporary experiment copies
    read what the workspace wrote."""
    import shutil

    rows = write_rows(tmp_path / "rows", "a", 4, 50)
    batches(make_training([rows], batch_size=2, **kept("disk", tmp_path)), 2)
    shutil.copytree(tmp_path / "rows", tmp_path / "copy", copy_function=shutil.copy)  # new paths and times
    copied = rows.assign(image_path=rows["image_path"].str.replace("/rows/", "/copy/"),
                         mask_path=rows["mask_path"].str.replace("/rows/", "/copy/"))
    decoded = tf.Variable(0, dtype=tf.int64)
    batches(make_training([copied], batch_size=2, decoded=decoded, **kept("disk", tmp_path)), 2)
    assert int(decoded.numpy()) == 0


def test_a_disk_cache_that_does_not_fit_names_the_param(tmp_path, monkeypatch):
    from segpipe.data import decoded_cache

    rows = write_rows(tmp_path / "rows", "a", 2, 50)
    monkeypatch.setattr(decoded_cache, "free_bytes", lambda folder: 100)
    with pytest.raises(ValueError, match=r"train.cache: disk needs .* GiB in .*decoded.* 2 decoded rows.*"
                                         r"set train.cache: none"):
        make_training([rows], batch_size=2, **kept("disk", tmp_path))
    assert not (tmp_path / "decoded").exists()


def test_each_pass_visits_every_row_once_in_a_new_order(three_groups):
    rows = three_groups[0]  # 40 rows, blue channel = row index
    blue = np.concatenate([b[0][:, 0, 0, 2].numpy() for b in make_training([rows], batch_size=10).take(8)])
    passes = np.round(blue * 255).astype(int).reshape(2, 40)
    assert sorted(passes[0]) == sorted(passes[1]) == list(range(40))
    assert list(passes[0]) != list(passes[1])


def test_online_augmentation_moves_image_and_mask_together(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for index in range(4):
        red = rng.integers(0, 2, (16, 16)).astype(bool)
        image = np.dstack([red * 255, np.zeros((16, 16)), np.zeros((16, 16))]).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / f"{index}_i.png")
        Image.fromarray(red.astype(np.uint8)).save(tmp_path / f"{index}_m.png")
        rows.append({"image_path": str(tmp_path / f"{index}_i.png"), "mask_path": str(tmp_path / f"{index}_m.png")})
    plain = make_training([pd.DataFrame(rows)], image_size=(16, 16), batch_size=4, online_augment=False)
    augmented = make_training([pd.DataFrame(rows)], image_size=(16, 16), batch_size=4, online_augment=True)
    # static shapes survive the random turns (an unknown shape makes every training step slower)
    assert augmented.element_spec[0].shape == (4, 16, 16, 3) and augmented.element_spec[1].shape == (4, 16, 16, 1)
    changed = 0
    for (image, mask), (plain_image, _) in zip(augmented.take(10), plain.take(10)):
        np.testing.assert_array_equal(mask.numpy()[..., 0], (image.numpy()[..., 0] > 0.5).astype(np.uint8))
        changed += not np.array_equal(image.numpy(), plain_image.numpy())
    assert changed > 5  # the flips and turns really happen


def test_evaluation_dataset_keeps_order_and_all_rows(three_groups):
    rows = three_groups[1]
    batches = list(ip.evaluation_dataset(rows, image_size=(8, 8), channels=3, batch_size=3, cache=False))
    assert [len(b[0]) for b in batches] == [3, 3, 2]
    blue = np.concatenate([b[0][:, 0, 0, 2].numpy() for b in batches])
    np.testing.assert_allclose(blue * 255, np.arange(8), atol=0.01)


def test_missing_and_non_png_files_are_named(three_groups, tmp_path):
    rows = three_groups[2].copy()
    rows.loc[0, "image_path"] = str(tmp_path / "gone.png")
    (tmp_path / "fake.png").write_bytes(b"GIF89a not a png")
    rows.loc[1, "mask_path"] = str(tmp_path / "fake.png")
    with pytest.raises(ValueError) as error:
        check_files(rows, source="'train.csv'")
    assert f"'{tmp_path / 'gone.png'}' does not exist" in str(error.value)
    assert f"'{tmp_path / 'fake.png'}' is not a PNG file" in str(error.value)


def test_truncated_png_error_names_the_file(three_groups, tmp_path):
    rows = three_groups[2].copy()
    data = Path(rows.loc[0, "image_path"]).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    rows.loc[0, "image_path"] = str(tmp_path / "cut.png")
    check_files(rows, source="x")  # the signature is fine: only decoding finds it
    with pytest.raises(ValueError, match=f"cannot decode 1 PNG file.*{tmp_path / 'cut.png'}"):
        with naming_bad_files(rows):
            list(ip.evaluation_dataset(rows, image_size=(8, 8), channels=3, batch_size=2, cache=False))


def test_cache_resolution():
    fits = dict(pixels=10 * 8 * 8, channels=3)  # 2,560 bytes decoded
    assert input_plan.resolve_cache("auto", **fits, memory_budget_bytes=2560, disk_free_bytes=0)[0] == "memory"
    assert input_plan.resolve_cache("auto", **fits, memory_budget_bytes=100, disk_free_bytes=5120)[0] == "disk"
    where, why = input_plan.resolve_cache("auto", **fits, memory_budget_bytes=100, disk_free_bytes=5000)
    assert where == "none" and "decoded every step" in why
    for where in ("memory", "disk", "none"):
        assert input_plan.resolve_cache(where, **fits, memory_budget_bytes=0,
                                        disk_free_bytes=0) == (where, "set in params")
    with pytest.raises(ValueError, match="'cache' must be one of"):
        input_plan.resolve_cache("ram", **fits, memory_budget_bytes=0, disk_free_bytes=0)


def _sized_rows(*sizes):
    return pd.DataFrame({"height": [h for h, _ in sizes], "width": [w for _, w in sizes]})


def test_steps_per_epoch_resized_images_are_one_sample_per_row():
    assert input_plan.steps_per_epoch(_sized_rows(*[(512, 512)] * 50), batch_size=8, requested=0) == (6, "")
    assert input_plan.steps_per_epoch(_sized_rows(*[(512, 512)] * 3), batch_size=8, requested=0) == (1, "")
    assert input_plan.steps_per_epoch(_sized_rows(*[(512, 512)] * 50), batch_size=8, requested=20) == (20, "")


def test_steps_per_epoch_with_patches_covers_the_training_pixels_once():
    # 48 images of 512x512 in 256x256 patches: 4 patches each, 192 patches, 24 batches of 8 (not 48 / 8).
    assert input_plan.steps_per_epoch(_sized_rows(*[(512, 512)] * 48), batch_size=8, requested=0,
                              patch_size=(256, 256)) == (24, "one pass over the training pixels: 192 patches")
    # An image smaller than a patch still counts as one (padded) crop; mixed sizes add up.
    rows = _sized_rows((100, 80), (1024, 512), (256, 256))
    assert input_plan.samples_per_pass(rows, patch_size=(256, 256)) == 1 + 8 + 1
    assert input_plan.steps_per_epoch(rows, batch_size=4, requested=0, patch_size=(256, 256))[0] == 2
    assert input_plan.steps_per_epoch(rows, batch_size=4, requested=7, patch_size=(256, 256)) == (7, "")
    # Under a time budget an epoch is the validation interval: one crop per row (3 rows / 4 -> 1 step).
    assert input_plan.steps_per_epoch(_sized_rows(*[(512, 512)] * 48), batch_size=8, requested=0, patch_size=(256, 256),
                              time_budget=True) == (
        6, "one crop per training row: the time budget decides how much is trained")


def test_under_a_budget_an_epoch_is_long_enough_that_validation_costs_at_most_15_percent():
    """16 training rows of 565x584 and 4 validation images of 9 windows each: one crop per row is 2 steps of 8,
    while validating 36 windows costs about 18 crops' worth; the epoch grows to 13 steps (104 crops)."""
    train = _sized_rows(*[(565, 584)] * 16)
    windows = input_plan.validation_windows(_sized_rows(*[(565, 584)] * 4), image_size=(256, 256))
    assert windows == 36
    steps, words = input_plan.steps_per_epoch(train, batch_size=8, requested=0, patch_size=(256, 256), time_budget=True,
                                      validation_inputs=windows)
    assert steps == 13 and "validating 36 windows takes about 15%" in words
    validation, training = input_plan.VALIDATION_COST * windows, steps * 8
    assert validation / (validation + training) <= input_plan.VALIDATION_SHARE
    # Resized images: 80 training rows, 20 validation images are cheap next to a pass: unchanged.
    assert input_plan.steps_per_epoch(_sized_rows(*[(100, 100)] * 80), batch_size=8, requested=0, time_budget=True,
                              validation_inputs=20)[0] == 10
    # Without a budget, epochs keep their meaning (a pass over the training pixels), whatever validation costs.
    assert input_plan.steps_per_epoch(train, batch_size=8, requested=0, patch_size=(256, 256),
                                      validation_inputs=windows)[0] \
        == int(input_plan.samples_per_pass(train, patch_size=(256, 256)) // 8)
