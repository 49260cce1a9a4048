"""The long-range-dependency suite: the adding problem, copy memory and sequential digits.

All three are generated in code (no download), so any encoder spec can be compared on them at any length:

- ``adding`` (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015 and Arjovsky et al. 2016):
  ``x: (batch, T, 2)``; channel 0 holds values drawn uniformly from [0, 1], channel 1 marks exactly two steps
  with 1 (one in the first half of the sequence, one in the second). The target is the sum of the two marked
  values. Always predicting 1 gives an MSE of Var(U1 + U2) = 1/6 = 0.167; "solved" means test MSE < 0.01.
- ``copy`` (copy memory, Arjovsky et al. 2016): 10 symbols drawn from 8 (coded 1..8), then ``T - 1`` blanks
  (0), a delimiter (9), then 10 more blanks; ``x: (batch, T + 20, 10)`` one-hot. The target is blank at the
  first ``T + 10`` steps and the 10 symbols at the last 10. A memoryless predictor (blank, then uniform over the
  8 symbols) has cross-entropy ``10 * log(8) / (T + 20)``; "solved" means loss < 10% of that.
- ``digits``: the 8x8 images of ``sklearn.datasets.load_digits`` read pixel by pixel (64 steps, 1 feature,
  pixel / 16), 10 classes. The length is fixed at 64.

The model is ``build_encoder(spec, input_size, **options)`` followed by a linear head: on the summary of the
sequence (``encoder.final_output``) for adding and digits, on every step's output for copy.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from hybridrnn._io import atomic_write_json, read_json
from hybridrnn.errors import ConfigError, DataError, MissingExtraError, RunDirError
from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.tasks._common import encoder_options
from hybridrnn.tasks.long_range_config import (ADDING_SOLVED_MSE, COPY_CLASSES, COPY_INPUTS, COPY_RECALL,
                                               COPY_SOLVED_FRACTION, COPY_SYMBOLS, DIGITS_STEPS, LongRangeConfig)
from hybridrnn.tasks.long_range_plots import plot_long_range
from hybridrnn.tasks.long_range_report import solved_sections
from hybridrnn.train.task import Task, iterate_minibatches

# ---------------------------------------------------------------------------------------------------------
# generators (numpy, seeded; pure functions so that tests can check their properties)
# ---------------------------------------------------------------------------------------------------------

def adding_problem(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` adding-problem sequences: ``x: (n, length, 2)`` float32, ``y: (n,)`` float32.

    Channel 0: values U[0, 1); channel 1: 1 at exactly two steps, one drawn from ``[0, length//2)`` and one from
    ``[length//2, length)``; ``y`` = sum of the two marked values.
    """
    if length < 2:
        raise ValueError(f"adding problem: length must be >= 2, got {length}")
    values = rng.random((n, length), dtype=np.float64).astype(np.float32)
    half = length // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    markers = np.zeros((n, length), dtype=np.float32)
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return np.stack([values, markers], axis=-1), y.astype(np.float32)


