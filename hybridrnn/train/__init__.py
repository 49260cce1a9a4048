"""Training: the Task interface, the Trainer, checkpoints and run directories.

``Trainer``, ``FitResult``, ``NonFiniteLossError``, ``train``, ``load_run``, ``evaluate_run`` are imported lazily.
"""
from __future__ import annotations

import importlib

from hybridrnn.train.task import Task

_EXPORTS = {
    "Trainer": "trainer", "FitResult": "trainer", "NonFiniteLossError": "trainer",
    "train": "run", "load_run": "run", "evaluate_run": "run", "predict_run": "run",
    "RunDirError": "checkpoint",
}

__all__ = ["Task", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"hybridrnn.train.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hybridrnn.train' has no attribute {name!r}")
