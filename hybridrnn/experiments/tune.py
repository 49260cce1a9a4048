"""Hyper-parameter search with Optuna: ``hybridrnn tune CONFIG --trials N --storage sqlite:///study.db``.

The search space is the ``tune:`` section of the config (read here and removed before the run config is
validated, see :func:`hybridrnn.config.build_config`)::

    tune:
      metric: loss            # validation metric to optimise (default: the task's monitored metric)
      direction: minimize     # default: from the task's monitor mode (required for another metric)
      pruner: {n_startup_trials: 3, n_warmup_steps: 1}     # MedianPruner settings
      space:
        train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}  # a float range
        model.dropout: {low: 0.0, high: 0.5}
        hidden: {choices: [32, 64, 128]}                   # no dot: a variable for templates only
        layers: {low: 1, high: 2}                          # two ints: an integer range
        cell: {choices: [lstm, gru]}
        model.encoder: "{cell}:{hidden}x{layers}"          # a template filled from the sampled variables

Keys with a dot are config overrides (``--set`` keys); keys without one are variables that templates use.
A range takes ``low``, ``high`` and optionally ``log`` and ``step`` (``type: int|float`` forces the kind);
``choices`` is categorical. Every trial trains in ``OUT/trial-<number>`` and reports its validation metric
after each epoch, so the ``MedianPruner`` stops trials that are worse than the median of earlier trials at the
same epoch. Workers on one or many machines share the study through the storage URL (SQLite for one machine,
any SQL database for many): start the same command on each.
"""
from __future__ import annotations

import json
import os
import re
import string
from pathlib import Path
from typing import Any, Optional, Sequence

from hybridrnn._io import atomic_write_text
from hybridrnn.api import coerce_config, get_task_class, train_run
from hybridrnn.errors import ConfigError, MissingExtraError
from hybridrnn.experiments.compare import experiment_sections
from hybridrnn.train.callbacks import Callback
from hybridrnn.train.trainer import NonFiniteLossError

TUNE_KEYS = {"metric", "direction", "pruner", "space"}
RANGE_KEYS = {"low", "high", "log", "step", "type"}


def import_optuna():
    """``optuna``, or an ImportError that names the ``tune`` extra."""
    try:
        import optuna   # optional extra: 'tune'
    except ImportError:
        raise MissingExtraError("hyper-parameter search needs Optuna, an optional dependency: "
                          "pip install 'hybridrnn[tune]' (or pip install optuna)") from None
    return optuna


# ---------------------------------------------------------------------------------------------------------
# the search space
# ---------------------------------------------------------------------------------------------------------

