"""segpipe/inference/prediction.py: sliding windows, test-time augmentation; segpipe/data/input_pipeline.py's patches;
segpipe/training/input_mode.py's size rule. Tiny fully-convolutional models with a known receptive field."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from segpipe.data import input_pipeline as ip  # noqa: E402
from segpipe.data.crops import Patches  # noqa: E402
from segpipe.data.image_io import IGNORE_ID  # noqa: E402
from segpipe.inference import prediction as inference  # noqa: E402
from segpipe.training.input_mode import (  # noqa: E402
    area_and_boundary,
    choose_input,
    input_candidates,
    network_input_size,
    structure_width,
)
from segpipe.training.input_pilot import pick, pilot_length  # noqa: E402

RADIUS = 2  # two 3x3 convolutions: an output pixel sees 2 pixels to each side


def conv_net(input_shape, *, seed: int = 0, outputs: int = 1) -> keras.Model:
    """Two 3x3 'same' convolutions (receptive field 5x5), random weights fixed by `seed`, sigmoid/softmax."""
    keras.utils.set_random_seed(seed)
    image = keras.Input(input_shape)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(image)
    x = keras.layers.Conv2D(outputs, 3, padding="same", activation="sigmoid" if outputs == 1 else "softmax",
                            name="b")(x)
    return keras.Model(image, x)


def full_image_prediction(model: keras.Model, image: np.ndarray) -> np.ndarray:
    """The same network applied to the whole image at once (what tiling should reproduce)."""
    whole = conv_net((None, None, image.shape[-1]), outputs=model.output_shape[-1])
    whole.set_weights(model.get_weights())
    return whole(inference.to_unit_range(image)[None]).numpy()[0]


def tiled(model, image, *, overlap: float, tta: str = "none") -> np.ndarray:
    predict = inference.prediction_function(model, input_mode="patches", tile_overlap=overlap, tta=tta, batch_size=3)
    return predict(tf.constant(image)).numpy()


@pytest.fixture(scope="module")
def model():
    return conv_net((32, 32, 1))


def random_image(height, width, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def test_windows_equal_the_full_image_away_from_window_borders_and_overlap_hides_seams(model):
    image = random_image(64, 64)
    truth = full_image_prediction(model, image)[..., 0]
    error = np.abs(tiled(model, image, overlap=0.0)[..., 0] - truth)
    # Without overlap the windows are [0, 32) and [32, 64) on each axis: exact far from the seam at 32 ...
    far = np.ones_like(error, bool)
    far[32 - RADIUS:32 + RADIUS] = far[:, 32 - RADIUS:32 + RADIUS] = False
    assert error[far].max() < 1e-5
    # ... and visibly wrong at it (zero padding where the image goes on).
    seam = error[~far].max()
    assert seam > 0.02
    # Overlapping windows blended by a Gaussian: the seam's error is mostly gone, everywhere.
    blended = np.abs(tiled(model, image, overlap=0.5)[..., 0] - truth)
    assert blended.max() < seam / 2
    # A pixel covered only by windows in which it lies far from the border is exact.
    assert blended[:16 - RADIUS, :16 - RADIUS].max() < 1e-5


@pytest.mark.parametrize("shape", [(45, 70), (33, 31), (10, 20), (32, 32), (1, 1)])
def test_any_size_comes_back_at_its_own_size(model, shape):
    image = random_image(*shape, seed=1)
    probabilities = tiled(model, image, overlap=0.5)
    assert probabilities.shape == (*shape, 1)
    assert np.isfinite(probabilities).all() and 0 <= probabilities.min() and probabilities.max() <= 1


def test_an_image_smaller_than_a_window_is_padded_like_training_pads_its_crops(model):
    image = random_image(10, 20, seed=2)
    padded = np.zeros((32, 32, 1), np.uint8)
    padded[:10, :20] = image
    expected = model(inference.to_unit_range(padded)[None]).numpy()[0, :10, :20]
    np.testing.assert_allclose(tiled(model, image, overlap=0.5), expected, atol=1e-6)


def test_tta_averages_the_undone_transforms(model):
    image = random_image(32, 32, seed=3)
    predict = lambda x: model(inference.to_unit_range(x)[None]).numpy()[0]  # noqa: E731
    flips = [predict(image), predict(image[:, ::-1])[:, ::-1], predict(image[::-1])[::-1],
             predict(image[::-1, ::-1])[::-1, ::-1]]
    np.testing.assert_allclose(tiled(model, image, overlap=0.5, tta="flips"), np.mean(flips, axis=0), atol=1e-5)
    turns = [np.rot90(predict(np.rot90(image, k)), -k) for k in range(4)]
    turns += [np.rot90(predict(np.rot90(image[:, ::-1], k)), -k)[:, ::-1] for k in range(4)]
    np.testing.assert_allclose(tiled(model, image, overlap=0.5, tta="flips_rotations"), np.mean(turns, axis=0),
                               atol=1e-5)
    resized = inference.prediction_function(model, input_mode="resize", tile_overlap=0.5, tta="flips", batch_size=2)
    assert resized(tf.constant(random_image(50, 40))).shape == (50, 40, 1)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_resized_images_in_batches_predict_as_one_at_a_time(tmp_path, batch_size):
    """Five images of different sizes, several per model call: each comes back in order, at its own size,
    with the one-image path's probabilities (the last call holds what is left)."""
    model = conv_net((24, 24, 3), outputs=3)
    shapes = [(50, 40), (24, 24), (31, 77), (12, 20), (64, 64)]
    paths = []
    for index, shape in enumerate(shapes):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(random_image(*shape, channels=3, seed=index)).save(paths[-1])
    one = inference.prediction_function(model, input_mode="resize", tile_overlap=0.5, tta="flips", batch_size=1)
    results = list(inference.predict_files(model, paths, input_mode="resize", tile_overlap=0.5, tta="flips",
                                           batch_size=batch_size, desc="test"))
    assert len(results) == len(shapes)
    for (image, probabilities), shape in zip(results, shapes, strict=True):
        assert image.shape == (*shape, 3) and probabilities.shape == (*shape, 3)
        np.testing.assert_allclose(probabilities, one(tf.constant(image)).numpy(), atol=1e-5)


