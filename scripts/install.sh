#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs hybridrnn into it with the CPU build of torch.
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q torch==2.13.0 -e ".[test,tune,parquet,tensorboard,onnx]"
# The compiled small-batch kernel (hybridrnn/nn/_compiled.py): built here, once, about a minute, into
# ~/.cache/hybridrnn, rather than in the first small-batch forward or step(); a machine without a compiler
# gets one warning and the pure-torch path.
python -c "from hybridrnn.nn import _compiled; _compiled.kernels()" || true
