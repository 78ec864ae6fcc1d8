"""segpipe/inference/output_record.py and model_file.py: where segpipe-predict may write, what it may replace,
and which models it can load, without TensorFlow (the end-to-end cases are in tests/project/test_bad_inputs.py)."""
from __future__ import annotations

import json
import zipfile

import pytest

from segpipe.inference.model_file import check_model_file
from segpipe.inference.output_record import RECORD_NAME, OutputRecord, check_output_folder


def images(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"image")
    return [folder / name for name in names]


@pytest.mark.parametrize("output, refused", [
    ("in", "is the input folder"), ("in/masks", "lies inside the input folder"), ("in/sub/deep", "lies inside"),
    (".", "holds 2 of the input image(s)"), ("elsewhere", None), ("in_masks", None)])
def test_the_output_folder_may_not_meet_the_inputs(tmp_path, output, refused, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = images(tmp_path / "in", "a.png", "b.png")
    if refused:
        with pytest.raises(ValueError, match=refused.replace("(", r"\(").replace(")", r"\)")):
            check_output_folder(tmp_path / output, input=tmp_path / "in", input_files=files)
    else:
        check_output_folder(tmp_path / output, input=tmp_path / "in", input_files=files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # the check wrote nothing


def test_a_link_to_the_input_folder_is_the_input_folder(tmp_path):
    files = images(tmp_path / "in", "a.png")
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    with pytest.raises(ValueError, match="is the input folder"):
        check_output_folder(tmp_path / "alias", input=tmp_path / "in", input_files=files)


def test_one_input_file_may_have_its_masks_beside_it_but_not_over_it(tmp_path):
    files = images(tmp_path / "in", "a.png")
    check_output_folder(tmp_path / "in/masks", input=files[0], input_files=files)  # a file is not read recursively
    with pytest.raises(ValueError, match="holds 1 of the input image"):
        check_output_folder(tmp_path / "in", input=files[0], input_files=files)


def test_the_record_claims_before_writing_and_reads_past_a_cut_off_line(tmp_path):
    record = OutputRecord(tmp_path / "out")
    record.claim("a", source=[5, 1, 0], settings="s1", files=["a.png", "a_overlay.png"])
    record.claim("b", source=[5, 1, 0], settings="s1", files=["b.png"])
    (tmp_path / "out/a.png").write_bytes(b"mask")
    (tmp_path / "out/a_overlay.png").write_bytes(b"overlay")
    with open(tmp_path / "out" / RECORD_NAME, "a") as fh:
        fh.write('{"stem": "c", "sour')  # a run killed while appending
    again = OutputRecord(tmp_path / "out")
    assert again.is_done("a", source=[5, 1, 0], settings="s1", files=["a.png", "a_overlay.png"])
    assert not again.is_done("a", source=[6, 1, 0], settings="s1", files=["a.png", "a_overlay.png"])  # input changed
    assert not again.is_done("a", source=[5, 1, 0], settings="s2", files=["a.png", "a_overlay.png"])  # settings
    assert not again.is_done("a", source=[5, 1, 0], settings="s1", files=["a.png"])  # other outputs asked for
    assert not again.is_done("b", source=[5, 1, 0], settings="s1", files=["b.png"])  # claimed, never written
    (tmp_path / "out/user.png").write_bytes(b"theirs")
    assert again.foreign(["a.png", "b.png", "user.png", "predict.json"]) == ["user.png"]
    again.claim("c", source=[1, 1, 0], settings="s1", files=["c.png"])  # appends after the cut-off line
    again.close()
    lines = [json.loads(line) for line in (tmp_path / "out" / RECORD_NAME).read_text().splitlines()]
    assert [line["stem"] for line in lines] == ["a", "b", "c"]


def test_files_an_earlier_run_wrote_stay_predicts_own(tmp_path):
    record = OutputRecord(tmp_path)
    record.claim("a", source=[1, 1, 0], settings="s1", files=["a.png", "a_overlay.png"])
    for name in ("a.png", "a_overlay.png"):
        (tmp_path / name).write_bytes(b"x")
    record.close()
    record = OutputRecord(tmp_path)
    record.claim("a", source=[1, 1, 0], settings="s2", files=["a.png"])  # now without --overlay
    record.close()
    assert OutputRecord(tmp_path).foreign(["a.png", "a_overlay.png"]) == []


def test_leftovers_of_killed_writes_go_only_beside_files_of_the_record(tmp_path):
    record = OutputRecord(tmp_path)
    record.claim("a", source=[1, 1, 0], settings="s", files=["a.png"])
    (tmp_path / ".a.png.x1y2.tmp").write_bytes(b"half")
    (tmp_path / ".notes.txt.abc.tmp").write_bytes(b"the user's")
    assert record.remove_leftovers() == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != RECORD_NAME) == [".notes.txt.abc.tmp"]


def keras_archive(path, **parts):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("make, message", [
    (lambda p: keras_archive(p, **{"config.json": "{}", "model.weights.h5": "w"}), None),
    (lambda p: (keras_archive(p, **{"config.json": "{}", "model.weights.h5": "w" * 5000}),
                p.write_bytes(p.read_bytes()[:3000])), "is truncated or damaged"),
    (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100)), "is an HDF5 file"),
    (lambda p: p.write_text("hello"), "is not a Keras model file"),
    (lambda p: keras_archive(p, **{"readme.txt": "x"}), "no config.json in it"),
    (lambda p: (p.mkdir(), (p / "saved_model.pb").write_bytes(b"")), "is a TensorFlow SavedModel folder"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: None, "not found"),
])
def test_the_model_file_is_checked_before_tensorflow_starts(tmp_path, make, message):
    (tmp_path / "inference.json").write_text('{"input": "resize"}')
    make(tmp_path / "model.keras")
    if message is None:
        check_model_file(tmp_path / "model.keras")
    else:
        with pytest.raises(ValueError, match=message):
            check_model_file(tmp_path / "model.keras")


def test_a_model_without_its_inference_record_says_what_to_copy(tmp_path):
    keras_archive(tmp_path / "model.keras", **{"config.json": "{}"})
    with pytest.raises(ValueError, match="inference.json' is missing.*copy models/inference.json"):
        check_model_file(tmp_path / "model.keras")
