"""A trained run as a Python object: ``hybridrnn.fit``, ``hybridrnn.load`` and :class:`Run`.

>>> import hybridrnn
>>> run = hybridrnn.fit("configs/quickstart.yaml", out="runs/x")   # or a dict / config object; data=df
>>> run.predict(new_df)            # DataFrame: the forecast with its timestamps (or labels + probabilities)
>>> run.evaluate()                 # DataFrame: the model and each baseline, one row each, on the test split
>>> run = hybridrnn.load("runs/x") # the same Run again, without the training data
>>> run.model, run.config          # the torch nn.Module (eval mode, best weights) and the resolved config
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from hybridrnn.api.pipeline import train_run
from hybridrnn.api.registry import get_task_class
from hybridrnn.api.rundir import load_task_state, read_run_config
from hybridrnn.config import RunConfig
from hybridrnn.data.registry import resolve_data_path
from hybridrnn.data.timeseries import read_table
from hybridrnn.errors import ConfigError, DataError, RunDirError
from hybridrnn.tasks.forecast import refit_groups
from hybridrnn.tasks.forecast_metrics import backtest_summary
from hybridrnn.tasks.forecast_panel import id_columns, series_frames
from hybridrnn.train import checkpoint as ckpt
from hybridrnn.train.export import export_onnx
from hybridrnn.train.task import Task

SPLITS = ("train", "val", "test")


class Run:
    """A trained model and everything needed to use it: the resolved config, the task's fitted state
    (scalers, column layout, vocabulary, labels) and the best weights, in a run directory ``path``.

    Built by :func:`fit` or :func:`load`; never needs the training data except for :meth:`evaluate` without
    ``data`` (which re-reads the configured data set and says which file is missing if it is gone).
    """

    def __init__(self, path: Path, config: RunConfig, task: Task, model: torch.nn.Module, *, has_data: bool = False):
        self.path = Path(path)
        self.config = config
        self.task = task
        self.model = model.eval()
        self._splits = "config" if has_data else None    # which data the task's splits hold: config / input

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, task={self.config.task!r}, encoder={self.config.model.encoder!r})"

    # ------------------------------------------------------------------ using the model
    def predict(self, data: Any, *, intervals: str | None = None, level: float = 0.8) -> pd.DataFrame:
        """Predictions for new inputs: a path, a data set name (``bundled:NAME``) or a DataFrame in the format
        the model was trained on. Forecasting: the ``horizon`` rows after the input's last row, with their
        timestamps; classification: the label and the probability of each class per input.

        intervals (forecasting): ``"conformal"`` adds the bounds of a central interval of coverage ``level``
        after each target's column, named by their quantile levels: ``{target}_q0.1`` and ``{target}_q0.9``
        for ``level=0.8`` (split-conformal: calibrated on the validation windows, see :meth:`calibrate`)."""
        self._require("supports_predict", "predict")
        with torch.no_grad():
            return self.task.predict(self.model, _resolve(data), **self._interval_options(intervals, level))

    def calibrate(self, data: Any = None) -> "Run":
        """Split-conformal calibration (forecasting) on the validation windows of the configured data (or of
        ``data``, split by ``data.split``) with this run's model; written to the run directory
        (``forecast_conformal.safetensors``) so that a loaded run has it. :func:`fit` calibrates after training."""
        self._require("supports_intervals", "intervals")
        if data is not None:
            self.task.setup(_resolve(data))
            self._splits = None
        else:
            self._load_data(None, "val")
        with torch.no_grad():
            self.task.calibrate(self.model, self.path)
        return self

    def _interval_options(self, intervals: str | None, level: float) -> dict:
        """``{"intervals", "level"}`` for the task when intervals are asked for (calibrating first when a
        conformal interval is asked of a run that has none and its training data is at hand)."""
        if intervals is None:
            return {}
        self._require("supports_intervals", "intervals")
        if intervals == "conformal" and getattr(self.task, "conformal", None) is None:
            self.calibrate()
        return {"intervals": intervals, "level": level}

    def iter_generate(self, prompt: str = "", tokens: int = 200, *, temperature: float | None = None,
                      top_k: int | None = None, seed: int = 0) -> Iterator[str]:
        """The text pieces that continue ``prompt``, one per token, as they are sampled (language models)."""
        self._require("supports_generate", "generate")
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(int(seed))
        with torch.no_grad():
            yield from self.task.generate(self.model, prompt, tokens, temperature=temperature, top_k=top_k,
                                          generator=generator)

    def generate(self, prompt: str = "", tokens: int = 200, **options: Any) -> str:
        """``prompt`` and its continuation of ``tokens`` tokens as one string (see :meth:`iter_generate`)."""
        return prompt + "".join(self.iter_generate(prompt, tokens, **options))

    # ------------------------------------------------------------------ measuring it
    def metrics(self, data: Any = None, *, split: str = "test", intervals: str | None = None,
                level: float = 0.8) -> dict[str, float]:
        """The task's flat metrics (``mae``, ``naive_mae``, ...) on ``split`` of the configured data, or on
        every example of ``data`` (a path, data set name or DataFrame) when it is given. With ``intervals``
        (forecasting) also ``coverage_80``, ``width_80`` and ``pinball_80`` (for ``level=0.8``)."""
        options = self._interval_options(intervals, level)
        self._load_data(data, split)
        with torch.no_grad():
            return {k: float(v) for k, v in self.task.evaluate(self.model, "test" if data is not None else split,
                                                               **options).items()}

    def evaluate(self, data: Any = None, *, split: str = "test", intervals: str | None = None,
                 level: float = 0.8) -> pd.DataFrame:
        """The model and each baseline, one row each, with a column per metric (see :meth:`metrics`); metrics
        that only the model has (``loss``, ``accuracy`` of a classifier, interval metrics, ...) are columns of
        the model's row."""
        rows, other = metrics_table(self.metrics(data, split=split, intervals=intervals, level=level),
                                    self.task.baselines)
        frame = pd.DataFrame.from_dict(rows, orient="index")
        for key, value in other.items():
            frame.loc["model", key] = value
        frame.index.name = "forecaster" if len(rows) > 1 else "model"
        return frame

    def evaluate_series(self, data: Any = None, *, split: str = "test") -> pd.DataFrame:
        """Forecasting a panel (``data.id_column``): MAE, RMSE and MASE of the model and each baseline per
        series (one row per series and forecaster, ``windows`` counted), the baselines computed per series."""
        per = self.report(data, split=split)["report"].get("per_series")
        if per is None:
            raise ConfigError("evaluate_series needs a panel run (data.id_column); use evaluate() for one series")
        rows = {(sid, name): values for sid, by in per.items() for name, values in by.items()}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index = pd.MultiIndex.from_tuples(list(rows), names=["series", "forecaster"])
        return frame

    def report(self, data: Any = None, *, split: str = "test", intervals: str | None = None,
               level: float = 0.8) -> dict:
        """:meth:`metrics` plus ``"report"``: the task's detailed JSON report (per horizon step, each baseline)
        when the task has one. What ``hybridrnn evaluate RUN --json`` prints."""
        out: dict = self.metrics(data, split=split, intervals=intervals, level=level)
        options = self._interval_options(intervals, level)
        if callable(getattr(self.task, "report", None)):
            with torch.no_grad():
                out["report"] = self.task.report(self.model, "test" if data is not None else split, **options)
        return out

    def backtest(self, data: Any = None, *, start: Any = None, stride: int = 1, refit: int | None = None,
                 intervals: str | None = None, level: float = 0.8, progress: str | None = "none") -> pd.DataFrame:
        """Rolling-origin backtest (forecasting): forecasts from many origins over ``data`` (a path, data set
        name or DataFrame; None: the configured data), each reading only the rows before its origin.

        Returns the long table ``id, cutoff, time, step, target, actual, forecast, naive, seasonal_naive,
        linear`` (NeuralForecast's ``cross_validation`` layout: ``cutoff`` is the last time the forecast reads,
        ``time`` the forecast's time; one row per origin, horizon step and target); summarise it per horizon step
        and per series with :meth:`backtest_summary`. ``start``: the first forecast time (default: the first one
        after the training data's validation part); ``stride``: every ``stride``-th origin. ``refit=N``: retrain
        the model (through :func:`hybridrnn.api.pipeline.train_run`, the config's settings, rows before the
        origin only) every ``N`` origins, the baselines' fitted state with it (a panel: every ``N`` distinct origin
        times of all its series, each model trained on every series' rows before its group's first origin); None
        reuses this run's model.
        intervals / level: the model's interval as ``forecast_q{lo}`` / ``forecast_q{hi}`` columns (a refitted
        model is calibrated on its own validation windows)."""
        self._require("supports_backtest", "backtest")
        options = self._interval_options(intervals, level)
        if refit is not None and (isinstance(refit, bool) or not isinstance(refit, int) or refit < 1):
            raise ConfigError(f"refit must be a whole number of origins >= 1 (or None), got {refit!r}")
        source = None if data is None else _resolve(data)
        task = self.task
        self._splits = None                       # the task's data is replaced by the backtest's table
        if getattr(task, "panel_state", None) is not None:          # many series (data.id_column)
            if refit is None:
                with torch.no_grad():
                    return task.backtest_panel(self.model, source, start, stride, **options)
            return self._refit_panel_backtest(source, start, stride, refit, progress, options)
        table = task.backtest_table(source)
        origins = task.backtest_origins(table, start, stride)
        with torch.no_grad():
            if refit is None:
                return task.backtest_frame(self.model, table, origins, **options)
        parts = []
        with tempfile.TemporaryDirectory(prefix="hybridrnn-refit-") as tmp:
            for i in range(0, len(origins), refit):
                group = origins[i:i + refit]
                trained = train_run(_refit_config(self.config, table, int(group[0])), data=_refit_data(source, table, int(group[0])),
                                    out=Path(tmp) / f"refit-{i}", progress=progress)
                with torch.no_grad():      # (train_run calibrated the refitted model's intervals)
                    parts.append(trained.task.backtest_frame(trained.model, table, group, task.series_label(),
                                                             **options))
        return pd.concat(parts, ignore_index=True)

    def _refit_panel_backtest(self, source: Any, start: Any, stride: int, refit: int, progress: str | None,
                              options: dict) -> pd.DataFrame:
        """A panel backtest with a model retrained every ``refit`` distinct origin times (see
        :func:`hybridrnn.tasks.forecast.refit_groups`): each model is trained on every series' rows before its
        group's first origin only, and forecasts each series at its origins of the group with the refitted
        per-series state. Rows come out by series (in the panel's order), then origin, as without refitting."""
        task = self.task
        plan = task.panel_backtest_plan(source, start, stride)
        source = task.backtest_source(source)
        parts = []
        with tempfile.TemporaryDirectory(prefix="hybridrnn-refit-") as tmp:
            for i, (first, group) in enumerate(refit_groups(plan, refit)):
                try:
                    trained = train_run(_refit_panel_config(self.config, first),
                                        data=_refit_panel_data(self.config, source, first),
                                        out=Path(tmp) / f"refit-{i}", progress=progress)
                    with torch.no_grad():      # (train_run calibrated the refitted model's intervals)
                        parts.append(trained.task.panel_backtest_frames(trained.model, group, **options))
                except DataError as exc:
                    raise DataError(f"backtest refit on the rows before {first}: {exc}") from None
        order = {sid: k for k, (sid, _, _) in enumerate(plan)}
        out = pd.concat(parts, ignore_index=True)
        rank = out["id"].map(order).to_numpy()
        return out.iloc[np.lexsort((out.index.to_numpy(), out["cutoff"].to_numpy(), rank))].reset_index(drop=True)

    @staticmethod
    def backtest_summary(frame: pd.DataFrame) -> pd.DataFrame:
        """Per series and horizon step (and over all of them) MAE / RMSE of the model and each baseline, with
        the interval coverage and width when the table has intervals; see
        :func:`hybridrnn.tasks.forecast_metrics.backtest_summary`."""
        return backtest_summary(frame)

    @property
    def history(self) -> list[dict]:
        """One record per trained epoch (``metrics.jsonl``)."""
        return ckpt.read_jsonl(self.path / ckpt.METRICS)

    # ------------------------------------------------------------------ keeping it
    def save(self, path: str | Path) -> "Run":
        """Copy the run directory to ``path`` (which must not exist) and point this Run at it."""
        path = Path(path)
        if path.resolve() == self.path.resolve():
            return self
        if path.exists():
            raise RunDirError(f"{path} already exists; choose a new folder to save the run to")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.copytree(self.path, tmp)
        os.replace(tmp, path)
        self.path = path
        return self

    def export(self, output: str | Path, *, check: bool = True) -> dict:
        """ONNX export of the model (the ``onnx`` extra); see :func:`hybridrnn.train.export.export_onnx`."""
        self._require("supports_export", "ONNX export")
        return export_onnx(self.task, self.model, output, check=check)

    # ------------------------------------------------------------------ internals
    def _require(self, flag: str, what: str) -> None:
        if not getattr(self.task, flag, False):
            raise NotImplementedError(f"task {self.config.task!r} does not support {what}")

    def _load_data(self, data: Any, split: str) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if data is not None:
            self.task.setup(_resolve(data), whole=True)
            self._splits = "input"
        elif self._splits != "config":
            self.task.setup(None)
            self._splits = "config"