def test_bad_inference_settings_name_the_param():
    with pytest.raises(ValueError, match="'evaluate.tta' must be one of"):
        inference.check_tta("mirror", input_size=(32, 32))
    with pytest.raises(ValueError, match="not square"):
        inference.check_tta("flips_rotations", input_size=(32, 64))
    with pytest.raises(ValueError, match="tile_overlap"):
        inference.prediction_function(conv_net((32, 32, 1)), input_mode="patches", tile_overlap=1.0, tta="none",
                                      batch_size=1)


def test_read_white_level_names_a_missing_or_bad_record(tmp_path):
    from segpipe.data.image_io import read_white_level

    with pytest.raises(ValueError, match="white_level.json' is missing .* rerun the pipeline"):
        read_white_level(tmp_path / "white_level.json")
    (tmp_path / "inference.json").write_text('{"input": "patches"}')  # recorded before white levels: none
    assert read_white_level(tmp_path / "inference.json") is None
    (tmp_path / "inference.json").write_text('{"input": "patches", "white_level": 4095}')
    assert read_white_level(tmp_path / "inference.json") == 4095
    (tmp_path / "inference.json").write_text('{"white_level": "bright"}')
    with pytest.raises(ValueError, match="says white_level 'bright'; expected null or a positive number"):
        read_white_level(tmp_path / "inference.json")


def test_read_input_mode_names_a_missing_record(tmp_path):
    with pytest.raises(ValueError, match="inference.json' is missing .* rerun the train stage"):
        inference.read_input_mode(tmp_path / "inference.json")
    (tmp_path / "inference.json").write_text('{"input": "patches"}')
    assert inference.read_input_mode(tmp_path / "inference.json") == "patches"


# --- training patches ---------------------------------------------------------------------------------------

def write_rows(folder, masks: list[np.ndarray], channels=1) -> pd.DataFrame:
    rows = []
    for index, mask in enumerate(masks):
        image = (np.arange(mask.size).reshape(mask.shape) % 251).astype(np.uint8)  # position-coded pixels
        image_path, mask_path = folder / f"i{index}.png", folder / f"m{index}.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray(mask).save(mask_path)
        labelled = mask != IGNORE_ID
        rows.append({"id": str(index), "image_path": str(image_path), "mask_path": str(mask_path), "group": "",
                     "height": mask.shape[0], "width": mask.shape[1],
                     "foreground_fraction": float((mask[labelled] > 0).mean()) if labelled.any() else 0.0})
    return pd.DataFrame(rows)