def copy_memory(n: int, delay: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` copy-memory sequences: input codes ``(n, delay + 20)`` int64 (0 blank, 1..8 symbols, 9 delimiter)
    and target codes ``(n, delay + 20)`` int64 (0 blank, 1..8 symbols).

    Input: 10 symbols, ``delay - 1`` blanks, the delimiter, 10 blanks. Target: ``delay + 10`` blanks, then the
    10 symbols.
    """
    if delay < 1:
        raise ValueError(f"copy memory: delay T must be >= 1, got {delay}")
    total = delay + 2 * COPY_RECALL
    symbols = rng.integers(1, COPY_SYMBOLS + 1, size=(n, COPY_RECALL))
    x = np.zeros((n, total), dtype=np.int64)
    x[:, :COPY_RECALL] = symbols
    x[:, COPY_RECALL + delay - 1] = COPY_SYMBOLS + 1
    y = np.zeros((n, total), dtype=np.int64)
    y[:, -COPY_RECALL:] = symbols
    return x, y


def copy_baseline_loss(delay: int) -> float:
    """Cross-entropy per step of the memoryless predictor on copy memory: ``10 * log(8) / (T + 20)``."""
    return COPY_RECALL * math.log(COPY_SYMBOLS) / (delay + 2 * COPY_RECALL)


def sequential_digits(seed: int, sizes: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """load_digits as ``x: (n, 64, 1)`` float32 in [0, 1] and ``y: (n,)`` int64, split at random (``seed``)
    into ``train``/``val``/``test`` of the given sizes."""
    try:
        from sklearn.datasets import load_digits   # optional extra: hybridrnn[digits]
    except ImportError:
        raise MissingExtraError("the long_range 'digits' problem reads scikit-learn's bundled 8x8 digits: "
                          "pip install 'hybridrnn[digits]' (or scikit-learn)") from None

    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0).reshape(-1, DIGITS_STEPS, 1)
    y = digits.target.astype(np.int64)
    total = sum(sizes.values())
    if total > len(x):
        raise ValueError(f"digits: asked for {total} images ({sizes}) but load_digits has {len(x)}")
    order = np.random.default_rng(seed).permutation(len(x))
    out, start = {}, 0
    for split, key in (("train", "n_train"), ("val", "n_val"), ("test", "n_test")):
        idx = order[start:start + sizes[key]]
        out[split] = (x[idx], y[idx])
        start += sizes[key]
    return out


# ---------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------

class LongRangeModel(nn.Module):
    """An encoder plus a linear head.

    ``forward(x) -> (batch, out)`` when ``per_step`` is False (head on ``encoder.final_output``), else
    ``(batch, time, out)`` (head on every step). ``x: (batch, time, features)``.
    """

    def __init__(self, encoder: nn.Module, out_features: int, per_step: bool, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.per_step = per_step
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.output_size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.encoder(x)
        if self.per_step:
            return self.head(self.dropout(outputs))
        return self.head(self.dropout(self.encoder.final_output(outputs)))


# ---------------------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------------------

ARTIFACT = "long_range.json"


class LongRangeTask(Task):
    """Adding / copy memory / sequential digits (see the module docstring). Monitors validation ``loss``.

    The data is generated from ``data.seed`` (``setup`` reads no file and takes no ``data``); ``long_range.json``
    records the problem, length and the model's input and output sizes."""

    name = "long_range"
    config_class = LongRangeConfig
    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, config: LongRangeConfig):
        super().__init__(config)
        self.problem: str = config.data.problem
        self.length: int = config.data.resolved_length()
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- data ----
    @property
    def input_size(self) -> int:
        return {"adding": 2, "copy": COPY_INPUTS, "digits": 1}[self.problem]

    @property
    def output_size(self) -> int:
        return {"adding": 1, "copy": COPY_CLASSES, "digits": 10}[self.problem]

    def setup(self, data: Any = None, *, whole: bool = False) -> None:
        """Generate the train / val / test splits from ``data.seed`` (``whole``: the test split alone)."""
        if data is not None:
            raise DataError("the long_range task generates its data from data.seed; it reads no data "
                            f"(got a {type(data).__name__})")
        cfg = self.config.data
        sizes = cfg.sizes()
        if self.problem == "digits":
            arrays = sequential_digits(cfg.seed, sizes)
        else:
            # one independent stream per split: the test set does not change when n_train does
            streams = np.random.SeedSequence(cfg.seed).spawn(3)
            arrays = {}
            for (split, key), stream in zip((("train", "n_train"), ("val", "n_val"), ("test", "n_test")), streams):
                if whole and split != "test":
                    continue
                rng = np.random.default_rng(stream)
                if self.problem == "adding":
                    arrays[split] = adding_problem(sizes[key], self.length, rng)
                else:
                    arrays[split] = copy_memory(sizes[key], self.length, rng)
        if whole:
            arrays = {"test": arrays["test"]}
        self.splits = {k: (torch.from_numpy(x), torch.from_numpy(y)) for k, (x, y) in arrays.items()}

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Model input for stored examples: one-hot codes for copy, the stored floats otherwise."""
        if self.problem == "copy":
            return F.one_hot(x, COPY_INPUTS).float()
        return x

    def num_examples(self, split: str) -> int:
        return len(self.splits[split][0]) if split in self.splits else 0

    def examples(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored inputs (codes for copy; see ``inputs``) and targets of ``split``."""
        if not self.splits:
            raise RuntimeError("LongRangeTask.setup() has not been called")
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; expected one of {sorted(self.splits)}")
        return self.splits[split]

    # ---- model ----
    def build_model(self) -> nn.Module:
        mc = self.config.model
        if mc.attention is not None:
            raise ConfigError(f"model.attention={mc.attention!r}: the long_range task reads the encoder's final "
                             "output (adding, digits) or every step (copy); attention pooling is not supported here")
        encoder = build_encoder(mc.encoder, self.input_size, **encoder_options(mc))
        return LongRangeModel(encoder, self.output_size, per_step=self.problem == "copy", dropout=mc.dropout)

    # ---- training ----
    def train_batches(self, epoch: int, generator: torch.Generator):
        x, y = self.examples("train")
        for idx in iterate_minibatches(len(x), self.config.train.batch_size, generator):
            yield self.inputs(x[idx]), y[idx]

    def num_train_batches(self) -> int:
        return math.ceil(self.num_examples("train") / self.config.train.batch_size)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss: MSE (adding), cross-entropy per step (copy) or per sequence (digits)."""
        if self.problem == "adding":
            return F.mse_loss(prediction.squeeze(-1), target)
        if self.problem == "copy":
            return F.cross_entropy(prediction.reshape(-1, COPY_CLASSES), target.reshape(-1))
        return F.cross_entropy(prediction, target)

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        x, y = batch
        return self.loss(model(x), y), len(x)

    # ---- evaluation ----
    def predict_split(self, model: nn.Module, split: str, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Model outputs on a whole split (CPU tensors) and the targets."""
        x, y = self.examples(split)
        device = next(model.parameters()).device
        outs = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                outs.append(model(self.inputs(x[start:start + batch_size]).to(device)).float().cpu())
        model.train(was_training)
        return torch.cat(outs), y

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        pred, y = self.predict_split(model, split)
        loss = float(self.loss(pred, y))
        if self.problem == "adding":
            p = pred.squeeze(-1)
            mse = float(F.mse_loss(p, y))
            baseline = float(F.mse_loss(torch.ones_like(y), y))
            return {"loss": loss, "mse": mse, "mae": float((p - y).abs().mean()),
                    "baseline_ratio": mse / baseline, "solved": float(mse < ADDING_SOLVED_MSE)}
        if self.problem == "copy":
            baseline = copy_baseline_loss(self.length)
            recall = pred[:, -COPY_RECALL:].argmax(-1) == y[:, -COPY_RECALL:]
            return {"loss": loss, "recall_accuracy": float(recall.float().mean()),
                    "baseline_ratio": loss / baseline,
                    "solved": float(loss < COPY_SOLVED_FRACTION * baseline)}
        return {"loss": loss, "accuracy": float((pred.argmax(-1) == y).float().mean())}

    # ---- artifacts and plots ----
    def save_artifacts(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / ARTIFACT, {"problem": self.problem, "length": self.length,
                                                     "input_size": self.input_size,
                                                     "output_size": self.output_size})

    def load_artifacts(self, run_dir: Path) -> None:
        """Check ``long_range.json`` against the config (the sizes follow from the problem)."""
        path = Path(run_dir) / ARTIFACT
        info = read_json(path)
        saved = {k: info.get(k) for k in ("problem", "length", "input_size", "output_size")} \
            if isinstance(info, dict) else {}
        expected = {"problem": self.problem, "length": self.length, "input_size": self.input_size,
                    "output_size": self.output_size}
        if saved != expected:
            raise RunDirError(f"{path} says {saved}, the run's config gives {expected}")

    def plots(self, model: nn.Module, run_dir: Path) -> list[Path]:
        pred, y = self.predict_split(model, "test")
        return [plot_long_range(self.problem, self.length, pred, y, Path(run_dir) / f"long_range_{self.problem}.png")]

    def report_sections(self, results: pd.DataFrame) -> list[tuple[str, str]]:
        """The comparison report's "Longest length solved" table (adding and copy compared over lengths);
        the thresholds are ``long_range_config.SOLVED_CRITERIA``."""
        return solved_sections(self.problem, results)
