#!/usr/bin/env bash
# Sets up segpipe: a virtual environment in .venv from the pinned requirements.txt and, when data/raw
# does not exist yet, the bundled synthetic demo data in data/raw (your own data goes there instead).
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [ ! -e data/raw ]; then
  .venv/bin/python -m stages.make_demo_data --output data/raw
fi
