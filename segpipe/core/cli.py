"""How every entry point starts and ends: the process environment, a quiet TensorFlow start-up, and
user errors as one clear line (stages, `segpipe-predict`, `segpipe-report`, `segpipe-lockcheck`)."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from segpipe.core import faults

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
# Two E-level lines TensorFlow writes while it runs, each time it builds an input pipeline or runs a uint8 op
# on oneDNN, that a user cannot act on: a generic kernel stands in for oneDNN's uint8 one on CPUs without
# AVX-512, and tf.data's graph carries an attribute this build's op registry does not list (it is ignored).
_RUNTIME_NOISE = (r"^E0000 \S+ +\d+ \S+\] (oneDNN supports DT_UINT8 only on platforms with AVX-512|"
                  r"NodeDef mentions attribute use_unbounded_threadpool which is not in the op definition)")
# The stderr filter: its own process, so that it outlives a crash of the stage and passes on every last line
# (a thread would lose what is still in the pipe); it ignores Ctrl-C and SIGTERM and ends when the pipe does.
_FILTER = """import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode())
for line in sys.stdin.buffer:
    if not noise.search(line):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def describe(doc: str) -> str:
    """A command's --help description: the first paragraph of its module docstring on one line (the first
    line alone stops mid-sentence when the paragraph wraps)."""
    return " ".join(doc.strip().split("\n\n")[0].split())


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
                if line.strip() and not _START_UP_NOISE.search(line) and not re.search(_RUNTIME_NOISE, line):
                    print(line, file=sys.stderr)
    _filter_stderr()


def _filter_stderr() -> None:
    """From here on, this process's stderr (file descriptor 2: Python's and TensorFlow's C++ logging alike)
    goes through a filter process that drops `_RUNTIME_NOISE` lines and passes everything else on at once.
    SEGPIPE_RAW_STDERR=1 turns it off."""
    if os.environ.get("SEGPIPE_RAW_STDERR"):
        return
    sys.stderr.flush()
    read, write = os.pipe()
    subprocess.Popen([sys.executable, "-c", _FILTER, _RUNTIME_NOISE], stdin=read, stdout=2,
                     stderr=subprocess.DEVNULL, close_fds=True)
    os.close(read)
    os.dup2(write, 2)
    os.close(write)


# What to do about an operating-system error, by errno; outputs are written atomically, so the previous ones
# are intact whatever the error.
_OS_ERROR_FIXES = {
    errno.EACCES: "make it writable (or readable) for this user, e.g. chmod u+w, or run from a clone you own",
    errno.EPERM: "make it writable (or readable) for this user, e.g. chmod u+w, or run from a clone you own",
    errno.EROFS: "the file system is read-only; run from a writable clone",
    errno.ENOSPC: "free disk space (dvc gc removes unused cache entries) and rerun",
    errno.EDQUOT: "free space within your disk quota and rerun",
    errno.EFBIG: "a file outgrew the file-size limit; raise it (ulimit -f unlimited) and rerun",
    errno.ENOENT: "check the path; run the stages before it first (dvc repro)",
    errno.ELOOP: "the path is a symbolic-link loop; replace the link with the file",
}


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: what failed on which path (an output, not the temp name it was written to), and
    the fix."""
    path = ""
    if err.filename:
        # segpipe.core.outputs writes to `.<name>.<random>.tmp` (a file or a folder): name what it was writing
        parts = [re.sub(r"^\.(.+)\.[^.]+\.tmp$", r"\1", part) for part in Path(err.filename).parts]
        shown = Path(*parts).as_posix()
        path = f" writing '{shown}'" if shown != Path(err.filename).as_posix() else f" '{err.filename}'"
    fix = _OS_ERROR_FIXES.get(err.errno, "check the path and the disk, then rerun")
    return (f"{err.strerror or err}{path} ({errno.errorcode.get(err.errno, 'OSError')}); {fix}. "
            "Earlier outputs are unchanged.")


def run_stage(name: str, main: Callable[[], int | None]) -> None:
    """Calls `main()` and exits with the code it returns (None = 0). A ValueError (bad data or params) becomes
    `<name>: error: <message>` and exit 2; an OSError (permissions, a full disk) one such line and exit 1."""
    configure_environment()
    faults.enter_stage(name)
    try:
        code = main()
    except ValueError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(f"{name}: error: {describe_os_error(err)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
