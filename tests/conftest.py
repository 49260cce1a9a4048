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
    from hybridrnn.tasks import registry

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
