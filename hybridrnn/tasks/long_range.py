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

import json
import math
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from hybridrnn.config import RunConfig, Section
from hybridrnn.tasks._common import encoder_options
from hybridrnn.train.task import Task, iterate_minibatches

PROBLEMS = ("adding", "copy", "digits")
COPY_SYMBOLS = 8          # symbols 1..8; 0 is blank, 9 the delimiter
COPY_RECALL = 10          # how many symbols are shown and recalled
COPY_INPUTS = COPY_SYMBOLS + 2
COPY_CLASSES = COPY_SYMBOLS + 1   # outputs: blank or one of the 8 symbols
DIGITS_STEPS = 64
ADDING_SOLVED_MSE = 0.01
COPY_SOLVED_FRACTION = 0.1
#: defaults for the split sizes when a config leaves them out
SYNTHETIC_SIZES = {"n_train": 10000, "n_val": 1000, "n_test": 1000}
DIGITS_SIZES = {"n_train": 1197, "n_val": 300, "n_test": 300}   # 1797 images in all


class LongRangeData(Section):
    """Which problem, how long, how many examples; everything is generated from ``seed``."""

    problem: Literal["adding", "copy", "digits"] = "adding"
    length: Optional[int] = Field(
        None, ge=2, description="adding: sequence length T; copy: the blank delay T (sequences are T+20 long); "
                                "digits: must be 64 or left out. Default 100 (adding, copy).")
    n_train: Optional[int] = Field(None, ge=1, description="default 10000 (adding, copy) or 1197 (digits)")
    n_val: Optional[int] = Field(None, ge=1, description="default 1000 (adding, copy) or 300 (digits)")
    n_test: Optional[int] = Field(None, ge=1, description="default 1000 (adding, copy) or 300 (digits)")
    seed: int = Field(0, description="seed of the data generator (independent of train.seed)")

    @model_validator(mode="after")
    def _check_problem_sizes(self):
        if self.problem == "digits":
            if self.length is not None and self.length != DIGITS_STEPS:
                raise ValueError(f"data.length: digits are read pixel by pixel in {DIGITS_STEPS} steps; "
                                 f"got length={self.length} (leave it out or set {DIGITS_STEPS})")
            sizes = self.sizes()
            total = sum(sizes.values())
            if total > 1797:
                raise ValueError(f"data.n_train + n_val + n_test = {total} but load_digits has 1797 images "
                                 f"(got {sizes})")
        return self

    def resolved_length(self) -> int:
        """The length actually used (``length`` or the problem's default)."""
        if self.problem == "digits":
            return DIGITS_STEPS
        return 100 if self.length is None else self.length

    def sizes(self) -> dict[str, int]:
        defaults = DIGITS_SIZES if self.problem == "digits" else SYNTHETIC_SIZES
        return {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in defaults.items()}


class LongRangeConfig(RunConfig):
    """A config for ``task: long_range``."""

    task: Literal["long_range"] = "long_range"
    data: LongRangeData = Field(default_factory=LongRangeData)


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
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the long_range 'digits' problem reads scikit-learn's bundled 8x8 digits: "
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

def _has_lstm(spec: str) -> bool:
    from hybridrnn.nn.spec import iter_layers, parse_spec

    return any(layer.kind == "lstm" for layer in iter_layers(parse_spec(spec)))


