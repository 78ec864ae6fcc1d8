"""convert-to-png end to end via main([...]) on fixtures written here: layouts, naming, formats, errors."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import box_mask, pattern_image, save_pair, write_params
from stages import convert_to_png


def run_convert(raw: Path, tmp_path: Path, num_classes: int = 1, **convert):
    out, skipped = tmp_path / "png", tmp_path / "skipped.csv"
    params = write_params(tmp_path, num_classes=num_classes, convert=convert)
    convert_to_png.main(["--raw-dir", str(raw), "--output-dir", str(out), "--skipped", str(skipped),
                         "--params", str(params)])
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    return out, manifest


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------------------------------- layouts
def test_pooled_layout_with_groups(pooled_dataset, tmp_path):
    out, manifest = run_convert(pooled_dataset, tmp_path)
    assert list(manifest["id"]) == sorted([f"big/big{i}" for i in range(6)] + [f"small/small{i}" for i in range(3)])
    assert set(manifest["group"]) == {"big", "small"}
    assert set(manifest["split"]) == {""}
    image = read(out / "images/big/big2.png")
    np.testing.assert_array_equal(image, pattern_image(16, 20, seed=2))
    mask = read(out / "masks/big/big2.png")
    assert mask.dtype == np.uint8 and mask.shape == (16, 20)
    np.testing.assert_array_equal(mask, box_mask(16, 20).astype(np.uint8))  # class ids {0, 1}
    row = manifest.set_index("id").loc["big/big2"]
    assert float(row["foreground_fraction"]) == pytest.approx(25 / 320)
    assert (row["height"], row["width"]) == ("16", "20")


def test_presplit_layout_keeps_splits_and_flat_group(tmp_path):
    raw = tmp_path / "raw"
    save_pair(raw, "train/images/a.png", "train/masks/a.png")
    save_pair(raw, "Valid/Images/a.png", "Valid/Masks/a.png")  # folder names are case-insensitive
    save_pair(raw, "test/images/t.png", "test/masks/t.png")
    _, manifest = run_convert(raw, tmp_path)
    assert list(zip(manifest["id"], manifest["split"], manifest["group"])) == [
        ("test/t", "test", "all"), ("train/a", "train", "all"), ("valid/a", "valid", "all")]


def test_mixed_layouts_are_rejected(tmp_path):
    raw = tmp_path / "raw"
    save_pair(raw, "images/a.png", "masks/a.png")
    save_pair(raw, "train/images/b.png", "train/masks/b.png")
    with pytest.raises(ValueError, match="mixes a pooled layout"):
        run_convert(raw, tmp_path)


# ---------------------------------------------------------------------------------------- pairing
@pytest.mark.parametrize("image_name, mask_name, pattern", [
    ("x.tif", "x_manual1.gif", "{stem}_manual1"),
    ("IMD002.bmp", "IMD002_lesion.bmp", "{stem}_lesion"),
    ("a.jpg", "a_mask.png", "{stem}_mask"),
    ("Photo.JPG", "photo.PNG", "{stem}"),  # case-insensitive stems and extensions
])
def test_mask_naming_rule(tmp_path, image_name, mask_name, pattern):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    image = pattern_image(12, 10)
    Image.fromarray(image).save(raw / "images" / image_name,
                                format=Image.registered_extensions()[Path(image_name).suffix.lower()])
    mask = box_mask(12, 10)
    Image.fromarray(mask.astype(np.uint8) * 255).save(raw / "masks" / mask_name,
                                                      format=Image.registered_extensions()[Path(mask_name).suffix.lower()])
    out, manifest = run_convert(raw, tmp_path, mask_stem_pattern=pattern)
    assert list(manifest["id"]) == [Path(image_name).stem]
    assert manifest["source_mask"][0] == f"masks/{mask_name}"
    np.testing.assert_array_equal(read(out / manifest["mask_path"][0]), mask.astype(np.uint8))


def test_same_stem_different_extension_is_reported_not_overwritten(tmp_path):
    raw = tmp_path / "raw"
    save_pair(raw, "images/a.png", "masks/a.png")
    Image.fromarray(pattern_image(16, 20, seed=5)).save(raw / "images/a.jpg")
    save_pair(raw, "images/b.png", "masks/b.png")
    with pytest.raises(ValueError) as error:
        run_convert(raw, tmp_path)
    message = str(error.value)
    assert "images/a.jpg" in message and "images/a.png" in message and "share this stem" in message
    out, manifest = run_convert(raw, tmp_path, on_error="skip")
    assert list(manifest["id"]) == ["b"]
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    assert sorted(Path(p).name for p in skipped["path"]) == ["a.jpg", "a.png"]


# ---------------------------------------------------------------------------------------- formats
def _save(image: Image.Image, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


RGB = pattern_image(16, 20, seed=3)
GRAY16 = (np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 200)


@pytest.mark.parametrize("name, make, expected, exact", [
    ("jpeg.jpg", lambda p: _save(Image.fromarray(RGB), p, quality=100, subsampling=0), RGB, False),
    ("progressive.jpg", lambda p: _save(Image.fromarray(RGB), p, quality=100, subsampling=0, progressive=True), RGB,
     False),
    ("rgb.png", lambda p: _save(Image.fromarray(RGB), p), RGB, True),
    ("gray16.png", lambda p: _save(Image.fromarray(GRAY16), p),
     np.repeat(np.rint(GRAY16 / 65535 * 255).astype(np.uint8)[..., None], 3, axis=2), True),
    ("palette.png", lambda p: _save(Image.fromarray(RGB).quantize(16), p),
     np.asarray(Image.fromarray(RGB).quantize(16).convert("RGB")), True),
    ("rgba.png", lambda p: _save(Image.fromarray(np.dstack([RGB, np.full((16, 20), 7, np.uint8)])), p), RGB, True),
    ("rgb24.bmp", lambda p: _save(Image.fromarray(RGB), p), RGB, True),
    ("lzw.tif", lambda p: _save(Image.fromarray(RGB), p, compression="tiff_lzw"), RGB, True),
    ("gray16.tif", lambda p: _save(Image.fromarray(GRAY16), p),
     np.repeat(np.rint(GRAY16 / 65535 * 255).astype(np.uint8)[..., None], 3, axis=2), True),
    ("anim.gif", lambda p: _save(Image.fromarray(RGB).quantize(64), p),
     np.asarray(Image.fromarray(RGB).quantize(64).convert("RGB")), True),
    ("lossless.webp", lambda p: _save(Image.fromarray(RGB), p, lossless=True), RGB, True),
])
def test_image_formats_become_8bit_rgb_png(tmp_path, name, make, expected, exact):
    raw = tmp_path / "raw"
    make(raw / "images" / name)
    _save(Image.fromarray(box_mask(16, 20).astype(np.uint8) * 255), raw / "masks" / (Path(name).stem + ".png"))
    out, manifest = run_convert(raw, tmp_path)
    converted = Image.open(out / manifest["image_path"][0])
    assert converted.mode == "RGB" and converted.size == (20, 16)
    pixels = np.asarray(converted).astype(int)
    if exact:
        np.testing.assert_array_equal(pixels, expected)
    else:  # JPEG at quality 100 is still lossy: close, not equal
        assert np.abs(pixels - expected).mean() < 6


def test_gray_output_mode(pooled_dataset, tmp_path):
    out, manifest = run_convert(pooled_dataset, tmp_path, image_mode="L")
    converted = Image.open(out / manifest["image_path"][0])
    assert converted.mode == "L"
    expected = np.asarray(Image.fromarray(pattern_image(16, 20, seed=0)).convert("L"))
    np.testing.assert_array_equal(np.asarray(converted), expected)


@pytest.mark.parametrize("mask_name, write_mask", [
    ("m.png", lambda p, m: _save(Image.fromarray(m.astype(np.uint8)), p)),             # 0/1
    ("m.png", lambda p, m: _save(Image.fromarray(m.astype(np.uint8) * 255), p)),       # 0/255
    ("m.bmp", lambda p, m: _save(Image.fromarray(m).convert("1"), p)),                  # 1-bit BMP
    ("m.gif", lambda p, m: _save(Image.fromarray(m.astype(np.uint8) * 255).convert("P"), p)),
    ("m.png", lambda p, m: _save(Image.fromarray(m.astype(np.uint8)).convert("P"), p)),  # palette ids
    ("m.tif", lambda p, m: _save(Image.fromarray(m.astype(np.uint16) * 65535), p)),     # 16-bit
    ("m.png", lambda p, m: _save(Image.fromarray(m.astype(np.uint16)), p)),             # 16-bit 0/1: labels
])
def test_mask_encodings_give_class_ids(tmp_path, mask_name, write_mask):
    raw = tmp_path / "raw"
    _save(Image.fromarray(pattern_image(16, 20)), raw / "images/m.png")
    mask = box_mask(16, 20)
    write_mask(raw / "masks" / mask_name, mask)
    out, manifest = run_convert(raw, tmp_path)
    np.testing.assert_array_equal(read(out / manifest["mask_path"][0]), mask.astype(np.uint8))


def lossy_rgb_mask(mask: np.ndarray) -> bytes:
    """A mask saved the way some tools do: RGB JPEG, values near 0 and 255, channels unequal."""
    rgb = np.dstack([mask * 250, mask * 247, mask * 252]).astype(np.uint8) + np.uint8(3)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_lossy_jpeg_mask_is_thresholded_and_invert_flips(tmp_path):
    raw = tmp_path / "raw"
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    _save(Image.fromarray(pattern_image(32, 32)), raw / "images/a.png")
    (raw / "masks").mkdir()
    (raw / "masks/a.jpg").write_bytes(lossy_rgb_mask(mask))
    decoded = np.asarray(Image.open(raw / "masks/a.jpg"))
    assert len(np.unique(decoded)) > 2 and not (decoded[..., 0] == decoded[..., 1]).all()  # really lossy
    out, manifest = run_convert(raw, tmp_path)
    np.testing.assert_array_equal(read(out / "masks/a.png"), mask.astype(np.uint8))
    out, _ = run_convert(raw, tmp_path, invert_mask=True)
    np.testing.assert_array_equal(read(out / "masks/a.png"), (~mask).astype(np.uint8))


def test_exif_orientation_applied_to_image_and_mask_alike(tmp_path):
    """Stored 40x30 (WxH) pixels with orientation 6 (rotate 90 clockwise) -> upright 30x40."""
    raw = tmp_path / "raw"
    stored = np.zeros((30, 40, 3), np.uint8)
    stored[2:8, 30:38] = 255  # a bright patch near the top-right of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(Image.fromarray(stored), raw / "images/raw_frame.jpg", quality=95, exif=exif.tobytes())
    _save(Image.fromarray(stored), raw / "images/upright.jpg", quality=95, exif=exif.tobytes())
    stored_mask = (stored[..., 0] > 0).astype(np.uint8) * 255
    _save(Image.fromarray(stored_mask), raw / "masks/raw_frame.png")  # drawn on the stored pixels
    _save(Image.fromarray(np.rot90(stored_mask, k=-1).copy()), raw / "masks/upright.png")  # drawn upright
    out, manifest = run_convert(raw, tmp_path)
    for name in ("raw_frame", "upright"):
        image, mask = read(out / f"images/{name}.png"), read(out / f"masks/{name}.png")
        assert image.shape[:2] == (40, 30) and mask.shape == (40, 30)
        np.testing.assert_array_equal(mask, (image[..., 0] > 128).astype(np.uint8))
        assert mask[30:38, 22:28].all()  # clockwise turn: the top-right patch is now bottom-right


def test_parallel_and_serial_give_identical_bytes(tmp_path):
    raw = tmp_path / "raw"
    for index in range(20):
        save_pair(raw, f"images/i{index:02d}.png", f"masks/i{index:02d}.png", seed=index)
    serial, _ = run_convert(raw, tmp_path / "serial", num_workers=1)
    parallel, _ = run_convert(raw, tmp_path / "parallel", num_workers=2)
    names = sorted(p.relative_to(serial).as_posix() for p in serial.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(parallel).as_posix() for p in parallel.rglob("*") if p.is_file())
    for name in names:
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name


# ---------------------------------------------------------------------------------------- bad input
def make_bad_dataset(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    save_pair(raw, "images/good.png", "masks/good.png")
    save_pair(raw, "images/corrupt.png", "masks/corrupt.png")
    (raw / "images/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    save_pair(raw, "images/empty.jpg", "masks/empty.png")
    (raw / "images/empty.jpg").write_bytes(b"")
    save_pair(raw, "images/lonely.png", "masks/elsewhere.png")
    save_pair(raw, "images/big.png", "masks/big.png")
    Image.fromarray(box_mask(10, 10).astype(np.uint8) * 255).save(raw / "masks/big.png")
    save_pair(raw, "images/multi.png", "masks/multi.png")
    Image.fromarray(np.tile(np.array([0, 1, 2], np.uint8), (16, 7))[:, :20]).save(raw / "masks/multi.png")
    save_pair(raw, "images/photo.png", "masks/photo.png")
    Image.fromarray(pattern_image(16, 20)).save(raw / "masks/photo.png")  # a photo given as mask
    return raw


EXPECTED_PROBLEMS = {
    "images/corrupt.png": "unreadable image: cannot decode",
    "images/empty.jpg": "unreadable image: empty file (0 bytes)",
    "images/lonely.png": "image without mask",
    "masks/elsewhere.png": "mask without image",
    "masks/big.png": "size mismatch: mask is 10x10 (WxH) but image",
    "masks/multi.png": "unexpected mask values [0, 1, 2] for a binary task",
    "masks/photo.png": "not a binary mask",
}


def test_bad_input_fails_with_one_message_listing_every_problem(tmp_path):
    raw = make_bad_dataset(tmp_path)
    out = tmp_path / "png"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier output")
    with pytest.raises(ValueError) as error:
        run_convert(raw, tmp_path)
    message = str(error.value)
    assert "found 7 problem(s)" in message and "nothing was written" in message
    for path, reason in EXPECTED_PROBLEMS.items():
        line = next((text for text in message.splitlines() if text.strip().startswith(f"- {raw / path}:")), None)
        assert line is not None, f"{path} missing from:\n{message}"
        assert reason in line, line
    assert "convert.on_error: skip" in message
    assert (out / "previous.txt").read_text() == "an earlier output"  # old output untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".png")] == []  # no temp left


def test_skip_mode_writes_good_pairs_and_the_report(tmp_path):
    raw = make_bad_dataset(tmp_path)
    out, manifest = run_convert(raw, tmp_path, on_error="skip")
    assert list(manifest["id"]) == ["good"]
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    found = {Path(p).relative_to(raw).as_posix(): r for p, r in zip(skipped["path"], skipped["reason"])}
    assert set(found) == set(EXPECTED_PROBLEMS)
    for path, reason in EXPECTED_PROBLEMS.items():
        assert reason.split(":")[0] in found[path]


@pytest.mark.parametrize("setup, message", [
    (lambda raw: raw.mkdir(), "no images folder and no train/ folder"),
    (lambda raw: ((raw / "images").mkdir(parents=True), (raw / "masks").mkdir()), "no images found under"),
    (lambda raw: None, "does not exist"),
])
def test_empty_or_missing_input_folder(tmp_path, setup, message):
    raw = tmp_path / "raw"
    setup(raw)
    with pytest.raises(ValueError, match=message):
        run_convert(raw, tmp_path)


def test_bad_params_are_named(pooled_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"param 'convert.on_error' must be one of \['fail', 'skip'\], got 'ignore'"):
        run_convert(pooled_dataset, tmp_path, on_error="ignore")
    with pytest.raises(ValueError, match=r"unknown key 'treshold' in section 'convert'"):
        run_convert(pooled_dataset, tmp_path, treshold=3)
    with pytest.raises(ValueError, match=r"'convert.mask_stem_pattern'.*must contain '\{stem\}'"):
        run_convert(pooled_dataset, tmp_path, mask_stem_pattern="mask")


def test_multiclass_masks_keep_class_ids_and_reject_out_of_range(tmp_path):
    raw = tmp_path / "raw"
    _save(Image.fromarray(pattern_image(16, 20)), raw / "images/a.png")
    ids = np.tile(np.array([0, 1, 2, 3], np.uint8), (16, 5))
    _save(Image.fromarray(ids), raw / "masks/a.png")
    out, _ = run_convert(raw, tmp_path, num_classes=4)
    np.testing.assert_array_equal(read(out / "masks/a.png"), ids)
    with pytest.raises(ValueError, match=r"class ids 3 \(80 pixels\) out of range for num_classes=3"):
        run_convert(raw, tmp_path, num_classes=3)


def test_images_of_more_than_8_bits_share_the_white_level_their_bit_depth_implies(tmp_path):
    """12-bit camera data in 16-bit files: 4095 becomes 255 for every image (not 65535, which would leave
    them 16 gray levels; nor a stretch per image, which would change their contrast relative to each other)."""
    raw = tmp_path / "raw"
    bright = np.linspace(0, 4000, 16 * 20).reshape(16, 20).astype(np.uint16)
    dim = (bright // 4).astype(np.uint16)  # the same scene at a quarter of the exposure
    for name, pixels in (("bright", bright), ("dim", dim)):
        _save(Image.fromarray(pixels), raw / f"images/{name}.png")
        _save(Image.fromarray(box_mask(16, 20).astype(np.uint8) * 255), raw / f"masks/{name}.png")
    _save(Image.fromarray(RGB), raw / "images/eight_bit.png")
    _save(Image.fromarray(box_mask(16, 20).astype(np.uint8) * 255), raw / "masks/eight_bit.png")
    out, _ = run_convert(raw, tmp_path, image_mode="L")
    for name, pixels in (("bright", bright), ("dim", dim)):
        np.testing.assert_array_equal(read(out / f"images/{name}.png"), np.rint(pixels / 4095 * 255).astype(np.uint8))
    np.testing.assert_array_equal(read(out / "images/eight_bit.png"), np.asarray(Image.fromarray(RGB).convert("L")))
    record = json.loads((out / "white_level.json").read_text())
    assert record["white_level"] == 4095 and "brightest pixel of 2 images" in record["reason"]
    assert "12-bit" in record["reason"]

    out, _ = run_convert(raw, tmp_path, image_mode="L", white_level=2000)  # given: used as is, brighter clipped
    np.testing.assert_array_equal(read(out / "images/bright.png"),
                                  np.clip(np.rint(bright / 2000 * 255), 0, 255).astype(np.uint8))
    assert json.loads((out / "white_level.json").read_text())["white_level"] == 2000


def test_float_images_in_the_unit_range_and_8_bit_datasets(tmp_path):
    raw = tmp_path / "raw"
    values = np.linspace(0, 1, 16 * 20, dtype=np.float32).reshape(16, 20)
    _save(Image.fromarray(values, mode="F"), raw / "images/a.tif")
    _save(Image.fromarray(box_mask(16, 20).astype(np.uint8) * 255), raw / "masks/a.png")
    out, _ = run_convert(raw, tmp_path, image_mode="L")
    np.testing.assert_array_equal(read(out / "images/a.png"), np.rint(values * 255).astype(np.uint8))
    assert json.loads((out / "white_level.json").read_text())["white_level"] == 1.0

    out, _ = run_convert(_eight_bit_dataset(tmp_path / "eight"), tmp_path)
    assert json.loads((out / "white_level.json").read_text()) == {"white_level": None,
                                                                   "reason": "every image has 8 bits per channel"}


def _eight_bit_dataset(raw: Path) -> Path:
    _save(Image.fromarray(RGB), raw / "images/a.png")
    _save(Image.fromarray(box_mask(16, 20).astype(np.uint8) * 255), raw / "masks/a.png")
    return raw


def test_multiclass_16_bit_masks_keep_their_ids(tmp_path):
    raw = tmp_path / "raw"
    _save(Image.fromarray(pattern_image(16, 20)), raw / "images/a.png")
    ids = np.tile(np.array([0, 1, 2, 3], np.uint16), (16, 5))
    _save(Image.fromarray(ids), raw / "masks/a.png")  # a 16-bit label map, as some tools write them
    out, _ = run_convert(raw, tmp_path, num_classes=4)
    np.testing.assert_array_equal(read(out / "masks/a.png"), ids.astype(np.uint8))
    ids[0, 0] = 300
    _save(Image.fromarray(ids), raw / "masks/a.png")
    with pytest.raises(ValueError, match=r"masks/a.png: class ids up to 300 in a I;16 mask, out of range for "
                                         r"num_classes=4; expected values 0..3"):
        run_convert(raw, tmp_path, num_classes=4)


def _save_stack(pages: list[np.ndarray], path: Path) -> None:
    frames = [Image.fromarray(page) for page in pages]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:])


def test_a_tiff_stack_is_one_image_per_page(tmp_path):
    """EM and microscopy volumes ship as multi-page TIFFs (ISBI 2012: train-volume.tif, train-labels.tif)."""
    raw = tmp_path / "raw"
    pages = [pattern_image(16, 20, seed=seed)[..., 0] for seed in range(3)]
    masks = [np.roll(box_mask(16, 20), shift, axis=1).astype(np.uint8) * 255 for shift in range(3)]
    _save_stack(pages, raw / "images/volume.tif")
    _save_stack(masks, raw / "masks/volume.tif")
    out, manifest = run_convert(raw, tmp_path, image_mode="L")
    assert list(manifest["id"]) == ["volume/0000", "volume/0001", "volume/0002"]
    assert list(manifest["source_image"]) == [f"images/volume.tif (page {k})" for k in range(3)]
    assert set(manifest["group"]) == {"volume"}  # the stack is its pages' group (build_csv.split_by: group)
    for k in range(3):
        np.testing.assert_array_equal(read(out / f"images/volume/{k:04d}.png"), pages[k])
        np.testing.assert_array_equal(read(out / f"masks/volume/{k:04d}.png"), masks[k] // 255)

    _save_stack(masks[:2], raw / "masks/volume.tif")
    with pytest.raises(ValueError, match=r"masks/volume.tif: 2 page\(s\), but its image .*volume.tif' has 3; a stack "
                                         r"of images needs a stack of masks"):
        run_convert(raw, tmp_path, image_mode="L")


def test_a_thumbnail_page_is_not_an_image(tmp_path):
    """Some writers add a reduced-resolution page (a thumbnail or pyramid level) after the picture."""
    raw = tmp_path / "raw"
    picture = pattern_image(16, 20)[..., 0]
    _save_stack([picture, picture[::4, ::4].copy()], raw / "images/scan.tif")
    _save(Image.fromarray(box_mask(16, 20).astype(np.uint8) * 255), raw / "masks/scan.png")
    out, manifest = run_convert(raw, tmp_path, image_mode="L")
    assert list(manifest["id"]) == ["scan"] and manifest["source_image"][0] == "images/scan.tif"
    np.testing.assert_array_equal(read(out / "images/scan.png"), picture)


def test_the_white_level_of_a_16_bit_stack_looks_at_every_page(tmp_path):
    raw = tmp_path / "raw"
    dim, bright = np.full((16, 20), 900, np.uint16), np.full((16, 20), 3000, np.uint16)
    _save_stack([dim, bright], raw / "images/volume.tif")
    _save_stack([box_mask(16, 20).astype(np.uint8) * 255] * 2, raw / "masks/volume.tif")
    out, _ = run_convert(raw, tmp_path, image_mode="L")
    assert json.loads((out / "white_level.json").read_text())["white_level"] == 4095  # not 1023 from page 0
    np.testing.assert_array_equal(read(out / "images/volume/0001.png"), np.full((16, 20), round(3000 / 4095 * 255)))


def _save_wide_colour(pages: list[np.ndarray], path: Path) -> None:
    """RGB(A) uint16 pages as a 48/64-bit PNG or (multi-page) TIFF; Pillow cannot write these, OpenCV can."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = [cv2.cvtColor(page, cv2.COLOR_RGBA2BGRA if page.shape[2] == 4 else cv2.COLOR_RGB2BGR) for page in pages]
    assert cv2.imwritemulti(str(path), bgr) if len(bgr) > 1 else cv2.imwrite(str(path), bgr[0])