def patch_batches(rows, *, patches, image_size=(16, 16), cache=True, batches=4, seed=0, first_batch=0,
                  disk_cache=None):
    dataset = ip.training_dataset([rows], weights=None, image_size=image_size, channels=1, batch_size=4, seed=seed,
                                  cache=cache, online_augment=False, deterministic=True, patches=patches,
                                  first_batch=first_batch, disk_cache=disk_cache)
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(batches)]


def test_patches_are_native_crops_seeded_and_the_same_cached_or_not(tmp_path):
    mask = np.zeros((60, 90), np.uint8)
    mask[40:44, 70:74] = 1  # one small object in a large image
    other = np.zeros((24, 30), np.uint8)  # a smaller image of another size
    rows = write_rows(tmp_path, [mask, other])
    patches = Patches(foreground_share=1.0, scale_range=(1.0, 1.0), num_classes=1)
    cached = patch_batches(rows, patches=patches)
    assert cached[0][0].shape == (4, 16, 16, 1) and cached[0][1].shape == (4, 16, 16, 1)
    for other in (patch_batches(rows, patches=patches, cache=False),
                  patch_batches(rows, patches=patches, cache=False, disk_cache=tmp_path / "decoded")):
        for (x1, y1), (x2, y2) in zip(cached, other):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
    assert sorted(f.stat().st_size for f in (tmp_path / "decoded").glob("*/*")) == [24 * 30 * 2, 60 * 90 * 2]
    np.testing.assert_array_equal(patch_batches(rows, patches=patches)[2][0], cached[2][0])
    np.testing.assert_array_equal(patch_batches(rows, patches=patches, first_batch=2, batches=1)[0][0], cached[2][0])
    # At scale 1 a crop of the large image is its pixels, unscaled: consecutive position codes in a row.
    images, masks = np.concatenate([x for x, _ in cached]), np.concatenate([y for _, y in cached])
    from_large = [i for i in range(len(images)) if masks[i].max() == 1]
    assert from_large, "every crop of the large image should be centred on its object"
    crop = np.round(images[from_large[0], ..., 0] * 255).astype(int)
    assert (np.diff(crop, axis=1) % 251 == 1).all()
    # The smaller image is padded: void (255) in the mask beyond its 24 rows never happens at 16x16 crops,
    # but its object-free crops come from anywhere in it.
    assert set(np.unique(masks)) <= {0, 1}


def test_foreground_share_centres_crops_on_small_objects_and_pads_small_images_with_void(tmp_path):
    mask = np.zeros((80, 80), np.uint8)
    mask[60:63, 10:13] = 1
    rows = write_rows(tmp_path, [mask])
    seen = lambda share: np.mean([y[i].max() == 1 for _, y in patch_batches(  # noqa: E731
        rows, patches=Patches(foreground_share=share, scale_range=(1.0, 1.0), num_classes=1), batches=8)
        for i in range(4)])
    assert seen(1.0) == 1.0 and seen(0.0) < 0.3
    (tmp_path / "tiny").mkdir()
    tiny = write_rows(tmp_path / "tiny", [np.ones((8, 10), np.uint8)])
    _, y = patch_batches(tiny, patches=Patches(foreground_share=0.5, scale_range=(1.0, 1.0), num_classes=1),
                         batches=1)[0]
    assert (y[:, :8, :10] == 1).all() and (y[:, 12:, :] == 255).all()  # the image in the corner, void around


def test_multi_class_crops_visit_rare_classes(tmp_path):
    mask = np.zeros((96, 96), np.uint8)
    mask[:, 48:] = 1
    mask[80:82, 5:7] = 2  # 4 pixels of a rare class
    rows = write_rows(tmp_path, [mask])
    batches = patch_batches(rows, patches=Patches(foreground_share=1.0, scale_range=(1.0, 1.0), num_classes=3),
                            batches=12)
    share = np.mean([(y[i] == 2).any() for _, y in batches for i in range(4)])
    assert 0.15 < share < 0.6  # about a third: one class in three, drawn uniformly among those present


def test_validation_windows_cover_each_pixel_once_and_pad_with_void(tmp_path):
    mask = (np.arange(40 * 50).reshape(40, 50) % 2).astype(np.uint8)
    rows = write_rows(tmp_path, [mask])
    windows = list(ip.evaluation_dataset(rows, image_size=(16, 16), channels=1, batch_size=100, cache=False,
                                         windows=True))
    images, masks = windows[0][0].numpy(), windows[0][1].numpy()
    assert images.shape == (3 * 4, 16, 16, 1)  # ceil(40/16) x ceil(50/16)
    assert (masks != 255).sum() == 40 * 50 and (masks == 1).sum() == mask.sum()


