"""Names of tasks, as written in a config's ``task:`` field, and where their classes live.

Imported lazily so that loading a config for one task does not import every other task's dependencies.
Extra tasks (plugins, test tasks) are added with :func:`register_task` or, for a fresh process such as one
started by ``torchrun``, with the environment variable ``HYBRIDRNN_EXTRA_TASKS="name=module:Class,..."``.
A config file itself can only name registered tasks: it never chooses a module to import.
"""
from __future__ import annotations

import difflib
import importlib
import os

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
        raise ValueError(f"register_task({name!r}, {target!r}): expected 'module:ClassName'")
    TASKS[name] = target


def _all_tasks() -> dict[str, str]:
    tasks = dict(TASKS)
    for item in filter(None, (s.strip() for s in os.environ.get(ENV_VAR, "").split(","))):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise ValueError(f"{ENV_VAR}: expected 'name=module:ClassName' items, got {item!r}")
        tasks.setdefault(name.strip(), target.strip())
    return tasks


def task_names() -> list[str]:
    """Every registered task name, sorted."""
    return sorted(_all_tasks())


def get_task_class(name: str):
    """The Task class registered under ``name``; a ValueError with the closest valid name otherwise."""
    tasks = _all_tasks()
    if name not in tasks:
        close = difflib.get_close_matches(str(name), tasks, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; valid tasks: {', '.join(sorted(tasks))}")
    module_name, class_name = tasks[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