def _resolve(data: Any) -> Any:
    """A path or a data set name (``bundled:NAME``, ``shared:NAME``) as a Path; anything else (a DataFrame, a
    list of texts, an array of series) as it is, for the task to read."""
    if not isinstance(data, (str, os.PathLike)):
        return data
    try:
        return resolve_data_path(str(data))
    except FileNotFoundError as exc:
        raise DataError(f"input: {exc}") from None


def _refit_config(config: RunConfig, table: Any, origin: int) -> RunConfig:
    """The run's config for a model retrained on the rows before ``origin`` of a backtest's ``table``: data up to
    (not including) the origin's time, its split's train and validation parts rescaled to cover those rows (no
    test part), no plots."""
    cfg = config.model_copy(deep=True)
    d = cfg.data
    if table.times is not None:
        end = pd.Timestamp(table.times[origin])
        d.end = str(end if d.end is None else min(end, pd.Timestamp(d.end)))
    split = d.split
    if not isinstance(split, dict):
        parts = [float(p) for p in split]
        if all(p.is_integer() for p in parts) and sum(parts) > 1:       # row counts: keep the validation rows
            n = origin if table.times is None else int(table.times.searchsorted(pd.Timestamp(d.end)))
            d.split = [max(n - int(parts[1]), 1), int(parts[1]), 0]
        else:
            d.split = [parts[0] / (parts[0] + parts[1]), parts[1] / (parts[0] + parts[1]), 0.0]
    cfg.train.plots = False
    return cfg