# --- the size rule ------------------------------------------------------------------------------------------

def test_structure_width_is_two_area_over_boundary(tmp_path):
    strip = np.zeros((40, 40), np.uint8)
    strip[:, 10:14] = 1  # a vertical strip 4 px wide
    area, boundary = area_and_boundary(strip, num_classes=1)[1]
    assert area == 160 and boundary == 80 and 2 * area / boundary == 4
    strip[0:5] = 255  # void neighbours are not boundaries
    assert area_and_boundary(strip, num_classes=1)[1][1] == 70


@pytest.mark.parametrize("size, width, period, expected", [
    (512, 4, 16, "patches"),   # thin, dense structures (25% of the pixels) in images 2x the input
    (512, 4, 0, "resize"),     # the same strip alone: 0.8% of the pixels, most patches would miss it
    (512, 100, 0, "resize"),   # large objects: a 256 patch would cut them
    (512, 24, 48, "resize"),   # dense but 24 px wide, over 1/16 of the input (CamVid's cars: 34 px)
    (300, 4, 16, "resize"),    # images about the input's size
])
def test_auto_picks_patches_for_thin_dense_structures_in_large_images(tmp_path, size, width, period, expected):
    masks = []
    for index in range(3):
        mask = np.zeros((size, size), np.uint8)
        for left in range(50 + index, size - width, period) if period else [50 + index]:
            mask[:, left:left + width] = 1
        masks.append(mask)
    rows = write_rows(tmp_path, masks)
    assert structure_width(list(rows["mask_path"]), num_classes=1) == pytest.approx(width, rel=0.05)
    mode, reason = choose_input("auto", rows=rows, image_size=(256, 256), num_classes=1, seed=0)
    assert mode == expected and reason.startswith("auto: images")
    assert ("sparse" in reason) == (size == 512 and width == 4 and not period)
    assert choose_input("resize", rows=rows, image_size=(256, 256), num_classes=1, seed=0)[0] == "resize"
    with pytest.raises(ValueError, match="'train.input' must be one of"):
        choose_input("tiles", rows=rows, image_size=(256, 256), num_classes=1, seed=0)


def test_auto_decides_the_same_on_the_same_rows_in_another_order(tmp_path):
    """preflight passes train.csv's rows, train the subsets' originals in another order: one decision."""
    masks = []
    for width in range(2, 10):  # strips 2-9 px wide: which masks the sample takes moves the width
        mask = np.zeros((512, 512), np.uint8)
        for left in range(20, 500, 24):
            mask[:, left:left + width] = 1
        masks.append(mask)
    rows = write_rows(tmp_path, masks)
    reasons = {choose_input("auto", rows=rows.sample(frac=1.0, random_state=order), image_size=(256, 256),
                            num_classes=1, seed=0, sample=3)[1] for order in range(4)}
    assert len(reasons) == 1


@pytest.mark.parametrize("side, input, pilot, expected", [
    (512, "auto", 0.3, ["resize", "patches"]),   # 2x the input: a pilot of each decides
    (300, "auto", 0.3, ["resize"]),              # 1.17x: patches would be the image resized, nearly
    (512, "auto", 0.0, ["resize"]),              # no pilot: the rule (one 3 px strip: sparse, resize)
    (512, "resize", 0.3, ["resize"]),            # named: no pilot
    (512, "patches", 0.3, ["patches"]),
])
def test_auto_pilots_both_inputs_only_when_images_are_large_enough_for_patches(tmp_path, side, input, pilot,
                                                                               expected):
    masks = []
    for index in range(3):
        mask = np.zeros((side, side), np.uint8)
        mask[:, 50 + index:53 + index] = 1
        masks.append(mask)
    rows = write_rows(tmp_path, masks)
    candidates, reason = input_candidates(input, rows=rows, image_size=(256, 256), num_classes=1, seed=0, pilot=pilot)
    assert candidates == expected
    assert ("a pilot of each decides" in reason) == (len(expected) == 2)


