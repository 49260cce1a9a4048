"""A tiny synthetic regression task for testing the training engine (not part of the package).

``x: (n, seq_len, features)`` standard normal from a fixed data seed; the target is a fixed linear function of
the time-mean of ``x`` plus noise, standardised with statistics fitted on the training split (saved as an
artifact, ``toy_scaler.json``). The model is ``torch.nn.GRU`` / ``torch.nn.LSTM`` + a linear head.

Register it with ``hybridrnn.api.registry.register_task("toy", "toy_task:ToyTask")`` (tests do this through
the ``toy_task`` fixture) or, in a subprocess, ``HYBRIDRNN_EXTRA_TASKS=toy=toy_task:ToyTask`` with this folder on
``PYTHONPATH``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field
from torch import nn

from hybridrnn._io import read_json
from hybridrnn.config import RunConfig, Section
from hybridrnn.train.checkpoint import atomic_write_json
from hybridrnn.train.task import Task, iterate_minibatches


class ToyData(Section):
    n_train: int = Field(96, ge=0)
    n_val: int = Field(32, ge=0)
    n_test: int = Field(32, ge=0)
    seq_len: int = Field(6, ge=1)
    features: int = Field(3, ge=1)
    noise: float = 0.1
    seed: int = 123
    #: inject a NaN loss at this (1-based) epoch and step, to test the guard
    nan_at: Optional[tuple[int, int]] = None
    #: seconds to sleep in each training step (so a subprocess can be killed mid-run)
    sleep_per_step: float = 0.0


class ToyConfig(RunConfig):
    task: Literal["toy"] = "toy"
    data: ToyData = Field(default_factory=ToyData)


class ToyModel(nn.Module):
    """``x: (batch, time, features)`` -> ``(batch,)``."""

    def __init__(self, cell: str, features: int, hidden: int, dropout: float):
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(features, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.dropout(out[:, -1])).squeeze(-1)


class ToyTask(Task):
    name = "toy"
    config_class = ToyConfig
    monitor = "loss"
    monitor_mode = "min"

    supports_predict = True

    def setup(self, data=None, *, whole: bool = False) -> None:
        d = self.config.data
        rng = np.random.default_rng(d.seed)
        n = d.n_train + d.n_val + d.n_test
        x = rng.standard_normal((n, d.seq_len, d.features)).astype(np.float32)
        w = rng.standard_normal(d.features).astype(np.float32)
        y = x.mean(axis=1) @ w * 3 + d.noise * rng.standard_normal(n).astype(np.float32)
        fit = y[: d.n_train]
        # an empty training split is reported by the Trainer's guard; do not fail (or warn) before it
        if not hasattr(self, "mean"):    # fitted state: from load_artifacts when the run was loaded
            self.mean, self.std = (float(fit.mean()), float(fit.std() + 1e-6)) if len(fit) else (0.0, 1.0)
        y = (y - self.mean) / self.std
        cuts = np.cumsum([d.n_train, d.n_val])
        self.splits = {name: (torch.from_numpy(xs), torch.from_numpy(ys.astype(np.float32)))
                       for name, xs, ys in zip(("train", "val", "test"), np.split(x, cuts), np.split(y, cuts))}
        self._epoch = 0
        self._step = 0

    def build_model(self) -> nn.Module:
        cell, _, hidden = self.config.model.encoder.partition(":")
        if cell not in ("gru", "lstm") or not hidden.isdigit():
            raise ValueError(f"toy task: model.encoder must be 'gru:N' or 'lstm:N', got {self.config.model.encoder!r}")
        return ToyModel(cell, self.config.data.features, int(hidden), self.config.model.dropout)

    def num_examples(self, split: str) -> int:
        return len(self.splits[split][1])

    def num_train_batches(self) -> int:
        return -(-self.num_examples("train") // self.config.train.batch_size)

    def train_batches(self, epoch: int, generator: torch.Generator):
        x, y = self.splits["train"]
        self._epoch = epoch + 1
        for self._step, idx in enumerate(iterate_minibatches(len(y), self.config.train.batch_size, generator), 1):
            yield x[idx], y[idx]

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        if self.config.data.sleep_per_step:
            time.sleep(self.config.data.sleep_per_step)
        loss = nn.functional.mse_loss(model(x).float(), y)
        if self.config.data.nan_at == (self._epoch, self._step):
            loss = loss * float("nan")
        return loss, len(y)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        x, y = self.splits[split]
        pred = model(x).float()
        return {"loss": nn.functional.mse_loss(pred, y).item(), "mae": (pred - y).abs().mean().item()}

    def save_artifacts(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / "toy_scaler.json", {"mean": self.mean, "std": self.std})

    def load_artifacts(self, run_dir: Path) -> None:
        saved = read_json(Path(run_dir) / "toy_scaler.json")
        self.mean, self.std = float(saved["mean"]), float(saved["std"])

    def predict(self, model: nn.Module, data):
        import pandas as pd

        x = torch.tensor(json.loads(Path(data).read_text())["x"], dtype=torch.float32)
        if x.ndim != 3 or x.shape[-1] != self.config.data.features:
            raise ValueError(f"{data}: expected x of shape (n, time, {self.config.data.features}), "
                             f"got {tuple(x.shape)}")
        return pd.DataFrame({"prediction": (model(x) * self.std + self.mean).tolist()})
