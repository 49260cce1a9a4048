"""The one function that trains: seed -> task -> model -> Trainer(callbacks) -> run directory.

``hybridrnn train``, ``hybridrnn.fit``, ``hybridrnn compare``, ``hybridrnn tune`` and every process under
``torchrun`` run :func:`train_run`; nothing else builds a Trainer for a run.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from hybridrnn.api.registry import coerce_config, get_task_class
from hybridrnn.api.rundir import load_task_state, read_run_config
from hybridrnn.config import RunConfig, config_to_yaml
from hybridrnn.errors import RunDirError
from hybridrnn.train import checkpoint as ckpt
from hybridrnn.train.callbacks import (Callback, CheckpointCallback, CheckpointWriteError, EarlyStopping,
                                       GradualUnfreezing, NTASGD, ProgressCallback, TensorBoardCallback,
                                       written_path)
from hybridrnn.train.distributed import init_distributed, resolve_device, shutdown_distributed
from hybridrnn.train.allocator import keep_freed_memory
from hybridrnn.train.environment import collect_environment
from hybridrnn.train.plots import plot_learning_curve
from hybridrnn.train.progress import Progress, make_progress, shown_metrics
from hybridrnn.train.seeding import seed_everything
from hybridrnn.train.task import Task
from hybridrnn.train.trainer import FitResult, NonFiniteLossError, Trainer


@dataclass
class Trained:
    """What :func:`train_run` returns: the run directory and, in memory, the config, the task (with its data
    and fitted state), the model (best weights, eval mode) and what the Trainer did."""

    run_dir: Path
    config: RunConfig
    task: Task
    model: torch.nn.Module
    result: FitResult


def default_run_dir(task_name: str, root: str | Path = "runs") -> Path:
    """``runs/<task>-<YYYYmmdd-HHMMSS>`` (with a numeric suffix if that already exists)."""
    base = Path(root) / f"{task_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def _config_and_dir(config: Any, out: str | Path | None, overrides: list[str],
                    resume: str | Path | None) -> tuple[RunConfig, Path]:
    if resume is not None:
        run_dir = Path(resume)
        run_config = read_run_config(run_dir, overrides)
        if not (run_dir / ckpt.STATE).exists():
            raise RunDirError(f"{run_dir} has no {ckpt.STATE}: it never finished an epoch, start it again "
                              f"with `hybridrnn train {run_dir / ckpt.CONFIG} --out {run_dir}-new`")
        return run_config, run_dir
    if config is None:
        raise ValueError("give a config (a YAML path, a dict or a config object), or resume=RUN")
    run_config = coerce_config(config, overrides)
    run_dir = Path(out) if out is not None else default_run_dir(run_config.task)
    if (run_dir / ckpt.STATE).exists():
        raise RunDirError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    return run_config, run_dir


def _callbacks(cfg, task: Task, run_dir: Path, writes: bool, reporter: Progress,
               extra: Sequence[Callback]) -> list[Callback]:
    # order matters: early stopping updates its counter before the checkpoint saves it; the checkpoint is on
    # its way to disk before an extra callback (Optuna pruning) may end the run
    callbacks: list[Callback] = [ProgressCallback(reporter, task.display_metrics)]
    # a task's own training callbacks (the language model's length-scaled lr for variable BPTT)
    callbacks += task.train_callbacks()
    # NT-ASGD and unfreezing act before the checkpoint saves their state (and the averaged best weights)
    if cfg.optimizer == "nt_asgd":
        callbacks.append(NTASGD(cfg.nt_asgd_interval))
    if cfg.unfreeze is not None:
        callbacks.append(GradualUnfreezing(cfg.unfreeze))
    if cfg.patience is not None:
        callbacks.append(EarlyStopping(cfg.patience))
    if writes:
        callbacks.append(CheckpointCallback(run_dir))
        if cfg.tensorboard:
            callbacks.append(TensorBoardCallback(run_dir / "tensorboard"))
    return callbacks + list(extra)


def _kept_checkpoint(run_dir: Path, writes: bool) -> str:
    """What a stopped run left behind, for the error message."""
    if not writes:
        return "no checkpoint is written by this process"
    if (run_dir / ckpt.STATE).exists():
        epoch = ckpt.read_json(run_dir / ckpt.STATE).get("epoch")
        return f"the last good checkpoint (epoch {epoch}) is kept in {run_dir}"
    return f"no checkpoint was written: the run never finished an epoch ({run_dir} holds its config only)"


def _os_reason(exc: OSError, run_dir: Path) -> str:
    """``PATH: Read-only file system (errno 30)`` for an OSError (the file an atomic write was writing, not
    its temporary name)."""
    path = written_path(exc.filename) if exc.filename is not None else str(run_dir)
    code = f" (errno {exc.errno})" if exc.errno is not None else ""
    return f"{path}: {exc.strerror or exc}{code}"


def _unwritable_run_dir(exc: OSError, run_dir: Path, note: str = "") -> RunDirError:
    """The error for a run directory that cannot be written before training (``note``: what a resumed run kept)."""
    return RunDirError(f"cannot write the run directory: {_os_reason(exc, run_dir)}; nothing was trained"
                       + (f" ({note})" if note else ""))


def _write_config_and_state(run_dir: Path, run_config: RunConfig, task: Task, resumed: bool) -> None:
    """Make the run directory and write its ``config.yaml`` and, for a new run, the task's fitted state
    (``Task.save_artifacts``); a RunDirError when they cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(run_dir / ckpt.CONFIG, config_to_yaml(run_config))
        if not resumed:
            task.save_artifacts(run_dir)
    except OSError as exc:
        raise _unwritable_run_dir(exc, run_dir, _kept_checkpoint(run_dir, True) if resumed else "") from exc


