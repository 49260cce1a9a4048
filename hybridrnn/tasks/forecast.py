"""The forecast task: a table of time series -> a trained Forecaster, metrics against baselines, forecasts.

Data layout (the model's input channels, in order): scaled targets, scaled numeric (past) covariates, one-hot
categorical covariates, then the known-future channels (the Forecaster's last ``future_size``): scaled
``data.future_covariates`` and calendar features; ``future: (B, horizon, future_size)`` carries those same
channels over the horizon. Scalers and categories are fitted on the training rows only. Windows: origin ``t``
reads rows ``[t - lookback, t)`` (and the known-future channels of rows ``[t, t + horizon)``) and forecasts rows
``[t, t + horizon)``; a split's windows have all their targets inside it (their inputs may reach back into the
previous split).

``evaluate(model, split)`` returns flat floats: ``loss`` (the training loss on the scaled data), the model's
``mae, mse, rmse, mape, smape, mase`` on the original scale, ``scaled_mae, scaled_mse, scaled_rmse`` on the
scaled one, the same keys prefixed by each baseline (``naive_``, ``seasonal_naive_``, ``linear_``),
``best_baseline_mae`` and ``beats_baselines`` (1.0 when the model's MAE is below every baseline's); a quantile
head adds ``pinball``; ``evaluate(..., intervals=, level=0.8)`` adds ``coverage_80, width_80, pinball_80``.
``report(model, split)`` gives the same per horizon step as well (JSON-ready).

Heads (``model.loss``): point losses (``mse, mae, huber``), ``quantile`` (``model.quantiles``) and ``gaussian`` /
``student_t`` (see :mod:`hybridrnn.tasks.forecast_heads`). Intervals: ``"conformal"`` (split-conformal, any
model: :meth:`ForecastTask.calibrate` after training, ``forecast_conformal.safetensors``) or ``"model"`` (a
quantile / distribution head's own quantiles); columns are named by quantile level: ``{target}_q0.1`` and
``{target}_q0.9`` bound the 80% interval. Backtests: :meth:`ForecastTask.backtest_origins` /
:meth:`ForecastTask.backtest_frame` (used by ``Run.backtest``); a panel's: :meth:`ForecastTask.panel_backtest_plan`
/ :meth:`ForecastTask.panel_backtest_frames`, and :func:`refit_groups` for refitting.

Panels (``data.id_column``): each series has its own rows in ``self.values`` (stacked), its own scaler, and its
own trailing rows of ``data.future_covariates`` at predict time (see :mod:`hybridrnn.tasks.forecast_panel`).
"""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from hybridrnn._io import atomic_write_bytes, atomic_write_text, read_json
from hybridrnn.data.calendar import auto_calendar, calendar_columns, calendar_features
from hybridrnn.data.registry import resolve_data_path
from hybridrnn.data.scalers import Scaler
from hybridrnn.data.timeseries import (
    SeriesTable,
    check_time_grid,
    future_times,
    gather_windows,
    load_table,
    one_hot,
    read_table,
    season_length,
    split_bounds,
    table_columns,
    window_origins,
)
from hybridrnn.errors import ConfigError, DataError, RunDirError
from hybridrnn.nn.forecaster import Forecaster
from hybridrnn.tasks._common import encoder_options
from hybridrnn.tasks.forecast_config import FORECAST_HEAD_OPTIONS, ForecastConfig
from hybridrnn.tasks.forecast_heads import (
    DISTRIBUTION_LOSSES,
    head_loss,
    head_outputs,
    head_quantiles,
    point_forecast,
)
from hybridrnn.tasks.forecast_metrics import (
    BASELINES,
    LinearBaseline,
    conformal_quantiles,
    forecast_metrics,
    interval_coverage,
    interval_quantiles,
    interval_width,
    mase_scale,
    metrics_by_step,
    naive_forecast,
    pinball_loss,
    quantile_text,
    seasonal_naive_forecast,
)
from hybridrnn.tasks.forecast_panel import (
    IdEmbedding,
    encode_statics,
    fit_statics,
    id_columns,
    offset_origins,
    series_frames,
    static_size,
    static_values,
)
from hybridrnn.tasks.forecast_plots import forecast_plots
from hybridrnn.train.task import Task, iterate_minibatches

ARTIFACTS_FILE = "forecast_artifacts.json"
ARTIFACTS_FORMAT = "hybridrnn.forecast/2"
CONFORMAL_FILE = "forecast_conformal.safetensors"
CONFORMAL_FORMAT = "hybridrnn.forecast.conformal/1"
#: the coverage levels a split-conformal interval can be asked at (its quantiles are stored for these)
CONFORMAL_LEVELS = tuple(round(k / 100, 2) for k in range(1, 100)) + (0.995, 0.999)
INTERVALS = ("conformal", "model")
SPLITS = ("train", "val", "test")


