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

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridrnn.errors import RunDirError
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

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int, loss: float, items: int) -> None:
        """After each optimiser step (``epoch``, ``step`` 0-based; ``loss`` the batch mean over ``items``)."""

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

    A write that fails with an ``OSError`` (read-only folder, disk full) stops the run at the next epoch's end
    (or when fitting ends) with a :class:`CheckpointWriteError` naming the epoch and the file; the checkpoint
    before it stays whole and loadable."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.writer = ckpt.BackgroundWriter()

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        run_dir, metrics = self.run_dir, ckpt.jsonl_text(trainer.history)
        files = ckpt.checkpoint_files(trainer.model, trainer.optimizer, trainer.state_dict())
        epoch = int(record.get("epoch", trainer.epoch))

        def write() -> None:
            try:
                # metrics.jsonl first: a resume drops the epochs after state.json's, never misses one
                ckpt.atomic_write_text(run_dir / ckpt.METRICS, metrics)
                ckpt.write_checkpoint(run_dir, files)
            except OSError as exc:
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