def _template_fields(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def check_space(space: Any, source: str = "tune.space") -> dict[str, Any]:
    """Validate a search space (see the module docstring); returns it. ValueError naming the bad entry."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{source}: expected a non-empty mapping of parameter -> range, choices or template, "
                          f"got {space!r}")
    variables = {k for k, v in space.items() if not (isinstance(v, str) and _template_fields(v))}
    for key, spec in space.items():
        where = f"{source}.{key}"
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", key):
            raise ConfigError(f"{where}: a key must be a name or a dotted config key, got {key!r}")
        if isinstance(spec, str):
            fields = _template_fields(spec)
            if not fields:
                raise ConfigError(f"{where}: a string must be a template with {{variable}} fields, got {spec!r} "
                                  f"(for a fixed value use --set {key}={spec})")
            unknown = [f for f in fields if f not in variables]
            if unknown:
                raise ConfigError(f"{where}: template {spec!r} uses {unknown}, which the space does not define")
            if "." not in key:
                raise ConfigError(f"{where}: a template must set a dotted config key, e.g. model.encoder")
        elif isinstance(spec, dict) and "choices" in spec:
            extra = set(spec) - {"choices"}
            if extra or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"{where}: expected {{choices: [a, b, ...]}} (a non-empty list and nothing else), "
                                  f"got {spec!r}")
        elif isinstance(spec, dict) and {"low", "high"} <= set(spec):
            extra = set(spec) - RANGE_KEYS
            if extra:
                raise ConfigError(f"{where}: unknown keys {sorted(extra)} (a range takes {sorted(RANGE_KEYS)})")
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise ConfigError(f"{where}: low and high must be numbers with low < high, got {low!r}, {high!r}")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0, got {low!r}")
            if spec.get("type", None) not in (None, "int", "float"):
                raise ConfigError(f"{where}: type must be 'int' or 'float', got {spec['type']!r}")
        else:
            raise ConfigError(f"{where}: expected {{low: .., high: ..}}, {{choices: [..]}} or a template string, "
                              f"got {spec!r}")
    return space


def sample_overrides(space: dict[str, Any], suggest) -> tuple[list[str], dict[str, Any]]:
    """Sample every entry of ``space`` with ``suggest`` (an Optuna trial, or any object with its
    ``suggest_float/int/categorical``); returns ``--set`` overrides and the sampled values."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, str):
            continue
        if "choices" in spec:
            values[key] = suggest.suggest_categorical(key, spec["choices"])
            continue
        is_int = spec.get("type") == "int" or (spec.get("type") is None and isinstance(spec["low"], int)
                                                and isinstance(spec["high"], int))
        if is_int:
            values[key] = suggest.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                              log=bool(spec.get("log", False)))
        else:
            values[key] = suggest.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                                step=spec.get("step"), log=bool(spec.get("log", False)))
    overrides = [f"{k}={v}" for k, v in values.items() if "." in k]
    for key, spec in space.items():
        if isinstance(spec, str):
            filled = spec.format(**values)
            values[key] = filled
            overrides.append(f"{key}={filled}")
    return overrides, values


class _FirstChoice:
    """A stand-in trial that picks the first choice / the low end: to check a space against the config."""

    def suggest_categorical(self, name, choices):
        return choices[0]

    def suggest_int(self, name, low, high, step=1, log=False):
        return low

    def suggest_float(self, name, low, high, step=None, log=False):
        return low


# ---------------------------------------------------------------------------------------------------------
# one trial
# ---------------------------------------------------------------------------------------------------------

class PruningCallback(Callback):
    """Reports ``val_<metric>`` to an Optuna trial after every epoch and stops the trial when the pruner says."""

    def __init__(self, trial, metric: str, optuna):
        self.trial, self.key, self.optuna = trial, f"val_{metric}", optuna

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        if self.key not in record:
            raise ConfigError(f"tune.metric {self.key[4:]!r}: the task's evaluate() has no such metric; it returned "
                              f"{sorted(k[4:] for k in record if k.startswith('val_'))}")
        self.trial.report(float(record[self.key]), int(record["epoch"]))
        if self.trial.should_prune():
            raise self.optuna.TrialPruned(f"pruned after epoch {record['epoch']}: {self.key}={record[self.key]:.6g}")


def train_trial(config_path: Path, overrides: Sequence[str], run_dir: Path, trial, metric: str) -> float:
    """Train one trial with the one training pipeline (``hybridrnn.api.train_run``), reporting ``val_<metric>``
    to ``trial`` after every epoch (so the pruner can stop it); returns the best value of that metric."""
    optuna = import_optuna()
    trained = train_run(config_path, out=run_dir, overrides=overrides, progress="none",
                        callbacks=[PruningCallback(trial, metric, optuna)])
    key = f"val_{metric}"
    values = [float(r[key]) for r in trained.result.history if key in r]
    return min(values) if trial.study.direction == optuna.study.StudyDirection.MINIMIZE else max(values)


# ---------------------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------------------

def _create_or_load_study(optuna, study_name: str, storage: Optional[str], direction: str, pruner, attempts: int = 6):
    """``optuna.create_study(..., load_if_exists=True)``, retried when workers started together race to create
    the storage's tables (a database error from SQLAlchemy): the loser's retry finds them made."""
    import random
    import time

    for attempt in range(attempts):
        try:
            return optuna.create_study(study_name=study_name, storage=storage, direction=direction, pruner=pruner,
                                       load_if_exists=True)
        except Exception as error:
            # the races: "table studies already exists" (OperationalError), "UNIQUE constraint failed:
            # alembic_version" (IntegrityError), "database is locked"; all sqlalchemy errors
            if storage is None or attempt == attempts - 1 or not type(error).__module__.startswith("sqlalchemy"):
                raise
            time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))
    raise AssertionError("unreachable")


