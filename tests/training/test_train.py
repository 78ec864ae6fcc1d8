"""The train stage end to end on a tiny project: outputs, MLflow, tracking failure, bad params, evaluate,
the SavedModel and predict, patches. Each run is a subprocess, because devices and precision are fixed per
process. Determinism and resume: test_train_reproducible.py; devices and encoders: test_train_devices.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stage_runs import env_for, params_file, run_stage, tiny_train_project, train_args


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_train_project(tmp_path_factory.mktemp("train"))


def test_train_writes_model_metrics_history_and_tracks_in_mlflow(project):
    params = params_file(project, "p_basic", epochs=3)
    done = run_stage(project, "train", *train_args("basic", params),
                     env=env_for(project, DVC_EXP_NAME="tiny-exp", DVC_EXP_BASELINE_REV="abc123"))
    assert done.returncode == 0, done.stderr
    metrics = json.loads((project / "basic/train.json").read_text())
    facts = json.loads((project / "basic/facts.json").read_text())
    history = pd.read_csv(project / "basic/history.csv")
    assert list(history["epoch"]) == [1, 2, 3] and facts["epochs_run"] == 3
    best = history.loc[history["valid_iou"].idxmax()]
    assert facts["best_epoch"] == best["epoch"] and metrics["best_valid_iou"] == pytest.approx(best["valid_iou"],
                                                                                               abs=1e-6)
    assert {"loss", "valid_loss", "iou", "valid_dice", "valid_precision", "valid_recall",
            "learning_rate"} <= set(history)
    assert not any(column.startswith("val_") or column.endswith("seconds") for column in history)
    # quality numbers only in the DVC metrics; how the run went in the facts
    assert all(isinstance(v, float) and k.startswith(("best_valid_", "best_train_")) for k, v in metrics.items())
    assert facts["precision_policy"] == "float32" and facts["devices"] == "/cpu:0" and facts["num_replicas"] == 1
    assert facts["images_per_second"] > 0 and facts["stop_reason"] == "all epochs run"
    assert json.loads((project / "basic/run.json").read_text()).keys() == {"run_id"}  # no machine-specific URI
    # a finished run leaves no resume state
    assert [p.name for p in (project / "basic/backup").iterdir()] == ["README.txt"]

    import keras
    import tensorflow as tf

    model = keras.models.load_model(project / "basic/model.keras", compile=False)
    # 32x40 images share an orientation: keep_aspect trains at their aspect with image_size's pixel count
    assert model.output_shape == (None, 28, 36, 1) and facts["input_size"] == [28, 36]
    assert not hasattr(tf.saved_model.load(str(project / "basic/saved_model")), "serve_tta_flips_rotations")

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    run = mlflow.get_run(json.loads((project / "basic/run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-exp-train"
    assert run.data.params["train.epochs"] == "3" and run.data.params["train.loss.dice"] == "1.0"
    assert run.data.tags["trained_in"] == "tiny-exp" and run.data.tags["dvc_baseline_rev"] == "abc123"
    assert "dvc_experiment" not in run.data.tags  # that tag marks the experiment's record (evaluate's run)
    assert run.data.tags["precision_policy"] == "float32"
    assert run.data.metrics["images_per_second"] == facts["images_per_second"]
    curve = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "valid_iou")
    assert [m.step for m in curve] == [1, 2, 3]
    assert run.info.artifact_uri.startswith((project / "mlartifacts").as_uri())
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"history.csv", "train.json", "facts.json"} <= artifacts
    logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    batch = np.random.default_rng(0).random((2, 28, 36, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(logged.predict(batch)), model.predict(batch, verbose=0), atol=1e-5)


def test_tracking_failure_does_not_fail_training(project):
    params = params_file(project, "p_notrack", epochs=1)
    done = run_stage(project, "train", *train_args("notrack", params),
                     env=env_for(project, MLFLOW_TRACKING_URI="http://127.0.0.1:9"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("warning: MLflow tracking to 'http://127.0.0.1:9' failed") == 1
    assert (project / "notrack/model.keras").is_file() and (project / "notrack/train.json").is_file()
    assert json.loads((project / "notrack/run.json").read_text())["run_id"] is None


@pytest.mark.parametrize("train, message", [
    ({"image_size": [30, 30]}, r"param 'train.image_size' \[30, 30\] is not divisible by 2\*\*depth = 4"),
    ({"loss": {"bce": 1, "lovasz": 1}}, r"unknown \['lovasz'\]"),
    ({"devices": "gpu"}, r"train.devices' is 'gpu'"),
    ({"sampling_weights": [1, 2, 3]}, r"sampling_weights' has 3 weights but .* lists 2 subsets"),
    ({"monitor": "valid_iuo"}, r"train.monitor' must be one of"),
    ({"monitor": "val_iou"}, r"val_iou is now valid_iou"),
])
def test_bad_params_fail_with_a_named_error(project, train, message):
    name = f"p_bad_{abs(hash(str(train)))}"
    done = run_stage(project, "train", *train_args(name, params_file(project, name, **train)),
                     env=env_for(project, MLFLOW_TRACKING_URI=""))
    errors = [line for line in done.stderr.splitlines() if line.startswith("train: error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr  # one message, no traceback
    assert "Traceback" not in done.stderr
    assert __import__("re").search(message, done.stderr), done.stderr
    assert not (project / name / "model.keras").exists()


def test_evaluate_measures_the_trained_model_and_logs_into_its_run(project):
    params = params_file(project, "p_eval", epochs=1)
    assert run_stage(project, "train", *train_args("eval", params)).returncode == 0
    done = run_stage(project, "evaluate", "--model", "eval/model.keras", "--inference", "eval/inference.json",
                     "--csv-dir", "data/csv", "--history",
                     "eval/history.csv", "--run-info", "eval/run.json", "--metrics", "eval/evaluate.json",
                     "--threshold", "eval/threshold.json", "--plots-dir", "eval/plots", "--params", params)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((project / "eval/evaluate.json").read_text())
    for key in ("valid_iou", "valid_dice", "valid_precision", "valid_recall", "valid_pixel_accuracy",
                "valid_specificity", "valid_mean_iou", "valid_frequency_weighted_iou", "valid_image_mean_boundary_f",
                "valid_iou_at_best_threshold", "best_threshold"):
        assert isinstance(metrics[key], float) and 0 <= metrics[key] <= 1, key
    sweep = pd.read_csv(project / "eval/plots/threshold_curve.csv")
    best = sweep.loc[sweep["iou"] == sweep["iou"].max(), "threshold"]
    assert metrics["best_threshold"] in best.round(2).tolist()
    assert metrics["valid_iou_at_best_threshold"] == pytest.approx(sweep["iou"].max(), abs=1e-6)
    assert json.loads((project / "eval/threshold.json").read_text())["threshold"] == metrics["best_threshold"]
    per_image = pd.read_csv(project / "eval/plots/per_image.csv")
    scores = ["iou", "dice", "boundary_f", "tp", "fp", "fn", "tn"]
    assert list(per_image.columns) == ["id", "group", "foreground_fraction", "threshold", *scores,
                                       *(f"{column}_at_0.5" for column in scores)]
    counted = per_image[["tp", "fp", "fn", "tn"]].sum(axis=1)  # every labelled pixel, at either threshold
    assert (counted == per_image[["tp_at_0.5", "fp_at_0.5", "fn_at_0.5", "tn_at_0.5"]].sum(axis=1)).all()
    assert len(per_image) == len(pd.read_csv(project / "data/csv/valid.csv"))
    histogram = pd.read_csv(project / "eval/plots/iou_histogram.csv")
    assert histogram["images"].sum() == len(per_image) and len(histogram) == 20  # one bar per bin, not per image
    for name in ("threshold_curve", "precision_recall", "confusion_matrix", "per_image_iou", "learning_curves_loss"):
        assert (project / f"eval/plots/png/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    overlays = list((project / "eval/plots/overlays").glob("*.png"))
    assert overlays and all(Image_size(p) == (40, 32) for p in overlays)  # the images' own size, not the model's

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    training_run_id = json.loads((project / "eval/run.json").read_text())["run_id"]
    training_run = mlflow.get_run(training_run_id)
    records = mlflow.search_runs(experiment_names=["segpipe"], output_format="list",
                                 filter_string=f"tags.training_run_id = '{training_run_id}'")
    assert len(records) == 1  # a record of its own, linked to the training run
    record = records[0]
    assert record.info.run_name == "workspace" and record.data.tags["dvc_experiment"] == "workspace"
    assert record.data.tags["stage"] == "evaluate" and record.data.params["evaluate.boundary_tolerance"] == "2"
    assert record.data.metrics["valid_iou"] == pytest.approx(metrics["valid_iou"])
    assert not {"best_threshold", "valid_image_mean_boundary_f"} & set(training_run.data.metrics)  # not written into


def Image_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


@pytest.fixture(scope="module")
def trained(project) -> Path:
    """A 1-epoch model with its SavedModel export and threshold.json beside it."""
    params = params_file(project, "p_trained", epochs=1, keep_aspect=False)  # square: every TTA endpoint
    done = run_stage(project, "train", *train_args("trained", params), env=env_for(project, MLFLOW_TRACKING_URI=""))
    assert done.returncode == 0, done.stderr
    (project / "trained/threshold.json").write_text(json.dumps({"threshold": 0.35}))
    return project / "trained"


def test_saved_model_export_predicts_like_evaluate(trained):
    import keras
    import tensorflow as tf

    from segpipe.inference.prediction import prediction_function

    model = keras.models.load_model(trained / "model.keras", compile=False)
    loaded = tf.saved_model.load(str(trained / "saved_model"))  # keep a reference: it owns the variables
    image = np.random.default_rng(3).integers(0, 256, (45, 37, 3), dtype=np.uint8)  # any size, as evaluate gets
    for tta, endpoint in (("flips", loaded.serve), ("none", loaded.serve_no_tta),
                          ("flips_rotations", loaded.serve_tta_flips_rotations)):
        expected = prediction_function(model, input_mode="resize", tile_overlap=0.5, tta=tta, batch_size=8)(image)
        served = endpoint(tf.constant(image))
        assert served.shape == (45, 37, 1)
        np.testing.assert_allclose(np.asarray(served), np.asarray(expected), atol=1e-5)
    batch = np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(loaded.serve_model_input(tf.constant(batch))),
                               model.predict(batch, verbose=0), atol=1e-5)
    assert json.loads((trained / "inference.json").read_text())["input"] == "resize"
    assert json.loads((trained / "inference.json").read_text())["white_level"] is None  # 8-bit training data


def test_predict_writes_masks_at_the_original_size_and_orientation(trained, tmp_path):
    from PIL import Image

    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)).save(inputs / "odd.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (21, 30), np.uint8)).save(inputs / "sub/gray.bmp")
    rotated = Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 44, 3), np.uint8))  # stored 44x20
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": upright it is 20 wide, 44 high
    rotated.save(inputs / "phone.jpg", exif=exif)
    out = tmp_path / "out"
    # The installed command (setup.sh installs segpipe), from a folder outside the project.
    installed = Path(sys.executable).parent / "segpipe-predict"
    command, env = ([str(installed)], {k: v for k, v in env_for(trained).items() if k != "PYTHONPATH"}) \
        if installed.exists() else ([sys.executable, "-m", "segpipe.inference.predict"], env_for(trained))
    done = subprocess.run([*command, "--model", str(trained / "model.keras"), "--input", str(inputs), "--output",
                           str(out), "--overlay", "--probabilities"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sizes = {}
    for name in ("odd", "sub/gray", "phone"):
        with Image.open(out / f"{name}.png") as mask:
            sizes[name] = mask.size
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert (out / f"{name}_overlay.png").is_file() and (out / f"{name}_probability.png").is_file()
    assert sizes == {"odd": (53, 37), "sub/gray": (30, 21), "phone": (20, 44)}
    assert json.loads((out / "predict.json").read_text())["threshold"] == 0.35  # the evaluated threshold by default

    with Image.open(out / "odd_probability.png") as probability:
        p = np.asarray(probability).astype(np.float64) / 65535
    with Image.open(out / "odd.png") as mask:
        np.testing.assert_array_equal(np.asarray(mask) == 255, p >= 0.35 - 1e-4)


def test_predict_scales_16_bit_images_by_the_training_data_white_level_and_reads_each_page_of_a_stack(
        trained, tmp_path):
    """A model trained on 12-bit data (inference.json: white_level 4095) predicts each page of a 16-bit
    TIFF stack exactly as it predicts the 8-bit image that convert-to-png made of that page."""
    import shutil

    from PIL import Image

    model_dir = tmp_path / "model"
    shutil.copytree(trained, model_dir)
    record = json.loads((model_dir / "inference.json").read_text())
    (model_dir / "inference.json").write_text(json.dumps({**record, "white_level": 4095}))
    pages = [np.random.default_rng(seed).integers(0, 4096, (29, 35), dtype=np.uint16) for seed in (4, 5)]
    (tmp_path / "in").mkdir()
    Image.fromarray(pages[0]).save(tmp_path / "in/stack.tif", save_all=True, append_images=[Image.fromarray(pages[1])])
    for k, page in enumerate(pages):
        Image.fromarray(np.rint(page / 4095 * 255).astype(np.uint8)).save(tmp_path / f"in/converted{k}.png")
    done = subprocess.run([sys.executable, "-m", "segpipe.inference.predict", "--model", str(model_dir / "model.keras"),
                           "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--probabilities"],
                          env=env_for(trained), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from_stack = [np.asarray(Image.open(tmp_path / f"out/stack/{k:04d}_probability.png")) for k in range(2)]
    for k in range(2):
        np.testing.assert_array_equal(from_stack[k],
                                      np.asarray(Image.open(tmp_path / f"out/converted{k}_probability.png")))
    assert not np.array_equal(*from_stack)  # page 1 is not page 0 again


def test_predict_names_a_bad_input_file(trained, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/broken.png").write_bytes(b"not a png")
    done = subprocess.run([sys.executable, "-m", "segpipe.inference.predict", "--model", str(trained / "model.keras"),
                           "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")],
                          env=env_for(trained), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "broken.png': cannot decode as an image" in done.stderr


def test_predict_refuses_an_image_over_its_pixel_limit_naming_the_flag(trained, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "in/big.png")
    done = subprocess.run([sys.executable, "-m", "segpipe.inference.predict", "--model", str(trained / "model.keras"),
                           "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                           "--max-image-pixels", "500"], env=env_for(trained), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "big.png': 30x20 = 600 pixels, more than --max-image-pixels = 500" in done.stderr
    assert "raise --max-image-pixels" in done.stderr


def test_patch_epochs_without_a_budget_cover_the_training_pixels(project):
    params = params_file(project, "p_pass", input="patches", epochs=1)
    done = run_stage(project, "train", *train_args("pass", params))
    assert done.returncode == 0, done.stderr
    # 20 training rows of 32x40 hold 25 crops of 32x32: 6 batches of 4, not 20 rows / 4 = 5.
    assert "6 steps/epoch (one pass over the training pixels: 25 patches)" in done.stdout
    assert json.loads((project / "pass/facts.json").read_text())["steps_per_epoch"] == 6


def test_patches_with_a_time_budget_plan_the_epochs_and_evaluate_by_windows(project):
    # 1.5 minutes: the plan needs two timed epochs inside the budget, about 35 s on a slow 2-core machine
    # with another test beside it (0.2 minutes ran out before the plan there).
    params = params_file(project, "p_budget", input="patches", max_minutes=1.5, warmup_epochs=1, epochs=2,
                         patience=0)
    done = run_stage(project, "train", *train_args("budget", params))
    assert done.returncode == 0, done.stderr
    assert "train: input patches (set by train.input)" in done.stdout
    facts = json.loads((project / "budget/facts.json").read_text())
    planned, run = facts["planned_epochs"], facts["epochs_run"]
    # The budget, not `epochs: 2`, decides, and the cosine schedule spans the planned epochs (1% at the end).
    assert f"{planned} epochs planned" in done.stdout and planned > 2 and 2 < run <= planned
    assert facts["input"] == "patches"
    assert ("planned epochs run" if run == planned else "minutes spent") in facts["stop_reason"]
    # Under a budget an epoch of patches is one crop per training row: 20 rows / 4 (one pass over the pixels,
    # 25 crops of 32x32, without a budget: test_patch_epochs_without_a_budget_cover_the_training_pixels).
    steps = facts["steps_per_epoch"]
    assert steps == 5 and "5 steps/epoch (one crop per training row" in done.stdout
    # What validation cost is measured, recorded and printed.
    assert 0 < facts["validation_share"] < 1 and 0 < facts["validation_seconds"] < facts["wall_seconds"]
    assert f"validation {facts['validation_share']:.0%} of the epochs' time" in done.stdout
    progress = (run * steps - steps) / (planned * steps - steps)  # after 1 warm-up epoch
    history = pd.read_csv(project / "budget/history.csv")
    assert history["learning_rate"].iloc[-1] == pytest.approx(
        0.001 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * progress))), rel=1e-3)
    assert json.loads((project / "budget/inference.json").read_text())["input"] == "patches"
    done = run_stage(project, "evaluate", "--model", "budget/model.keras", "--inference", "budget/inference.json",
                     "--csv-dir", "data/csv", "--history", "budget/history.csv", "--run-info", "budget/run.json",
                     "--metrics", "budget/evaluate.json", "--threshold", "budget/threshold.json", "--plots-dir",
                     "budget/plots", "--params", params)
    assert done.returncode == 0, done.stderr
    assert "input patches, tta flips" in done.stdout
    assert 0 <= json.loads((project / "budget/evaluate.json").read_text())["valid_iou"] <= 1


def test_auto_pilots_both_inputs_and_goes_on_with_the_better_one(project):
    # 32x40 images are 2.5x a 16x16 input: resize and patches are both possible, so a pilot of one epoch each
    # (0.5 of 4 epochs, split in two) decides, scored at native resolution; the better goes on for 3 epochs.
    params = params_file(project, "p_pilot", image_size=[16, 16], epochs=4, input_pilot=0.5)
    done = run_stage(project, "train", *train_args("pilot", params))
    assert done.returncode == 0, done.stderr
    assert "a pilot of each decides" in done.stdout
    assert "train: pilot of resize: 1 epoch(s)" in done.stdout and "train: pilot of patches: 1 epoch(s)" in done.stdout
    facts = json.loads((project / "pilot/facts.json").read_text())
    pilot = facts["input_pilot"]
    assert set(pilot["scores"]) == {"resize", "patches"} and all(0 <= v <= 1 for v in pilot["scores"].values())
    assert pilot["epochs_each"] == 1 and pilot["images_scored"] == len(pd.read_csv(project / "data/csv/valid.csv"))
    scores = pilot["scores"]
    chosen = "resize" if scores["resize"] >= scores["patches"] else "patches"
    assert pilot["chosen"] == facts["input"] == chosen
    assert f"-> {chosen}" in facts["input_reason"]
    assert json.loads((project / "pilot/inference.json").read_text())["input"] == chosen
    assert facts["epochs_run"] == 3  # the rest of the epochs, from the pilot's weights
    assert [p.name for p in (project / "pilot/backup").iterdir()] == ["README.txt"]

    # input_pilot 0: the rule on structure width decides, no pilot.
    params = params_file(project, "p_rule", image_size=[16, 16], epochs=1, input_pilot=0.0)
    done = run_stage(project, "train", *train_args("rule", params))
    assert done.returncode == 0, done.stderr
    assert "pilot" not in done.stdout and "(2 x area / boundary)" in done.stdout
    assert json.loads((project / "rule/facts.json").read_text())["input_pilot"] is None


def predict(model: Path, inputs: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segpipe.inference.predict", "--model", str(model), "--input",
                           str(inputs), "--output", str(out), "--probabilities", *extra],
                          cwd=out.parent, env=env_for(model.parent), capture_output=True, text=True, timeout=180)


def test_an_ensemble_of_one_model_or_of_copies_of_it_predicts_as_that_model(trained, tmp_path):
    import shutil

    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed, shape in ((0, (37, 53, 3)), (1, (64, 48, 3))):
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, np.uint8)).save(inputs / f"{seed}.png")
    folds = tmp_path / "cv"
    for fold in (0, 1):  # the layout evaluate's models/ensemble.json points into: paths relative to it
        (folds / f"fold-{fold}").mkdir(parents=True)
        for name in ("model.keras", "inference.json"):
            shutil.copy(trained / name, folds / f"fold-{fold}" / name)
    (tmp_path / "models").mkdir()
    one, two = tmp_path / "models/one.json", tmp_path / "models/two.json"
    settings = {"threshold": 0.35, "tta": "flips", "tile_overlap": 0.5}
    one.write_text(json.dumps({"models": ["../cv/fold-0/model.keras"], **settings}))
    two.write_text(json.dumps({"models": ["../cv/fold-0/model.keras", "../cv/fold-1/model.keras"], **settings}))
    runs = {name: predict(model, inputs, tmp_path / f"out_{name}")
            for name, model in (("single", trained / "model.keras"), ("one", one), ("two", two))}
    for done in runs.values():
        assert done.returncode == 0, done.stderr
    assert "an ensemble of 2 models" in runs["two"].stdout
    for seed in (0, 1):
        single = (tmp_path / f"out_single/{seed}.png").read_bytes()
        assert (tmp_path / f"out_one/{seed}.png").read_bytes() == single
        assert (tmp_path / f"out_two/{seed}.png").read_bytes() == single
        assert (tmp_path / f"out_one/{seed}_probability.png").read_bytes() == \
            (tmp_path / f"out_single/{seed}_probability.png").read_bytes()
    assert json.loads((tmp_path / "out_two/predict.json").read_text())["threshold"] == 0.35

    (folds / "fold-1/model.keras").unlink()  # a fold model missing from the set: one error naming it
    done = predict(two, inputs, tmp_path / "out_missing")
    assert done.returncode == 2 and "fold-1/model.keras" in done.stderr and "1 are missing" in done.stderr
    assert not (tmp_path / "out_missing").exists()
