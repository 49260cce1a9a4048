"""Time-series tables: loading, validation, frequency, chronological split and windows.

Everything here is pandas/numpy (plus torch for the window gather); no models.

A table is read from CSV (``.csv``, ``.csv.gz``, ``.txt``), Parquet or a DataFrame and validated before anything
is computed: a time column that does not parse, duplicated or decreasing timestamps, gaps at a regular
frequency, non-numeric values in numeric columns and missing values are each a :class:`TableError` naming
the file, the column, how many values are at fault and the first offending row. Rows are counted from 0
over the data rows of the file (``line`` = row + 2 in a CSV with a header). Missing values are filled only when
asked (``fill="ffill"`` or ``"interpolate"``), and a value that cannot be filled (a leading gap) is an error.

Frequencies: a pandas offset alias (``"h"``, ``"D"``, ``"B"``, ``"15min"``, ``"MS"``...), inferred when not
given, or ``"steps"`` (no time grid: rows are consecutive steps, forecasts are numbered ``+1 .. +H``).
Business days (``"B"``) accept missing weekdays (exchange holidays) as they are: trading-day series are used
unchanged, and forecasts carry the next business days (Mon-Fri; exchange holidays are not known).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch


class TableError(ValueError):
    """A table that cannot be used as it is; the message names file, column, count and first offending row."""


@dataclass
class SeriesTable:
    """A validated table: ``numeric`` (float64 columns), ``categorical`` (str columns), their times."""

    source: str
    times: pd.DatetimeIndex | None
    frequency: str
    numeric: pd.DataFrame
    categorical: pd.DataFrame
    rows: np.ndarray  # original row number of each kept row (for messages)
    filled: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.numeric)


# ---------------------------------------------------------------- reading

def read_table(source: str | Path | pd.DataFrame, *, header: bool = True) -> tuple[pd.DataFrame, str]:
    """The raw table and a name for messages (the file path, or ``"DataFrame"``)."""
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True).copy(), "DataFrame"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    name = str(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path).reset_index(drop=True), name
        except ImportError as exc:
            raise ImportError(f"reading {name} needs a Parquet engine: pip install pyarrow "
                              f"(or hybridrnn[parquet])") from exc
    try:
        return pd.read_csv(path, header=0 if header else None), name
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TableError(f"{name}: cannot be read as CSV: {exc}") from exc


def _where(row: int, times: pd.Series | pd.DatetimeIndex | None = None, i: int | None = None, csv: bool = True) -> str:
    text = f"row {row}" + (f" (line {row + 2})" if csv else "")
    if times is not None and i is not None:
        text += f", time {times[i]}"
    return text


def load_table(source: str | Path | pd.DataFrame, *, time_column: str | Sequence[str] | None,
               numeric: Sequence[str], categorical: Sequence[str] = (),
               where: Mapping[str, Any] | None = None, start: str | None = None, end: str | None = None,
               frequency: str | None = None, fill: str | None = None, header: bool = True) -> SeriesTable:
    """Read and validate a table.

    time_column: one column of dates, a list of columns assembled into a date (e.g. ``[year, month, day,
    hour]``), or None (rows are steps). numeric / categorical: the columns to keep. where: keep rows whose
    column equals a value (``{"Ticker": "AAPL"}``). start / end: keep times ``start <= t < end``.
    frequency: an offset alias, ``"steps"`` or None (inferred). fill: None, ``"ffill"`` or ``"interpolate"``.
    """
    raw, name = read_table(source, header=header)
    csv = name != "DataFrame" and not name.lower().endswith((".parquet", ".pq"))
    if not header:
        raw.columns = [str(c) for c in raw.columns]
    raw["__row__"] = np.arange(len(raw))
    wanted = ([time_column] if isinstance(time_column, str) else list(time_column or [])) + list(numeric) + list(categorical)
    missing_cols = [c for c in dict.fromkeys(wanted) if c not in raw.columns] + \
                   [c for c in (where or {}) if c not in raw.columns]
    if missing_cols:
        raise TableError(f"{name}: no column(s) {missing_cols}; the table has {[c for c in raw.columns if c != '__row__']}")
    if len(set(numeric) & set(categorical)):
        raise TableError(f"{name}: column(s) {sorted(set(numeric) & set(categorical))} listed both as numeric and categorical")

    for col, value in (where or {}).items():
        keep = raw[col].astype(str) == str(value)
        if not keep.any():
            values = list(dict.fromkeys(raw[col].astype(str)))[:10]
            raise TableError(f"{name}: no row has {col} == {value!r}; values present include {values}")
        raw = raw[keep.to_numpy()]
    raw = raw.reset_index(drop=True)

    # ---- time
    times = None
    if time_column is not None:
        times = _parse_times(raw, time_column, name, csv)
        if start is not None or end is not None:
            keep = np.ones(len(raw), bool)
            if start is not None:
                keep &= (times >= pd.Timestamp(start))
            if end is not None:
                keep &= (times < pd.Timestamp(end))
            raw, times = raw[keep].reset_index(drop=True), times[keep]
        if len(raw) == 0:
            raise TableError(f"{name}: no rows left between start={start!r} and end={end!r}")
        _check_order(times, raw["__row__"].to_numpy(), time_column, name, csv)
        frequency = _resolve_frequency(times, frequency, raw["__row__"].to_numpy(), name, csv)
    else:
        if start is not None or end is not None:
            raise TableError(f"{name}: start/end need a time_column")
        if frequency not in (None, "steps"):
            raise TableError(f"{name}: frequency {frequency!r} needs a time_column; use frequency: steps")
        frequency = "steps"
    rows = raw["__row__"].to_numpy()

    # ---- numeric columns: non-numeric values, then missing values
    num = pd.DataFrame(index=raw.index)
    for col in numeric:
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = values.isna().to_numpy() & raw[col].notna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TableError(f"{name}: column {col!r} has {int(bad.sum())} non-numeric value(s); first at "
                             f"{_where(int(rows[i]), times, i, csv)}: {raw[col].iloc[i]!r}")
        num[col] = values.astype(np.float64)
    filled = {}
    cat = pd.DataFrame({c: raw[c] for c in categorical}, index=raw.index)
    for frame, kind in ((num, "numeric"), (cat, "categorical")):
        for col in frame.columns:
            miss = frame[col].isna().to_numpy()
            if not miss.any():
                continue
            i = int(np.flatnonzero(miss)[0])
            where_text = _where(int(rows[i]), times, i, csv)
            if fill is None:
                raise TableError(f"{name}: column {col!r} has {int(miss.sum())} missing value(s); first at "
                                 f"{where_text}. Set data.fill to 'ffill' or 'interpolate' to fill them")
            if fill not in ("ffill", "interpolate"):
                raise ValueError(f"unknown fill {fill!r}; expected 'ffill' or 'interpolate'")
            if kind == "numeric" and fill == "interpolate":
                frame[col] = frame[col].interpolate(method="linear", limit_direction="forward")
            else:
                frame[col] = frame[col].ffill()
            lead = frame[col].isna().to_numpy()
            if lead.any():
                raise TableError(f"{name}: column {col!r} has {int(lead.sum())} leading missing value(s) that "
                                 f"{fill} cannot fill (from {where_text}); start the data later with data.start")
            filled[col] = int(miss.sum())
    cat = cat.astype(str)
    return SeriesTable(name, times, frequency, num, cat, rows, filled)


def _parse_times(raw: pd.DataFrame, time_column, name: str, csv: bool) -> pd.DatetimeIndex:
    rows = raw["__row__"].to_numpy()
    if isinstance(time_column, str):
        col = raw[time_column]
        if pd.api.types.is_datetime64_any_dtype(col):
            parsed = pd.to_datetime(col)
        else:
            parsed = pd.to_datetime(col, errors="coerce", format="mixed")
        label, shown = repr(time_column), col
    else:
        parts = raw[list(time_column)]
        keys = ["year", "month", "day", "hour", "minute", "second"]
        if len(time_column) > len(keys):
            raise TableError(f"{name}: time_column lists {len(time_column)} columns; at most 6 (year .. second)")
        frame = pd.DataFrame({k: pd.to_numeric(parts[c], errors="coerce") for k, c in zip(keys, time_column)})
        parsed = pd.to_datetime(frame, errors="coerce")
        label, shown = str(list(time_column)), parts
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TableError(f"{name}: time column {label} has {int(bad.sum())} value(s) that are not dates; first at "
                         f"{_where(int(rows[i]), csv=csv)}: {_cell_text(shown, i)!r}")
    times = pd.DatetimeIndex(parsed)
    if times.tz is not None:
        times = times.tz_convert(None)
    return times


def _cell_text(values: pd.Series | pd.DataFrame, i: int):
    if isinstance(values, pd.DataFrame):
        return " ".join(str(v) for v in values.iloc[i])
    return values.iloc[i]


def _check_order(times: pd.DatetimeIndex, rows: np.ndarray, time_column, name: str, csv: bool) -> None:
    diffs = np.diff(times.asi8)  # same unit throughout: only signs and zeros matter here
    dup = np.flatnonzero(diffs == 0) + 1
    if dup.size:
        i = int(dup[0])
        raise TableError(f"{name}: time column {time_column!r} has {dup.size} duplicated timestamp(s); first at "
                         f"{_where(int(rows[i]), csv=csv)}: {times[i]} (same as the row before)")
    back = np.flatnonzero(diffs < 0) + 1
    if back.size:
        i = int(back[0])
        raise TableError(f"{name}: time column {time_column!r} is not in increasing order: {back.size} step(s) "
                         f"go back in time; first at {_where(int(rows[i]), csv=csv)}: {times[i]} after {times[i - 1]}. "
                         f"Sort the table by time, or select one series with data.where (e.g. {{Ticker: AAPL}})")


# ---------------------------------------------------------------- frequency

def infer_frequency(times: pd.DatetimeIndex) -> str | None:
    """An offset alias for increasing ``times``: exact (``pd.infer_freq``), business days with holiday gaps
    (``"B"``), or the most common step when it covers at least 90 % of the steps; None otherwise."""
    if len(times) < 3:
        return None
    with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return an offset instead of a str
        warnings.simplefilter("ignore")
        exact = pd.infer_freq(times)
    if exact is not None:
        return _normalise_alias(exact if isinstance(exact, str) else exact.freqstr)
    midnight = (times == times.normalize()).all()
    if midnight and (times.day_of_week < 5).all():
        days = np.busday_count(times[:-1].values.astype("datetime64[D]"), times[1:].values.astype("datetime64[D]"))
        if (days >= 1).all() and (days == 1).mean() >= 0.9:
            return "B"
    diffs = pd.Series(pd.TimedeltaIndex(np.diff(times.values)))
    mode = diffs.mode().iloc[0]
    if (diffs == mode).mean() >= 0.9:
        if mode % pd.Timedelta(days=1) == pd.Timedelta(0):
            days = mode // pd.Timedelta(days=1)
            return "D" if days == 1 else f"{days}D"
        return _normalise_alias(pd.tseries.frequencies.to_offset(mode).freqstr)
    return None


def _normalise_alias(alias: str) -> str:
    alias = alias.upper() if alias in ("b", "d") else alias
    return {"H": "h", "T": "min", "S": "s"}.get(alias, alias)


def _resolve_frequency(times: pd.DatetimeIndex, frequency: str | None, rows: np.ndarray, name: str, csv: bool) -> str:
    if frequency == "steps":
        return "steps"
    if frequency is None:
        frequency = infer_frequency(times)
        if frequency is None:
            common = pd.Series(pd.TimedeltaIndex(np.diff(times.values))).value_counts().head(3)
            raise TableError(f"{name}: cannot infer a frequency from the timestamps (most common steps: "
                             f"{', '.join(f'{k} x{v}' for k, v in common.items())}); set data.frequency "
                             f"(e.g. 'h', 'D', 'B') or data.frequency: steps to forecast by step")
    try:
        offset = pd.tseries.frequencies.to_offset(frequency)
    except ValueError as exc:
        raise ValueError(f"unknown frequency {frequency!r}: {exc}") from exc
    if frequency.upper() == "B":
        weekend = np.flatnonzero(times.day_of_week >= 5)
        if weekend.size:
            i = int(weekend[0])
            raise TableError(f"{name}: frequency 'B' (business days) but {weekend.size} timestamp(s) fall on a "
                             f"weekend; first at {_where(int(rows[i]), csv=csv)}: {times[i]}")
        return "B"
    expected = times[:-1] + offset
    gaps = np.flatnonzero(times[1:] != expected) + 1
    if gaps.size:
        i = int(gaps[0])
        raise TableError(f"{name}: irregular timestamps at frequency {frequency!r}: {gaps.size} step(s) off the grid; "
                         f"first at {_where(int(rows[i]), csv=csv)}: {times[i]} follows {times[i - 1]} (expected "
                         f"{expected[i - 1]}). Fill the gaps in the file, or set data.frequency: steps")
    return frequency


def future_times(last: pd.Timestamp, frequency: str, horizon: int) -> pd.DatetimeIndex:
    """The ``horizon`` timestamps after ``last`` at ``frequency`` (next business days for ``"B"``)."""
    if frequency == "steps":
        raise ValueError("a 'steps' series has no future timestamps; forecasts are numbered by step")
    return pd.date_range(start=pd.Timestamp(last), periods=horizon + 1, freq=frequency)[1:]


def season_length(frequency: str) -> int:
    """The usual seasonal period in steps: 24 hourly, 7 daily, 5 business-daily, 12 monthly, 4 quarterly, 1 otherwise."""
    if frequency == "steps":
        return 1
    base = pd.tseries.frequencies.to_offset(frequency)
    name = type(base).__name__
    n = getattr(base, "n", 1)
    if name == "Hour":
        return max(1, 24 // n)
    if name == "Minute":
        return max(1, 24 * 60 // n)
    if name == "Day":
        return 7 if n == 1 else 1
    if name == "BusinessDay":
        return 5
    if name.startswith("Month"):
        return 12
    if name.startswith("Quarter"):
        return 4
    if name == "Week":
        return 52
    return 1


# ---------------------------------------------------------------- split and windows

def split_bounds(n: int, split: Any, times: pd.DatetimeIndex | None) -> tuple[int, int, int]:
    """Row bounds ``(train_end, val_end, test_end)``: train = ``[0, train_end)``, val = ``[train_end, val_end)``,
    test = ``[val_end, test_end)``; rows from ``test_end`` on are unused.

    split: three fractions (``[0.7, 0.1, 0.2]``, summing to at most 1), three row counts (``[8640, 2880, 2880]``),
    or a mapping of dates ``{"val": "2014-01-01", "test": "2015-01-01"}`` (each split starts at its first row
    with ``time >= date``; an optional ``"end"`` date ends the test part).
    """
    if isinstance(split, Mapping):
        if times is None:
            raise ValueError("a split by dates needs a time_column")
        unknown = set(split) - {"val", "test", "end"}
        if unknown or not {"val", "test"} <= set(split):
            raise ValueError(f"a split by dates has the keys val, test (and optionally end); got {sorted(split)}")
        bounds = [int(times.searchsorted(pd.Timestamp(split[k]))) for k in ("val", "test")]
        end = int(times.searchsorted(pd.Timestamp(split["end"]))) if split.get("end") else n
        train_end, val_end, test_end = bounds[0], bounds[1], end
    else:
        parts = list(split)
        if len(parts) != 3 or any(p < 0 for p in parts):
            raise ValueError(f"split must list three non-negative parts (train, val, test), got {parts}")
        if all(float(p).is_integer() for p in parts) and sum(parts) > 1:
            train_end, val_end, test_end = int(parts[0]), int(parts[0] + parts[1]), int(sum(parts))
            if test_end > n:
                raise ValueError(f"split by rows {parts} needs {test_end} rows; the table has {n}")
        else:
            if sum(parts) > 1 + 1e-9:
                raise ValueError(f"split fractions {parts} add up to {sum(parts):.3f} > 1")
            train_end = int(round(parts[0] * n))
            val_end = int(round((parts[0] + parts[1]) * n))
            test_end = int(round(sum(parts) * n))
    if not (0 < train_end <= val_end <= test_end <= n):
        raise ValueError(f"split {split!r} gives empty or out-of-order parts on {n} rows: "
                         f"train [0, {train_end}), val [{train_end}, {val_end}), test [{val_end}, {test_end})")
    return train_end, val_end, test_end


def window_origins(begin: int, end: int, lookback: int, horizon: int, stride: int = 1) -> np.ndarray:
    """Forecast origins ``t`` whose targets ``[t, t + horizon)`` lie in ``[begin, end)`` and whose inputs
    ``[t - lookback, t)`` start at row 0 or later (they may reach back into an earlier split: those rows are
    observed before ``t``, as in the standard protocols)."""
    first = max(begin, lookback)
    last = end - horizon
    if last < first:
        return np.zeros(0, dtype=np.int64)
    return np.arange(first, last + 1, stride, dtype=np.int64)


def gather_windows(values: torch.Tensor, origins: torch.Tensor, lookback: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``values: (time, features)``, ``origins: (n,)`` -> past ``(n, lookback, features)`` = rows
    ``[t - lookback, t)`` and future ``(n, horizon, features)`` = rows ``[t, t + horizon)``."""
    past_idx = origins[:, None] + torch.arange(-lookback, 0, device=origins.device)
    future_idx = origins[:, None] + torch.arange(0, horizon, device=origins.device)
    return values[past_idx], values[future_idx]


def one_hot(values: pd.Series, categories: Sequence[str]) -> np.ndarray:
    """``(len(values), len(categories))`` 0/1 float32; a value not in ``categories`` is all zeros."""
    index = {c: i for i, c in enumerate(categories)}
    out = np.zeros((len(values), len(categories)), dtype=np.float32)
    pos = np.array([index.get(v, -1) for v in values.astype(str)], dtype=np.int64)
    ok = pos >= 0
    out[np.flatnonzero(ok), pos[ok]] = 1.0
    return out
