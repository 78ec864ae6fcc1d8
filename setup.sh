#!/usr/bin/env bash
# Sets up segpipe: a virtual environment in .venv from the pinned requirements.txt, segpipe installed in it
# (editable), and data/raw when it does not exist yet: pulled from the DVC remote when data/raw.dvc tracks
# it, else the bundled synthetic demo data (your own data goes there instead).
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
# segpipe itself, editable and without dependencies (requirements.txt has them): segpipe-predict and friends.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
if [ ! -e data/raw ] && [ -f data/raw.dvc ]; then
  # Your data, versioned with DVC (docs/how-to/data-versioning.md): fetched from the project's DVC remote.
  echo "setup: data/raw is tracked by DVC (data/raw.dvc); fetching it: dvc pull data/raw.dvc"
  .venv/bin/dvc pull data/raw.dvc || {
    echo "setup: error: could not pull data/raw from the DVC remote (dvc remote list: $(.venv/bin/dvc remote list | tr '\n' ' '));" \
         "configure the remote and its credentials (docs/how-to/data-versioning.md), then rerun setup.sh." >&2
    exit 1
  }
elif [ ! -e data/raw ]; then
  .venv/bin/python -m stages.make_demo_data --output data/raw
fi
