"""Trainer callbacks: what happens around the training loop besides the optimisation itself.

The Trainer calls each callback's hooks in order; a callback reads the trainer's public state
(``epoch``, ``history``, ``model``, ``optimizer``, ``best_epoch``, ...) and may ask it to stop by setting
``trainer.should_stop``. A callback with a ``state_key`` keeps a small JSON state in the checkpoint, so a
resumed run carries on where it stopped (the early-stopping counter).

The run pipeline (``hybridrnn.api.pipeline``) adds the built-in ones: :class:`ProgressCallback` (every run),
:class:`EarlyStopping` (``train.patience``), :class:`CheckpointCallback` (runs with a directory, rank 0),
:class:`TensorBoardCallback` (``train.tensorboard``); ``hybridrnn tune`` adds its Optuna pruning callback.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from hybridrnn.errors import ConfigError, RunDirError
from hybridrnn.train import checkpoint as ckpt
from hybridrnn.train.distributed import broadcast_flag
from hybridrnn.train.progress import Progress, TensorBoardLogger

if TYPE_CHECKING:
    from hybridrnn.train.trainer import Trainer


class Callback:
    """Base class: every hook does nothing. ``state_key``: a name for ``state_dict`` in the checkpoint."""

    state_key: str | None = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Before the first epoch (after a resume has restored the trainer's state)."""

    def on_batch_start(self, trainer: "Trainer", epoch: int, step: int, batch: Any) -> None:
        """Before each training step, after the schedule set the learning rates (``batch`` as the task yielded
        it, before sharding and moving to the device); a change to ``trainer.optimizer``'s rates made here is
        undone in ``on_step_end`` by the callback that made it."""

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int, loss: float, items: int) -> None:
        """After each optimiser step (``epoch``, ``step`` 0-based; ``loss`` the batch mean over ``items``)."""

    def on_validation_start(self, trainer: "Trainer") -> None:
        """After an epoch's training, before its validation: the weights in ``trainer.model`` when the hooks
        after it run are the ones validated and, if the epoch improved, kept as the best weights."""

    def on_validation_end(self, trainer: "Trainer") -> None:
        """After validation and the best-weights bookkeeping, before ``on_epoch_end``."""

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """After validation; ``record`` is the epoch's line of metrics.jsonl (``record["best"]``: improved)."""

    def on_fit_end(self, trainer: "Trainer") -> None:
        """When fitting ends, normally or by an exception (always called)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without an improvement of the monitored validation metric (by more
    than ``train.min_delta``, which the Trainer applies when it marks ``record["best"]``). Under torchrun the
    decision of rank 0 is broadcast, so every process stops at the same epoch."""

    state_key = "early_stopping"

    def __init__(self, patience: int):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.bad_epochs = 0

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.bad_epochs = 0 if record.get("best") else self.bad_epochs + 1
        stop = broadcast_flag(self.bad_epochs >= self.patience, trainer.dist, trainer.device)
        if stop and trainer.epoch < trainer.config.epochs:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_epochs = int(state["bad_epochs"])


class ProgressCallback(Callback):
    """Feeds a :class:`~hybridrnn.train.progress.Progress` reporter (bar, plain lines or nothing)."""

    def __init__(self, progress: Progress, display: tuple[str, ...] | None = None):
        self.progress = progress
        self.progress.display = display

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.progress.start(trainer.config.epochs, trainer.task.num_train_batches(), trainer.epoch)

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int, loss: float, items: int) -> None:
        self.progress.step(epoch, step, loss, items)

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.progress.epoch_end(record, trainer.monitor)

    def on_fit_end(self, trainer: "Trainer") -> None:
        self.progress.close()


class CheckpointWriteError(RunDirError):
    """A checkpoint could not be written (read-only folder, disk full, permission denied): the run stopped.
    ``epoch``: the epoch whose checkpoint failed; ``path``: the file; ``error``: the ``OSError``. The files of
    the previous checkpoint are untouched (``state.json`` is the commit point of the journal)."""

    def __init__(self, run_dir: Path, epoch: int, error: OSError):
        self.run_dir, self.epoch, self.error = Path(run_dir), epoch, error
        self.path = written_path(error.filename) if error.filename is not None else run_dir
        reason = error.strerror or str(error)
        code = f" (errno {error.errno})" if error.errno is not None else ""
        super().__init__(f"cannot write the checkpoint of epoch {epoch} to {self.path}: {reason}{code}")


