"""Reading a run directory: its config and the task's fitted state (never the training data)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from hybridrnn.api.registry import build_config
from hybridrnn.config import RunConfig, apply_overrides, read_yaml
from hybridrnn.errors import RunDirError
from hybridrnn.train import checkpoint as ckpt
from hybridrnn.train.task import Task


def read_run_config(run_dir: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """The config of a run directory (``config.yaml`` through ``yaml.safe_load``), with ``overrides``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    path = run_dir / ckpt.CONFIG
    if not path.exists():
        raise RunDirError(f"{path} is missing: {run_dir} is not a hybridrnn run directory")
    overrides = list(overrides)
    data = apply_overrides(read_yaml(path), overrides)
    return build_config(data, str(path), overridden=[o.partition("=")[0].strip() for o in overrides])


def load_task_state(task: Task, run_dir: Path) -> None:
    """``task.load_artifacts(run_dir)``; a file that is not what training wrote is a clear RunDirError."""
    run_dir = Path(run_dir)
    try:
        task.load_artifacts(run_dir)
    except FileNotFoundError as exc:
        raise RunDirError(f"{run_dir}: the {task.name!r} task's fitted state is missing ({exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        names = sorted(p.name for p in run_dir.iterdir() if p.suffix == ".json" and p.name not in
                       (ckpt.STATE, ckpt.ENVIRONMENT))
        raise RunDirError(f"{run_dir}: the {task.name!r} task's saved state ({', '.join(names)}) cannot be "
                          f"read ({type(exc).__name__}: {exc}); it must be the files that training wrote "
                          "(nothing else is ever loaded)") from None
