#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs hybridrnn into it with the CPU build of torch.
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q torch==2.13.0 -e ".[test,tune,parquet,tensorboard,onnx]"