def _write_environment(run_dir: Path, device: torch.device, world_size: int, model: torch.nn.Module) -> None:
    """``environment.json``, with the path (fused / custom) each recurrent layer of ``model`` runs; a RunDirError
    when it cannot be written."""
    try:
        ckpt.atomic_write_json(run_dir / ckpt.ENVIRONMENT, collect_environment(device, world_size, model))
    except OSError as exc:
        raise _unwritable_run_dir(exc, run_dir) from exc


def _after_training(task: Task, model: torch.nn.Module, result: FitResult, run_config: RunConfig, run_dir: Path,
                    writes: bool, reporter: Progress, started: float) -> None:
    """What follows a run that trained at least one epoch: the task's ``finish_training`` (every process), then,
    where this process writes, the learning curve and the task's plots (``train.plots``) and the summary table
    (``started``: ``time.perf_counter()`` when training began)."""
    if not result.history:
        return
    with torch.no_grad():
        task.finish_training(model, run_dir if writes else None)
    if not writes:
        return
    if run_config.train.plots:
        _write_plots(task, model, result, run_config, run_dir)
    reporter.summary(summary_rows(run_dir, run_config, result, model, time.perf_counter() - started,
                                  task.display_metrics))


def _write_plots(task: Task, model: torch.nn.Module, result: FitResult, run_config: RunConfig,
                 run_dir: Path) -> None:
    """The learning curve and the task's plots of the trained model; a RunDirError when they cannot be written."""
    try:
        plot_learning_curve(result.history, run_dir / ckpt.LEARNING_CURVE, result.monitor,
                            title=f"{run_config.task}: {run_config.model.encoder}")
        with torch.no_grad():
            task.plots(model, run_dir)
    except OSError as exc:
        raise RunDirError(f"training finished, but the plots cannot be written: "
                          f"{_os_reason(exc, run_dir)}; {_kept_checkpoint(run_dir, True)}") from exc