def written_path(filename: Any) -> str:
    """The file an atomic write was writing (``DIR/.NAME.tmp-PID`` -> ``DIR/NAME``; ``NAME.next`` -> ``NAME``)."""
    path = Path(str(filename))
    name = path.name
    if name.startswith(".") and ".tmp-" in name:
        name = name[1:name.rindex(".tmp-")]
    if name.endswith(ckpt.PENDING):
        name = name[:-len(ckpt.PENDING)]
    return str(path.with_name(name))


class CheckpointCallback(Callback):
    """After every epoch: ``metrics.jsonl``, ``last.safetensors``, ``optimizer.safetensors``, ``state.json``
    and (when the epoch improved) ``model.safetensors`` in ``run_dir``, committed as a journal (see
    :mod:`hybridrnn.train.checkpoint`). The tensors are snapshotted at once and written and fsynced in a
    background thread while the next epoch trains; fitting returns only once the last write is on disk.

    A write that fails with an ``OSError`` (read-only folder, disk full) stops the run at the next optimiser
    step (or when fitting ends) with a :class:`CheckpointWriteError` naming the epoch and the file; the
    checkpoint before it stays whole and loadable."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.writer = ckpt.BackgroundWriter()
        self.failed = False        # set by the writer thread when a checkpoint could not be written

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int, loss: float, items: int) -> None:
        if self.failed:            # stop at once rather than train an epoch that cannot be saved
            self.writer.wait()     # raises the CheckpointWriteError

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        run_dir, metrics = self.run_dir, ckpt.jsonl_text(trainer.history)
        files = ckpt.checkpoint_files(trainer.model, trainer.optimizer, trainer.state_dict())
        epoch = int(record.get("epoch", trainer.epoch))
        if ckpt.BEST_WEIGHTS in files and trainer.validated_other_weights:
            # the validated (NT-ASGD averaged) weights are the best ones; last.safetensors keeps the training ones
            files[ckpt.BEST_WEIGHTS] = ckpt.weights_bytes(_StateDictView(trainer.best_state), {"epoch": str(epoch)})

        def write() -> None:
            try:
                # metrics.jsonl first: a resume drops the epochs after state.json's, never misses one
                ckpt.atomic_write_text(run_dir / ckpt.METRICS, metrics)
                ckpt.write_checkpoint(run_dir, files)
            except OSError as exc:
                self.failed = True
                raise CheckpointWriteError(run_dir, epoch, exc) from exc

        self.writer.submit(write)

    def on_fit_end(self, trainer: "Trainer") -> None:
        self.writer.wait()


class TensorBoardCallback(Callback):
    """Every epoch's scalars under ``log_dir`` (``train.tensorboard``; the ``tensorboard`` extra)."""

    def __init__(self, log_dir: str | Path):
        self.logger = TensorBoardLogger(Path(log_dir))

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.logger.log(record)

    def on_fit_end(self, trainer: "Trainer") -> None:
        self.logger.close()


