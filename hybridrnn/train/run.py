"""Training and loading runs from Python (what the CLI calls).

>>> from hybridrnn.train.run import train, load_run, evaluate_run
>>> run_dir = train("configs/etth1.yaml", out="runs/etth1", overrides=["train.epochs=5"])
>>> config, task, model = load_run(run_dir)          # model in eval mode, best weights
>>> evaluate_run(run_dir, split="test")              # {"loss": ..., "mae": ...}
"""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import torch

from hybridrnn.config import ConfigError, RunConfig, build_config, coerce_config, config_to_yaml, apply_overrides, read_yaml
from hybridrnn.train import checkpoint as ckpt


def default_run_dir(task_name: str, root: str | Path = "runs") -> Path:
    """``runs/<task>-<YYYYmmdd-HHMMSS>`` (with a numeric suffix if that already exists)."""
    base = Path(root) / f"{task_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def read_run_config(run_dir: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """The config of a run directory (``config.yaml`` through ``yaml.safe_load``), with ``overrides``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ckpt.RunDirError(f"run directory {run_dir} does not exist")
    path = run_dir / ckpt.CONFIG
    if not path.exists():
        raise ckpt.RunDirError(f"{path} is missing: {run_dir} is not a hybridrnn run directory")
    overrides = list(overrides)
    data = apply_overrides(read_yaml(path), overrides)
    return build_config(data, str(path), overridden=[o.partition("=")[0].strip() for o in overrides])


def _load_artifacts(task, run_dir: Path) -> None:
    """``task.load_artifacts(run_dir)``; a file that is not the JSON training wrote is a clear RunDirError."""
    import json

    try:
        task.load_artifacts(run_dir)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        names = sorted(p.name for p in run_dir.iterdir() if p.suffix == ".json" and p.name not in
                       (ckpt.STATE, ckpt.ENVIRONMENT))
        raise ckpt.RunDirError(f"{run_dir}: the {task.name!r} task's saved artifacts ({', '.join(names)}) cannot be "
                               f"read ({type(exc).__name__}: {exc}); they must be the JSON files that training "
                               "wrote (nothing else is ever loaded)") from None


def _task_class(config: RunConfig):
    from hybridrnn.tasks.registry import get_task_class

    return get_task_class(config.task)


def train(config_or_path: RunConfig | dict | str | Path, out: str | Path | None = None,
          overrides: Iterable[str] = (), resume: str | Path | None = None, *,
          progress: str | None = None) -> Path:
    """Train a model and return its run directory.

    ``config_or_path``: a config object, a mapping or a YAML path (ignored when ``resume`` is given: the run's
    own ``config.yaml`` is used). ``overrides``: ``"train.lr=0.003"`` strings. ``resume``: a run directory to
    continue. ``progress``: overrides ``train.progress`` (``"auto" | "bar" | "plain" | "none"``).
    Under torchrun every process calls this; only rank 0 writes.
    """
    from hybridrnn.train.distributed import init_distributed, resolve_device, shutdown_distributed
    from hybridrnn.train.environment import collect_environment
    from hybridrnn.train.plots import plot_learning_curve
    from hybridrnn.train.progress import make_progress
    from hybridrnn.train.seeding import seed_everything
    from hybridrnn.train.trainer import Trainer

    overrides = list(overrides)
    if resume is not None:
        run_dir = Path(resume)
        config = read_run_config(run_dir, overrides)
        if not (run_dir / ckpt.STATE).exists():
            raise ckpt.RunDirError(f"{run_dir} has no {ckpt.STATE}: it never finished an epoch, start it again "
                                   f"with `hybridrnn train {run_dir / ckpt.CONFIG} --out {run_dir}-new`")
    else:
        config = coerce_config(config_or_path, overrides)
        run_dir = Path(out) if out is not None else default_run_dir(config.task)
        if (run_dir / ckpt.STATE).exists():
            raise ckpt.RunDirError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                                   "or choose another --out")
    cfg = config.train
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    import os

    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = init_distributed(device)
    try:
        writes = dist.is_main
        if writes:
            run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(run_dir / ckpt.CONFIG, config_to_yaml(config))
            ckpt.atomic_write_json(run_dir / ckpt.ENVIRONMENT, collect_environment(device, dist.world_size))
        reporter = make_progress(progress or cfg.progress, enabled=writes)
        seed_everything(cfg.seed)
        task = _task_class(config)(config)
        task.setup(run_dir)
        if resume is not None:
            _load_artifacts(task, run_dir)
        elif writes:
            task.save_artifacts(run_dir)
        seed_everything(cfg.seed)
        model = task.build_model()
        trainer = Trainer(task, model, cfg, run_dir if (writes or resume is not None) else None, device=device,
                          dist=dist, progress=reporter)
        trainer.writes = writes
        t0 = time.perf_counter()
        result = trainer.fit(resume=resume is not None)
        if writes and result.history:
            if cfg.plots:
                plot_learning_curve(result.history, run_dir / ckpt.LEARNING_CURVE, result.monitor,
                                    title=f"{config.task}: {config.model.encoder}")
                model.eval()
                with torch.no_grad():
                    task.plots(model, run_dir)
            reporter.summary(_summary_rows(run_dir, config, result, model, time.perf_counter() - t0,
                                           getattr(task, "display_metrics", None)))
    finally:
        shutdown_distributed()
    return run_dir


