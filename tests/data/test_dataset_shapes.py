"""Datasets as they ship: pairing by key, folder names, side-by-side split folders, colour-coded masks,
void pixels, and a multi-class dataset run through every stage."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, TINY_TRAIN, box_mask, pattern_image, save_pair, write_params
from stages import convert_to_png


def run_convert(raw: Path, tmp_path: Path, num_classes: int = 1, class_names=None, **convert):
    out, skipped = tmp_path / "png", tmp_path / "skipped.csv"
    params = write_params(tmp_path, num_classes=num_classes, class_names=class_names, convert=convert)
    convert_to_png.main(["--raw-dir", str(raw), "--output-dir", str(out), "--skipped", str(skipped),
                         "--params", str(params)])
    return out, pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def save(array: np.ndarray, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


# ------------------------------------------------------------------------------------------- pairing by key
def test_pairing_by_a_shared_key(tmp_path):
    raw = tmp_path / "raw"
    save_pair(raw, "images/case17_image.tif", "masks/case17_label.gif")
    save_pair(raw, "images/case3_image.tif", "masks/case3_label.gif", seed=1)
    _, manifest = run_convert(raw, tmp_path, image_key=r"(case\d+)_")
    assert list(zip(manifest["source_image"], manifest["source_mask"])) == [
        ("images/case17_image.tif", "masks/case17_label.gif"), ("images/case3_image.tif", "masks/case3_label.gif")]

    other = tmp_path / "other"
    save_pair(other, "images/img_0042.jpg", "masks/0042_gt.png")
    save_pair(other, "images/img_0007.jpg", "masks/0007_gt.png", seed=2)
    _, manifest = run_convert(other, tmp_path / "o", image_key=r"(\d+)")
    assert dict(zip(manifest["source_image"], manifest["source_mask"])) == {
        "images/img_0007.jpg": "masks/0007_gt.png", "images/img_0042.jpg": "masks/0042_gt.png"}


def test_pairing_by_key_with_a_separate_mask_rule(tmp_path):
    raw = tmp_path / "raw"
    save_pair(raw, "images/scan-12.png", "masks/label_12_v2.png")
    _, manifest = run_convert(raw, tmp_path, image_key=r"scan-(\d+)", mask_key=r"label_(\d+)_")
    assert manifest["source_mask"].tolist() == ["masks/label_12_v2.png"]


def test_key_rule_errors_name_the_file_and_the_param(tmp_path):
    raw = tmp_path / "raw"
    save_pair(raw, "images/a.png", "masks/a_gt.png")
    with pytest.raises(ValueError, match=r"convert.image_key' '\(\\d\+\)' matches none of the 1 image names .*'a'"):
        run_convert(raw, tmp_path, image_key=r"(\d+)")

    clash = tmp_path / "clash"
    save_pair(clash, "images/img_1.png", "masks/1_gt.png")
    save_pair(clash, "images/scan_1.png", "masks/2_gt.png")  # two images with key 1, one mask
    with pytest.raises(ValueError) as err:
        run_convert(clash, tmp_path / "c", image_key=r"(\d+)")
    message = str(err.value)
    assert "img_1.png: several images share this key '1' (img_1.png, scan_1.png)" in message
    assert "2_gt.png: mask without image" in message and "convert.image_key" in message

    unmatched = tmp_path / "unmatched"
    save_pair(unmatched, "images/img_1.png", "masks/1_gt.png")
    save_pair(unmatched, "images/notes.png", "masks/2_gt.png")
    with pytest.raises(ValueError, match=r"notes.png: the name does not match convert.image_key"):
        run_convert(unmatched, tmp_path / "u", image_key=r"(\d+)")

    twice = tmp_path / "twice"
    save_pair(twice, "images/img_1.png", "masks/1_gt.png")
    save_pair(twice, "images/img_2.png", "masks/1_gt_v2.png")
    with pytest.raises(ValueError, match=r"img_1.png: several masks match this image \(1_gt.png, 1_gt_v2.png\)"):
        run_convert(twice, tmp_path / "t", image_key=r"(\d+)")


@pytest.mark.parametrize("convert, message", [
    ({"image_key": "(\\d+", "mask_key": None}, r"'convert.image_key' is not a valid regular expression"),
    ({"image_key": "\\d+", "mask_key": None}, r"'convert.image_key' .* needs a group in parentheses"),
    ({"image_key": None, "mask_key": "(\\d+)"}, r"'convert.mask_key' is set but convert.image_key is null"),
    ({"image_key": "(\\d+)", "mask_stem_pattern": "{stem}_gt"}, r"two pairing rules; keep one"),
    ({"image_folder": "{split}", "mask_folder": "labels"}, r"either both name the split"),
    ({"mask_folder": "gt/labels"}, r"'convert.mask_folder' has an invalid value"),
    ({"image_folder": "data", "mask_folder": "data"}, r"both name 'data': images and masks share that folder, so "
                                                      r"convert.mask_stem_pattern must tell the masks"),
])
def test_bad_naming_params_are_named(pooled_dataset, tmp_path, convert, message):
    with pytest.raises(ValueError, match=message):
        run_convert(pooled_dataset, tmp_path, **convert)


# -------------------------------------------------------------------------------------------- folder names
@pytest.mark.parametrize("images, masks", [("images", "labels"), ("imgs", "gt"), ("Images", "GroundTruth"),
                                           ("images", "annotations"), ("images", "1st_manual")])
def test_usual_folder_names_are_found(tmp_path, images, masks):
    raw = tmp_path / "raw"
    save_pair(raw, f"{images}/a.png", f"{masks}/a.png")
    _, manifest = run_convert(raw, tmp_path)
    assert manifest["source_mask"].tolist() == [f"{masks}/a.png"]


def test_two_candidate_mask_folders_are_an_error_until_a_param_settles_it(tmp_path):
    """DRIVE: training/{images, 1st_manual, mask}, where mask/ holds field-of-view masks, not labels."""
    raw = tmp_path / "raw"
    for split in ("training", "test"):
        save_pair(raw, f"{split}/images/21_training.tif", f"{split}/1st_manual/21_manual1.gif")
        fov = np.full((16, 20), 255, np.uint8)
        save(fov, raw / split / "mask" / "21_training_mask.gif")
    with pytest.raises(ValueError, match=r"has 2 folders that could hold the masks: '1st_manual/', 'mask/'. "
                                         r"Set convert.mask_folder"):
        run_convert(raw, tmp_path, image_key=r"(\d+)_")
    out, manifest = run_convert(raw, tmp_path, mask_folder="1st_manual", image_key=r"(\d+)_")
    assert manifest["source_mask"].tolist() == ["test/1st_manual/21_manual1.gif", "training/1st_manual/21_manual1.gif"]
    assert manifest["split"].tolist() == ["test", "train"]
    np.testing.assert_array_equal(read(out / "masks/train/21_training.png"), box_mask(16, 20))


def test_a_glob_pattern_names_the_mask_folder(tmp_path):
    raw = tmp_path / "raw"
    save_pair(raw, "photos/a.png", "photos_segmentation/a.png")
    _, manifest = run_convert(raw, tmp_path, image_folder="photos", mask_folder="*_segmentation")
    assert manifest["source_mask"].tolist() == ["photos_segmentation/a.png"]


def test_images_and_masks_side_by_side_in_one_folder(tmp_path):
    """Kaggle's LGG brain MRI: kaggle_3m/<patient>/<slice>.tif + <slice>_mask.tif in the same folder."""
    raw = tmp_path / "raw"
    for patient in ("TCGA_CS_4941", "TCGA_DU_5851"):
        for index in (1, 2):
            save_pair(raw, f"kaggle_3m/{patient}/{patient}_{index}.tif",
                      f"kaggle_3m/{patient}/{patient}_{index}_mask.tif",
                      seed=index)
    with pytest.raises(ValueError, match=r"'kaggle_3m/' holds images and masks side by side \('TCGA_\w+_mask.tif'\): "
                                         r"set convert.image_folder and convert.mask_folder to 'kaggle_3m' and "
                                         r"convert.mask_stem_pattern to '\{stem\}_mask'"):
        run_convert(raw, tmp_path)
    out, manifest = run_convert(raw, tmp_path, image_folder="kaggle_3m", mask_folder="kaggle_3m",
                                mask_stem_pattern="{stem}_mask")
    assert manifest["id"].tolist() == [f"{patient}/{patient}_{index}" for patient in ("TCGA_CS_4941", "TCGA_DU_5851")
                                       for index in (1, 2)]
    assert manifest["group"].tolist() == ["TCGA_CS_4941"] * 2 + ["TCGA_DU_5851"] * 2
    assert manifest["source_mask"][0] == "kaggle_3m/TCGA_CS_4941/TCGA_CS_4941_1_mask.tif"
    np.testing.assert_array_equal(read(out / "masks/TCGA_CS_4941/TCGA_CS_4941_1.png"), box_mask(16, 20))

    save(pattern_image(16, 20), raw / "kaggle_3m/TCGA_CS_4941/TCGA_CS_4941_3.tif")  # a slice without its mask
    save(box_mask(16, 20).astype(np.uint8) * 255, raw / "kaggle_3m/TCGA_CS_4941/TCGA_CS_4941_1_mask_1.tif")  # BUSI
    with pytest.raises(ValueError) as error:
        run_convert(raw, tmp_path, image_folder="kaggle_3m", mask_folder="kaggle_3m", mask_stem_pattern="{stem}_mask")
    assert re.search(r"TCGA_CS_4941_3.tif: image without mask: expected '.*TCGA_CS_4941/TCGA_CS_4941_3_mask.<ext>'",
                     str(error.value))
    assert re.search(r"TCGA_CS_4941_1_mask_1.tif: '_mask' in its name looks like a mask, but the name does not fit "
                     r"convert.mask_stem_pattern '\{stem\}_mask'; a second mask of one image\?", str(error.value))
    assert "problem(s)" in str(error.value) and str(error.value).count("TCGA_CS_4941_1_mask_1") == 1


