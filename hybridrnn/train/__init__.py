"""Training: the Task interface, the Trainer and its callbacks, checkpoints and run-directory files.

``Trainer``, ``FitResult``, ``NonFiniteLossError`` are imported lazily. Training a run end to end (config ->
task -> model -> Trainer -> run directory) is one layer up, in :mod:`hybridrnn.api`.
"""
from __future__ import annotations

import importlib

from hybridrnn.train.task import Task

_EXPORTS = {
    "Trainer": "trainer", "FitResult": "trainer", "NonFiniteLossError": "trainer",
    "Callback": "callbacks", "RunDirError": "checkpoint",
}

__all__ = ["Task", *sorted(_EXPORTS)]


def __getattr__(name: str):
    # start-up time: torch-heavy modules load on first use
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"hybridrnn.train.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hybridrnn.train' has no attribute {name!r}")
