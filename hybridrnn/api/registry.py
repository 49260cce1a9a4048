"""Names of tasks, as written in a config's ``task:`` field, where their classes live, and the config loader
that dispatches on that name (``load_config``, ``build_config``, ``coerce_config``).

Task modules are imported lazily so that loading a config for one task does not import every other task's
dependencies.
Extra tasks (plugins, test tasks) are added with :func:`register_task` or, for a fresh process such as one
started by ``torchrun``, with the environment variable ``HYBRIDRNN_EXTRA_TASKS="name=module:Class,..."``.
A config file itself can only name registered tasks: it never chooses a module to import.
"""
from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from hybridrnn.config import (EXPERIMENT_SECTIONS, ConfigError, RunConfig, apply_overrides, format_validation_error,
                              read_yaml)
from hybridrnn.train.task import Task

#: task name -> "module:ClassName"
TASKS: dict[str, str] = {
    "forecast": "hybridrnn.tasks.forecast:ForecastTask",
    "classify": "hybridrnn.tasks.classify:ClassifyTask",
    "language_model": "hybridrnn.tasks.language_model:LanguageModelTask",
    "long_range": "hybridrnn.tasks.long_range:LongRangeTask",
}

ENV_VAR = "HYBRIDRNN_EXTRA_TASKS"


def register_task(name: str, target: str) -> None:
    """Register ``name`` -> ``"module:ClassName"`` (for plugins and tests)."""
    if ":" not in target:
        raise ConfigError(f"register_task({name!r}, {target!r}): expected 'module:ClassName'")
    TASKS[name] = target


def _all_tasks() -> dict[str, str]:
    tasks = dict(TASKS)
    for item in filter(None, (s.strip() for s in os.environ.get(ENV_VAR, "").split(","))):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise ConfigError(f"{ENV_VAR}: expected 'name=module:ClassName' items, got {item!r}")
        tasks.setdefault(name.strip(), target.strip())
    return tasks


def task_names() -> list[str]:
    """Every registered task name, sorted."""
    return sorted(_all_tasks())


def get_task_class(name: str) -> type[Task]:
    """The Task class registered under ``name``; a ConfigError with the closest valid name otherwise."""
    tasks = _all_tasks()
    if name not in tasks:
        close = difflib.get_close_matches(str(name), tasks, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown task {name!r}{hint}; valid tasks: {', '.join(sorted(tasks))}")
    module_name, class_name = tasks[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


# ---------------------------------------------------------------------------------------------------------
# configs: validated into the config class of the task they name


def config_class_for(task_name: Any, source: str = "<config>") -> type[RunConfig]:
    """The config class of the task named by a config's ``task:`` value."""
    if task_name is None:
        raise ConfigError(f"{source}: missing key 'task' (one of: {', '.join(task_names())})")
    try:
        task_class = get_task_class(str(task_name))
    except ConfigError as exc:
        raise ConfigError(f"{source}: task: {exc}") from None
    return task_class.config_class


def build_config(data: dict[str, Any], source: str = "<config>", *, text: str | None = None,
                 overridden: Iterable[str] = (), config_dir: str | Path | None = None) -> RunConfig:
    """Validate a config mapping into the config class its ``task:`` names; :class:`ConfigError` otherwise.

    Its ``compare:`` / ``tune:`` sections are left to those commands. ``config_dir``: the folder of the YAML
    file, against which relative data paths are tried first."""
    cls = config_class_for(data.get("task"), source)
    data = {k: v for k, v in data.items() if k not in EXPERIMENT_SECTIONS}
    try:
        return cls.model_validate(data, context={"config_dir": str(config_dir)} if config_dir else None)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, cls, source, text=text, overridden=overridden)) from None


def _overridden_keys(overrides: Iterable[str]) -> list[str]:
    return [o.partition("=")[0].strip() for o in overrides]


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """Read, override and validate a YAML config file."""
    path = Path(path)
    overrides = list(overrides)
    data = apply_overrides(read_yaml(path), overrides)
    text = path.read_text(encoding="utf-8")
    return build_config(data, str(path), text=text, overridden=_overridden_keys(overrides),
                        config_dir=path.resolve().parent)


def coerce_config(config: RunConfig | dict | str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """A validated config from a config object, a mapping or a YAML path, with ``overrides`` applied."""
    overrides = list(overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, RunConfig):
        if not overrides:
            return config
        config = config.model_dump(mode="json")
    if isinstance(config, dict):
        return build_config(apply_overrides(config, overrides), "<config>", overridden=_overridden_keys(overrides))
    raise TypeError(f"expected a RunConfig, a dict or a YAML path, got {type(config).__name__}")