def test_colour_images_of_16_bits_per_channel_keep_their_low_bits(tmp_path):
    """Pillow decodes 48-bit RGB to its high bytes: 12-bit colour data (microscopy, satellite scenes) would turn
    nearly black (4095 -> 15). They take the dataset's white level like 16-bit gray images; an opaque alpha
    (65535) does not raise it, and a 16-bit colour mask is a colour mask."""
    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 4096, (16, 20, 3)).astype(np.uint16)
    rgb[0, 0] = 4000  # the brightest pixel: 12-bit data
    rgba = np.concatenate([rgb[::-1], np.full((16, 20, 1), 65535, np.uint16)], axis=2)
    _save_wide_colour([rgb], raw / "images/plain.png")
    _save_wide_colour([rgba], raw / "images/alpha.tif")
    mask = box_mask(16, 20)
    _save(Image.fromarray(mask.astype(np.uint8) * 255), raw / "masks/plain.png")
    _save_wide_colour([np.repeat(mask[..., None], 3, axis=2).astype(np.uint16) * 65535], raw / "masks/alpha.png")
    out, _ = run_convert(raw, tmp_path)
    np.testing.assert_array_equal(read(out / "images/plain.png"), np.rint(rgb / 4095 * 255).astype(np.uint8))
    np.testing.assert_array_equal(read(out / "images/alpha.png"), np.rint(rgb[::-1] / 4095 * 255).astype(np.uint8))
    np.testing.assert_array_equal(read(out / "masks/alpha.png"), mask)
    record = json.loads((out / "white_level.json").read_text())
    assert record["white_level"] == 4095 and "12-bit" in record["reason"]

    from segpipe.inference.prediction import load_image  # predict reads raw files the same way
    np.testing.assert_array_equal(load_image(raw / "images/plain.png", channels=3, white_level=4095),
                                  read(out / "images/plain.png"))


