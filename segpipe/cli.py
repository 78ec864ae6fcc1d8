"""How every entry point starts and ends: the process environment, a quiet TensorFlow start-up, and
user errors as one clear line (stages, `segpipe-predict`, `segpipe-report`, `segpipe-lockcheck`)."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Callable

# Set once per process, before TensorFlow or MLflow load; a value the user set wins.
ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ info and warning lines
    # Fail fast on an unreachable MLflow server instead of MLflow's default of minutes of retries.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    # MLflow's telemetry thread draws from Python's global `random` at a moment that depends on the network;
    # Keras draws its weight-init seeds from that generator while train builds the model.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations' version check goes to the network on import
}
# What TensorFlow prints while it loads whatever TF_CPP_MIN_LOG_LEVEL says (before its logging starts).
_START_UP_NOISE = re.compile(r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
                             r"cpu_feature_guard|To enable the following instructions|rebuild TensorFlow with")


def configure_environment() -> None:
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def start_tensorflow() -> None:
    """Imports TensorFlow with its start-up lines (oneDNN notice, twice; CPU features) held back; anything
    else it writes to stderr while loading is passed on.

    Entry points call it after their cheap checks (arguments, params, paths), and import the modules that
    use TensorFlow after it: importing TensorFlow takes about 5 s (4.7-7.2 s measured on a 2-core laptop
    CPU), which `--help` and a mistyped param should not wait for."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.strip() and not _START_UP_NOISE.search(line):
                    print(line, file=sys.stderr)


def run_stage(name: str, main: Callable[[], int | None]) -> None:
    """Calls `main()` and exits with the code it returns (None = 0); a ValueError (bad data or params)
    becomes `<name>: error: <message>` and exit 2."""
    configure_environment()
    try:
        code = main()
    except ValueError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
