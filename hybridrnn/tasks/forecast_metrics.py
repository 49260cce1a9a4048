"""Forecast error metrics and the three baselines every forecast is compared with.

Arrays are ``(windows, horizon, targets)``: ``y_true`` and ``y_pred`` hold the same test windows.

Metrics (``e = y_pred - y_true``):

- ``mae`` = mean |e|, ``mse`` = mean e^2, ``rmse`` = sqrt(mse) (of the pooled mse);
- ``mape`` = 100 * mean |e| / |y_true| over the values with ``|y_true| > eps`` (NaN when there are none);
- ``smape`` = 100 * mean 2 |e| / (|y_true| + |y_pred|), a term whose denominator is 0 counts as 0;
- ``mase`` = mean over targets of mae_c / s_c, where ``s_c`` is the in-sample MAE of the seasonal naive forecast
  (period ``m``) on the training part of target ``c`` (Hyndman & Koehler 2006); below 1 beats that naive.

Baselines (all read only each window's look-back, so they see exactly what the model sees):

- ``naive``: the last observed value, repeated over the horizon;
- ``seasonal_naive``: the value one season earlier, ``y[t + h] = y[t + h - m * ceil((h + 1) / m)]``;
- ``linear``: per target, ``y[t + h] = w_h . y[t - L : t] + b_h`` fitted by (ridge-stabilised) least squares
  on the training windows (on the scaled data), i.e. a DLinear-style linear model without decomposition.
"""
from __future__ import annotations

import numpy as np

METRICS = ("mae", "mse", "rmse", "mape", "smape", "mase")
BASELINES = ("naive", "seasonal_naive", "linear")