def test_a_16_bit_colour_stack_is_one_image_per_page(tmp_path):
    raw = tmp_path / "raw"
    pages = [np.full((16, 20, 3), level, np.uint16) * np.array([1, 2, 3], np.uint16) for level in (100, 1000)]
    _save_wide_colour(pages, raw / "images/volume.tif")
    _save_stack([box_mask(16, 20).astype(np.uint8) * 255] * 2, raw / "masks/volume.tif")
    out, manifest = run_convert(raw, tmp_path)
    assert list(manifest["id"]) == ["volume/0000", "volume/0001"]
    for k, page in enumerate(pages):  # brightest 3000: 12-bit
        np.testing.assert_array_equal(read(out / f"images/volume/{k:04d}.png"), np.rint(page / 4095 * 255))


@pytest.mark.parametrize("method", list(Image.Transpose))
def test_a_16_bit_colour_image_turns_as_pillow_turns_its_images(method):
    """EXIF orientation applies to 16-bit colour images too (WideColourImage.transpose, NumPy for Pillow)."""
    from segpipe.data.image_io import WideColourImage

    rgb = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3)
    turned = WideColourImage(rgb, format="PNG", exif=Image.Exif()).transpose(method)
    expected = np.asarray(Image.fromarray(rgb.astype(np.uint8)).transpose(method))
    np.testing.assert_array_equal(np.asarray(turned), expected)
    assert turned.size == Image.fromarray(expected).size


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path):
    from segpipe.data.image_io import open_image

    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "a.png")
    assert open_image(tmp_path / "a.png", max_pixels=120).size == (12, 10)  # exactly at the limit: fine
    with pytest.raises(ValueError, match="12x10 = 120 pixels, more than convert.max_image_pixels = 119"):
        open_image(tmp_path / "a.png", max_pixels=119)


def test_the_white_level_looks_at_finite_pixels_only(tmp_path):
    from segpipe.data.convert import _brightest_high_bit_pixel
    from segpipe.data.image_io import finite_values, open_image

    values = np.linspace(0, 0.8, 64, dtype=np.float32).reshape(8, 8)
    values[0, :3] = [np.nan, np.inf, -np.inf]
    Image.fromarray(values, "F").save(tmp_path / "a.tif")
    assert _brightest_high_bit_pixel(tmp_path / "a.tif", max_pixels=10**6) == (pytest.approx(0.8), True)
    with pytest.raises(ValueError, match="3 of its 64 pixels are NaN or infinite"):
        finite_values(open_image(tmp_path / "a.tif"))