class LongRangeTask(Task):
    """Adding / copy memory / sequential digits (see the module docstring). Monitors validation ``loss``."""

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

    def setup(self, run_dir: Path | None = None) -> None:
        data = self.config.data
        sizes = data.sizes()
        if self.problem == "digits":
            arrays = sequential_digits(data.seed, sizes)
        else:
            # one independent stream per split: the test set does not change when n_train does
            streams = np.random.SeedSequence(data.seed).spawn(3)
            arrays = {}
            for (split, key), stream in zip((("train", "n_train"), ("val", "n_val"), ("test", "n_test")), streams):
                rng = np.random.default_rng(stream)
                if self.problem == "adding":
                    arrays[split] = adding_problem(sizes[key], self.length, rng)
                else:
                    arrays[split] = copy_memory(sizes[key], self.length, rng)
        self.splits = {k: (torch.from_numpy(x), torch.from_numpy(y)) for k, (x, y) in arrays.items()}

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Model input for stored examples: one-hot codes for copy, the stored floats otherwise."""
        if self.problem == "copy":
            return F.one_hot(x, COPY_INPUTS).float()
        return x

    def num_examples(self, split: str) -> int:
        return len(self.examples(split)[0])

    def examples(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored inputs (codes for copy; see ``inputs``) and targets of ``split``."""
        if not self.splits:
            raise RuntimeError("LongRangeTask.setup() has not been called")
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self.splits)}")
        return self.splits[split]

    # ---- model ----
    def build_model(self) -> nn.Module:
        from hybridrnn.nn.hybrid import build_encoder

        mc = self.config.model
        if mc.attention is not None:
            raise ValueError(f"model.attention={mc.attention!r}: the long_range task reads the encoder's final "
                             "output (adding, digits) or every step (copy); attention pooling is not supported here")
        options = encoder_options(mc)
        # forget_bias is an LSTM option (default 1.0) and build_encoder refuses it for a spec without LSTM
        # blocks; a comparison runs LSTM and GRU specs from one config, where it applies to LSTM blocks only
        if options.get("forget_bias") is not None and not _has_lstm(mc.encoder):
            options["forget_bias"] = None
        encoder = build_encoder(mc.encoder, self.input_size, **options)
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
    def predict(self, model: nn.Module, split: str, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
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
        pred, y = self.predict(model, split)
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
        info = {"problem": self.problem, "length": self.length, "input_size": self.input_size,
                "output_size": self.output_size}
        path = Path(run_dir) / "long_range.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(path)

    def plots(self, model: nn.Module, run_dir: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pred, y = self.predict(model, "test")
        run_dir = Path(run_dir)
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        if self.problem == "adding":
            n = min(1000, len(y))
            ax.scatter(y[:n].numpy(), pred[:n, 0].numpy(), s=4, alpha=0.5)
            ax.plot([0, 2], [0, 2], color="black", lw=1, label="perfect")
            ax.axhline(1.0, color="grey", ls="--", lw=1, label="always 1 (MSE 0.167)")
            ax.set(xlabel="target (sum of the marked values)", ylabel="prediction",
                   title=f"adding problem, T={self.length}: test predictions")
            ax.legend(loc="upper left")
        elif self.problem == "copy":
            k = min(8, len(y))
            shown = pred[:k, -COPY_RECALL:].argmax(-1)
            image = np.concatenate([y[:k, -COPY_RECALL:].numpy(), np.full((k, 1), np.nan), shown.numpy()], axis=1)
            im = ax.imshow(image, cmap="tab10", vmin=0, vmax=9, aspect="auto")
            ax.set(title=f"copy memory, T={self.length}: target (left) | predicted (right)",
                   xlabel="recall step", ylabel="test sequence")
            ax.set_xticks([])
            fig.colorbar(im, ax=ax, label="symbol")
        else:
            counts = np.zeros((10, 10), dtype=np.int64)   # rows: true digit, columns: predicted
            np.add.at(counts, (y.numpy(), pred.argmax(-1).numpy()), 1)
            ax.imshow(counts, cmap="Blues")
            for (i, j), c in np.ndenumerate(counts):
                if c:
                    ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                            color="white" if c > counts.max() / 2 else "black")
            ax.set(xlabel="predicted label", ylabel="true label", xticks=range(10), yticks=range(10))
            ax.set_title("sequential digits (64 steps): test confusion matrix")
        fig.tight_layout()
        path = run_dir / f"long_range_{self.problem}.png"
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        return [path]
