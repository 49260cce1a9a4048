"""Shared pytest fixtures (keep small: several test files use this)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:          # so `toy_task` imports the same way in-process and in subprocesses
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture
def toy_task(monkeypatch):
    """Registers the synthetic regression task of tests/toy_task.py as ``task: toy``; returns its class."""
    from hybridrnn.api import registry

    monkeypatch.setitem(registry.TASKS, "toy", "toy_task:ToyTask")
    from toy_task import ToyTask

    return ToyTask


@pytest.fixture
def toy_env():
    """Environment for a subprocess (``python -m hybridrnn ...``, torchrun) that knows ``task: toy``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HYBRIDRNN_EXTRA_TASKS"] = "toy=toy_task:ToyTask"
    env["OMP_NUM_THREADS"] = "1"
    return env


# ---------------------------------------------------------------------------------------------------------
# shared data and one-thread runs

#: ../shared/data beside the checkout (present in CI and on developers' machines, absent in a bare clone)
SHARED = REPO_ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (two on a shared 2-core box oversubscribe), restoring it after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------
# runs, the way the CLI makes and uses them (through the public API)


def train(config=None, out=None, overrides=(), resume=None, *, progress=None, data=None) -> Path:
    """Train through the one pipeline; the run directory (``hybridrnn train``)."""
    from hybridrnn.api import train_run

    return train_run(config, data=data, out=out, overrides=overrides, resume=resume, progress=progress).run_dir


def evaluate_run(run, split: str = "test", *, weights: str = "best", data=None) -> dict:
    """A run's flat metrics on ``split`` (``hybridrnn evaluate RUN --json`` without the report)."""
    from hybridrnn.api import load

    return load(run, weights=weights).metrics(data, split=split)


def predict_run(run, input, output=None):
    """``hybridrnn predict RUN --input INPUT --output OUTPUT``: the predictions, also written as CSV."""
    from hybridrnn.api import load

    frame = load(run).predict(input)
    if output is not None:
        Path(output).write_text(frame.to_csv(index=False))
    return frame
