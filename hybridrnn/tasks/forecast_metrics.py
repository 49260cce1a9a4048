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