class ForecastTask(Task):
    """Multi-step forecasting of one or several target columns (see the module docstring)."""

    name = "forecast"
    config_class = ForecastConfig
    monitor = "loss"
    monitor_mode = "min"
    baselines = BASELINES

    supports_predict = True
    supports_export = True
    supports_backtest = True
    supports_intervals = True

    def __init__(self, config: ForecastConfig):
        super().__init__(config)
        self.layout: dict[str, Any] | None = None     # fitted state: columns, categories, calendar, sizes
        self.scaler: Scaler | None = None             # fitted state: on the training rows
        self.linear: LinearBaseline | None = None     # fitted state: on the training windows
        self.mase_scale: np.ndarray | None = None     # fitted state: in-sample seasonal-naive MAE per target
        self.conformal: dict[str, Any] | None = None  # fitted after training: validation residual quantiles
        self.table: SeriesTable | None = None
        self.values: torch.Tensor | None = None
        self.origins: dict[str, np.ndarray] = {}
        self._baseline_cache: dict[str, dict[str, np.ndarray]] = {}
        self._raw: np.ndarray | None = None            # the model's raw output on the last split evaluated
        self.panel_state: dict[str, dict] | None = None   # fitted state of a panel: per series scaler, MASE, times
        self.window_series: dict[str, np.ndarray] = {}    # a panel's series index of each window, per split
        self.panel_tables: list[tuple[str, SeriesTable, int]] = []  # a panel's (series, table, first stacked row)
        self._current_series: np.ndarray | None = None    # series of the windows being unscaled (a panel)
        self._solo = False                                # inside _series(): one series, its own scaler
        self._static: np.ndarray | None = None            # inside _series(): its encoded static covariates
        self._id_row: np.ndarray | None = None            # inside _series(): the one-hot of its id (id_embedding)

    # ------------------------------------------------------------ data
    @property
    def _cfg(self):
        return self.config

    def _load(self, source, *, validate_frequency: str | None = None, use_where: bool = True,
              time_range: bool = True, rows: slice | None = None) -> SeriesTable:
        d = self._cfg.data
        table_source = source if isinstance(source, pd.DataFrame) else resolve_data_path(str(source))
        return load_table(table_source, time_column=d.time_column, numeric=d.target + d.covariates + d.future_covariates,
                          categorical=d.categorical, where=d.where if use_where else None,
                          start=d.start if time_range else None, end=d.end if time_range else None,
                          frequency=validate_frequency if validate_frequency is not None else d.frequency,
                          fill=d.fill, header=d.header, rows=rows)

    def _has_where_columns(self, source: Any) -> bool:
        """Whether new input ``source`` has the ``data.where`` columns (a file of one series may lack them)."""
        where = self._cfg.data.where
        if not where:
            return False
        columns = table_columns(source if isinstance(source, pd.DataFrame) else resolve_data_path(str(source)),
                                header=self._cfg.data.header)
        return all(c in columns for c in where)

    def _configured_source(self) -> str:
        d = self._cfg.data
        if d.path is None:
            raise DataError("this forecast has no data.path (it was trained on a DataFrame): pass the data, "
                            "e.g. run.evaluate(data=df) or `hybridrnn evaluate RUN --input FILE`")
        return d.path

    def setup(self, data: Any = None, *, whole: bool = False) -> None:
        """Load and validate the table (``data``: a path, a data set name, a DataFrame, or None for
        ``data.path``); fit the column layout, scaler, categories and baselines on the training rows unless
        they were loaded with ``load_artifacts``. ``whole``: every window of ``data`` is the test split."""
        cfg = self._cfg
        w = cfg.window
        if whole and self.layout is None:
            raise RuntimeError("setup(whole=True) evaluates a trained model: load_artifacts first")
        source = self._configured_source() if data is None else data
        if id_columns(cfg.data.id_column):
            return self._setup_panel(source, whole)
        if cfg.model.id_embedding:
            raise ConfigError("model.id_embedding embeds the series id of a panel: it needs data.id_column")
        table = self._load(source, validate_frequency=self.layout["frequency"] if self.layout else None,
                           use_where=not whole or self._has_where_columns(source), time_range=not whole)
        self.table = table
        L, H = w.lookback, w.horizon
        if whole:
            if len(table) < L + H:
                raise DataError(f"{table.source}: evaluating needs at least lookback + horizon = {L + H} rows, "
                                f"got {len(table)}")
            self.values = torch.from_numpy(self._features(table))
            self.origins = {"test": window_origins(0, len(table), L, H)}
            self._baseline_cache = {}
            return
        bounds = split_bounds(len(table), cfg.data.split, table.times)
        if self.layout is None:
            self._fit_state(table, bounds, None if isinstance(source, pd.DataFrame) else str(resolve_data_path(str(source))))
        self.values = torch.from_numpy(self._features(table))
        train_end, val_end, test_end = bounds
        self.origins = {"train": window_origins(0, train_end, L, H, w.stride),
                        "val": window_origins(train_end, val_end, L, H),
                        "test": window_origins(val_end, test_end, L, H)}
        if len(self.origins["train"]) == 0:
            raise DataError(f"no training window: the training part has {train_end} rows, and a window needs "
                            f"lookback + horizon = {L + H}")
        self._baseline_cache = {}
        if self.linear is None:
            self.linear = LinearBaseline().fit(*self._target_windows("train"))

    def _fit_state(self, table: SeriesTable, bounds: tuple[int, int, int], data_file: str | None) -> None:
        """The column layout, categories, calendar, scaler and MASE scale, from the training rows only."""
        d, w = self._cfg.data, self._cfg.window
        train_end = bounds[0]
        categories = {c: sorted(set(table.categorical[c].iloc[:train_end])) for c in d.categorical}
        if d.calendar == "auto":
            calendar = auto_calendar(table.frequency)
        else:
            calendar = list(d.calendar)
            if calendar and table.frequency == "steps":
                raise ConfigError("calendar covariates need timestamps at a regular frequency; with frequency "
                                  "'steps' future times are unknown: set data.calendar: []")
        cal_cols = calendar_columns(calendar, d.calendar_encoding)
        season = d.season or season_length(table.frequency)
        self.scaler = Scaler.fit(d.scaler, table.numeric.iloc[:train_end].to_numpy(), list(table.numeric.columns))
        self.layout = {
            "targets": list(d.target), "covariates": list(d.covariates), "categories": categories,
            "future_covariates": list(d.future_covariates),
            "calendar": calendar, "calendar_encoding": d.calendar_encoding, "calendar_columns": cal_cols,
            "frequency": table.frequency, "season": int(season), "lookback": w.lookback, "horizon": w.horizon,
            "time_column": d.time_column,
            "input_size": len(d.target) + len(d.covariates) + sum(len(v) for v in categories.values())
                          + len(d.future_covariates) + len(cal_cols),
            "future_size": len(d.future_covariates) + len(cal_cols), "bounds": list(bounds), "data_file": data_file,
            "last_time": None if table.times is None else str(table.times[train_end - 1]),
            "val_end_time": None if table.times is None else str(table.times[bounds[1] - 1]),
        }
        self.mase_scale = mase_scale(self._targets_original(table)[:train_end], int(season))

    def _features(self, table: SeriesTable, times: pd.DatetimeIndex | None = None) -> np.ndarray:
        """``(rows, input_size)`` float32 model inputs for ``table`` (scaled with the fitted scaler): scaled targets
        and past covariates, one-hot categories, then the known-future channels (the model's last
        ``future_size``): scaled ``data.future_covariates`` and calendar features."""
        lay = self.layout
        scaled = self.scaler.transform(table.numeric[self.scaler.columns].to_numpy())
        n_past = scaled.shape[1] - len(lay.get("future_covariates", ()))       # future covariates are the last
        parts = [scaled[:, :n_past]]
        for col, cats in lay["categories"].items():
            parts.append(one_hot(table.categorical[col], cats))
        if lay.get("static_size"):                                          # a panel's series: constant channels
            parts.append(np.repeat(self._static[None], len(table), axis=0))
        if lay.get("id_onehot"):                                            # the series id, for model.id_embedding
            parts.append(np.repeat(self._id_row[None], len(table), axis=0))
        parts.append(scaled[:, n_past:])
        if lay["calendar"]:
            parts.append(calendar_features(table.times if times is None else times, lay["calendar"], lay["calendar_encoding"]))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _observed_part(self, source: Any) -> Any:
        """``source`` without its trailing rows whose targets are all empty (the horizon rows that carry only the
        future covariates); ``source`` itself when the run has no ``data.future_covariates``."""
        if not self.layout.get("future_covariates"):
            return source
        raw, _ = read_table(_resolved(source), header=self._cfg.data.header)
        keep = np.ones(len(raw), bool)
        for col, value in (self._cfg.data.where or {}).items():
            if col in raw.columns:
                keep &= (raw[col].astype(str) == str(value)).to_numpy()
        targets = [c for c in self.layout["targets"] if c in raw.columns]
        if not targets:
            return source                   # the loader names the missing target column
        empty = raw[targets].apply(pd.to_numeric, errors="coerce").isna().all(axis=1).to_numpy()
        rows = np.flatnonzero(keep)
        cut = len(rows)
        while cut > 0 and empty[rows[cut - 1]]:
            cut -= 1
        drop = rows[cut:]
        return raw.drop(index=raw.index[drop]).reset_index(drop=True) if len(drop) else source

    def _future_inputs(self, source: Any, last_time: Any, times: pd.DatetimeIndex | None,
                       label: str | None = None) -> np.ndarray:
        """``(horizon, future_size)`` known-future inputs of a forecast: the scaled ``data.future_covariates`` of
        the ``horizon`` rows after the last observed time (read from the input's rows after it, whose targets are
        empty) and the calendar features of ``times``. ``label``: how errors name the input (a panel: its file
        and the series id); default: the input's own name."""
        lay = self.layout
        parts = []
        names = lay.get("future_covariates", [])
        if names:
            values = self._future_covariate_rows(source, last_time, times, label)
            index = [self.scaler.columns.index(c) for c in names]
            parts.append(self.scaler.transform(values, index=index))
        if lay["calendar"]:
            parts.append(calendar_features(times, lay["calendar"], lay["calendar_encoding"]))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _future_covariate_rows(self, source: Any, last_time: Any, times: pd.DatetimeIndex | None,
                               label: str | None = None) -> np.ndarray:
        """``(horizon, len(future_covariates))`` raw values at ``times`` (the forecast's times), from the rows of
        ``source`` after ``last_time``; a missing row or value is a ``DataError`` naming the input (``label``, e.g.
        ``file: series B``), the column and the times."""
        d, lay = self._cfg.data, self.layout
        names, H = lay["future_covariates"], lay["horizon"]
        if times is None:
            raise ConfigError("data.future_covariates need a time_column (their rows are matched by time)")
        raw, name = read_table(_resolved(source), header=d.header)
        name = label or name
        for col, value in (d.where or {}).items():
            if col in raw.columns:
                raw = raw[(raw[col].astype(str) == str(value)).to_numpy()]
        tc = d.time_column
        stamp = (pd.to_datetime(raw[tc], errors="coerce") if isinstance(tc, str)
                 else pd.to_datetime(raw[list(tc)].astype(str).agg(" ".join, axis=1), errors="coerce"))
        missing_cols = [c for c in names if c not in raw.columns]
        if missing_cols:
            raise DataError(f"{name}: no column(s) {missing_cols} of data.future_covariates")
        if getattr(stamp.dt, "tz", None) is not None and times.tz is None:
            stamp = stamp.dt.tz_localize(None)
        later = raw[(stamp > pd.Timestamp(last_time)).to_numpy()].copy()
        later.index = pd.DatetimeIndex(stamp[(stamp > pd.Timestamp(last_time)).to_numpy()])
        out = np.full((H, len(names)), np.nan)
        problems = []
        for j, col in enumerate(names):
            values = pd.to_numeric(later[col], errors="coerce") if len(later) else pd.Series(dtype=float)
            found = values[~values.index.duplicated()].reindex(times)
            out[:, j] = found.to_numpy(np.float64)
            bad = [str(t) for t, v in zip(times, out[:, j]) if not np.isfinite(v)]
            if bad:
                shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                problems.append(f"{col!r} at {shown}")
        if problems:
            raise DataError(f"{name}: the forecast of the {H} rows after {last_time} needs the future covariates "
                            f"over them, and the input lacks {'; '.join(problems)}: add rows for those times (target "
                            "cells empty) with the known values")
        return out

    def _targets_original(self, table: SeriesTable) -> np.ndarray:
        return table.numeric[self.layout["targets"]].to_numpy(np.float64)

    @property
    def num_targets(self) -> int:
        return len(self.layout["targets"])

    def _target_windows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Scaled target windows of ``split``: past ``(n, L, C)`` and future ``(n, H, C)``."""
        origins = torch.from_numpy(self.origins[split])
        c = self.num_targets
        past, future = gather_windows(self.values[:, :c], origins, self.layout["lookback"], self.layout["horizon"])
        return past.double().numpy(), future.double().numpy()

    def _batch(self, index: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        origins = torch.as_tensor(index, dtype=torch.int64)
        L, H, K, c = self.layout["lookback"], self.layout["horizon"], self.layout["future_size"], self.num_targets
        past, fut = gather_windows(self.values, origins, L, H)
        batch = {"past": past, "target": fut[:, :, :c]}
        if K:
            batch["future"] = fut[:, :, -K:]
        return batch

    def num_examples(self, split: str) -> int:
        return int(len(self.origins.get(split, ())))

    # ------------------------------------------------------------ model and training
    def build_model(self) -> nn.Module:
        if self.layout is None:
            raise RuntimeError("build_model needs setup() or load_artifacts() first")
        m = self._cfg.model
        lay = self.layout
        head = {k: getattr(m, k) for k in FORECAST_HEAD_OPTIONS}   # the forecasting head's own options
        k_out = head_outputs(m.loss, m.quantiles)
        if k_out > 1:
            if m.strategy not in ("direct", "parallel") or m.linear_skip:
                raise ConfigError(f"model.loss: {m.loss} needs a head that emits several values per step: "
                                  f"model.strategy direct or parallel without linear_skip (got strategy {m.strategy}"
                                  + (", linear_skip: true)" if m.linear_skip else ")"))
            head["outputs_per_target"] = k_out
        ids = lay.get("id_onehot")
        size = lay["input_size"] if not ids else lay["input_size"] - ids["num_ids"] + ids["dim"]
        model = Forecaster(size, len(lay["targets"]), lay["horizon"], m.encoder, lookback=lay["lookback"],
                           future_size=lay["future_size"], attention=m.attention, attention_heads=m.attention_heads,
                           dropout=m.dropout, norm_channels=len(lay["targets"]) + len(lay["covariates"]),
                           encoder_options=encoder_options(m), **head)
        return model if not ids else IdEmbedding(model, ids["start"], ids["num_ids"], ids["dim"])

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator[Any]:
        origins = self.origins["train"]
        for idx in iterate_minibatches(len(origins), self._cfg.train.batch_size, generator):
            yield self._batch(origins[idx.numpy()])

    def num_train_batches(self) -> int:
        n, b = len(self.origins["train"]), self._cfg.train.batch_size
        return (n + b - 1) // b

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of ``pred: (B, H, C)`` (or ``(B, H, C, K)``: quantile / distribution heads, see
        :mod:`hybridrnn.tasks.forecast_heads`) against ``target: (B, H, C)``, on the scaled data."""
        kind = self._cfg.model.loss
        if kind in DISTRIBUTION_LOSSES:
            return head_loss(pred, target, kind, self._cfg.model.quantiles)
        if kind == "mae":
            return F.l1_loss(pred, target)
        if kind == "huber":
            return F.huber_loss(pred, target)
        return F.mse_loss(pred, target)

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        pred, _ = model(batch["past"], batch.get("future"))
        return self._loss(pred, batch["target"]), int(batch["past"].shape[0])

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_windows(self, model: nn.Module, split: str, batch_size: int = 512,
                        with_weights: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Scaled predictions ``(n, horizon, targets)`` for every window of ``split`` (and attention weights)."""
        self._current_series = self.window_series.get(split)
        return self._predict_origins(model, self.origins[split], batch_size, with_weights)

    def _predict_origins(self, model: nn.Module, origins: np.ndarray, batch_size: int = 512,
                         with_weights: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Scaled point predictions ``(n, horizon, targets)`` for the windows at row ``origins`` of ``self.values``."""
        raw, weights = self._predict_raw(model, origins, batch_size, with_weights)
        return self.point(raw), weights

    def point(self, raw: np.ndarray) -> np.ndarray:
        """The point forecast ``(n, H, C)`` of the model's raw output (the median / the location of a quantile /
        distribution head; the output itself otherwise)."""
        m = self._cfg.model
        return point_forecast(raw, m.loss, m.quantiles)

    @torch.no_grad()
    def _predict_raw(self, model: nn.Module, origins: np.ndarray, batch_size: int = 512,
                     with_weights: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's scaled output ``(n, horizon, targets)`` (``(n, horizon, targets, K)`` for a quantile or
        distribution head) for the windows at row ``origins`` of ``self.values``."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        preds, maps = [], []
        try:
            for start in range(0, len(origins), batch_size):
                batch = self.to_device(self._batch(origins[start:start + batch_size]), device)
                y, w = model(batch["past"], batch.get("future"))
                preds.append(y.float().cpu().numpy())
                if with_weights and w is not None:
                    maps.append(w.float().cpu().numpy())
        finally:
            model.train(was_training)
        c, H = self.num_targets, self.layout["horizon"]
        k_out = head_outputs(self._cfg.model.loss, self._cfg.model.quantiles)
        empty = (0, H, c) if k_out == 1 else (0, H, c, k_out)
        pred = np.concatenate(preds).astype(np.float64) if preds else np.zeros(empty)
        return pred, (np.concatenate(maps) if maps else None)

    def _baselines(self, split: str) -> dict[str, np.ndarray]:
        """Scaled baseline predictions of ``split`` (cached)."""
        if split not in self._baseline_cache:
            self._baseline_cache[split] = self._baseline_predictions(self._target_windows(split)[0])
        return self._baseline_cache[split]

    def _baseline_predictions(self, past: np.ndarray) -> dict[str, np.ndarray]:
        """Scaled ``(n, horizon, targets)`` forecasts of each baseline from scaled look-backs ``past: (n, L, C)``."""
        H, season = self.layout["horizon"], self.layout["season"]
        out = {"naive": naive_forecast(past, H)}
        if "seasonal_naive" not in self.skipped_baselines():
            out["seasonal_naive"] = seasonal_naive_forecast(past, H, season)
        out["linear"] = self.linear.predict(past)
        return out

    def _unscale(self, scaled: np.ndarray) -> np.ndarray:
        """Scaled targets ``(n, H, C)`` (or ``(rows, C)``) -> the original scale; in a panel each window with its
        series' scaler (``self._current_series``: the series of each of the ``n`` windows)."""
        if self.panel_state is None or self._solo:
            return self.scaler.inverse_transform(scaled, index=list(range(self.num_targets)))
        center, scale = self._panel_affine(scaled.shape[0])
        return scaled * scale[:, None, :] + center[:, None, :]

    def _forecasts(self, model: nn.Module, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.num_examples(split) == 0:
            raise DataError(f"split {split!r} has no complete window (lookback {self.layout['lookback']}, "
                             f"horizon {self.layout['horizon']})")
        _, truth = self._target_windows(split)
        self._current_series = self.window_series.get(split)
        raw, _ = self._predict_raw(model, self.origins[split])
        self._raw = raw                                     # the model's raw output: its loss and its quantiles
        preds = {"model": self.point(raw)}
        preds.update(self._baselines(split))
        return truth, preds

    def evaluate(self, model: nn.Module, split: str, *, intervals: str | None = None,
                 level: float = 0.8) -> dict[str, float]:
        """The flat metrics of the module docstring; with ``intervals`` (``"conformal"``) also the interval's
        ``coverage_{L}`` (fraction of actual values inside), ``width_{L}`` (mean width) and ``pinball_{L}``
        (mean pinball loss of its two bounds as the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles),
        ``L`` the level in percent, on the original scale."""
        truth, preds = self._forecasts(model, split)
        truth_orig = self._unscale(truth)
        raw = self._raw
        out = self._point_metrics(truth, truth_orig, preds)
        with torch.no_grad():
            out["loss"] = float(self._loss(torch.from_numpy(raw), torch.from_numpy(truth)))
        levels = self.head_quantile_levels()
        if levels:                                          # a quantile head: its mean pinball loss over its levels
            qs = self._unscale_quantiles(head_quantiles(raw, "quantile", levels, levels))
            out["pinball"] = float(np.mean([pinball_loss(truth_orig, qs[..., i], q) for i, q in enumerate(levels)]))
        if intervals is not None:
            lower, upper = self.interval_bounds(self._unscale(preds["model"]), intervals, level, raw)
            out.update(interval_metrics(truth_orig, lower, upper, level))
        return out

    def _point_metrics(self, truth: np.ndarray, truth_orig: np.ndarray, preds: dict[str, np.ndarray]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pred in preds.items():
            prefix = "" if name == "model" else f"{name}_"
            orig = forecast_metrics(truth_orig, self._unscale(pred), self.mase_scale)
            if self.panel_state is not None:            # MASE: each window by its own series' scale
                orig["mase"] = float(np.mean(np.abs(self._unscale(pred) - truth_orig) / self._panel_mase()[:, None, :]))
            scaled = forecast_metrics(truth, pred)
            out.update({f"{prefix}{k}": v for k, v in orig.items()})
            out.update({f"{prefix}scaled_{k}": scaled[k] for k in ("mae", "mse")})
        base = [out[f"{b}_mae"] for b in BASELINES if f"{b}_mae" in out]
        out["best_baseline_mae"] = float(min(base))
        out["beats_baselines"] = float(out["mae"] < min(base))
        return out

    def report(self, model: nn.Module, split: str = "test", *, intervals: str | None = None,
               level: float = 0.8) -> dict:
        """JSON-ready metrics of the model and each baseline, overall and per horizon step, on the original and
        the scaled data: ``{"split", "windows", "horizon", "targets", "season", "forecasters": {name: {"overall",
        "per_step", "scaled": {"overall", "per_step"}}}, "best_baseline", "beats_baselines"}``; with
        ``intervals`` also ``"intervals"``: the interval metrics of :meth:`evaluate` and coverage / width per step."""
        truth, preds = self._forecasts(model, split)
        truth_orig = self._unscale(truth)
        forecasters = {}
        panel = self.panel_state is not None
        for name, pred in preds.items():
            orig = self._unscale(pred)
            mase = None if panel else self.mase_scale           # a panel's MASE scale is per series (below)
            forecasters[name] = {
                "overall": forecast_metrics(truth_orig, orig, mase),
                "per_step": metrics_by_step(truth_orig, orig, mase),
                "scaled": {"overall": {k: v for k, v in forecast_metrics(truth, pred).items() if k in ("mae", "mse", "rmse")},
                           "per_step": {k: v for k, v in metrics_by_step(truth, pred).items() if k in ("mae", "mse", "rmse")}},
            }
        baselines = {k: v["overall"]["mae"] for k, v in forecasters.items() if k != "model"}
        best = min(baselines, key=baselines.get)
        skipped = self.skipped_baselines()
        extra = {}
        if intervals is not None:
            point = self._unscale(preds["model"])
            lower, upper = self.interval_bounds(point, intervals, level, self._raw)
            inside = (truth_orig >= lower) & (truth_orig <= upper)
            extra["intervals"] = {"kind": intervals, "level": level, **interval_metrics(truth_orig, lower, upper, level),
                                  "coverage_per_step": [float(v) for v in inside.mean(axis=(0, 2))],
                                  "width_per_step": [float(v) for v in (upper - lower).mean(axis=(0, 2))]}
        if panel:
            extra["per_series"] = self._per_series(truth_orig, preds)
            for name, pred in preds.items():
                forecasters[name]["overall"]["mase"] = float(np.mean(np.abs(self._unscale(pred) - truth_orig)
                                                                     / self._panel_mase()[:, None, :]))
        return {**extra, "split": split, "windows": int(truth.shape[0]), "horizon": self.layout["horizon"],
                "targets": self.layout["targets"], "season": self.layout["season"], "forecasters": forecasters,
                "best_baseline": best, "beats_baselines": bool(forecasters["model"]["overall"]["mae"] < baselines[best]),
                "skipped": skipped, "notes": [f"{k} skipped: {v}" for k, v in skipped.items()]}

    def skipped_baselines(self) -> dict[str, str]:
        """``{baseline: reason}`` for each baseline that cannot be computed from a window's look-back."""
        season, lookback = self.layout["season"], self.layout["lookback"]
        if season > lookback:
            return {"seasonal_naive": f"season {season} > lookback {lookback}: the value one season before a "
                                      f"forecast step is not in the window; set window.lookback >= {season} or "
                                      f"data.season <= {lookback}"}
        return {}

    # ------------------------------------------------------------ forecasting new data
    @torch.no_grad()
    def forecast(self, model: nn.Module, data: str | Path | pd.DataFrame, *, intervals: str | None = None,
                 level: float = 0.8) -> pd.DataFrame:
        """Forecast the ``horizon`` steps after the last row of ``data`` (a table with the training columns);
        returns a frame with the future timestamps (or, for a ``steps`` series, the row numbers after the
        input's last row) and one column per target.

        Only the look-back (the last ``lookback`` rows, after ``data.where``) is read and validated: a missing
        value far before it is not an error. Its timestamps must continue the training data's grid (same
        frequency and time of day): an input shifted by part of a step is a ``DataError``.

        intervals: ``"conformal"`` adds, after each target's column, ``{target}_q{lo}`` and ``{target}_q{hi}``:
        the bounds of the central interval of coverage ``level`` (``level=0.8``: ``y_q0.1`` and ``y_q0.9``)."""
        lay = self.layout
        if lay is None:
            raise RuntimeError("forecast needs setup() or load_artifacts() first")
        source = data if isinstance(data, pd.DataFrame) else Path(data)
        if self.panel_state is not None:
            return self._forecast_panel(model, source, intervals, level)
        freq = lay["frequency"]
        L, H = lay["lookback"], lay["horizon"]
        observed = self._observed_part(source)
        tail = self._load(observed, validate_frequency=freq, use_where=self._has_where_columns(source),
                          time_range=False, rows=slice(-L, None))
        if len(tail) < L:
            raise DataError(f"{tail.source}: forecasting needs at least lookback = {L} rows, got {len(tail)}")
        if tail.times is not None and lay.get("last_time"):
            check_time_grid(tail.times, lay["last_time"], freq, source=tail.source, rows=tail.rows,
                            csv=not isinstance(source, pd.DataFrame))
        past = torch.from_numpy(self._features(tail))[None]
        future = None
        times = None if freq == "steps" else future_times(tail.times[-1], freq, H)
        if lay["future_size"]:
            future = torch.from_numpy(self._future_inputs(source, tail.times[-1] if tail.times is not None else None,
                                                          times))[None]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            y, _ = model(past.to(device), None if future is None else future.to(device))
        finally:
            model.train(was_training)
        raw = y.double().cpu().numpy()
        values = self._unscale(self.point(raw)[0])
        out = pd.DataFrame(values, columns=lay["targets"])
        out = with_quantile_columns(out, lay["targets"], self._quantile_columns(raw, values[None], intervals, level))
        if times is None:
            out.insert(0, "step", np.arange(1, H + 1) + int(tail.rows[-1]))
        else:
            tc = lay["time_column"]
            out.insert(0, tc if isinstance(tc, str) else "time", times)
        return out

    def predict(self, model: nn.Module, data: Any, **options: Any) -> pd.DataFrame:
        """The forecast of the ``horizon`` steps after ``data``'s last row (see :meth:`forecast`; ``options``:
        ``intervals``, ``level``)."""
        return self.forecast(model, data, **options)

    # ------------------------------------------------------------ split-conformal intervals
    @torch.no_grad()
    def finish_training(self, model: nn.Module, run_dir: Path | None) -> None:
        """Calibrate the split-conformal intervals on the validation windows (when there are any), so that every
        trained run, from the CLI or from Python, carries them."""
        if self.num_examples("val") > 0:
            self.calibrate(model, run_dir)

    def calibrate(self, model: nn.Module, run_dir: Path | None = None) -> dict[str, Any]:
        """Split-conformal calibration on the validation windows (after training, with the final model): per
        horizon step and target, the absolute residuals ``|y - yhat|`` on the original scale of the ``n``
        windows, and for each level ``a`` of :data:`CONFORMAL_LEVELS` their ``ceil((n + 1) a)``-th smallest
        value (``inf`` when that exceeds ``n``: too few windows for that level). Kept in ``self.conformal``
        (``levels: (k,)``, ``quantiles: (k, horizon, targets)``, ``windows``) and, with ``run_dir``, written to
        ``forecast_conformal.safetensors`` so that a loaded run has it."""
        n = self.num_examples("val")
        if n == 0:
            raise DataError("conformal intervals are calibrated on the validation windows, and this data has none: "
                            "give data.split a validation part of at least one window "
                            f"(lookback + horizon = {self.layout['lookback'] + self.layout['horizon']} rows)")
        _, truth = self._target_windows("val")
        pred, _ = self.predict_windows(model, "val")
        # a panel's series differ in scale: their residuals are pooled in each series' scaled units and an
        # interval is that quantile times the series' scale (normalised conformal); one series: original units
        units = "scaled" if self.panel_state is not None else "original"
        residuals = np.abs(pred - truth) if units == "scaled" else np.abs(self._unscale(pred) - self._unscale(truth))
        levels = np.asarray(CONFORMAL_LEVELS, np.float64)
        quantiles = conformal_quantiles(residuals, levels)                                    # (k, H, C)
        self.conformal = {"levels": levels, "quantiles": quantiles, "windows": n, "units": units}
        if run_dir is not None:
            from safetensors.numpy import save

            atomic_write_bytes(Path(run_dir) / CONFORMAL_FILE, save(
                {"levels": levels, "quantiles": quantiles},
                metadata={"format": CONFORMAL_FORMAT, "windows": str(n), "targets": json.dumps(self.layout["targets"]),
                          "units": units}))
        return self.conformal

    def _load_conformal(self, run_dir: Path) -> None:
        path = Path(run_dir) / CONFORMAL_FILE
        if not path.exists():
            self.conformal = None
            return
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != CONFORMAL_FORMAT:
                    raise RunDirError(f"{path}: not a hybridrnn conformal calibration ({CONFORMAL_FORMAT!r})")
                self.conformal = {"levels": f.get_tensor("levels"), "quantiles": f.get_tensor("quantiles"),
                                  "windows": int(meta["windows"]), "units": meta.get("units", "original")}
        except RunDirError:
            raise
        except Exception as exc:   # a truncated or foreign file
            raise RunDirError(f"{path}: cannot be read ({exc}); recalibrate with run.calibrate()") from None

    def conformal_half_width(self, level: float) -> np.ndarray:
        """``(horizon, targets)``: the calibrated half width of the level-``level`` split-conformal interval, in
        original units (a panel: in its series' scaled units, see :meth:`interval_bounds`)."""
        if self.conformal is None:
            raise RunDirError("this run has no conformal calibration (forecast_conformal.safetensors): calibrate "
                              "it with run.calibrate() on its training data (hybridrnn.fit does this after training)")
        levels = self.conformal["levels"]
        hit = np.flatnonzero(np.isclose(levels, float(level), rtol=0, atol=1e-9))
        if len(hit) == 0:
            raise ConfigError(f"conformal level {level!r} is not one of the calibrated levels: 0.01, 0.02, ..., 0.99, "
                              "0.995, 0.999")
        half = self.conformal["quantiles"][hit[0]]
        if not np.isfinite(half).all():
            n = self.conformal["windows"]
            raise DataError(f"a level-{level} conformal interval needs at least {int(np.ceil(level / (1 - level)))} "
                            f"validation windows; the run was calibrated on {n}: lower the level or give the "
                            "validation part more rows")
        return half

    def interval_bounds(self, point: np.ndarray, intervals: str, level: float,
                        raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` like ``point: (..., horizon, targets)`` (original scale) for ``intervals``:
        ``"conformal"`` (``point -+`` the calibrated half width) or ``"model"`` (the ``(1 -+ level) / 2``
        quantiles of a quantile / distribution head, from its scaled output ``raw``)."""
        if intervals not in INTERVALS:
            raise ConfigError(f"intervals must be one of {', '.join(INTERVALS)} (or None), got {intervals!r}")
        if intervals == "model":
            m = self._cfg.model
            qs = self._unscale_quantiles(head_quantiles(raw, m.loss, m.quantiles, interval_quantiles(level)))
            return qs[..., 0], qs[..., 1]
        half = self.conformal_half_width(level)                                              # (H, C)
        if self.conformal.get("units") == "scaled":                   # a panel: times each window's series scale
            if self._solo:
                half = half * self.scaler.scale[:self.num_targets]
            else:
                half = half[None] * self._panel_affine(point.shape[0])[1][:, None, :]
        return point - half, point + half

    def head_quantile_levels(self) -> list[float]:
        """The quantile levels a quantile head emits (``model.quantiles``), else ``[]``."""
        m = self._cfg.model
        return list(m.quantiles) if m.loss == "quantile" else []

    def _quantile_columns(self, raw: np.ndarray, point: np.ndarray, intervals: str | None,
                          level: float) -> dict[float, np.ndarray]:
        """``{q: (n, H, C)}`` on the original scale: every level of a quantile head, and the two bounds of the
        asked interval (``point``: the original-scale point forecast ``(n, H, C)``). An interval whose bounds a
        quantile head already gives is those columns (``"model"``) or a ``ConfigError`` (``"conformal"``: one
        name, two meanings)."""
        levels = self.head_quantile_levels()
        out: dict[float, np.ndarray] = {}
        if levels:
            qs = self._unscale_quantiles(head_quantiles(raw, "quantile", levels, levels))
            out = {q: qs[..., i] for i, q in enumerate(levels)}
        if intervals is not None:
            lo_q, hi_q = interval_quantiles(level)
            taken = [q for q in (lo_q, hi_q) if any(abs(q - k) < 1e-9 for k in out)]
            if taken and intervals == "conformal":
                raise ConfigError(f"this model's quantile head already gives the quantile(s) {taken} of a level-{level} "
                                  "interval: use intervals='model', or a conformal level whose bounds it lacks")
            if not taken:
                lower, upper = self.interval_bounds(point, intervals, level, raw)
                out.update({lo_q: lower, hi_q: upper})
        return dict(sorted(out.items()))

    def _unscale_quantiles(self, scaled: np.ndarray) -> np.ndarray:
        """``(..., targets, Q)`` quantiles on the scaled data -> the original scale (the scalers are affine)."""
        if self.panel_state is not None and not self._solo:
            center, scale = self._panel_affine(scaled.shape[0])
            return scaled * scale[:, None, :, None] + center[:, None, :, None]
        return np.moveaxis(self._unscale(np.moveaxis(scaled, -1, 0)), 0, -1)

    # ------------------------------------------------------------ panels (data.id_column)
    def _panel_tables(self, source: Any, *, time_range: bool,
                      frequency: str | None) -> tuple[list[tuple[str, tuple, SeriesTable]], str, dict]:
        """``[(series id, id values, table), ...]`` of every series of ``source``, each validated as a series of
        its own on one frequency (the first series' when none is given), the source's name, and each series'
        static covariates ``{sid: {column: value}}``; a fault names the series."""
        d = self._cfg.data
        frames, name = series_frames(_resolved(source), id_columns(d.id_column), d.where, header=d.header)
        out, statics = [], {}
        for sid, values, frame in frames:
            statics[sid] = static_values(frame, d.static_covariates, sid, name)
            try:
                table = self._load(frame, validate_frequency=frequency, use_where=False, time_range=time_range)
            except DataError as exc:
                raise DataError(f"{name}: series {sid}: {exc}") from None
            frequency = frequency or table.frequency
            out.append((sid, values, table))
        return out, name, statics

    def _short_series(self, name: str, short: dict[str, str]) -> None:
        """Too-short series: a ``DataError`` naming them, or (``data.short_series: skip``) a warning naming them."""
        if not short:
            return
        text = "; ".join(f"{sid}: {why}" for sid, why in short.items())
        if self._cfg.data.short_series == "error":
            raise DataError(f"{name}: {len(short)} series too short for a window ({text}); drop them from the table "
                            "or set data.short_series: skip")
        warnings.warn(f"{name}: skipping {len(short)} series too short for a window ({text})", stacklevel=3)

    def _setup_panel(self, source: Any, whole: bool) -> None:
        """:meth:`setup` for a panel: every series split by ``data.split`` alike (fractions of its own length, or
        the same dates), a scaler per series fitted on its training part, windows from every series (never two)."""
        d, w = self._cfg.data, self._cfg.window
        L, H = w.lookback, w.horizon
        fitted = self.layout is not None
        tables, name, statics = self._panel_tables(source, time_range=not whole,
                                                   frequency=self.layout["frequency"] if fitted else d.frequency)
        short, kept = {}, []
        for sid, values, table in tables:
            if fitted and sid not in self.panel_state:
                raise DataError(f"{name}: series {sid} was not in the training data (the run knows "
                                f"{list(self.panel_state)[:10]})")
            if whole:
                if len(table) < L + H:
                    short[sid] = f"{len(table)} rows < lookback + horizon = {L + H}"
                else:
                    kept.append((sid, values, table, (0, 0, len(table))))
                continue
            try:
                bounds = split_bounds(len(table), d.split, table.times)
            except DataError as exc:
                short[sid] = str(exc)
                continue
            if len(window_origins(0, bounds[0], L, H)) == 0:
                short[sid] = f"a training part of {bounds[0]} rows < lookback + horizon = {L + H}"
                continue
            kept.append((sid, values, table, bounds))
        self._short_series(name, short)
        if not kept:
            raise DataError(f"{name}: no series of the panel is long enough for a window")
        if not fitted:
            self._fit_panel_state(kept, None if isinstance(source, pd.DataFrame) else str(resolve_data_path(str(source))),
                                  statics)
        self._panel_windows(kept, whole)

    def _fit_panel_state(self, kept: list, data_file: str | None, statics: dict) -> None:
        """The layout (from the first series, categories from every series' training part) and per series: its
        scaler and MASE scale (training part only), its last training and validation times."""
        d = self._cfg.data
        self._fit_state(kept[0][2], kept[0][3], data_file)
        lay = self.layout
        cats = {c: sorted(set().union(*(set(t.categorical[c].iloc[:b[0]]) for _, _, t, b in kept))) for c in d.categorical}
        lay["categories"] = cats
        lay["static"] = fit_statics([statics[sid] for sid, *_ in kept], d.static_covariates)
        lay["static_size"] = static_size(lay["static"])
        lay["input_size"] = (len(d.target) + len(d.covariates) + sum(len(v) for v in cats.values()) + lay["static_size"]
                             + lay["future_size"])              # future covariates and calendar: the last channels
        if self._cfg.model.id_embedding:
            lay["id_onehot"] = {"start": lay["input_size"] - lay["future_size"], "num_ids": len(kept),
                                "dim": int(self._cfg.model.id_embedding)}
            lay["input_size"] += len(kept)
        lay["panel"] = {"id_columns": id_columns(d.id_column), "series": [sid for sid, *_ in kept]}
        lay["last_time"] = lay["val_end_time"] = None          # per series, in the panel state
        self.panel_state = {}
        for sid, values, t, (a, b, _) in kept:
            self.panel_state[sid] = {
                "ids": [str(v) for v in values], "static": statics[sid],
                "scaler": Scaler.fit(d.scaler, t.numeric.iloc[:a].to_numpy(), list(t.numeric.columns)),
                "mase_scale": mase_scale(self._targets_original(t)[:a], lay["season"]),
                "last_time": None if t.times is None else str(t.times[a - 1]),
                "val_end_time": None if t.times is None else str(t.times[b - 1]), "rows": int(len(t))}

    def _panel_windows(self, kept: list, whole: bool) -> None:
        """Stack the series' features (each scaled by its own scaler) and draw each split's windows per series."""
        L, H, stride = self.layout["lookback"], self.layout["horizon"], self._cfg.window.stride
        index = list(self.panel_state)
        feats, parts = [], {"train": [], "val": [], "test": []}
        for sid, _, table, (a, b, c) in kept:
            with self._series(sid):
                feats.append(self._features(table))
            parts["train"].append(window_origins(0, a, L, H, stride) if not whole else np.zeros(0, np.int64))
            parts["val"].append(window_origins(a, b, L, H) if not whole else np.zeros(0, np.int64))
            parts["test"].append(window_origins(b, c, L, H))
        ids = np.array([index.index(sid) for sid, *_ in kept], np.int64)
        self.values = torch.from_numpy(np.concatenate(feats))
        self.origins, self.window_series = {}, {}
        for split, p in parts.items():
            origins, local = offset_origins(p, [len(t) for _, _, t, _ in kept])
            self.origins[split], self.window_series[split] = origins, ids[local]
        self.table, self._baseline_cache = None, {}
        offsets = np.concatenate([[0], np.cumsum([len(t) for _, _, t, _ in kept])[:-1]]).astype(int)
        self.panel_tables = [(sid, table, int(off)) for (sid, _, table, _), off in zip(kept, offsets)]
        if not whole and self.linear is None:
            self.linear = LinearBaseline().fit(*self._target_windows("train"))

    @contextmanager
    def _series(self, sid: str) -> Iterator[dict]:
        """Within: one series of the panel, its own scaler and MASE scale (single-series code paths apply)."""
        saved = self.scaler, self.mase_scale, self._solo, self._static, self._id_row
        st = self.panel_state[sid]
        self.scaler, self.mase_scale, self._solo = st["scaler"], st["mase_scale"], True
        self._id_row = (np.arange(len(self.panel_state)) == list(self.panel_state).index(sid)).astype(np.float32)
        if self.layout.get("static"):
            self._static = encode_statics(st["static"], self.layout["static"])
        try:
            yield st
        finally:
            self.scaler, self.mase_scale, self._solo, self._static, self._id_row = saved

    def _panel_affine(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(center, scale)``, each ``(n, targets)``: the target scalers of the series of ``n`` windows."""
        series = self._current_series
        if series is None or len(series) != n:
            raise RuntimeError(f"panel: unscaling {n} windows without their series (got "
                               f"{None if series is None else len(series)})")
        c = self.num_targets
        scalers = [st["scaler"] for st in self.panel_state.values()]
        center = np.stack([sc.center[:c] for sc in scalers])[series]
        scale = np.stack([sc.scale[:c] for sc in scalers])[series]
        return center, scale

    def _panel_mase(self) -> np.ndarray:
        """``(n, targets)``: the MASE scale of each window's series."""
        return np.stack([st["mase_scale"] for st in self.panel_state.values()])[self._current_series]

    def _per_series(self, truth_orig: np.ndarray, preds: dict[str, np.ndarray]) -> dict[str, dict]:
        """``{series: {forecaster: {"windows", "mae", "rmse", "mase"}}}`` on the original scale."""
        series, names = self._current_series, list(self.panel_state)
        scale = self._panel_mase()
        unscaled = {k: self._unscale(v) for k, v in preds.items()}
        out = {}
        for i in np.unique(series):
            m = series == i
            out[names[i]] = {k: {"windows": int(m.sum()), "mae": float(np.abs(v[m] - truth_orig[m]).mean()),
                                 "rmse": float(np.sqrt(((v[m] - truth_orig[m]) ** 2).mean())),
                                 "mase": float((np.abs(v[m] - truth_orig[m]) / scale[m][:, None, :]).mean())}
                             for k, v in unscaled.items()}
        return out

    @torch.no_grad()
    def _forecast_panel(self, model: nn.Module, source: Any, intervals: str | None, level: float) -> pd.DataFrame:
        """:meth:`forecast` for a panel: the ``horizon`` rows after each series' last row, every series of the
        input (each must be known to the run), with the id column(s) first."""
        lay, d = self.layout, self._cfg.data
        L, H, freq = lay["lookback"], lay["horizon"], lay["frequency"]
        frames, name = series_frames(_resolved(source), id_columns(d.id_column), d.where, header=d.header)
        pasts, futures, info = [], [], []
        for sid, _, frame in frames:
            if sid not in self.panel_state:
                raise DataError(f"{name}: series {sid} was not in the training data (the run knows "
                                f"{list(self.panel_state)[:10]})")
            st = self.panel_state[sid]
            label = f"{name}: series {sid}"
            try:
                tail = self._load(self._observed_part(frame), validate_frequency=freq, use_where=False,
                                  time_range=False, rows=slice(-L, None))
                if len(tail) < L:
                    raise DataError(f"forecasting needs at least lookback = {L} rows, got {len(tail)}")
                if tail.times is not None and st["last_time"]:
                    check_time_grid(tail.times, st["last_time"], freq, source=name, rows=tail.rows,
                                    csv=not isinstance(source, pd.DataFrame))
            except DataError as exc:
                raise DataError(f"{name}: series {sid}: {exc}") from None
            times = None if freq == "steps" else future_times(tail.times[-1], freq, H)
            with self._series(sid):
                pasts.append(self._features(tail))
                if lay["future_size"]:
                    last = None if tail.times is None else tail.times[-1]
                    futures.append(self._future_inputs(frame, last, times, label))
            info.append((sid, st, times, tail))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            y, _ = model(torch.from_numpy(np.stack(pasts)).to(device),
                         torch.from_numpy(np.stack(futures).astype(np.float32)).to(device) if futures else None)
        finally:
            model.train(was_training)
        raw = y.double().cpu().numpy()
        self._current_series = np.array([list(self.panel_state).index(sid) for sid, *_ in info], np.int64)
        values = self._unscale(self.point(raw))                                              # (S, H, C)
        quantiles = self._quantile_columns(raw, values, intervals, level)
        tc = lay["time_column"]
        out = []
        for i, (sid, st, times, tail) in enumerate(info):
            part = with_quantile_columns(pd.DataFrame(values[i], columns=lay["targets"]), lay["targets"],
                                         {q: v[i] for q, v in quantiles.items()})
            if times is None:
                part.insert(0, "step", np.arange(1, H + 1) + int(tail.rows[-1]))
            else:
                part.insert(0, tc if isinstance(tc, str) else "time", times)
            for j, col in enumerate(id_columns(d.id_column)):
                part.insert(j, col, st["ids"][j])
            out.append(part)
        return pd.concat(out, ignore_index=True)

    def backtest_panel(self, model: nn.Module, data: Any = None, start: Any = None, stride: int = 1,
                       **options: Any) -> pd.DataFrame:
        """A backtest of every series of a panel (``id`` = the series), each from its own origins (default: after
        its own validation part) with its own scaler; a series without an origin follows ``data.short_series``."""
        return self.panel_backtest_frames(model, self.panel_backtest_plan(data, start, stride), **options)

    def backtest_source(self, data: Any = None) -> Any:
        """What a backtest reads: ``data`` (a DataFrame as it is, a path or data set name as its file), or the
        configured ``data.path`` when ``data`` is None."""
        return _resolved(self._configured_source() if data is None else data)

    def panel_backtest_plan(self, data: Any = None, start: Any = None,
                            stride: int = 1) -> list[tuple[str, SeriesTable, np.ndarray]]:
        """``[(series id, its whole table, its origins), ...]`` of a panel backtest over ``data`` (None: the
        configured data; see :meth:`backtest_origins`), every series known to the run; a series without an
        origin is an error or a named warning (``data.short_series``)."""
        if self.panel_state is None:
            raise RuntimeError("panel_backtest_plan needs a panel run (data.id_column) set up or loaded")
        source = self._configured_source() if data is None else data
        tables, name, _ = self._panel_tables(source, time_range=data is None, frequency=self.layout["frequency"])
        plan, short = [], {}
        for sid, _, table in tables:
            if sid not in self.panel_state:
                raise DataError(f"{name}: series {sid} was not in the training data")
            try:
                origins = self.backtest_origins(table, start, stride, last_seen=self.panel_state[sid]["val_end_time"])
            except DataError as exc:
                short[sid] = str(exc)
                continue
            plan.append((sid, table, origins))
        self._short_series(name, short)
        if not plan:
            raise DataError(f"{name}: no series has a backtest origin")
        return plan

    def panel_backtest_frames(self, model: nn.Module, plan: list[tuple[str, SeriesTable, np.ndarray]],
                              **options: Any) -> pd.DataFrame:
        """The long table of :meth:`backtest_frame` for each ``(series id, table, origins)`` of ``plan``, each
        series with this task's fitted state of that series (scaler, static covariates, id)."""
        parts = []
        for sid, table, origins in plan:
            if sid not in self.panel_state:
                raise DataError(f"{table.source}: series {sid} is not known to this model (it knows "
                                f"{list(self.panel_state)[:10]})")
            with self._series(sid):
                parts.append(self.backtest_frame(model, table, origins, sid, **options))
        return pd.concat(parts, ignore_index=True)

    # ------------------------------------------------------------ backtesting (rolling origin)
    def backtest_table(self, data: Any = None) -> SeriesTable:
        """The whole table of ``data`` (None: ``data.path``) for a backtest, validated with the fitted state's
        frequency (``data.where`` applies when the input has its columns; ``data.start``/``end`` only to the
        configured data)."""
        if self.layout is None:
            raise RuntimeError("backtest needs setup() or load_artifacts() first")
        source = self._configured_source() if data is None else data
        if not isinstance(source, pd.DataFrame):
            source = Path(source)
        return self._load(source, validate_frequency=self.layout["frequency"],
                          use_where=data is None or self._has_where_columns(source), time_range=data is None)

    def backtest_origins(self, table: SeriesTable, start: Any = None, stride: int = 1,
                         last_seen: str | None = None) -> np.ndarray:
        """Row numbers ``t`` of ``table`` used as forecast origins: the forecast of rows ``[t, t + horizon)``
        reads only rows ``[t - lookback, t)``. ``start``: the first forecast time (a date; an int row number for
        a ``steps`` series); None: the first origin whose forecast rows all lie after the rows the model was
        fitted and selected on (the training data's validation part, ``layout["val_end_time"]``; for a ``steps``
        series, every origin with a full look-back). Every ``stride``-th origin from there to the last one whose
        horizon the table still holds."""
        L, H = self.layout["lookback"], self.layout["horizon"]
        if not isinstance(stride, (int, np.integer)) or isinstance(stride, bool) or stride < 1:
            raise ConfigError(f"backtest stride must be a whole number >= 1, got {stride!r}")
        n = len(table)
        if start is None:
            last_seen = last_seen or self.layout.get("val_end_time") or self.layout.get("last_time")
            first = L if table.times is None or last_seen is None else \
                int(table.times.searchsorted(pd.Timestamp(last_seen), side="right"))
        elif table.times is None:
            if isinstance(start, str) and start.strip().isdigit():
                start = int(start)
            if not isinstance(start, (int, np.integer)) or isinstance(start, bool):
                raise ConfigError(f"backtest start of a 'steps' series is a row number, got {start!r}")
            first = int(start)
        else:
            try:
                stamp = pd.Timestamp(start)
            except (TypeError, ValueError):
                raise ConfigError(f"backtest start {start!r} is not a date") from None
            if table.times.tz is not None and stamp.tz is None:
                stamp = stamp.tz_localize(table.times.tz)
            first = int(table.times.searchsorted(stamp, side="left"))
        origins = window_origins(max(first, L), n, L, H, int(stride))
        if len(origins) == 0:
            span = "" if table.times is None else f" ({table.times[0]} to {table.times[-1]})"
            since = start if start is not None else "the end of the training data's validation part"
            raise DataError(f"{table.source}: no backtest origin from {since}: the table has {n} rows{span}, and an "
                            f"origin needs lookback = {L} rows before it and horizon = {H} rows from it; pass an "
                            "earlier start")
        return origins

    def backtest_frame(self, model: nn.Module, table: SeriesTable, origins: np.ndarray,
                       series_id: str | None = None, *, intervals: str | None = None,
                       level: float = 0.8) -> pd.DataFrame:
        """The long table of a backtest at ``origins`` (see :meth:`backtest_origins`): one row per origin,
        horizon step and target with ``id, cutoff, time, step, target, actual, forecast`` and one column per
        baseline (``naive, seasonal_naive, linear``), on the original scale. ``cutoff`` is the time (for a
        ``steps`` series the row number) of the last row the forecast reads, ``time`` that of the forecast row.

        Each forecast reads only the ``lookback`` rows before its origin: the features are computed row by row
        with this task's fitted state (scaler, categories, calendar of the rows' own timestamps), and the model
        and the baselines get the gathered look-backs only. ``intervals``: adds the model's interval bounds as
        ``forecast_q{lo}`` and ``forecast_q{hi}`` (``level=0.8``: ``forecast_q0.1``, ``forecast_q0.9``)."""
        L, H, C = self.layout["lookback"], self.layout["horizon"], self.num_targets
        origins = np.asarray(origins, np.int64)
        self.values = torch.from_numpy(self._features(table))
        raw, _ = self._predict_raw(model, origins)
        pred = self.point(raw)                                                       # (n, H, C) scaled
        scaled = self.scaler.transform(table.numeric[self.scaler.columns].to_numpy(np.float64))[:, :C]  # float64
        past = scaled[origins[:, None] + np.arange(-L, 0)]                                          # (n, L, C)
        columns = {"forecast": self._unscale(pred)}
        columns.update({k: self._unscale(v) for k, v in self._baseline_predictions(past).items()})
        actual = self._targets_original(table)[origins[:, None] + np.arange(H)]      # (n, H, C)
        if table.times is None:
            stamps = np.asarray(table.rows, np.int64)
        else:
            stamps = np.asarray(table.times)
        rows = (origins[:, None, None] + np.arange(H)[None, :, None] + np.zeros((1, 1, C), np.int64)).ravel()
        cut = np.repeat(origins - 1, H * C)
        out = pd.DataFrame({
            "id": series_id if series_id is not None else self.series_label(),
            "cutoff": stamps[cut], "time": stamps[rows],
            "step": np.tile(np.repeat(np.arange(1, H + 1), C), len(origins)),
            "target": np.tile(np.asarray(self.layout["targets"], dtype=object), len(origins) * H),
            "actual": actual.ravel()})
        for name, values in columns.items():
            out[name] = values.ravel()
        for q, values in self._quantile_columns(raw, columns["forecast"], intervals, level).items():
            out[f"forecast_q{quantile_text(q)}"] = values.ravel()
        return out

    def series_label(self) -> str:
        """The ``id`` of this run's one series: its ``data.where`` values (``AAPL``), else ``series``."""
        where = self._cfg.data.where
        return "/".join(str(v) for v in where.values()) if where else "series"

    # ------------------------------------------------------------ ONNX export
    def export_inputs(self, rows: int = 4) -> tuple[dict[str, torch.Tensor], list[str]]:
        """``past: (batch, lookback, input_size)`` (scaled features) and, with calendar features,
        ``future: (batch, horizon, future_size)``, drawn from a fixed-seed normal distribution (only their
        shapes matter for the export); the output ``forecast: (batch, horizon, targets)`` is on the scaled data
        (``forecast_artifacts.json`` holds the scaler)."""
        lay = self.layout
        generator = torch.Generator().manual_seed(rows)
        inputs = {"past": torch.randn(rows, lay["lookback"], lay["input_size"], generator=generator)}
        if lay["future_size"]:
            inputs["future"] = torch.randn(rows, lay["horizon"], lay["future_size"], generator=generator)
        return inputs, ["forecast"]

    def export_forward(self, model: nn.Module, past: torch.Tensor, future: torch.Tensor | None = None) -> torch.Tensor:
        return model(past, future)[0]

    # ------------------------------------------------------------ artifacts
    def save_artifacts(self, run_dir: Path) -> None:
        """``forecast_artifacts.json``: the column layout, the scaler, the MASE scale and the linear baseline's
        coefficients, everything ``predict`` and ``evaluate --input`` need without the training data."""
        payload = {"format": ARTIFACTS_FORMAT, "layout": self.layout, "scaler": self.scaler.to_dict(),
                   "mase_scale": np.asarray(self.mase_scale, np.float64).tolist(), "linear": self.linear.to_dict()}
        if self.panel_state is not None:
            payload["panel"] = {sid: {**st, "scaler": st["scaler"].to_dict(),
                                      "mase_scale": np.asarray(st["mase_scale"], np.float64).tolist()}
                                for sid, st in self.panel_state.items()}
        atomic_write_text(Path(run_dir) / ARTIFACTS_FILE, json.dumps(payload, indent=1))

    def load_artifacts(self, run_dir: Path) -> None:
        path = Path(run_dir) / ARTIFACTS_FILE
        if not path.exists():
            raise RunDirError(f"{path} not found: the run directory lacks the forecast task's fitted state")
        payload = read_json(path)
        if not isinstance(payload, dict) or payload.get("format") != ARTIFACTS_FORMAT:
            raise RunDirError(f"{path}: not a hybridrnn forecast state (format {ARTIFACTS_FORMAT!r}); runs trained "
                              "before version 0.2 must be retrained")
        self.layout = payload["layout"]
        self.scaler = Scaler.from_dict(payload["scaler"])
        self.mase_scale = np.asarray(payload["mase_scale"], np.float64)
        self.linear = LinearBaseline.from_dict(payload["linear"])
        if "panel" in payload:
            self.panel_state = {sid: {**st, "scaler": Scaler.from_dict(st["scaler"]),
                                      "mase_scale": np.asarray(st["mase_scale"], np.float64)}
                                for sid, st in payload["panel"].items()}
        self._load_conformal(run_dir)

    @torch.no_grad()
    def plot_band(self, model: nn.Module, split: str) -> tuple[np.ndarray, np.ndarray, str] | None:
        """The band the forecast plot shades around the model's forecasts of ``split``'s windows: ``(lower,
        upper, label)`` with ``(n, horizon, targets)`` bounds on the original scale: the outermost quantiles of
        a quantile head, the 80% interval of a distribution head, else the 80% conformal interval once
        calibrated; None without any."""
        m = self._cfg.model
        self._current_series = self.window_series.get(split)          # a panel: each window's series
        if m.loss in DISTRIBUTION_LOSSES:
            raw, _ = self._predict_raw(model, self.origins[split])
            levels = [m.quantiles[0], m.quantiles[-1]] if m.loss == "quantile" else list(interval_quantiles(0.8))
            qs = self._unscale_quantiles(head_quantiles(raw, m.loss, m.quantiles, levels))
            return qs[..., 0], qs[..., 1], f"model q{quantile_text(levels[0])}-q{quantile_text(levels[1])}"
        if self.conformal is not None:
            point = self._unscale(self.predict_windows(model, split)[0])
            lower, upper = self.interval_bounds(point, "conformal", 0.8)
            return lower, upper, "conformal 80%"
        return None

    def plots(self, model: nn.Module, run_dir: Path) -> list[Path]:
        """The forecast plots of the test split (a panel: one small axis per series, see
        :func:`hybridrnn.tasks.forecast_plots.forecast_plots`)."""
        return forecast_plots(self, model, Path(run_dir))


def interval_metrics(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float) -> dict[str, float]:
    """``coverage_{L}``, ``width_{L}`` and ``pinball_{L}`` (mean of the two bounds' pinball losses at the
    quantiles ``(1 -+ level) / 2``) of an interval over arrays of one shape (original scale)."""
    lo_q, hi_q = interval_quantiles(level)
    name = quantile_text(level * 100)
    return {f"coverage_{name}": interval_coverage(truth, lower, upper),
            f"width_{name}": interval_width(lower, upper),
            f"pinball_{name}": 0.5 * (pinball_loss(truth, lower, lo_q) + pinball_loss(truth, upper, hi_q))}


def with_quantile_columns(frame: pd.DataFrame, targets: list[str], quantiles: dict[float, np.ndarray]) -> pd.DataFrame:
    """``frame`` (one column per target) with ``{target}_q{q}`` for each ``q`` of ``quantiles`` (``{q: (1, rows,
    targets)}`` or ``(rows, targets)``) right after each target's column, in increasing ``q``."""
    out = frame.copy()
    for c, target in enumerate(targets):
        at = out.columns.get_loc(target) + 1
        for q, values in sorted(quantiles.items()):
            out.insert(at, f"{target}_q{quantile_text(q)}", np.asarray(values).reshape(-1, len(targets))[:, c])
            at += 1
    return out


def _resolved(source: Any) -> Any:
    """A DataFrame as it is; a path or a data set name (``shared:NAME``) as the file it names."""
    return source if isinstance(source, pd.DataFrame) else resolve_data_path(str(source))


def refit_groups(plan: list[tuple[str, SeriesTable, np.ndarray]],
                 every: int) -> list[tuple[Any, list[tuple[str, SeriesTable, np.ndarray]]]]:
    """A panel backtest's origins in groups for refitting: the distinct origin times (a ``steps`` panel: row
    numbers) of all series in order, ``every`` of them per group; returns ``[(the group's first origin time,
    [(series id, table, its origins in the group), ...]), ...]``. A model refitted for a group is trained on the
    rows before its first origin time in every series, so no forecast of the group sees a row at or after its
    own origin."""
    def keys(table: SeriesTable, origins: np.ndarray) -> np.ndarray:
        return np.asarray(origins, np.int64) if table.times is None else table.times[origins].as_unit("ns").asi8

    stamps = np.unique(np.concatenate([keys(t, o) for _, t, o in plan]))
    out = []
    for i in range(0, len(stamps), every):
        lo = stamps[i]
        hi = stamps[min(i + every, len(stamps)) - 1]
        part = []
        for sid, table, origins in plan:
            k = keys(table, origins)
            mine = origins[(k >= lo) & (k <= hi)]
            if len(mine):
                part.append((sid, table, mine))
        first = int(lo) if plan[0][1].times is None else pd.Timestamp(lo, tz=plan[0][1].times.tz)
        out.append((first, part))
    return out