class _StateDictView:
    """A state dict that :func:`hybridrnn.train.checkpoint.weights_bytes` can read like a model."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


class NTASGD(Callback):
    """Non-monotonically triggered averaged SGD (Merity et al. 2018, ``train.optimizer: nt_asgd``).

    The optimizer is plain SGD. After every epoch, with ``v_1 .. v_t`` the validation values of the monitored
    metric (``v_t`` this epoch's) and ``n = train.nt_asgd_interval``, averaging is triggered when::

        t - 1 > n  and  v_t is worse than the best of v_1 .. v_{t-1-n}

    (for a "min" metric: ``v_t > min(v_1 .. v_{t-1-n})``): the metric has not improved on what it was ``n``
    epochs ago and more. From the next step on, after every optimizer step ``k = 1, 2, ...``::

        a_k = a_{k-1} + (w_k - a_{k-1}) / k        (a_1 = w_1: the running mean of the weights since the trigger)

    Training continues on the SGD weights ``w``; validation, the best weights (``model.safetensors``) and the
    weights fitting ends with are the average ``a``. The average lives in the optimizer state (key
    ``nt_asgd_average``), so the checkpoint's ``optimizer.safetensors`` saves it and a resumed run continues it;
    the trigger epoch and ``k`` are this callback's JSON state.
    """

    state_key = "nt_asgd"
    KEY = "nt_asgd_average"

    def __init__(self, interval: int):
        if interval < 1:
            raise ValueError(f"train.nt_asgd_interval must be >= 1, got {interval}")
        self.interval = int(interval)
        self.triggered_epoch: int | None = None      # the epoch (1-based) whose validation triggered averaging
        self.steps = 0                                # averaged steps so far
        self._training: list[torch.Tensor] | None = None

    @property
    def averaging(self) -> bool:
        return self.triggered_epoch is not None

    def should_trigger(self, values: Sequence[float], mode: str) -> bool:
        """The non-monotone condition on the monitored validation values so far (this epoch's last)."""
        *previous, current = values
        if len(previous) <= self.interval or math.isnan(current):
            return False
        old = previous[:-self.interval]
        return current > min(old) if mode == "min" else current < max(old)

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int, loss: float, items: int) -> None:
        if not self.averaging:
            return
        self.steps += 1
        state = trainer.optimizer.state
        with torch.no_grad():
            for p in trainer.params:
                average = state[p].get(self.KEY)
                if average is None or self.steps == 1:
                    state[p][self.KEY] = p.detach().clone()
                else:
                    average.add_(p.detach() - average, alpha=1.0 / self.steps)

    def on_validation_start(self, trainer: "Trainer") -> None:
        if not self.averaging or self.steps == 0:
            return
        state = trainer.optimizer.state
        with torch.no_grad():
            self._training = [p.detach().clone() for p in trainer.params]
            for p in trainer.params:
                p.copy_(state[p][self.KEY])
        trainer.validated_other_weights = True

    def on_validation_end(self, trainer: "Trainer") -> None:
        if self._training is None:
            return
        with torch.no_grad():
            for p, w in zip(trainer.params, self._training):
                p.copy_(w)
        self._training = None

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        # metrics.jsonl: 1 when this epoch's validation (and best weights) used the average
        record["nt_asgd_averaged"] = int(trainer.validated_other_weights)
        if not self.averaging:
            values = [float(r[f"val_{trainer.monitor}"]) for r in trainer.history]
            if self.should_trigger(values, trainer.mode):
                self.triggered_epoch = trainer.epoch

    def on_fit_end(self, trainer: "Trainer") -> None:
        self.on_validation_end(trainer)     # an exception during validation: put the training weights back

    def state_dict(self) -> dict[str, Any]:
        return {"triggered_epoch": self.triggered_epoch, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch = state.get("triggered_epoch")
        self.triggered_epoch = None if epoch is None else int(epoch)
        self.steps = int(state.get("steps", 0))


class GradualUnfreezing(Callback):
    """Gradual unfreezing (ULMFiT, ``train.unfreeze``) over ``model.layer_groups()`` (input to output).

    ``schedule``: ``"gradual"`` (the top group trains from epoch 1, one more group below each epoch) or a list
    ``[e_0, e_1, ...]``: the ``i``-th group from the top trains from epoch ``e_i`` (1-based; groups past the
    list from its last epoch). A frozen parameter has ``requires_grad = False``, so it gets no gradient and
    every optimizer leaves it (and its optimizer state) untouched: it stays bit-identical while frozen.
    Parameters the optimizer does not hold (frozen from the start, e.g. ``data.freeze_embeddings``) are never
    unfrozen. When fitting ends every parameter gets its ``requires_grad`` back."""

    def __init__(self, schedule: str | Sequence[int]):
        self.schedule = schedule
        self._before: list[tuple[torch.Tensor, bool]] = []

    def start_epochs(self, groups: int) -> list[int]:
        """The 1-based epoch from which each group trains, input (bottom) group first."""
        if self.schedule == "gradual":
            top_down = [i + 1 for i in range(groups)]
        else:
            listed = list(self.schedule)
            top_down = [listed[min(i, len(listed) - 1)] for i in range(groups)]
        return top_down[::-1]

    def apply(self, trainer: "Trainer", epoch: int) -> None:
        """Freeze / unfreeze for the coming 1-based ``epoch``."""
        groups = trainer.model.layer_groups()
        held = {id(p) for p in trainer.params}
        for group, start in zip(groups, self.start_epochs(len(groups))):
            for p in group:
                if id(p) in held:
                    p.requires_grad_(epoch >= start)

    def on_fit_start(self, trainer: "Trainer") -> None:
        if not hasattr(trainer.model, "layer_groups"):
            raise ConfigError(f"train.unfreeze needs a model with layer groups (the text classifier); "
                                       f"{type(trainer.model).__name__} has none")
        self._before = [(p, p.requires_grad) for p in trainer.model.parameters()]
        self.apply(trainer, trainer.epoch + 1)

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.apply(trainer, trainer.epoch + 1)
        record["trainable_groups"] = sum(1 for e in self.start_epochs(len(trainer.model.layer_groups()))
                                         if trainer.epoch + 1 >= e)

    def on_fit_end(self, trainer: "Trainer") -> None:
        for p, flag in self._before:
            p.requires_grad_(flag)