def run_tune(config_path: str | os.PathLike, trials: int, storage: Optional[str] = None,
             study_name: Optional[str] = None, overrides: Sequence[str] = (),
             out_dir: str | os.PathLike | None = None, progress=print):
    """Run ``trials`` trials of the search declared in ``config_path``'s ``tune:`` section; returns the study.

    Args:
        storage: an Optuna storage URL (``sqlite:///study.db``; any SQLAlchemy URL for many machines); None keeps
            the study in memory. Workers that give the same storage and study name share one study.
        study_name: default: the config file's stem.
        overrides: ``--set`` strings applied to every trial before the sampled values.
        out_dir: where trial runs go (``OUT/trial-<n>``), default ``runs/tune-<study name>``.
    Writes ``OUT/trials.csv`` (every trial of the study so far) and ``OUT/best.json`` after the trials.
    """
    optuna = import_optuna()

    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be a positive integer, got {trials!r}")
    study_name = study_name or Path(config_path).stem
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"tune-{study_name}"
    out.mkdir(parents=True, exist_ok=True)
    sections = experiment_sections(config_path)
    if "tune" not in sections:
        raise ConfigError(f"config {str(config_path)!r} has no 'tune:' section declaring the search space "
                          "(see hybridrnn.experiments.tune)")
    section = sections["tune"]
    unknown = set(section) - TUNE_KEYS
    if unknown:
        raise ConfigError(f"config {str(config_path)!r}: unknown keys in tune: {sorted(unknown)} "
                          f"(expected {sorted(TUNE_KEYS)})")
    space = check_space(section.get("space"), "tune.space")
    # the first point of the space must make a valid config: fail now, not in trial 1 of every worker
    first, _ = sample_overrides(space, _FirstChoice())
    config = coerce_config(config_path, list(overrides) + first)
    task_class = get_task_class(config.task)
    metric = str(section.get("metric", task_class.monitor))
    if "direction" in section:
        direction = section["direction"]
        if direction not in ("minimize", "maximize"):
            raise ConfigError(f"tune.direction must be 'minimize' or 'maximize', got {direction!r}")
    elif metric == task_class.monitor:
        direction = "minimize" if task_class.monitor_mode == "min" else "maximize"
    else:
        raise ConfigError(f"tune.metric is {metric!r}, not the task's monitored {task_class.monitor!r}: "
                          "say tune.direction (minimize or maximize)")
    pruner_options = section.get("pruner") or {}
    if not isinstance(pruner_options, dict):
        raise ConfigError(f"tune.pruner must be a mapping of MedianPruner options, got {pruner_options!r}")
    pruner_options = {"n_startup_trials": 3, "n_warmup_steps": 1, **pruner_options}
    try:
        pruner = optuna.pruners.MedianPruner(**pruner_options)
    except TypeError as error:
        raise ConfigError(f"tune.pruner: {error}") from None

    study = _create_or_load_study(optuna, study_name, storage, direction, pruner)

    def objective(trial) -> float:
        sampled, values = sample_overrides(space, trial)
        run_dir = out / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", list(overrides) + sampled)
        progress(f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        return train_trial(config_path, list(overrides) + sampled, run_dir, trial, metric)

    study.optimize(objective, n_trials=trials, catch=(NonFiniteLossError,))
    atomic_write_text(out / "trials.csv", study.trials_dataframe().to_csv(index=False))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        summary = {"study": study_name, "storage": storage, "metric": f"val_{metric}", "direction": direction,
                   "best_value": best.value, "best_trial": best.number, "params": best.params,
                   "overrides": best.user_attrs.get("overrides"), "run_dir": best.user_attrs.get("run_dir"),
                   "trials": {s.name.lower(): sum(t.state == s for t in study.trials)
                              for s in optuna.trial.TrialState}}
        atomic_write_text(out / "best.json", json.dumps(summary, indent=2))
        progress(f"best trial {best.number}: val_{metric}={best.value:.6g} with {best.params}")
    return study
