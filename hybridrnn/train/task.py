"""The interface between a task (data + model + loss + metrics) and the Trainer.

The Trainer never knows which task it trains: it asks the task for batches, a loss and metrics.
A task is built from its config (a subclass of :class:`hybridrnn.config.RunConfig`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

    from hybridrnn.train.callbacks import Callback


class Task(ABC):
    """One learning problem: its data, its fitted state, its model, loss and metrics.

    **Training** (``hybridrnn.api.pipeline.train_run``): ``task = TaskClass(config)``; ``task.setup(data)``
    loads the data (``data``: None for the config's own data, a path, or a DataFrame for tasks that read
    tables), splits it and fits the task's state (scalers, column layout, vocabulary, class labels, ...) on the
    training split only; ``task.save_artifacts(run_dir)`` writes that state right away, so even a killed run
    can be loaded; the global RNGs are re-seeded; ``model = task.build_model()``; the Trainer loops over
    ``train_batches`` calling ``training_step`` (train mode) and calls ``evaluate(model, "val")`` (eval mode).

    **Loading a trained run** (``hybridrnn.load``): ``task = TaskClass(config)``;
    ``task.load_artifacts(run_dir)`` restores the fitted state, and from then on ``build_model``, ``predict``,
    ``export_inputs`` / ``export_forward`` and ``generate`` work **without the training data**. To evaluate,
    ``task.setup(data)`` then reads data and splits it with the loaded state (nothing is refitted);
    ``task.setup(data, whole=True)`` makes every example of ``data`` the ``"test"`` split
    (``hybridrnn evaluate RUN --input FILE``).

    Batches may be any nesting of tensors, tuples, lists and dicts. Under ``torchrun`` every process gets the
    same global batch from ``train_batches`` and keeps its shard (``shard_batch``); the loss of
    ``training_step`` must be a mean over the items it reports, so that the Trainer can weight shards exactly.
    """

    #: the ``task:`` value in a config file
    name: ClassVar[str]
    #: the pydantic config class (subclass of ``hybridrnn.config.RunConfig``)
    config_class: ClassVar[type]
    #: metric the Trainer watches for early stopping and best-checkpoint selection (a key of evaluate())
    monitor: ClassVar[str] = "loss"
    #: "min" or "max"
    monitor_mode: ClassVar[str] = "min"
    #: keys of evaluate() printed per epoch and in the summary besides loss and the monitor (None: the first
    #: few); every metric is always written to metrics.jsonl
    display_metrics: ClassVar[tuple[str, ...] | None] = None
    #: names of the baselines whose metrics evaluate() reports as ``{baseline}_{metric}`` next to the model's
    #: ``{metric}`` (``hybridrnn evaluate`` prints them side by side)
    baselines: ClassVar[tuple[str, ...]] = ()
    #: what the task supports besides training and evaluation (checked by the API before calling, so a user
    #: gets "task 'x' does not support predict" rather than an AttributeError)
    supports_predict: ClassVar[bool] = False
    supports_generate: ClassVar[bool] = False
    supports_export: ClassVar[bool] = False

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def setup(self, data: Any = None, *, whole: bool = False) -> None:
        """Load and split the data; fit the task's state on the training split unless it was loaded.

        data: None (the config's data), a path, or a ``pandas.DataFrame`` (tasks that read tables).
        whole: every example of ``data`` forms the ``"test"`` split; needs the state from ``load_artifacts``.
        """

    def build_model(self) -> nn.Module:
        """A fresh model for this task's data (sizes known after ``setup``)."""

    @abstractmethod
    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator[Any]:
        """Training batches of one epoch, shuffled with ``generator`` (so runs repeat bit for bit)."""

    @abstractmethod
    def num_train_batches(self) -> int:
        """How many batches ``train_batches`` yields (for progress bars and schedules)."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """Loss of one batch (a scalar tensor to back-propagate) and the number of items it averages over."""

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Metrics on ``split`` ("val" or "test"), under ``torch.no_grad``; always includes ``"loss"``."""

    def num_examples(self, split: str) -> int:
        """How many examples (windows, sentences, ...) a split holds; the Trainer checks it is not empty."""
        raise NotImplementedError

    # ---- the fitted state a run directory keeps besides the weights: JSON / safetensors, never pickle ----
    def save_artifacts(self, run_dir: Path) -> None:
        """Write the fitted state (what ``load_artifacts`` needs to use the model without the data)."""

    def load_artifacts(self, run_dir: Path) -> None:
        """Read what ``save_artifacts`` wrote; afterwards ``build_model`` / ``predict`` need no data."""

    def train_callbacks(self) -> list["Callback"]:
        """Trainer callbacks the task itself needs (e.g. the language model's variable-length BPTT); the run
        pipeline adds them after its own. Default: none."""
        return []

    def finish_training(self, model: nn.Module, run_dir: Path | None) -> None:
        """Called once after training with the best weights (eval mode, under ``no_grad``): fit what is fitted
        on the trained model rather than on the data (e.g. conformal intervals from the validation residuals)
        and save it in ``run_dir`` when given. Default: nothing."""

    def plots(self, model: nn.Module, run_dir: Path) -> list[Path]:
        """Task plots written after training (forecast overlays, attention maps, ...)."""
        return []

    def predict(self, model: nn.Module, data: Any) -> "pd.DataFrame":
        """Predictions for new inputs (``supports_predict``): ``data`` is a path or a DataFrame in the task's
        input format; validate it (a bad input is a ``DataError`` naming the file and what is wrong), run
        ``model`` (in eval mode, under ``torch.no_grad``) and return one row per prediction."""
        raise NotImplementedError(f"task {self.name!r} does not support predict")

    def generate(self, model: nn.Module, prompt: str, tokens: int, *, temperature: float | None = None,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> Iterator[str]:
        """Text pieces continuing ``prompt``, one per generated token (``supports_generate``)."""
        raise NotImplementedError(f"task {self.name!r} does not support generate")

    def export_inputs(self, rows: int = 4) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Example model inputs for ONNX export (``supports_export``): ``{name: tensor}`` with the batch first,
        in the order ``export_forward`` takes them, built from the fitted state alone (no data), and the
        names of the outputs."""
        raise NotImplementedError(f"task {self.name!r} does not support ONNX export yet")

    def export_forward(self, model: nn.Module, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The model call that ``hybridrnn export`` traces, ``inputs`` as in ``export_inputs``."""
        raise NotImplementedError(f"task {self.name!r} does not support ONNX export yet")

    def report_sections(self, results: "pd.DataFrame") -> list[tuple[str, str]]:
        """Task-specific parts of a comparison report: ``[(heading, markdown), ...]`` from the comparison's
        results table (one row per run). Default: none."""
        return []

    def shard_batch(self, batch: Any, rank: int, world_size: int) -> Any | None:
        """This process's part of a global batch under torchrun, or None when its part is empty.

        The default splits every tensor along dim 0 with ``torch.tensor_split`` (sizes differ by at most one).
        Override it when a batch's first dimension is not the item dimension.
        """
        return shard_along_first_dim(batch, rank, world_size)

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move a batch to ``device`` (tensors, tuples, lists and dicts of tensors)."""
        return _to_device(batch, device)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return _same_sequence(obj, [_to_device(v, device) for v in obj])
    return obj


def _same_sequence(like: list | tuple, items: list) -> Any:
    """``items`` as the sequence type of ``like`` (lists, tuples and named tuples)."""
    return type(like)(*items) if hasattr(like, "_fields") else type(like)(items)


def shard_along_first_dim(batch: Any, rank: int, world_size: int) -> Any | None:
    """Part ``rank`` of ``world_size`` of every tensor in ``batch`` along dim 0; None if that part is empty."""
    sizes: list[int] = []

    def split(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            part = torch.tensor_split(obj, world_size, dim=0)[rank]
            sizes.append(part.shape[0])
            return part
        if isinstance(obj, dict):
            return {k: split(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return _same_sequence(obj, [split(v) for v in obj])
        return obj

    out = split(batch)
    return None if not sizes or min(sizes) == 0 else out


def iterate_minibatches(n: int, batch_size: int, generator: torch.Generator | None, drop_last: bool = False) -> Iterable[torch.Tensor]:
    """Index tensors of mini-batches over ``n`` items, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - (n % batch_size) if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