def train_run(config: RunConfig | dict | str | Path | None = None, *, data: Any = None, out: str | Path | None = None,
              overrides: Iterable[str] = (), resume: str | Path | None = None, progress: str | None = None,
              callbacks: Sequence[Callback] = ()) -> Trained:
    """Train a model into a run directory and return it (see :class:`Trained`).

    config: a config object, a mapping or a YAML path (with ``resume``, the run's own ``config.yaml`` is used
    and ``config`` must be None). data: None (the config's data), a path, or a DataFrame for tasks that read
    tables. out: the run directory (default ``runs/<task>-<time>``). overrides: ``"train.lr=0.003"`` strings.
    resume: a run directory to continue. progress: overrides ``train.progress``. callbacks: extra Trainer
    callbacks (e.g. Optuna pruning). Under torchrun every process calls this; only rank 0 writes.
    """
    overrides = list(overrides)
    if resume is not None and config is not None:
        raise ValueError("give either a config or resume=RUN, not both (resume uses RUN/config.yaml; change "
                         "values with overrides)")
    run_config, run_dir = _config_and_dir(config, out, overrides, resume)
    cfg = run_config.train
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if cfg.keep_freed_memory and device.type == "cpu":
        keep_freed_memory()
    dist = init_distributed(device)
    try:
        writes = dist.is_main
        task = get_task_class(run_config.task)(run_config)
        seed_everything(cfg.seed)
        if resume is not None:
            load_task_state(task, run_dir)
        task.setup(data)
        if writes:
            _write_config_and_state(run_dir, run_config, task, resumed=resume is not None)
        seed_everything(cfg.seed)
        model = task.build_model()
        if writes:
            _write_environment(run_dir, device, dist.world_size, model)
        reporter = make_progress(progress or cfg.progress, enabled=writes)
        trainer = Trainer(task, model, cfg, device=device, dist=dist,
                          callbacks=_callbacks(cfg, task, run_dir, writes, reporter, callbacks))
        if resume is not None:
            trainer.resume_from(run_dir)
        t0 = time.perf_counter()
        try:
            result = trainer.fit()
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(exc.where, exc.epoch, _kept_checkpoint(run_dir, writes)) from None
        except CheckpointWriteError as exc:
            raise RunDirError(f"training stopped: {exc}; {_kept_checkpoint(run_dir, writes)}. Free space or make "
                              f"the folder writable, then continue with `hybridrnn train --resume {run_dir}`") \
                from exc.error
        except OSError as exc:      # a callback's own file (TensorBoard's event file)
            raise RunDirError(f"training stopped: cannot write {_os_reason(exc, run_dir)}; "
                              f"{_kept_checkpoint(run_dir, writes)}") from exc
        model.eval()
        _after_training(task, model, result, run_config, run_dir, writes, reporter, t0)
    finally:
        shutdown_distributed()
    return Trained(run_dir, run_config, task, model, result)


def summary_rows(run_dir: Path, config: RunConfig, result: FitResult, model: torch.nn.Module, seconds: float,
                 display: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """The rows of the training summary table printed at the end of a run."""
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), None)
    stopped = " (stopped early)" if result.stopped_early else ""
    rows = [("run directory", str(run_dir)),
            ("model", f"{config.model.encoder} ({sum(p.numel() for p in model.parameters()):,} parameters)"),
            ("epochs", f"{result.epochs_run} of {config.train.epochs}{stopped}"),
            ("best epoch", str(result.best_epoch)),
            (f"best val_{result.monitor}", f"{result.best_metric:.6g}")]
    if best is not None:
        keys, hidden = shown_metrics(best, result.monitor, display)
        rows += [(k, f"{best[k]:.6g}") for k in keys if k != f"val_{result.monitor}"]
        if hidden:
            rows.append(("other metrics", f"{hidden} more in {run_dir / ckpt.METRICS}"))
    rows.append(("time this session", f"{seconds:.1f}s"))
    return rows
