"""Known-future covariates computed from timestamps: hour of day, day of week, month, ...

Two encodings (``calendar_encoding`` in a config):

- ``sincos`` (default): each feature with period ``P`` gives two columns ``sin(2 pi v / P)`` and
  ``cos(2 pi v / P)``, so 23:00 sits next to 00:00 and December next to January;
- ``onehot``: one 0/1 column per value (24 for the hour, 7 for the day of week, 12 for the month, ...).

``auto`` picks the features that vary at the series' frequency: sub-hourly -> minute, hour, day of week;
hourly -> hour, day of week, month; daily and business-daily -> day of week, month; weekly -> month;
monthly -> month; anything coarser or ``steps`` -> none.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from hybridrnn.errors import ConfigError

#: feature -> (period, function giving integer values in [0, period))
CALENDAR_FEATURES: dict[str, tuple[int, callable]] = {
    "minute": (60, lambda t: t.minute),
    "hour": (24, lambda t: t.hour),
    "dayofweek": (7, lambda t: t.day_of_week),
    "dayofmonth": (31, lambda t: t.day - 1),
    "dayofyear": (366, lambda t: t.dayofyear - 1),
    "month": (12, lambda t: t.month - 1),
}
ENCODINGS = ("sincos", "onehot")


def auto_calendar(frequency: str) -> list[str]:
    """The calendar features that vary at ``frequency`` (a pandas offset alias, or ``steps``)."""
    if frequency == "steps":
        return []
    step = _nominal_step(frequency)
    if step is None:
        return []
    if step < pd.Timedelta(hours=1):
        return ["minute", "hour", "dayofweek"]
    if step < pd.Timedelta(days=1):
        return ["hour", "dayofweek", "month"]
    if step < pd.Timedelta(days=7):
        return ["dayofweek", "month"]
    if step < pd.Timedelta(days=365):
        return ["month"]
    return []


def _nominal_step(frequency: str) -> pd.Timedelta | None:
    offset = pd.tseries.frequencies.to_offset(frequency)
    anchor = pd.Timestamp("2001-01-01")  # a Monday
    try:
        return (anchor + offset) - anchor
    except Exception:  # pragma: no cover - exotic offsets
        return None


def calendar_columns(features: Sequence[str], encoding: str) -> list[str]:
    """Names of the columns :func:`calendar_features` returns, in order."""
    _check(features, encoding)
    names = []
    for f in features:
        period = CALENDAR_FEATURES[f][0]
        names += [f"{f}_sin", f"{f}_cos"] if encoding == "sincos" else [f"{f}_{v}" for v in range(period)]
    return names


def calendar_features(times: pd.DatetimeIndex, features: Sequence[str], encoding: str = "sincos") -> np.ndarray:
    """``(len(times), len(calendar_columns(features, encoding)))`` float32 array of calendar covariates."""
    _check(features, encoding)
    times = pd.DatetimeIndex(times)
    blocks = []
    for f in features:
        period, fn = CALENDAR_FEATURES[f]
        v = np.asarray(fn(times), dtype=np.int64)
        if encoding == "sincos":
            angle = 2.0 * np.pi * v / period
            blocks.append(np.stack([np.sin(angle), np.cos(angle)], axis=1))
        else:
            blocks.append(np.eye(period)[v])
    if not blocks:
        return np.zeros((len(times), 0), dtype=np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _check(features: Sequence[str], encoding: str) -> None:
    unknown = [f for f in features if f not in CALENDAR_FEATURES]
    if unknown:
        raise ConfigError(f"unknown calendar feature(s) {unknown}; expected some of {', '.join(CALENDAR_FEATURES)}")
    if encoding not in ENCODINGS:
        raise ConfigError(f"unknown calendar encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
