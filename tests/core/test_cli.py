"""segpipe/core/cli.py's TensorFlow start-up: its start-up notices and two runtime E0000 lines a user cannot act
on are filtered out of stderr, everything else passes, also the last lines of a process that dies."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO

SCRIPT = """
import os
from segpipe.core.cli import start_tensorflow
start_tensorflow()
os.write(2, b"E0000 00:00:1796219315.240519    7248 util.cc:131] oneDNN supports DT_UINT8 only on platforms with "
            b"AVX-512. Falling back to the default Eigen-based implementation if present.\\n")
os.write(2, b"E0000 00:00:1796219314.994371    7248 node_def_util.cc:682] NodeDef mentions attribute "
            b"use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset>\\n")
os.write(2, b"E0000 00:00:1796219314.994371    7248 other.cc:1] a real TensorFlow error\\n")
os.write(2, b"the last words of a crash\\n")
os._exit(3)  # no flush, no clean-up: the filter must still pass on what was written
"""


def test_tensorflow_noise_is_filtered_and_real_errors_survive_a_crash():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert done.stderr.splitlines() == ["E0000 00:00:1796219314.994371    7248 other.cc:1] a real TensorFlow error",
                                        "the last words of a crash"]
