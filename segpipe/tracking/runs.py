"""MLflow tracking that never breaks training: one store for every way of running, one record per experiment.

Records (MLflow experiment "segpipe"):
- every run of the evaluate stage starts a NEW run named after the DVC experiment (`dvc exp run -n NAME`,
  or the name DVC generates), or `workspace` for a plain `dvc repro`, tagged `dvc_experiment=<that name>`.
  It holds all of params.yaml, the evaluation metrics and artifacts, and `training_run_id`: the run
  that trained the evaluated model. That run may belong to an earlier experiment (DVC reused its model),
  so evaluate never writes into it: no experiment changes another's record.
- every training starts its own run, `<name>-train`, tagged `trained_in=<name>`, with the per-epoch curves,
  the model, and the run facts. A resumed training continues its run.
When DVC reruns nothing, no stage runs, so nothing new is recorded.

Where runs go (first that applies):
1. MLFLOW_TRACKING_URI, when set (a server, a database, a folder: anything MLflow accepts);
2. sqlite:///<project>/mlflow.db, where <project> is the DVC
   project the user works in. `dvc exp run --queue/--temp` run the stages in a copy under
   <project>/.dvc/tmp/exps/; DVC passes the real project in DVC_ROOT, and the path of such a copy
   also names it, so every run lands in the same store (a relative mlflow.db in the copy would be lost).
With a sqlite store, artifacts (history, metrics, model) go to mlartifacts/ beside the database file.

Every MLflow call goes through `Tracker`: the first failure (bad URI, server down, locked database)
prints ONE warning naming the cause and turns tracking off for the rest of the run; training and its
DVC outputs are unaffected.
"""
from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

from segpipe.core.params import flatten

EXPERIMENT_NAME = "segpipe"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def project_root(start: Path | None = None) -> Path:
    """The DVC project the user works in, also from inside a DVC experiment's temporary copy."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    parts = here.parts
    for index in range(len(parts) - 2):
        if parts[index:index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


def default_tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the project's sqlite store (see the module docstring)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def flatten_params(params: dict) -> dict[str, str]:
    """{"train": {"loss": {"bce": 1}}} -> {"train.loss.bce": "1"}; lists as their text, cut to MLflow's limit."""
    return {name: str(value)[:MAX_PARAM_LENGTH] for name, value in flatten(params).items()}