def test_a_star_in_the_mask_pattern_merges_every_mask_of_an_image(tmp_path):
    """BUSI ships each further lesion of an image as its own mask: benign (4)_mask.png, benign (4)_mask_1.png.
    With '{stem}_mask*' they are one mask (a pixel is foreground if any says so); masks that give a pixel
    two different classes are an error."""
    raw = tmp_path / "raw"
    left, right = np.zeros((16, 20), np.uint8), np.zeros((16, 20), np.uint8)
    left[2:8, 2:8], right[8:14, 10:18] = 255, 255
    for group in ("benign", "normal"):
        save(pattern_image(16, 20), raw / f"busi/{group}/{group} (1).png")
        save(left, raw / f"busi/{group}/{group} (1)_mask.png")
    save(right, raw / "busi/benign/benign (1)_mask_1.png")
    save(pattern_image(16, 20), raw / "busi/benign/benign (10).png")  # 'benign (1)' is a prefix of its stem
    save(right, raw / "busi/benign/benign (10)_mask.png")
    out, manifest = run_convert(raw, tmp_path, image_folder="busi", mask_folder="busi",
                                mask_stem_pattern="{stem}_mask*")
    assert manifest["id"].tolist() == ["benign/benign (1)", "benign/benign (10)", "normal/normal (1)"]
    assert manifest["source_mask"][0] == "busi/benign/benign (1)_mask.png + busi/benign/benign (1)_mask_1.png"
    np.testing.assert_array_equal(read(out / "masks/benign/benign (1).png"), (left | right) // 255)
    np.testing.assert_array_equal(read(out / "masks/benign/benign (10).png"), right // 255)
    np.testing.assert_array_equal(read(out / "masks/normal/normal (1).png"), left // 255)

    for name, ids in (("benign (1)_mask.png", left // 255), ("benign (1)_mask_1.png", (left // 255) * 2)):
        save(ids, raw / f"busi/benign/{name}")  # class 1 and class 2 on the same pixels
    with pytest.raises(ValueError, match=r"benign \(1\)_mask.png: 36 pixel\(s\) get one class in one mask and "
                                         r"another class in another; .* \(merged with benign \(1\)_mask_1.png\)"):
        run_convert(raw, tmp_path, num_classes=3, image_folder="busi", mask_folder="busi",
                    mask_stem_pattern="{stem}_mask*")


def test_missing_mask_folder_lists_what_was_found(tmp_path):
    raw = tmp_path / "raw"
    save_pair(raw, "train/images/a.png", "train/segs/a.png")
    with pytest.raises(ValueError, match=r"needs an images folder and a masks folder .*found 'images/', 'segs/'"):
        run_convert(raw, tmp_path)


def test_side_by_side_split_folders(tmp_path):
    """SegNet's CamVid: train/ beside trainannot/, val/ beside valannot/, test/ beside testannot/."""
    raw = tmp_path / "raw"
    for split in ("train", "val", "test"):
        save_pair(raw, f"{split}/0001TP_{split}.png", f"{split}annot/0001TP_{split}.png")
    params = {"image_folder": "{split}", "mask_folder": "{split}annot"}
    _, manifest = run_convert(raw, tmp_path, **params)
    assert list(zip(manifest["id"], manifest["split"])) == [
        ("test/0001TP_test", "test"), ("train/0001TP_train", "train"), ("valid/0001TP_val", "valid")]
    with pytest.raises(ValueError, match=r"masks in '\w+annot/' beside it, set convert.image_folder: '\{split\}' "
                                         r"and convert.mask_folder: '\{split\}annot'"):
        run_convert(raw, tmp_path)  # the same data without the params: the error says which to set
    (raw / "valannot").rename(raw / "val_labels")
    with pytest.raises(ValueError, match=r"'.*valannot' does not exist \(convert.mask_folder: '\{split\}annot'\)"):
        run_convert(raw, tmp_path, **params)


def test_split_folders_inside_the_image_and_mask_folders(tmp_path):
    """ADE20K style: images/training + annotations/training, images/validation + annotations/validation."""
    raw = tmp_path / "raw"
    save_pair(raw, "images/training/a.jpg", "annotations/training/a.png")
    save_pair(raw, "images/validation/b.jpg", "annotations/validation/b.png")
    _, manifest = run_convert(raw, tmp_path)
    assert list(zip(manifest["id"], manifest["split"], manifest["group"])) == [
        ("train/a", "train", "all"), ("valid/b", "valid", "all")]


# ------------------------------------------------------------------------------------------ colour masks
ROAD, CAR, SKY, VOID = (128, 64, 128), (64, 0, 128), (128, 128, 128), (0, 0, 0)


def colour_scene(height=16, width=20) -> tuple[np.ndarray, np.ndarray]:
    """An RGB mask with sky (top), road (bottom), a car and a void corner, and its class ids (sky 0, road 1,
    car 2, void 255)."""
    ids = np.zeros((height, width), np.uint8)
    ids[height // 2:] = 1
    ids[10:14, 5:11] = 2
    ids[:3, :3] = 255
    colours = np.zeros((height, width, 3), np.uint8)
    for class_id, colour in ((0, SKY), (1, ROAD), (2, CAR), (255, VOID)):
        colours[ids == class_id] = colour
    return colours, ids


def test_palette_masks_become_class_ids_with_void(tmp_path):
    raw = tmp_path / "raw"
    colours, ids = colour_scene()
    save(pattern_image(16, 20), raw / "images/a.png")
    save(colours, raw / "masks/a.png")
    (raw / "class_dict.csv").write_text("name,r,g,b\nSky,128,128,128\nRoad,128,64,128\nCar,64,0,128\nVoid,0,0,0\n")
    out, manifest = run_convert(raw, tmp_path, num_classes=3, palette="class_dict.csv", ignore_value=[0, 0, 0])
    np.testing.assert_array_equal(read(out / "masks/a.png"), ids)
    labelled = ids != 255
    assert manifest["class_pixels"].tolist() == [" ".join(str(np.sum(ids == k)) for k in range(3))]
    assert float(manifest["foreground_fraction"][0]) == pytest.approx(np.mean(ids[labelled] != 0), abs=1e-6)

    # the same palette as a list in params.yaml, and as JSON
    out, _ = run_convert(raw, tmp_path / "list", num_classes=3, palette=[list(SKY), list(ROAD), list(CAR)],
                         ignore_value=[0, 0, 0])
    np.testing.assert_array_equal(read(out / "masks/a.png"), ids)
    (raw / "palette.json").write_text(json.dumps({"sky": SKY, "road": ROAD, "car": CAR}))
    out, _ = run_convert(raw, tmp_path / "json", num_classes=3, palette="palette.json", ignore_value=[0, 0, 0])
    np.testing.assert_array_equal(read(out / "masks/a.png"), ids)


def test_unknown_colours_name_the_file_colour_and_pixel_count(tmp_path):
    raw = tmp_path / "raw"
    colours, _ = colour_scene()
    colours[0, 5:9] = (250, 170, 30)  # 4 pixels of a colour the palette lacks
    save(pattern_image(16, 20), raw / "images/a.png")
    save(colours, raw / "masks/a.png")
    with pytest.raises(ValueError, match=r"masks/a.png: 1 colour\(s\) not in convert.palette: \(250, 170, 30\) in 4 "
                                         r"pixels"):
        run_convert(raw, tmp_path, num_classes=3, palette=[list(SKY), list(ROAD), list(CAR)], ignore_value=[0, 0, 0])
    with pytest.raises(ValueError, match=r"'convert.palette' has 2 class colour\(s\) \(void excluded\) but "
                                         r"num_classes is 3"):
        run_convert(raw, tmp_path, num_classes=3, palette=[list(SKY), list(ROAD)], ignore_value=[0, 0, 0])
    with pytest.raises(ValueError, match=r"palette file '.*nope.csv' not found"):
        run_convert(raw, tmp_path, num_classes=3, palette="nope.csv")


def test_lossy_colour_masks_take_the_nearest_palette_colour(tmp_path):
    raw = tmp_path / "raw"
    colours, ids = colour_scene(48, 64)
    ids[ids == 255] = 0
    colours[:3, :3] = SKY
    save(pattern_image(48, 64), raw / "images/a.png")
    save(colours, raw / "masks/a.jpg", quality=90)
    out, _ = run_convert(raw, tmp_path, num_classes=3, palette=[list(SKY), list(ROAD), list(CAR)])
    converted = read(out / "masks/a.png")
    assert np.mean(converted == ids) > 0.97  # JPEG blends colours along edges; nearest colour there
    with pytest.raises(ValueError, match=r"masks/a.jpg: .* not within convert.palette_tolerance=0 of a palette "
                                         r"colour, more than convert.max_gray_fraction=0.05"):
        run_convert(raw, tmp_path / "strict", num_classes=3, palette=[list(SKY), list(ROAD), list(CAR)],
                    palette_tolerance=0)


# ------------------------------------------------------------------------------------------------- void
def test_void_value_becomes_255_and_counts_nowhere(tmp_path):
    raw = tmp_path / "raw"
    ids = np.tile(np.array([0, 1, 2, 11], np.uint8), (16, 5))  # CamVid: 11 = Unlabelled
    save(pattern_image(16, 20), raw / "images/a.png")
    save(ids, raw / "masks/a.png")
    with pytest.raises(ValueError, match=r"class ids 11 \(80 pixels\) out of range .* set convert.ignore_value"):
        run_convert(raw, tmp_path, num_classes=3)
    out, manifest = run_convert(raw, tmp_path, num_classes=3, ignore_value=11)
    np.testing.assert_array_equal(read(out / "masks/a.png"), np.where(ids == 11, 255, ids))
    assert manifest["class_pixels"].tolist() == ["80 80 80"]


def test_binary_void_band_is_not_counted_as_mid_gray(tmp_path):
    """A 128-valued band around each object (a 'don't care' boundary) is void, not a reason to reject the mask."""
    raw = tmp_path / "raw"
    mask = np.zeros((16, 20), np.uint8)
    mask[2:12, 2:12] = 128
    mask[4:10, 4:10] = 255
    save(pattern_image(16, 20), raw / "images/a.png")
    save(mask, raw / "masks/a.png")
    with pytest.raises(ValueError, match=r"mid-gray .* set convert.ignore_value"):
        run_convert(raw, tmp_path)
    out, manifest = run_convert(raw, tmp_path, ignore_value=128)
    expected = np.select([mask == 255, mask == 128], [1, 255], 0)
    np.testing.assert_array_equal(read(out / "masks/a.png"), expected)
    assert float(manifest["foreground_fraction"][0]) == pytest.approx(36 / (320 - 64), abs=1e-6)


def test_void_pixels_take_no_part_in_losses_and_training_metrics():
    import keras

    from segpipe.training.keras_metrics import ConfusionScore
    from segpipe.training.losses import make_loss

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (2, 8, 8, 1)).astype(np.uint8)
    truth[:, :2] = 255
    probabilities = keras.ops.softmax(rng.normal(size=(2, 8, 8, 3)).astype(np.float32))
    other = np.array(probabilities).copy()
    other[:, :2] = np.roll(other[:, :2], 1, axis=-1)  # change predictions on void pixels only
    for weights in ({"bce": 1.0}, {"dice": 1.0}, {"jaccard": 1.0}, {"focal": 1.0}):
        loss = make_loss(weights=weights, class_weights=[1.0, 2.0, 0.5])
        assert float(loss(truth, probabilities)) == pytest.approx(float(loss(truth, other)), rel=1e-5), weights
    metric = ConfusionScore("iou", num_classes=3)
    metric.update_state(truth, probabilities)
    first = float(metric.result())
    metric.reset_state()
    metric.update_state(truth, other)
    assert float(metric.result()) == pytest.approx(first)


def test_class_weights_scale_each_class_and_auto_keeps_the_loss_scale():
    from segpipe.training.losses import class_weights_from_frequencies, cross_entropy, resolve_class_weights

    weights = class_weights_from_frequencies([900, 90, 10, 0])
    frequency = np.array([0.9, 0.09, 0.01, 0.0])
    assert np.sum(frequency * weights) == pytest.approx(1.0, abs=1e-5)
    assert weights[2] / weights[0] == pytest.approx(np.sqrt(90), rel=1e-4) and weights[3] == weights[2]
    truth = np.array([[[[0], [1]]]], np.uint8)
    probabilities = np.array([[[[0.5, 0.5], [0.5, 0.5]]]], np.float32)
    plain = float(cross_entropy(truth, probabilities))
    weighted = float(cross_entropy(truth, probabilities, class_weights=np.array([1.0, 3.0], np.float32)))
    assert weighted == pytest.approx(plain * 2.0, rel=1e-5)  # (1 + 3) / 2 per pixel
    with pytest.raises(ValueError, match=r"'train.class_weights' has 2 weight\(s\) but there are 3 classes"):
        resolve_class_weights([1, 2], pixels_per_class=[1, 1, 1], num_classes=3)
    assert resolve_class_weights("auto", pixels_per_class=[90, 10], num_classes=1) is None  # binary: Dice balances
    assert resolve_class_weights([1, 4], pixels_per_class=[90, 10], num_classes=1) == [1.0, 4.0]
    assert resolve_class_weights("auto", pixels_per_class=[90, 9, 1], num_classes=3) == \
        class_weights_from_frequencies([90, 9, 1])


def test_evaluation_leaves_void_out_and_absent_classes_out_of_the_mean():
    from segpipe.evaluation.metrics import threshold_sweep
    from segpipe.evaluation.totals import SplitTotals

    truth = np.array([[0, 1, 1, 255]], np.uint8)
    predicted = np.array([[0, 1, 1, 2]], np.uint8)  # the void pixel is predicted as class 2
    totals = SplitTotals(num_classes=4, tolerance=1)
    totals.add(np.eye(4, dtype=np.float32)[predicted], truth)
    flat, rows = totals.scores("valid", class_names=["a", "b", "c", "d"])
    assert flat["valid_class_iou"] == {"a": 1.0, "b": 1.0, "c": None, "d": None}
    assert flat["valid_mean_iou"] == 1.0 and rows[0]["iou"] == 1.0
    probabilities = [np.array([[0.9, 0.1, 0.8]])]
    sweep = threshold_sweep(probabilities, [np.array([[True, False, False]])],
                            labelled=[np.array([[True, True, False]])])
    assert {row["threshold"]: row["iou"] for row in sweep}[0.5] == 1.0  # 0.8 on a void pixel is no false positive


# ------------------------------------------------------------------------------- multi-class end to end
TINY_MULTICLASS_TRAIN = {**TINY_TRAIN, "class_weights": "auto"}


def street_dataset(raw: Path) -> None:
    """CamVid-like shape: side-by-side split folders, key-paired colour masks, a palette CSV with a void row."""
    rng = np.random.default_rng(3)
    (raw).mkdir(parents=True)
    (raw / "class_dict.csv").write_text("name,r,g,b\nsky,128,128,128\nroad,128,64,128\ncar,64,0,128\nvoid,0,0,0\n")
    for split, count in (("train", 10), ("val", 4)):
        for index in range(count):
            colours, ids = colour_scene(32, 40)
            shift = int(rng.integers(0, 12))
            colours, ids = np.roll(colours, shift, axis=1), np.roll(ids, shift, axis=1)
            image = np.zeros((32, 40, 3), np.uint8)
            for class_id, value in ((0, 200), (1, 90), (2, 30), (255, 0)):
                image[ids == class_id] = value
            image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
            save(image, raw / split / f"frame_{index:03d}.png")
            save(colours, raw / f"{split}_labels" / f"{index:03d}_L.png")


@pytest.mark.slow
def test_multiclass_street_scenes_through_every_stage(tmp_path):
    from stage_runs import run_data_stages, run_stage, train_args

    project = tmp_path
    street_dataset(project / "data/raw")
    write_params(project, num_classes=3, class_names=["sky", "road", "car"],
                 convert={"num_workers": 1, "image_folder": "{split}", "mask_folder": "{split}_labels",
                          "image_key": r"(\d+)", "palette": "class_dict.csv", "ignore_value": [0, 0, 0]},
                 augment={"copies": 1, "num_workers": 1}, split_balanced={"key": "rarest_class"},
                 train=TINY_MULTICLASS_TRAIN)
    run_data_stages(project)
    summary = json.loads((project / "data/subsets.json").read_text())
    assert summary["key"] == "rarest_class" and [s["name"] for s in summary["subsets"]] == ["rarest_class_2"]
    done = run_stage(project, "train", *train_args("out"))
    assert done.returncode == 0, done.stderr
    assert "class weights [" in done.stdout
    done = run_stage(project, "evaluate", "--model", "out/model.keras", "--inference", "out/inference.json",
                     "--csv-dir", "data/csv", "--history",
                     "out/history.csv", "--run-info", "out/run.json", "--metrics", "out/evaluate.json",
                     "--threshold", "out/threshold.json", "--plots-dir", "out/plots", "--params", "params.yaml")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((project / "out/evaluate.json").read_text())
    assert set(metrics["valid_class_iou"]) == {"sky", "road", "car"}
    assert metrics["valid_mean_iou"] == pytest.approx(np.mean(list(metrics["valid_class_iou"].values())), abs=1e-5)
    assert "IoU per class: sky" in done.stdout
    plots = project / "out/plots"
    assert pd.read_csv(plots / "class_scores.csv")["class"].tolist() == ["sky", "road", "car"]
    confusion = pd.read_csv(plots / "confusion.csv")  # the exact matrix: every labelled valid pixel, once
    assert set(confusion["actual"]) == {"sky", "road", "car"} and len(confusion) == 9
    masks = [read(project / path) for path in pd.read_csv(project / "data/csv/valid.csv")["mask_path"]]
    assert confusion["pixels"].sum() == sum(int((mask != 255).sum()) for mask in masks)
    assert (plots / "threshold_curve.csv").read_text().strip() == "threshold,iou,f1,precision,recall"  # no threshold
    for chart in ("class_scores", "confusion_matrix"):
        assert (plots / "png" / f"{chart}.png").is_file()
    overlay = read(next((plots / "overlays").glob("*.png")))
    assert overlay.shape[1] == 2 * 40 + 4 and overlay.shape[0] > 32  # truth | prediction, legend below

    predicted = project / "predicted"
    done = subprocess.run([sys.executable, "-m", "segpipe.inference.predict", "--model", "out/model.keras", "--input",
                           "data/raw/val", "--output", str(predicted), "--colour", "--overlay"], cwd=project,
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                              "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    mask = read(predicted / "frame_000.png")
    assert mask.shape == (32, 40) and set(np.unique(mask)) <= {0, 1, 2}
    assert read(predicted / "frame_000_colour.png").shape == (32, 40, 3)


def test_class_names_are_checked_against_num_classes(tmp_path):
    from segpipe.core.params import Params

    def names(**shared):
        return Params(write_params(tmp_path, **shared)).class_names()

    assert names(num_classes=1, class_names=None) == ["background", "foreground"]
    assert names(num_classes=1, class_names=["lesion"]) == ["background", "lesion"]
    assert names(num_classes=3, class_names=None) == ["class_0", "class_1", "class_2"]
    with pytest.raises(ValueError, match=r"'class_names' has 2 name\(s\) but num_classes is 3; give one name per "
                                         r"class"):
        names(num_classes=3, class_names=["sky", "road"])
    with pytest.raises(ValueError, match=r"'class_names' repeats a name"):
        names(num_classes=2, class_names=["sky", "sky"])
    with pytest.raises(ValueError, match=r"param 'num_classes' must be <= 255"):
        names(num_classes=256, class_names=None)


def test_training_iou_leaves_classes_absent_from_the_epoch_out_of_the_mean():
    from segpipe.training.keras_metrics import ConfusionScore

    truth = np.array([[[[0], [1], [1], [0]]]], np.uint8)
    probabilities = np.eye(3, dtype=np.float32)[[[[0, 1, 0, 0]]]]  # class 2: never true, never predicted
    metric = ConfusionScore("iou", num_classes=3)
    metric.update_state(truth, probabilities)
    assert float(metric.result()) == pytest.approx((2 / 3 + 1 / 2) / 2)  # not /3 with class 2 as 0 (or 1)


def test_a_folder_per_sample_with_one_mask_per_object(tmp_path, capsys):
    """Kaggle's Data Science Bowl 2018 as downloaded: <id>/images/<id>.png + <id>/masks/<hash>.png, one mask per
    nucleus. A sample's one image takes all its masks, merged; a sample folder of several images pairs them by
    stem and is their group."""
    raw = tmp_path / "raw"
    first, second = np.zeros((16, 20), np.uint8), np.zeros((16, 20), np.uint8)
    first[2:6, 2:6], second[9:14, 12:18] = 255, 255
    save(pattern_image(16, 20, seed=1), raw / "0a7d30/images/0a7d30.png")
    save(first, raw / "0a7d30/masks/4f2e.png")
    save(second, raw / "0a7d30/masks/c81b.png")
    save(pattern_image(16, 20, seed=2), raw / "1b02fe/images/1b02fe.png")
    save(second, raw / "1b02fe/masks/77aa.png")
    for stem in ("slice1", "slice2"):
        save_pair(raw, f"patient7/images/{stem}.png", f"patient7/masks/{stem}.png")
    (raw / "patient7/images/README.txt").write_text("scanner settings")
    (raw / "0a7d30/masks/notes.txt").write_text("annotator")
    out, manifest = run_convert(raw, tmp_path)
    assert "ignored 2 files that are not images" in capsys.readouterr().out  # each once
    assert manifest["id"].tolist() == ["0a7d30", "1b02fe", "patient7/slice1", "patient7/slice2"]
    assert manifest["group"].tolist() == ["all", "all", "patient7", "patient7"]
    assert manifest["source_mask"][0] == "0a7d30/masks/4f2e.png + 0a7d30/masks/c81b.png"
    np.testing.assert_array_equal(read(out / "masks/0a7d30.png"), (first | second) // 255)
    np.testing.assert_array_equal(read(out / "masks/1b02fe.png"), second // 255)

    (raw / "1b02fe/masks/77aa.png").unlink()
    with pytest.raises(ValueError, match=r"1b02fe/images/1b02fe.png: image without mask: its sample folder's masks "
                                         r"folder '.*1b02fe/masks' holds none"):
        run_convert(raw, tmp_path)

    save(pattern_image(16, 20, seed=3), raw / "9c9c9c/images/9c9c9c.png")  # a test sample: no masks folder
    with pytest.raises(ValueError, match=r"holds a folder per sample \('0a7d30/' with 'images/' and 'masks/'\), but "
                                         r"not every folder has both: '9c9c9c/' \(no masks folder\)\. "
                                         r".* move the others out"):
        run_convert(raw, tmp_path)


def test_a_wrapper_folder_is_one_sample_unless_it_holds_a_split(tmp_path):
    raw = tmp_path / "raw"
    for stem in ("a", "b"):
        save_pair(raw, f"dataset/images/{stem}.png", f"dataset/masks/{stem}.png")
    _, manifest = run_convert(raw, tmp_path)
    assert manifest["id"].tolist() == ["dataset/a", "dataset/b"] and set(manifest["group"]) == {"dataset"}

    # A split inside: the wrapper is the dataset's top folder, and the layout is read inside it.
    raw = tmp_path / "split"
    for split in ("train", "valid"):
        save_pair(raw, f"dataset/images/{split}/a.png", f"dataset/masks/{split}/a.png")
    _, manifest = run_convert(raw, tmp_path)
    assert sorted(manifest["split"]) == ["train", "valid"]


def test_a_dataset_inside_its_release_folder_is_read_there(tmp_path, capsys):
    """Data Science Bowl 2018 as shared here: stage1_train/<id>/{images,masks} beside a README and SOURCE.txt."""
    raw = tmp_path / "raw"
    for sample in ("0a7d30", "1b02fe"):
        save(pattern_image(16, 20, seed=1), raw / f"stage1_train/{sample}/images/{sample}.png")
        save(np.pad(np.full((4, 4), 255, np.uint8), ((2, 10), (2, 14))), raw / f"stage1_train/{sample}/masks/4f2e.png")
    (raw / "README.repo.rst").write_text("the release's readme")
    (raw / "SOURCE.txt").write_text("where it came from")
    _, manifest = run_convert(raw, tmp_path)
    assert manifest["id"].tolist() == ["0a7d30", "1b02fe"]
    assert (f"reading the layout inside '{raw / 'stage1_train'}', the only folder on the way (left out beside it: "
            "README.repo.rst, SOURCE.txt)") in capsys.readouterr().out
    (raw / "other").mkdir()  # two folders and no layout: nothing is guessed
    with pytest.raises(ValueError, match="has no images folder and no train/ folder"):
        run_convert(raw, tmp_path)


def test_a_second_annotators_mask_beside_the_images_gets_a_hint(tmp_path):
    """CHASE_DB1 ships Image_01L.jpg with Image_01L_1stHO.png and Image_01L_2ndHO.png in one folder: with
    '{stem}_1stHO' the second annotator's file is taken for an image without a mask, and says what it may be."""
    raw = tmp_path / "raw"
    save(pattern_image(16, 20), raw / "chase/Image_01L.png")
    save(box_mask(16, 20).astype(np.uint8) * 255, raw / "chase/Image_01L_1stHO.png")
    save(box_mask(16, 20).astype(np.uint8) * 255, raw / "chase/Image_01L_2ndHO.png")
    with pytest.raises(ValueError, match=r"Image_01L_2ndHO.png: image without mask: expected .*; its name extends "
                                         r"image 'Image_01L.png''s: another annotation of that image\?"):
        run_convert(raw, tmp_path, image_folder="chase", mask_folder="chase", mask_stem_pattern="{stem}_1stHO")
    _, manifest = run_convert(raw, tmp_path, image_folder="chase", mask_folder="chase",
                              mask_stem_pattern="{stem}_1stHO", on_error="skip")
    assert manifest["id"].tolist() == ["Image_01L"]