def _summary_rows(run_dir: Path, config: RunConfig, result, model: torch.nn.Module, seconds: float,
                  display: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), None)
    rows = [("run directory", str(run_dir)),
            ("model", f"{config.model.encoder} ({sum(p.numel() for p in model.parameters()):,} parameters)"),
            ("epochs", f"{result.epochs_run} of {config.train.epochs}" + (" (stopped early)" if result.stopped_early else "")),
            ("best epoch", str(result.best_epoch)),
            (f"best val_{result.monitor}", f"{result.best_metric:.6g}")]
    if best is not None:
        from hybridrnn.train.progress import shown_metrics

        keys, hidden = shown_metrics(best, result.monitor, display)
        rows += [(k, f"{best[k]:.6g}") for k in keys if k != f"val_{result.monitor}"]
        if hidden:
            rows.append(("other metrics", f"{hidden} more in {run_dir / ckpt.METRICS}"))
    rows.append(("time this session", f"{seconds:.1f}s"))
    return rows


def load_run(run_dir: str | Path, *, weights: str = "best", device: str | torch.device = "cpu",
             overrides: Iterable[str] = ()) -> tuple[RunConfig, Any, torch.nn.Module]:
    """``(config, task, model)`` of a run directory; the model holds the best (or ``"last"``) weights, in eval mode.

    Reads ``config.yaml`` with ``yaml.safe_load`` and the weights with safetensors only. The task is set up
    (``setup(run_dir)`` then ``load_artifacts(run_dir)``), so its data splits are available for evaluation.
    """
    if weights not in ("best", "last"):
        raise ValueError(f"weights must be 'best' or 'last', got {weights!r}")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir, overrides)
    task = _task_class(config)(config)
    task.setup(run_dir)
    _load_artifacts(task, run_dir)
    model = task.build_model()
    ckpt.load_weights(run_dir / (ckpt.BEST_WEIGHTS if weights == "best" else ckpt.LAST_WEIGHTS), model)
    model.to(device).eval()
    return config, task, model


def run_task_class(run_dir: str | Path) -> type:
    """The Task class of a run directory (from its ``config.yaml``)."""
    return _task_class(read_run_config(run_dir))


def evaluate_run(run_dir: str | Path, split: str = "test", *, weights: str = "best") -> dict[str, float]:
    """The task's metrics of a finished run on ``split``, with its best weights."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    _, task, model = load_run(run_dir, weights=weights)
    with torch.no_grad():
        return {k: float(v) for k, v in task.evaluate(model, split).items()}


def report_run(run_dir: str | Path, split: str = "test", *, weights: str = "best") -> dict:
    """``evaluate_run``'s metrics, plus ``"report"``: the task's detailed JSON report (per horizon step, each
    baseline) when the task has one (the forecast task). What ``hybridrnn evaluate RUN --json`` prints."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    _, task, model = load_run(run_dir, weights=weights)
    with torch.no_grad():
        out: dict = {k: float(v) for k, v in task.evaluate(model, split).items()}
        if callable(getattr(task, "report", None)):
            out["report"] = task.report(model, split)
    return out


def predict_run(run_dir: str | Path, input_path: str | Path, output_path: str | Path | None = None) -> None:
    """``task.predict`` with the run's best weights (what ``hybridrnn predict`` does)."""
    from hybridrnn.data.registry import resolve_data_path

    try:  # a file, or a data set name such as bundled:seattle_weather
        input_path = resolve_data_path(str(input_path))
    except FileNotFoundError as exc:
        raise ValueError(f"input: {exc}") from None
    _, task, model = load_run(run_dir)
    with torch.no_grad():
        task.predict(model, input_path, Path(output_path) if output_path is not None else None)


__all__ = ["train", "load_run", "evaluate_run", "report_run", "predict_run", "read_run_config", "default_run_dir", "ConfigError"]