def experiment_name() -> str:
    """The DVC experiment being run (DVC passes DVC_EXP_NAME to `dvc exp run`), else `workspace` (`dvc repro`)."""
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def git_tags(root: Path) -> dict[str, str]:
    """mlflow.source.git.commit, git dirty flag, and the baseline commit when run by `dvc exp`."""
    tags = {}

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)

    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
            # Under `dvc exp run` the workspace holds the experiment's param changes, so "dirty" is expected.
            status = git("status", "--porcelain", "--untracked-files=no")
            tags["git_dirty"] = str(bool(status.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


class Tracker:
    """A failure-tolerant MLflow run. Methods do nothing after the first failure (or when disabled).

    MLflow is imported inside the calls, not at the top: with `mlflow: false` it is never loaded (about 2 s to
    import, measured, and background threads), and a broken MLflow install is one more tracking failure, not a crash."""

    def __init__(self, *, enabled: bool = True, tracking_uri: str | None = None, stage: str = "train"):
        self.enabled = enabled
        self.stage = stage
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.run_id: str | None = None
        self.error: str | None = None

    def _call(self, what: str, function, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return _retry_when_locked(function, *args, **kwargs)
        except Exception as err:  # any tracking failure must not stop training
            self.enabled = False
            self.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            database = self._database()
            damaged = isinstance(err, sqlite3.DatabaseError) or any(
                words in str(err) for words in ("file is not a database", "malformed", "no such table"))
            fix = (f"The store '{database}' is damaged: move it aside (mv {database} {database}.damaged) and "
                   "the next run starts a new one." if database and damaged else
                   "Fix MLFLOW_TRACKING_URI (or unset it for the project's mlflow.db).")
            print(f"{self.stage}: warning: MLflow tracking to '{self.tracking_uri}' failed while {what} "
                  f"({self.error}); training goes on and writes its DVC outputs, but this run is not tracked. "
                  + fix, file=sys.stderr)
            return None

    def _database(self) -> Path | None:
        """The sqlite file of a sqlite:/// store, else None."""
        return Path(self.tracking_uri[len("sqlite:///"):]) if self.tracking_uri.startswith("sqlite:///") else None

    def start(self, *, params: dict, tags: dict[str, str], run_name: str, run_id: str | None = None,
              artifact_root: Path | None = None) -> str | None:
        """Starts a run named `run_name` (or, with run_id, resumes that run); returns its id, None if tracking
        is off."""

        def start():
            database = self._database()
            if database is not None and database.is_file():
                _check_sqlite(database)
            import mlflow

            mlflow.set_tracking_uri(self.tracking_uri)
            if run_id:
                run = mlflow.start_run(run_id=run_id)
            else:
                experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
                if experiment is None:
                    location = None
                    if self.tracking_uri.startswith("sqlite:///"):
                        # Beside the database, not relative to the working dir (a DVC temp copy).
                        database = Path(self.tracking_uri[len("sqlite:///"):])
                        location = (artifact_root or database.parent / "mlartifacts").resolve().as_uri()
                    experiment_id = mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=location)
                else:
                    experiment_id = experiment.experiment_id
                run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
                mlflow.log_params(flatten_params(params))
            mlflow.set_tags(tags)
            return run.info.run_id

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.run_id = self._call("starting the run", start)
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        def log():
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

        self._call("logging metrics", log)

    def set_tags(self, tags: dict[str, str]) -> None:
        def set_tags():
            import mlflow

            mlflow.set_tags(tags)

        self._call("setting tags", set_tags)

    def log_artifact(self, path: Path) -> None:
        def log():
            import mlflow

            mlflow.log_artifact(str(path))

        self._call(f"logging artifact '{path}'", log)

    def log_keras_model(self, model, *, example_input) -> None:
        """The model in MLflow's TensorFlow/Keras flavour, with a signature from an example batch."""

        def log():
            import mlflow
            from mlflow.models import infer_signature

            output = model.predict(example_input, verbose=0)
            mlflow.tensorflow.log_model(model, name="model", signature=infer_signature(example_input, output),
                                        pip_requirements=_pip_requirements())

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._call("logging the model", log)

    def finish_training(self, *, metrics: dict[str, float], facts: dict, files: list[Path], model,
                        example_input) -> None:
        """The end of a training run: best-epoch metrics and numeric facts (at the last epoch's step), the stop
        reason as a tag, the output files and the model; then the run ends."""
        numbers = {k: v for k, v in facts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log_metrics({**metrics, **numbers}, step=facts["epochs_run"])
        self.set_tags({"stop_reason": facts["stop_reason"]})
        for path in files:
            self.log_artifact(path)
        self.log_keras_model(model, example_input=example_input)
        self.end()

    def end(self, status: str = "FINISHED") -> None:
        def end():
            import mlflow

            mlflow.end_run(status=status)

        self._call("ending the run", end)


def _check_sqlite(path: Path) -> None:
    """Raises sqlite3.DatabaseError when `path` is not a sound SQLite database (truncated, overwritten): MLflow
    would otherwise fail later, or halfway through a run, with an error about its schema."""
    with open(path, "rb") as fh:
        header = fh.read(16)
    if header and header != b"SQLite format 3\x00":
        raise sqlite3.DatabaseError(f"'{path}' is not a SQLite database (file is not a database)")
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        connection.close()
    if verdict != "ok":
        raise sqlite3.DatabaseError(f"'{path}' is malformed ({verdict})")


def _retry_when_locked(function, *args, attempts: int = 8, first_wait: float = 0.25, **kwargs):
    """Calls `function`, retrying while sqlite says "database is locked": parallel `dvc queue` workers share
    one mlflow.db, and sqlite lets one writer in at a time. Other errors are raised at once."""
    jitter = random.Random()  # its own generator: Python's global one seeds Keras' weight initialisation
    for attempt in range(attempts):
        try:
            return function(*args, **kwargs)
        except Exception as err:
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(first_wait * 2 ** attempt * (0.5 + jitter.random()))


def _pip_requirements() -> list[str]:
    """The installed TF/Keras pins, given explicitly (MLflow's inference reloads the model in a subprocess)."""
    pins = []
    for package in ("tensorflow", "tensorflow-cpu", "keras"):
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return pins