def test_the_pilot_splits_its_share_evenly_and_a_tie_goes_to_resize():
    assert pilot_length(pilot=0.3, candidates=2, max_minutes=8.0, epochs=30) == (pytest.approx(1.2), 30)
    assert pilot_length(pilot=0.3, candidates=2, max_minutes=0.0, epochs=30) == (0.0, 4)  # round(4.5): 4
    assert pilot_length(pilot=0.1, candidates=2, max_minutes=0.0, epochs=3) == (0.0, 1)   # at least one
    assert pick({"resize": 0.5, "patches": 0.5}) == "resize"
    assert pick({"resize": 0.4, "patches": 0.5}) == "patches"
    assert pick({"resize": 0.6, "patches": 0.5}) == "resize"


def test_multi_class_scenes_are_judged_by_their_typical_region_not_their_thinnest_class(tmp_path):
    scene = np.zeros((512, 512), np.uint8)
    scene[256:] = 1                       # large regions (sky, road) ...
    scene[:, 100:103] = 2                 # ... and a thin pole
    rows = write_rows(tmp_path, [scene, scene])
    assert structure_width(list(rows["mask_path"]), num_classes=3) > 32
    assert choose_input("auto", rows=rows, image_size=(256, 256), num_classes=3, seed=0)[0] == "resize"


@pytest.mark.parametrize("shapes, expected", [
    ([(360, 480)] * 4, (224, 288)),                          # CamVid: all landscape 3:4
    ([(584, 565)] * 4, (256, 256)),                          # nearly square: within 10%
    ([(444, 312), (460, 320), (320, 460), (312, 444)], (256, 256)),  # portrait beside landscape
    ([(1000, 250)] * 3 + [(250, 1000)], (512, 128)),         # a shared orientation, the median ratio
])
def test_keep_aspect_takes_a_shared_orientation_at_the_same_pixel_count(shapes, expected):
    rows = pd.DataFrame({"height": [h for h, _ in shapes], "width": [w for _, w in shapes]})
    size, reason = network_input_size((256, 256), input_mode="resize", keep_aspect=True, rows=rows, multiple=16)
    assert size == expected and all(side % 16 == 0 for side in size)
    assert abs(size[0] * size[1] - 256 * 256) <= 0.15 * 256 * 256
    assert reason.startswith("keep_aspect" if size != (256, 256) else "train.image_size")
    # patches stay square crops, and keep_aspect: false keeps image_size as given
    assert network_input_size((256, 256), input_mode="patches", keep_aspect=True, rows=rows, multiple=16)[0] == (256,
                                                                                                                 256)
    assert network_input_size((256, 256), input_mode="resize", keep_aspect=False, rows=rows, multiple=16)[0] == (256,
                                                                                                                 256)
    # a non-square image_size is the shape the user chose
    assert network_input_size((128, 512), input_mode="resize", keep_aspect=True, rows=rows, multiple=16)[0] == (128,
                                                                                                                512)


@pytest.mark.parametrize("shapes, keep_aspect, expected", [
    ([(144, 112), (160, 120), (120, 160), (112, 144)], True, (128, 128)),  # the demo's: median 17,040 pixels
    ([(96, 128)] * 5, True, (96, 128)),                                    # small and landscape: both rules
    ([(96, 128)] * 5, False, (112, 112)),                                  # small, kept square
    ([(240, 240)] * 5, True, (256, 256)),                                  # within 1.25x: image_size
    ([(2000, 3000)] * 5, False, (256, 256)),                               # large: image_size, never more
])
def test_resized_images_are_never_blown_up_past_their_median_size(shapes, keep_aspect, expected):
    rows = pd.DataFrame({"height": [h for h, _ in shapes], "width": [w for _, w in shapes]})
    size, reason = network_input_size((256, 256), input_mode="resize", keep_aspect=keep_aspect, rows=rows, multiple=16)
    assert size == expected, reason
    if size[0] * size[1] < 256 * 256:
        assert "median of" in reason and "not blown up" in reason
    assert network_input_size((256, 256), input_mode="patches", keep_aspect=keep_aspect, rows=rows,
                              multiple=16)[0] == (256, 256)
    # train.upscale_small_images: true blows them up to image_size's pixels, as before
    upscaled, _ = network_input_size((256, 256), input_mode="resize", keep_aspect=keep_aspect, rows=rows,
                                     multiple=16, upscale=True)
    assert abs(upscaled[0] * upscaled[1] - 256 * 256) <= 0.15 * 256 * 256