def _errors(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 3:
        raise ValueError(f"y_true and y_pred must both be (windows, horizon, targets), got {y_true.shape} "
                         f"and {y_pred.shape}")
    return y_true, y_pred, y_pred - y_true


def _reduce(values: np.ndarray, mask: np.ndarray | None, axes) -> np.ndarray:
    if mask is None:
        return values.mean(axis=axes)
    count = mask.sum(axis=axes)
    total = np.where(mask, values, 0.0).sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _metric_arrays(y_true, y_pred, mase_scale, axes, eps: float) -> dict[str, np.ndarray]:
    y_true, y_pred, e = _errors(y_true, y_pred)
    abs_e = np.abs(e)
    out = {"mae": _reduce(abs_e, None, axes), "mse": _reduce(e ** 2, None, axes)}
    out["rmse"] = np.sqrt(out["mse"])
    nonzero = np.abs(y_true) > eps
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mape"] = 100.0 * _reduce(abs_e / np.where(nonzero, np.abs(y_true), 1.0), nonzero, axes)
        denom = np.abs(y_true) + np.abs(y_pred)
        out["smape"] = 100.0 * _reduce(np.where(denom > 0, 2.0 * abs_e / np.where(denom > 0, denom, 1.0), 0.0), None, axes)
    if mase_scale is not None:
        scale = np.asarray(mase_scale, np.float64).reshape(1, 1, -1)
        if scale.shape[-1] != y_true.shape[-1]:
            raise ValueError(f"mase_scale has {scale.shape[-1]} entries for {y_true.shape[-1]} targets")
        per_target = abs_e / scale  # mean over targets of mae_c / s_c == mean of |e| / s_c
        out["mase"] = _reduce(per_target, None, axes)
    else:
        out["mase"] = np.full(np.shape(out["mae"]), np.nan)
    return out


def forecast_metrics(y_true: np.ndarray, y_pred: np.ndarray, mase_scale: np.ndarray | None = None,
                     eps: float = 1e-8) -> dict[str, float]:
    """The six metrics over every window, step and target: ``{"mae": ..., ..., "mase": ...}``."""
    return {k: float(v) for k, v in _metric_arrays(y_true, y_pred, mase_scale, None, eps).items()}


def metrics_by_step(y_true: np.ndarray, y_pred: np.ndarray, mase_scale: np.ndarray | None = None,
                    eps: float = 1e-8) -> dict[str, list[float]]:
    """Each metric per horizon step (averaged over windows and targets): ``{"mae": [h1, h2, ...], ...}``."""
    return {k: [float(x) for x in v] for k, v in _metric_arrays(y_true, y_pred, mase_scale, (0, 2), eps).items()}


def mase_scale(train_targets: np.ndarray, season: int) -> np.ndarray:
    """``(targets,)`` in-sample MAE of the seasonal naive forecast on ``train_targets: (time, targets)``;
    falls back to period 1 when the training part is shorter than one season; 1 where the MAE is 0."""
    train_targets = np.asarray(train_targets, np.float64)
    m = season if train_targets.shape[0] > season else 1
    if train_targets.shape[0] <= m:
        return np.ones(train_targets.shape[1])
    s = np.abs(train_targets[m:] - train_targets[:-m]).mean(axis=0)
    return np.where(s > 0, s, 1.0)


# ---------------------------------------------------------------- baselines

def naive_forecast(past: np.ndarray, horizon: int) -> np.ndarray:
    """``past: (windows, lookback, targets)`` -> ``(windows, horizon, targets)``: the last value repeated."""
    past = np.asarray(past)
    return np.repeat(past[:, -1:, :], horizon, axis=1)


def seasonal_naive_forecast(past: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """``y[t + h] = y[t + h - m * ceil((h + 1) / m)]``: the last full season of the look-back, repeated."""
    past = np.asarray(past)
    if season < 1 or season > past.shape[1]:
        raise ValueError(f"seasonal naive needs 1 <= season <= lookback, got season {season} and lookback "
                         f"{past.shape[1]}")
    idx = past.shape[1] - season + (np.arange(horizon) % season)
    return past[:, idx, :]


class LinearBaseline:
    """Per target: ``y[t + h] = w_h . y[t - L : t] + b_h``, least squares on training windows.

    ``ridge`` is relative to the mean diagonal of ``X^T X``: a tiny value that only keeps the solve stable.
    """

    def __init__(self, ridge: float = 1e-6):
        self.ridge = ridge
        self.weights: np.ndarray | None = None  # (targets, lookback + 1, horizon)

    def fit(self, past: np.ndarray, future: np.ndarray) -> "LinearBaseline":
        """``past: (windows, lookback, targets)``, ``future: (windows, horizon, targets)`` (training windows)."""
        past, future = np.asarray(past, np.float64), np.asarray(future, np.float64)
        if past.shape[0] != future.shape[0] or past.shape[2] != future.shape[2] or past.shape[0] == 0:
            raise ValueError(f"linear baseline fit needs matching non-empty windows, got past {past.shape} "
                             f"and future {future.shape}")
        n, lookback, targets = past.shape
        weights = []
        for c in range(targets):
            x = np.concatenate([past[:, :, c], np.ones((n, 1))], axis=1)
            gram = x.T @ x
            gram += np.eye(lookback + 1) * self.ridge * np.trace(gram) / (lookback + 1)
            weights.append(np.linalg.solve(gram, x.T @ future[:, :, c]))
        self.weights = np.stack(weights)
        return self

    def predict(self, past: np.ndarray) -> np.ndarray:
        """``past: (windows, lookback, targets)`` -> ``(windows, horizon, targets)``."""
        if self.weights is None:
            raise RuntimeError("LinearBaseline.predict before fit")
        past = np.asarray(past, np.float64)
        if past.shape[1] + 1 != self.weights.shape[1] or past.shape[2] != self.weights.shape[0]:
            raise ValueError(f"linear baseline was fitted on lookback {self.weights.shape[1] - 1} and "
                             f"{self.weights.shape[0]} targets, got past {past.shape}")
        x = np.concatenate([past, np.ones((past.shape[0], 1, past.shape[2]))], axis=1)  # (n, L+1, C)
        return np.einsum("nlc,clh->nhc", x, self.weights)

    def to_dict(self) -> dict:
        return {"ridge": self.ridge, "weights": None if self.weights is None else self.weights.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "LinearBaseline":
        out = cls(d.get("ridge", 1e-6))
        out.weights = None if d.get("weights") is None else np.asarray(d["weights"], np.float64)
        return out


# ---------------------------------------------------------------- backtest summaries

#: columns of a backtest's long table that are not forecasts
BACKTEST_KEYS = ("id", "cutoff", "time", "step", "target", "actual")


def backtest_summary(frame, by: tuple[str, ...] = ("id", "step")):
    """Summary of a backtest's long table (``id, cutoff, time, step, target, actual, forecast, naive, ...``):
    a DataFrame indexed by ``(id, step)`` with a row per series and horizon step, a row per series over all
    steps (``step == "all"``), a row per step over all series (``id == "all"``) and the overall row
    (``"all", "all"``); columns ``origins`` (distinct cutoffs), ``{forecaster}_mae`` and ``{forecaster}_rmse``
    for the model (``forecast``) and each baseline column, and for each interval in the table
    (``forecast_q{lo}`` / ``forecast_q{hi}`` pairs symmetric about 0.5) ``coverage_{level}`` and ``width_{level}``
    (``level`` in percent). Rows whose ``actual`` is not finite are not scored (nothing is filled)."""
    import pandas as pd

    forecasters = [c for c in frame.columns if c not in BACKTEST_KEYS and "_q" not in c and not c.startswith(("coverage", "width"))]
    intervals = interval_pairs([c for c in frame.columns if c.startswith("forecast_q")], prefix="forecast_q")
    scored = frame[np.isfinite(frame["actual"].to_numpy(np.float64))]

    def stats(part) -> dict:
        y = part["actual"].to_numpy(np.float64)
        row = {"origins": int(part["cutoff"].nunique())}
        for f in forecasters:
            e = part[f].to_numpy(np.float64) - y
            row[f"{f}_mae"] = float(np.abs(e).mean()) if len(e) else np.nan
            row[f"{f}_rmse"] = float(np.sqrt((e ** 2).mean())) if len(e) else np.nan
        for level, (lo, hi) in intervals.items():
            row[f"coverage_{level}"] = interval_coverage(y, part[lo].to_numpy(np.float64), part[hi].to_numpy(np.float64))
            row[f"width_{level}"] = interval_width(part[lo].to_numpy(np.float64), part[hi].to_numpy(np.float64))
        return row

    rows = {}
    for (sid, step), part in scored.groupby(["id", "step"], sort=True):
        rows[(str(sid), step)] = stats(part)
    for sid, part in scored.groupby("id", sort=True):
        rows[(str(sid), "all")] = stats(part)
    for step, part in scored.groupby("step", sort=True):
        rows[("all", step)] = stats(part)
    rows[("all", "all")] = stats(scored)
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(list(rows), names=list(by))
    return out


# ---------------------------------------------------------------- interval metrics

def _level_text(level: float) -> str:
    """``0.8 -> "80"``, ``0.95 -> "95"``, ``0.975 -> "97.5"``."""
    pct = round(100 * float(level), 6)
    return str(int(pct)) if float(pct).is_integer() else f"{pct:g}"


def quantile_text(q: float) -> str:
    """A quantile level as it appears in a column name: ``0.1 -> "0.1"``, ``0.05 -> "0.05"``, ``0.5 -> "0.5"``."""
    return f"{round(float(q), 6):g}"


def interval_quantiles(level: float) -> tuple[float, float]:
    """The quantile levels bounding a central interval of coverage ``level``: ``0.8 -> (0.1, 0.9)``."""
    level = float(level)
    if not 0 < level < 1:
        raise ValueError(f"interval level must lie strictly between 0 and 1, got {level}")
    return round((1 - level) / 2, 10), round(1 - (1 - level) / 2, 10)


def interval_pairs(columns, prefix: str) -> dict[str, tuple[str, str]]:
    """``{"80": (f"{prefix}0.1", f"{prefix}0.9"), ...}``: the central intervals among quantile ``columns``
    (named ``{prefix}{q}``), pairing ``q`` with ``1 - q`` for each ``q < 0.5``."""
    levels = {}
    for c in columns:
        try:
            levels[round(float(c[len(prefix):]), 10)] = c
        except ValueError:
            continue
    out = {}
    for q in sorted(levels):
        if q < 0.5 and round(1 - q, 10) in levels:
            out[_level_text(1 - 2 * q)] = (levels[q], levels[round(1 - q, 10)])
    return out


def pinball_loss(y_true: np.ndarray, y_quantile: np.ndarray, q: float) -> float:
    """Mean pinball (quantile) loss of the ``q``-quantile forecast: ``mean(max(q * (y - f), (q - 1) * (y - f)))``;
    arrays of any matching shape. Its minimiser over constant ``f`` is the ``q``-quantile of ``y``."""
    d = np.asarray(y_true, np.float64) - np.asarray(y_quantile, np.float64)
    if d.size == 0:
        return float("nan")
    return float(np.maximum(q * d, (q - 1) * d).mean())


def interval_coverage(y_true: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of ``y_true`` inside ``[lower, upper]`` (bounds included)."""
    y = np.asarray(y_true, np.float64)
    if y.size == 0:
        return float("nan")
    return float(((y >= np.asarray(lower, np.float64)) & (y <= np.asarray(upper, np.float64))).mean())


def interval_width(lower: np.ndarray, upper: np.ndarray) -> float:
    """Mean width ``upper - lower``."""
    w = np.asarray(upper, np.float64) - np.asarray(lower, np.float64)
    return float(w.mean()) if w.size else float("nan")


def conformal_quantiles(residuals: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Split-conformal quantiles: ``residuals: (n, ...)`` absolute calibration residuals, ``levels: (k,)`` ->
    ``(k, ...)``: for each level ``a`` the ``ceil((n + 1) a)``-th smallest residual (along axis 0), ``inf`` where
    that rank exceeds ``n`` (too few residuals to guarantee coverage ``a``). An interval ``yhat +- q`` then
    covers a new exchangeable point with probability at least ``a`` (Vovk et al.; Lei et al. 2018)."""
    residuals = np.sort(np.asarray(residuals, np.float64), axis=0)
    n = residuals.shape[0]
    levels = np.asarray(levels, np.float64)
    rank = np.ceil((n + 1) * levels - 1e-9).astype(np.int64)                    # 1-based
    picked = residuals[np.clip(rank, 1, n) - 1]
    fits = (rank <= n).reshape((-1,) + (1,) * (residuals.ndim - 1))
    return np.where(fits, picked, np.inf)