def _refit_panel_config(config: RunConfig, first: Any) -> RunConfig:
    """The config of a panel model retrained for a group of origins whose first is at ``first`` (a time; a row
    number for a ``steps`` panel): every series' data before it (``data.end``), split into train and validation
    parts (fractions rescaled, dates kept; no test part), no plots. A split by row counts is a ``ConfigError``:
    the series of a panel cut at one time have different lengths."""
    cfg = config.model_copy(deep=True)
    d = cfg.data
    if not isinstance(first, (int, np.integer)):
        d.end = str(first if d.end is None else min(pd.Timestamp(first), pd.Timestamp(d.end)))
    if not isinstance(d.split, dict):
        parts = [float(p) for p in d.split]
        if all(p.is_integer() for p in parts) and sum(parts) > 1:
            raise ConfigError(f"backtest refit of a panel needs data.split as fractions or dates, got row counts "
                              f"{d.split}: the series cut at each origin have different lengths")
        d.split = [parts[0] / (parts[0] + parts[1]), parts[1] / (parts[0] + parts[1]), 0.0]
    cfg.train.plots = False
    return cfg


def _refit_panel_data(config: RunConfig, source: Any, first: Any) -> Any:
    """What a panel refit trains on: the backtest's input as it is (``data.end`` cuts every series at the time
    ``first``), or for a ``steps`` panel each series' first ``first`` rows."""
    if not isinstance(first, (int, np.integer)):
        return source
    d = config.data
    frames, _ = series_frames(source, id_columns(d.id_column), d.where, header=d.header)
    return pd.concat([frame.iloc[:int(first)] for _, _, frame in frames], ignore_index=True)


