"""Learning-rate schedules as a pure function of (epoch, step) plus a small JSON state (reduce-on-plateau).

``lr = base_lr * warmup(t) * decay(epoch, step) * plateau_factor``, floored at ``min_lr`` once decaying:

- warm-up: linear from ``base_lr / 100`` to ``base_lr`` over the first ``warmup_epochs`` (per step);
- ``step``: multiply by ``gamma`` every ``step_size`` epochs after warm-up;
- ``cosine``: half a cosine from ``base_lr`` to ``min_lr`` over the epochs after warm-up (per step);
- ``plateau``: multiply by ``gamma`` when the monitored metric has not improved for more than
  ``plateau_patience`` epochs.
"""
from __future__ import annotations

import math
from typing import Any

from hybridrnn.config import TrainConfig

WARMUP_START = 0.01


class LRSchedule:
    def __init__(self, config: TrainConfig, steps_per_epoch: int, mode: str = "min"):
        self.config = config
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.mode = mode
        self.plateau_factor = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad = 0

    @property
    def constant(self) -> bool:
        return self.config.schedule == "none" and self.config.warmup_epochs == 0

    def lr(self, epoch: int, step: int) -> float:
        """The learning rate for ``step`` (0-based) of ``epoch`` (0-based)."""
        c = self.config
        spe = self.steps_per_epoch
        if epoch < c.warmup_epochs:
            t = (epoch * spe + step + 1) / (c.warmup_epochs * spe)
            return c.lr * (WARMUP_START + (1 - WARMUP_START) * t)
        e = epoch - c.warmup_epochs
        if c.schedule == "step":
            lr = c.lr * c.gamma ** (e // c.step_size)
        elif c.schedule == "cosine":
            span = max(1, c.epochs - c.warmup_epochs) * spe
            progress = min(1.0, (e * spe + step) / span)
            lr = c.min_lr + (c.lr - c.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        elif c.schedule == "plateau":
            lr = c.lr * self.plateau_factor
        else:
            lr = c.lr
        return max(lr, c.min_lr) if c.schedule != "none" else lr

    def end_epoch(self, metric: float) -> None:
        """Record the epoch's monitored metric (drives reduce-on-plateau)."""
        if self.config.schedule != "plateau" or math.isnan(metric):
            return
        better = self.plateau_best is None or (metric < self.plateau_best if self.mode == "min" else metric > self.plateau_best)
        if better:
            self.plateau_best, self.plateau_bad = metric, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > self.config.plateau_patience:
                self.plateau_factor *= self.config.gamma
                self.plateau_bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_factor": self.plateau_factor, "plateau_best": self.plateau_best, "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_factor = float(state["plateau_factor"])
        self.plateau_best = None if state["plateau_best"] is None else float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])
