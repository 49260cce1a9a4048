"""Training one model in memory for a benchmark (no run directory, no checkpoint I/O), timed by CPU and wall.

What ``hybridrnn.api.train_run`` does minus the run directory: set the task up, seed, build, fit with the
Trainer's own loop; the benchmarks that compare models use it so that their timings hold no disk writes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hybridrnn.train.trainer import FitResult, Trainer


@dataclass
class Fitted:
    task: object
    model: torch.nn.Module
    result: FitResult
    cpu_s: float       # process CPU time of the fit (one thread: the benchmarks set it)
    wall_s: float


def fit_in_memory(task, seed: int) -> Fitted:
    """``task.setup()``, seed, ``build_model``, ``Trainer.fit`` on one thread; the model holds the best weights."""
    torch.set_num_threads(1)
    task.setup()
    torch.manual_seed(seed)
    model = task.build_model()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = Trainer(task, model, task.config.train).fit()
    return Fitted(task, model, result, time.process_time() - cpu0, time.perf_counter() - wall0)