def _refit_data(source: Any, table: Any, origin: int) -> Any:
    """What a refit trains on: the backtest's input as it is (``data.end`` cuts it), or for a ``steps`` series
    (no times to cut by) its rows before the origin's row."""
    if table.times is not None:
        return source
    frame, _ = read_table(source if source is not None else table.source)
    return frame.iloc[:int(table.rows[origin])].reset_index(drop=True)


def metrics_table(metrics: dict[str, float], baselines: Iterable[str]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Split flat metrics into ``{"model" | baseline: {metric: value}}`` (a baseline's ``naive_mae`` becomes
    ``["naive"]["mae"]``; only metrics the model also has) and the remaining keys (model-only metrics such as
    ``loss`` when there are baselines, and baseline keys the model lacks)."""
    names = sorted(baselines, key=len, reverse=True)   # 'seasonal_naive_' before 'naive_'
    claimed = {}
    for key in metrics:
        owner = next((b for b in names if key.startswith(b + "_")), None)
        if owner is not None:
            claimed[key] = (owner, key[len(owner) + 1:])
    rows: dict[str, dict[str, float]] = {"model": {k: v for k, v in metrics.items() if k not in claimed}}
    other = {}
    for key, (owner, metric) in claimed.items():
        if metric in rows["model"]:
            rows.setdefault(owner, {})[metric] = metrics[key]
        else:
            other[key] = metrics[key]
    shared = {m for row in list(rows.values())[1:] for m in row}
    if len(rows) > 1:   # model keys no baseline has (loss, best_baseline_mae, ...) go below the table
        for key in [k for k in rows["model"] if k not in shared]:
            other[key] = rows["model"].pop(key)
    return rows, other


# ---------------------------------------------------------------------------------------------------------


def load(path: str | Path, *, weights: str = "best", device: str | torch.device = "cpu",
         overrides: Iterable[str] = ()) -> Run:
    """The trained run in ``path``, from its files alone (config, fitted state, weights; no training data).

    weights: ``"best"`` (by the monitored validation metric) or ``"last"`` (after the last finished epoch).
    Loading reads YAML with ``safe_load``, JSON, and safetensors: it never executes code.
    """
    if weights not in ("best", "last"):
        raise ConfigError(f"weights must be 'best' or 'last', got {weights!r}")
    path = Path(path)
    config = read_run_config(path, overrides)
    task = get_task_class(config.task)(config)
    load_task_state(task, path)
    model = task.build_model()
    ckpt.load_weights(path / (ckpt.BEST_WEIGHTS if weights == "best" else ckpt.LAST_WEIGHTS), model)
    return Run(path, config, task, model.to(device))


def fit(config: RunConfig | dict | str | Path, data: Any = None, out: str | Path | None = None, *,
        overrides: Iterable[str] = (), progress: str | None = None) -> Run:
    """Train a model and return its :class:`Run`.

    config: a YAML path, a mapping or a config object; data: a DataFrame, a path, or None (the config's
    ``data.path``); out: the run directory, or None for a temporary one that :meth:`Run.save` can keep.
    """
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="hybridrnn-")) / "run"
    trained = train_run(config, data=_resolve(data), out=out, overrides=overrides, progress=progress)
    return Run(trained.run_dir, trained.config, trained.task, trained.model, has_data=True)


def load_run(path: str | Path, **options: Any) -> tuple[RunConfig, Task, torch.nn.Module]:
    """``(config, task, model)`` of :func:`load` (for code that wants the parts)."""
    run = load(path, **options)
    return run.config, run.task, run.model
