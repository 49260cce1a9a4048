"""Progress output: a rich bar per epoch on a terminal, one plain line per epoch otherwise, a summary table.

Also the optional TensorBoard logger (``train.tensorboard: true``, the ``tensorboard`` extra).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

#: keys of an epoch record that are not shown as metrics
_BOOKKEEPING = {"epoch", "seconds", "items_per_second", "lr", "grad_norm", "grad_norm_max", "train_loss", "best"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


#: metrics shown per epoch when the task does not name its own (``Task.display_metrics``)
MAX_SHOWN = 6


def shown_metrics(record: dict[str, Any], monitor: str,
                  display: tuple[str, ...] | None = None) -> tuple[list[str], int]:
    """Keys of ``record`` to print (``val_loss``, the monitored metric, then ``display`` or the first few) and
    how many other metrics are left out (they are all in metrics.jsonl)."""
    metrics = [k for k in record if k not in _BOOKKEEPING]
    first = [k for k in dict.fromkeys((f"val_{monitor}", "val_loss")) if k in metrics]
    if display is not None:
        rest = [f"val_{m}" for m in display if f"val_{m}" in metrics]
    else:
        rest = [k for k in metrics if k not in first][: max(MAX_SHOWN - len(first), 0)]
    keys = first + [k for k in rest if k not in first]
    return keys, len(metrics) - len(keys)


class Progress:
    """Base reporter: does nothing (``train.progress: none``, and every process but rank 0)."""

    #: the task's ``display_metrics`` (set by the Trainer); None shows the first few
    display: tuple[str, ...] | None = None

    def start(self, epochs: int, steps_per_epoch: int, first_epoch: int) -> None: ...
    def step(self, epoch: int, step: int, loss: float, items: int) -> None: ...
    def epoch_end(self, record: dict[str, Any], monitor: str) -> None: ...
    def message(self, text: str) -> None: ...
    def summary(self, rows: list[tuple[str, str]], title: str = "training summary") -> None: ...
    def close(self) -> None: ...


class PlainProgress(Progress):
    """One line per epoch, for logs and CI."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.epochs = 0

    def start(self, epochs: int, steps_per_epoch: int, first_epoch: int) -> None:
        self.epochs = epochs
        if first_epoch > 0:
            self.message(f"resuming after epoch {first_epoch}")

    def epoch_end(self, record: dict[str, Any], monitor: str) -> None:
        width = len(str(self.epochs))
        parts = [f"epoch {record['epoch']:>{width}}/{self.epochs}", f"train_loss {_fmt(record['train_loss'])}"]
        keys, _ = shown_metrics(record, monitor, self.display)
        parts += [f"{k} {_fmt(record[k])}" for k in keys]
        parts += [f"lr {record['lr']:.3g}", f"grad_norm {_fmt(record['grad_norm'])}",
                  f"{record['items_per_second']:,.0f} items/s", f"{record['seconds']:.2f}s"]
        if record.get("best"):
            parts.append(f"* best val_{monitor}")
        self.console.print("  ".join(parts))

    def message(self, text: str) -> None:
        self.console.print(text)

    def summary(self, rows: list[tuple[str, str]], title: str = "training summary") -> None:
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("")
        for key, value in rows:
            table.add_row(key, value)
        self.console.print(table)


class BarProgress(PlainProgress):
    """A rich progress bar per epoch (loss, items/s, ETA), then the epoch's plain line above it."""

    #: redraw at most this often, from the training thread itself (no refresh thread competing for the GIL);
    #: one redraw costs 4-12 ms of rich rendering on these CPUs
    REFRESH_SECONDS = 0.5

    def __init__(self, console: Console | None = None):
        super().__init__(console)
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} items/s"),
                                TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True,
                                auto_refresh=False)
        self.task_id = None
        self._last = 0.0
        self._items = 0
        self._t0 = 0.0
        self._loss_sum = 0.0
        self._steps = 0

    def start(self, epochs: int, steps_per_epoch: int, first_epoch: int) -> None:
        super().start(epochs, steps_per_epoch, first_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.bar.start()

    def step(self, epoch: int, step: int, loss: float, items: int) -> None:
        if step == 0:
            if self.task_id is not None:
                self.bar.remove_task(self.task_id)
            self.task_id = self.bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=self.steps_per_epoch,
                                             loss="-", speed="-")
            # the clock starts when the first batch is done, so its items do not count towards the speed
            self._t0, self._items, self._loss_sum, self._steps = time.perf_counter(), -items, 0.0, 0
        self._items += items
        self._loss_sum += loss
        self._steps += 1
        now = time.perf_counter()
        if now - self._last >= self.REFRESH_SECONDS:     # the epoch's line replaces the bar at its end
            self._last = now
            speed = f"{self._items / (now - self._t0):,.0f}" if step > 0 and now > self._t0 else "-"
            self.bar.update(self.task_id, completed=step + 1, loss=_fmt(self._loss_sum / self._steps),
                            speed=speed, refresh=True)

    def epoch_end(self, record: dict[str, Any], monitor: str) -> None:
        super().epoch_end(record, monitor)

    def close(self) -> None:
        self.bar.stop()


def make_progress(kind: str, enabled: bool = True) -> Progress:
    """``auto``: a bar on a terminal or in a Jupyter notebook, plain lines otherwise (logs, CI); ``none`` (or not
    ``enabled``): silent."""
    if not enabled or kind == "none":
        return Progress()
    console = Console(highlight=False, soft_wrap=True)
    interactive = console.is_jupyter or (console.is_terminal and sys.stdout.isatty())
    if kind == "bar" or (kind == "auto" and interactive):
        return BarProgress(console)
    return PlainProgress(console)


class TensorBoardLogger:
    """Scalars of each epoch record under ``RUN/tensorboard`` (losses, metrics, lr, grad norm)."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("train.tensorboard is true but the tensorboard package is not installed: "
                              "pip install 'hybridrnn[tensorboard]' (or set train.tensorboard: false)") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
