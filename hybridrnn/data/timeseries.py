"""Time-series tables: loading, validation, frequency, chronological split and windows.

Everything here is pandas/numpy (plus torch for the window gather); no models.

A table is read from CSV (``.csv``, ``.csv.gz``, ``.txt``), Parquet or a DataFrame and validated before anything
is computed: an empty file, a header without data rows, a time column that does not parse, duplicated or
decreasing timestamps, gaps at a regular frequency, non-numeric values in numeric columns, non-finite values
(``inf``, ``-inf``, numbers beyond float64) and missing values are each a :class:`TableError` (a
:class:`hybridrnn.errors.DataError`) naming the file, the column, how many values are at fault and the first
offending row; a bad option (``fill``, ``frequency``, ``start``...) is a :class:`hybridrnn.errors.ConfigError`.
Rows are counted from 0 over the data rows of the file (``line`` = row + 2 in a CSV with a header and no blank
lines). Missing values are filled only when asked (``fill="ffill"`` or ``"interpolate"``), and a value that
cannot be filled (a leading gap) is an error. Nothing is dropped, filled or cut silently.

For ``predict``: ``load_table(..., rows=slice(-lookback, None))`` reads and validates only the look-back, and
:func:`check_time_grid` refuses input timestamps that do not continue the training data's frequency grid.

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

from hybridrnn.data.registry import DataFileNotFoundError
from hybridrnn.errors import ConfigError, DataError, MissingExtraError

__all__ = ["TableError", "SeriesTable", "read_table", "table_columns", "load_table", "check_time_grid", "time_grid_mask",
           "infer_frequency", "future_times", "season_length", "split_bounds", "window_origins", "gather_windows",
           "one_hot"]

_ROW = "__hybridrnn_row__"   # the original row number of each row, carried through the filters


class TableError(DataError):
    """A table that cannot be used as it is; the message names file, column, count and first offending row.
    (A :class:`hybridrnn.errors.DataError`, hence a ``HybridRNNError`` and a ``ValueError``.)"""


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
    """The raw table and a name for messages (the file path, or ``"DataFrame"``).

    Nothing is guessed or dropped silently: a CSV row with more fields than the header, a header that names a
    column twice, an empty file and a file that is not CSV / Parquet (or not UTF-8, or a broken archive) are
    each a :class:`TableError` naming the file. A missing file is a :class:`DataFileNotFoundError` (both a
    ``DataError`` and a ``FileNotFoundError``). Blank lines of a CSV are not rows (pandas skips them).
    """
    if isinstance(source, pd.DataFrame):
        frame = source.reset_index(drop=True).copy()
        frame.columns = [str(c) for c in frame.columns]
        _check_unique_columns(list(frame.columns), "DataFrame")
        return frame, "DataFrame"
    path = Path(source)
    if not path.exists():
        raise DataFileNotFoundError(f"data file not found: {path}")
    name = str(path)
    if path.is_dir():
        raise TableError(f"{name}: is a folder, not a data file (CSV or Parquet)")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path).reset_index(drop=True)
        except ImportError as exc:
            raise MissingExtraError(f"reading {name} needs a Parquet engine: pip install pyarrow "
                                    f"(or hybridrnn[parquet])") from exc
        except Exception as exc:  # pyarrow's ArrowInvalid, OSError without errno, ...: a broken file
            if isinstance(exc, OSError) and exc.errno is not None:
                raise   # a real I/O error (permission, disk): the caller reports it with the path
            raise TableError(f"{name}: cannot be read as Parquet: {_first_line(exc)}") from exc
        _check_unique_columns([str(c) for c in frame.columns], name)
        frame.columns = [str(c) for c in frame.columns]
        return frame, name
    frame = _read_csv(path, name, header=header)
    if not header:
        frame.columns = [str(c) for c in frame.columns]
    return frame, name


def table_columns(source: str | Path | pd.DataFrame, *, header: bool = True) -> list[str]:
    """The column names of a table (CSV header, Parquet schema or DataFrame) without reading its rows, with the
    errors of :func:`read_table` (a :class:`TableError` naming the file; a missing file a
    :class:`DataFileNotFoundError`)."""
    if isinstance(source, pd.DataFrame):
        return [str(c) for c in source.columns]
    path = Path(source)
    if not path.exists():
        raise DataFileNotFoundError(f"data file not found: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    if path.is_dir() or (suffixes and suffixes[-1] in (".parquet", ".pq")):
        return list(read_table(path, header=header)[0].columns)
    return [str(c) for c in _read_csv(path, str(path), header=header, nrows=0).columns]


def _read_csv(path: Path, name: str, *, header: bool, nrows: int | None = None) -> pd.DataFrame:
    """``pd.read_csv`` with every problem of the file as a :class:`TableError` naming it."""
    if path.stat().st_size == 0:
        raise TableError(f"{name}: the file is empty (no header, no rows)")
    try:
        with warnings.catch_warnings():
            # a data row longer than the header would be cut silently (ParserWarning): make it an error
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, header=0 if header else None, index_col=False, nrows=nrows)
            if header:
                names = pd.read_csv(path, header=None, nrows=1, index_col=False, dtype=str).iloc[0].tolist()
                _check_unique_columns(["" if pd.isna(n) else str(n) for n in names], name)
    except TableError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise TableError(f"{name}: the file has no columns to read (it is empty or blank)") from exc
    except UnicodeDecodeError as exc:
        raise TableError(f"{name}: is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV") from exc
    except pd.errors.ParserWarning as exc:
        raise TableError(f"{name}: some rows have more fields than the header ({len(_header_of(path))} "
                         f"columns); every row needs one value per column") from exc
    except (pd.errors.ParserError, ValueError, OverflowError, EOFError) as exc:
        raise TableError(f"{name}: cannot be read as CSV: {_first_line(exc)}") from exc
    except OSError as exc:  # a broken .gz / .zip / .bz2 / .xz archive (no errno); real I/O errors go up
        if exc.errno is not None:
            raise
        raise TableError(f"{name}: cannot be read as CSV: {_first_line(exc)}") from exc
    except Exception as exc:  # zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.ReadError: broken archive
        if type(exc).__module__ in ("zlib", "lzma", "zipfile", "tarfile", "_compression", "gzip", "bz2"):
            raise TableError(f"{name}: cannot be read as CSV: {_first_line(exc)}") from exc
        raise
    return frame


def _shown(value: Any) -> str:
    """A cell for a message: strings quoted, numbers as written (``inf``, not ``np.float64(inf)``)."""
    return repr(value) if isinstance(value, str) else str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _header_of(path: Path) -> list[str]:
    try:
        return pd.read_csv(path, header=None, nrows=1, index_col=False, dtype=str).iloc[0].tolist()
    except Exception:  # only for a message
        return []


def _check_unique_columns(columns: list[str], name: str) -> None:
    seen: dict[str, int] = {}
    for i, c in enumerate(columns):
        if c in seen and c != "":
            raise TableError(f"{name}: the header names column {c!r} twice (columns {seen[c] + 1} and {i + 1}); "
                             f"rename one")
        seen[c] = i


def _where(row: int, times: pd.Series | pd.DatetimeIndex | None = None, i: int | None = None, csv: bool = True) -> str:
    text = f"row {row}" + (f" (line {row + 2})" if csv else "")
    if times is not None and i is not None:
        text += f", time {times[i]}"
    return text


def load_table(source: str | Path | pd.DataFrame, *, time_column: str | Sequence[str] | None,
               numeric: Sequence[str], categorical: Sequence[str] = (),
               where: Mapping[str, Any] | None = None, start: str | None = None, end: str | None = None,
               frequency: str | None = None, fill: str | None = None, header: bool = True,
               rows: slice | None = None) -> SeriesTable:
    """Read and validate a table.

    time_column: one column of dates, a list of columns assembled into a date (e.g. ``[year, month, day,
    hour]``), or None (rows are steps). numeric / categorical: the columns to keep. where: keep rows whose
    column equals a value (``{"Ticker": "AAPL"}``). start / end: keep times ``start <= t < end``.
    frequency: an offset alias, ``"steps"`` or None (inferred). fill: None, ``"ffill"`` or ``"interpolate"``.

    rows: a slice of the rows left after ``where`` (e.g. ``slice(-96, None)``: the last 96, a forecaster's
    look-back): only those rows are kept and validated (dates, order, frequency, numbers, missing and
    non-finite values); the others are not read further, so a fault outside them is not an error. Messages
    still count rows over the whole file and say which rows were checked. ``start`` / ``end`` apply after it.

    Errors are :class:`TableError` (a ``DataError``): an empty file, a header without data rows, a missing
    column, dates that do not parse, repeated or decreasing timestamps, gaps in the frequency grid,
    non-numeric, missing (unless ``fill``) or non-finite (``inf``, ``-inf``) values, each naming the file, the
    column, how many values are at fault and the first row. A bad ``fill``, ``frequency``, ``start`` or ``end``
    is a :class:`ConfigError`. Nothing is dropped, filled or cut silently.
    """
    if fill not in (None, "ffill", "interpolate"):
        raise ConfigError(f"unknown fill {fill!r}; expected 'ffill' or 'interpolate' (or leave data.fill unset)")
    raw, name = read_table(source, header=header)
    csv = name != "DataFrame" and not name.lower().endswith((".parquet", ".pq"))
    if not header:
        raw.columns = [str(c) for c in raw.columns]
    if len(raw) == 0:
        what = "has a header but no data rows" if csv and header else "has no rows"
        raise TableError(f"{name}: {what} (columns: {list(raw.columns)})")
    raw[_ROW] = np.arange(len(raw))
    wanted = ([time_column] if isinstance(time_column, str) else list(time_column or [])) + list(numeric) + list(categorical)
    missing_cols = [c for c in dict.fromkeys(wanted) if c not in raw.columns] + \
                   [c for c in (where or {}) if c not in raw.columns]
    if missing_cols:
        raise TableError(f"{name}: no column(s) {missing_cols}; the table has {[c for c in raw.columns if c != _ROW]}")
    if len(set(numeric) & set(categorical)):
        raise TableError(f"{name}: column(s) {sorted(set(numeric) & set(categorical))} listed both as numeric and categorical")

    for col, value in (where or {}).items():
        keep = raw[col].astype(str) == str(value)
        if not keep.any():
            values = list(dict.fromkeys(raw[col].astype(str)))[:10]
            raise TableError(f"{name}: no row has {col} == {value!r}; values present include {values}")
        raw = raw[keep.to_numpy()]
    raw = raw.reset_index(drop=True)
    scope = ""
    if rows is not None:
        if not isinstance(rows, slice):
            raise TypeError(f"load_table: rows must be a slice, got {type(rows).__name__}")
        total = len(raw)
        raw = raw.iloc[rows].reset_index(drop=True)
        if len(raw) == 0:
            raise TableError(f"{name}: no rows in the range {_slice_text(rows)} (the table has {total} rows)")
        first, last = int(raw[_ROW].iloc[0]), int(raw[_ROW].iloc[-1])
        scope = f" (only rows {first}-{last}, the {len(raw)} rows read, were checked)"
    try:
        return _validate(raw, name, csv, time_column, numeric, categorical, start, end, frequency, fill)
    except TableError as exc:
        if not scope:
            raise
        raise TableError(f"{exc}{scope}") from exc


def _slice_text(rows: slice) -> str:
    text = f"{'' if rows.start is None else rows.start}:{'' if rows.stop is None else rows.stop}"
    return text + (f":{rows.step}" if rows.step is not None else "")


def _validate(raw: pd.DataFrame, name: str, csv: bool, time_column, numeric: Sequence[str],
              categorical: Sequence[str], start, end, frequency, fill) -> SeriesTable:
    # ---- time
    times = None
    if time_column is not None:
        times = _parse_times(raw, time_column, name, csv)
        if start is not None or end is not None:
            keep = np.ones(len(raw), bool)
            if start is not None:
                keep &= (times >= _config_time(start, "data.start"))
            if end is not None:
                keep &= (times < _config_time(end, "data.end"))
            raw, times = raw[keep].reset_index(drop=True), times[keep]
            if len(raw) == 0:
                raise TableError(f"{name}: no rows left between start={start!r} and end={end!r}")
        _check_order(times, raw[_ROW].to_numpy(), time_column, name, csv)
        frequency = _resolve_frequency(times, frequency, raw[_ROW].to_numpy(), name, csv)
    else:
        if start is not None or end is not None:
            raise ConfigError(f"{name}: data.start / data.end need a time_column")
        if frequency not in (None, "steps"):
            raise ConfigError(f"{name}: frequency {frequency!r} needs a time_column; use frequency: steps")
        frequency = "steps"
    rows = raw[_ROW].to_numpy()

    # ---- numeric columns: non-numeric values, non-finite values, then missing values
    num = pd.DataFrame(index=raw.index)
    for col in numeric:
        column = raw[col]
        try:
            values = pd.to_numeric(column, errors="coerce")
            values = values.astype(np.float64)
        except (ValueError, TypeError, OverflowError):  # e.g. complex or nested values in a DataFrame
            values = pd.Series(pd.to_numeric(column.astype(str), errors="coerce"), index=column.index).astype(np.float64)
        bad = values.isna().to_numpy() & column.notna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TableError(f"{name}: column {col!r} has {int(bad.sum())} non-numeric value(s); first at "
                             f"{_where(int(rows[i]), times, i, csv)}: {_shown(column.iloc[i])}")
        inf = np.isinf(values.to_numpy())
        if inf.any():
            i = int(np.flatnonzero(inf)[0])
            raise TableError(f"{name}: column {col!r} has {int(inf.sum())} non-finite value(s) (inf or -inf, or a "
                             f"number too large for float64); first at {_where(int(rows[i]), times, i, csv)}: "
                             f"{_shown(column.iloc[i])}. Remove or correct them in the file")
        num[col] = values
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


def _config_time(value: Any, key: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{key}: {value!r} is not a date ({_first_line(exc)})") from None
    if stamp is pd.NaT:
        raise ConfigError(f"{key}: {value!r} is not a date")
    return stamp.tz_convert(None) if stamp.tz is not None else stamp


def _parse_times(raw: pd.DataFrame, time_column, name: str, csv: bool) -> pd.DatetimeIndex:
    rows = raw[_ROW].to_numpy()
    if isinstance(time_column, str):
        col = raw[time_column]
        parsed = _to_datetime(col, name, repr(time_column), rows, csv)
        label, shown = repr(time_column), col
    else:
        parts = raw[list(time_column)]
        keys = ["year", "month", "day", "hour", "minute", "second"]
        if len(time_column) > len(keys):
            raise ConfigError(f"{name}: time_column lists {len(time_column)} columns; at most 6 (year .. second)")
        frame = pd.DataFrame({k: pd.to_numeric(parts[c], errors="coerce") for k, c in zip(keys, time_column)})
        try:
            parsed = pd.to_datetime(frame, errors="coerce")
        except (ValueError, TypeError, OverflowError):  # out-of-range parts: find the first bad row one by one
            parsed = pd.Series([_assemble(frame.iloc[i]) for i in range(len(frame))], index=frame.index,
                               dtype="datetime64[ns]")
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


def _to_datetime(col: pd.Series, name: str, label: str, rows: np.ndarray, csv: bool) -> pd.Series:
    """Dates of one column (NaT where a value is not a date). Values with different UTC offsets (a DST
    change) are converted to UTC; a column that mixes values with and without an offset is an error."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return pd.to_datetime(col)
    if pd.api.types.is_bool_dtype(col):
        return pd.Series(pd.NaT, index=col.index, dtype="datetime64[ns]")
    if pd.api.types.is_numeric_dtype(col):
        # numbers are read as text (2012 -> 2012-01-01, 20200101 -> 2020-01-01), never as nanoseconds since 1970
        col = col.map(_number_text).astype(object)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pd.to_datetime(col, errors="coerce", format="mixed")
    except (ValueError, TypeError, OverflowError):
        pass   # mixed UTC offsets (or offsets mixed with naive values)
    aware = np.array([_has_offset(v) for v in col], dtype=bool)
    parsed_any = aware | np.array([_has_offset(v, naive=True) for v in col], dtype=bool)
    if aware.any() and (parsed_any & ~aware).any():
        i, j = int(np.flatnonzero(aware)[0]), int(np.flatnonzero(parsed_any & ~aware)[0])
        raise TableError(f"{name}: time column {label} mixes times with a UTC offset ({_where(int(rows[i]), csv=csv)}: "
                         f"{col.iloc[i]!r}) and without one ({_where(int(rows[j]), csv=csv)}: {col.iloc[j]!r}); "
                         f"write every time in the same form")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pd.to_datetime(col, errors="coerce", format="mixed", utc=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TableError(f"{name}: time column {label} cannot be read as dates: {_first_line(exc)}") from None


def _number_text(value: Any) -> str:
    """A number as the text a date parser reads: ``2012`` (not ``2012.0``), anything else as ``str``."""
    try:
        number = float(value)
        if np.isfinite(number) and number.is_integer():
            return str(int(number))
    except (TypeError, ValueError, OverflowError):
        pass
    return str(value)


def _has_offset(value: Any, naive: bool = False) -> bool:
    """Whether ``value`` parses as a date with (``naive=False``) or without (``naive=True``) a UTC offset."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return False
    if stamp is pd.NaT:
        return False
    return (stamp.tz is None) if naive else (stamp.tz is not None)


def _assemble(parts: pd.Series):
    try:
        return pd.to_datetime(parts.to_frame().T, errors="coerce").iloc[0]
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


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
    offset = _offset(frequency)
    if frequency.upper() == "B":
        weekend = np.flatnonzero(times.day_of_week >= 5)
        if weekend.size:
            i = int(weekend[0])
            raise TableError(f"{name}: frequency 'B' (business days) but {weekend.size} timestamp(s) fall on a "
                             f"weekend; first at {_where(int(rows[i]), csv=csv)}: {times[i]}")
        return "B"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = times[:-1] + offset
    except (ValueError, OverflowError) as exc:  # pandas' OutOfBoundsDatetime: the grid leaves the datetime range
        raise TableError(f"{name}: the timestamps at frequency {frequency!r} run outside the dates pandas can "
                         f"represent ({times[0]} .. {times[-1]}): {_first_line(exc)}") from None
    gaps = np.flatnonzero(times[1:] != expected) + 1
    if gaps.size:
        i = int(gaps[0])
        raise TableError(f"{name}: irregular timestamps at frequency {frequency!r}: {gaps.size} step(s) off the grid; "
                         f"first at {_where(int(rows[i]), csv=csv)}: {times[i]} follows {times[i - 1]} (expected "
                         f"{expected[i - 1]}). Fill the gaps in the file, or set data.frequency: steps")
    return frequency


def _offset(frequency: str):
    """The pandas offset of an alias; a :class:`ConfigError` naming it when pandas does not know it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pd.tseries.frequencies.to_offset(frequency)
    except (ValueError, TypeError):
        raise ConfigError(f"unknown frequency {frequency!r} (data.frequency); use a pandas offset alias such as "
                          f"'h', 'D', 'B', '15min', 'MS', or 'steps'") from None


def future_times(last: pd.Timestamp, frequency: str, horizon: int) -> pd.DatetimeIndex:
    """The ``horizon`` timestamps after ``last`` at ``frequency`` (next business days for ``"B"``)."""
    if frequency == "steps":
        raise ConfigError("a 'steps' series has no future timestamps; forecasts are numbered by step")
    try:
        return pd.date_range(start=pd.Timestamp(last), periods=horizon + 1, freq=_offset(frequency))[1:]
    except (OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        raise DataError(f"the {horizon} timestamps after {last} at frequency {frequency!r} run past the dates "
                        f"pandas can represent ({_first_line(exc)})") from None


def time_grid_mask(times: pd.DatetimeIndex | Sequence, last: pd.Timestamp | str, frequency: str) -> np.ndarray:
    """Whether each of ``times`` lies on the grid of ``frequency`` through ``last`` (the last training time).

    A fixed-length frequency (``"h"``, ``"15min"``, ``"D"``, ``"2D"``...) puts ``t`` on the grid when ``t - last``
    is a whole number of steps, before or after ``last``. A calendar frequency (``"B"``, ``"MS"``, ``"W-SUN"``,
    ``"QS"``...) when ``t`` is one of the dates that frequency reaches from ``last`` going forward or back
    (for ``"B"``: a weekday at the time of day of ``last``; exchange holidays are not known, so a missing
    weekday is never an error). ``"steps"``: every time is on the grid. Returns a bool array, one per time.
    """
    times = _naive_index(times)
    if frequency == "steps" or len(times) == 0:
        return np.ones(len(times), dtype=bool)
    last = _config_time(last, "the last training time")
    offset = _offset(frequency)
    step = _fixed_step(offset)
    if step is not None:
        return np.asarray(((times - last) % step) == pd.Timedelta(0), dtype=bool)
    return np.asarray(times.isin(_calendar_grid(times, last, offset)), dtype=bool)


def _naive_index(times) -> pd.DatetimeIndex:
    times = pd.DatetimeIndex(times)
    return times.tz_convert(None) if times.tz is not None else times


def _fixed_step(offset) -> pd.Timedelta | None:
    """The length of a fixed-length offset (``Tick`` or ``Day``), None for a calendar offset."""
    if type(offset).__name__ == "Day":
        return pd.Timedelta(days=offset.n)
    if isinstance(offset, pd.offsets.Tick):
        return pd.Timedelta(offset)
    return None


def _calendar_grid(times: pd.DatetimeIndex, last: pd.Timestamp, offset) -> pd.DatetimeIndex:
    """The points of a calendar offset's grid through ``last`` that span ``times`` (one more on each side)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if type(offset).__name__ == "BusinessDay" and offset.n == 1:   # weekdays at last's time of day
            lo, hi = min(times.min(), last) - pd.Timedelta(days=4), max(times.max(), last) + pd.Timedelta(days=4)
            days = pd.date_range(lo.normalize(), hi.normalize(), freq="D") + (last - last.normalize())
            return days[days.day_of_week < 5]
        nominal = max((last + offset) - last, pd.Timedelta(hours=1))
        grid = [pd.DatetimeIndex([last])]
        if times.max() > last:
            n = int((times.max() - last) / nominal) + 3
            grid.append(pd.date_range(start=last, periods=min(n, 1_000_000), freq=offset))
        if times.min() < last:
            n = int((last - times.min()) / nominal) + 3
            grid.append(pd.date_range(end=last, periods=min(n, 1_000_000), freq=offset))
        return grid[0].append(grid[1:]).unique().sort_values()


def check_time_grid(times: pd.DatetimeIndex | Sequence, last: pd.Timestamp | str, frequency: str, *,
                    source: str = "the input", rows: Sequence[int] | np.ndarray | None = None,
                    csv: bool = True) -> None:
    """Raise a :class:`TableError` when ``times`` (e.g. a ``predict`` input's) do not continue the grid of the
    training data: ``frequency`` through its last time ``last`` (see :func:`time_grid_mask`). The message
    names ``source``, how many times are off the grid, the first one (its row: ``rows[i]`` when given, else
    ``i``; ``csv`` adds the line number) and the grid times on either side of it.

    A series shifted by a fraction of a step (daily data at 01:00 instead of 00:00) is off the grid; a series
    shifted by whole steps is not (it is the same grid, later or earlier).
    """
    times = _naive_index(times)
    ok = time_grid_mask(times, last, frequency)
    if ok.all():
        return
    i = int(np.flatnonzero(~ok)[0])
    row = int(rows[i]) if rows is not None else i
    t = times[i]
    last = _config_time(last, "the last training time")
    offset = _offset(frequency)
    step = _fixed_step(offset)
    try:
        if step is not None:
            before_t = last + ((t - last) // step) * step
            after_t = before_t + step
        else:
            grid = _calendar_grid(times[i:i + 1], last, offset)
            k = int(grid.searchsorted(t))
            before_t, after_t = grid[k - 1], grid[k]
        hint = f" (the grid has {before_t} and {after_t} on either side)"
    except (IndexError, ValueError, OverflowError):  # only the hint is lost
        hint = ""
    raise TableError(f"{source}: {int((~ok).sum())} timestamp(s) are off the training data's {frequency!r} grid, "
                     f"which runs through its last time {last}; first at {_where(row, csv=csv)}: {t}{hint}. "
                     f"The input must continue the training series at the same frequency and time of day")


def season_length(frequency: str) -> int:
    """The usual seasonal period in steps: 24 hourly, 7 daily, 5 business-daily, 12 monthly, 4 quarterly, 1 otherwise."""
    if frequency == "steps":
        return 1
    base = _offset(frequency)
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
            raise ConfigError("data.split by dates needs a time_column")
        unknown = set(split) - {"val", "test", "end"}
        if unknown or not {"val", "test"} <= set(split):
            raise ConfigError(f"data.split by dates has the keys val, test (and optionally end); got {sorted(split)}")
        bounds = [int(times.searchsorted(_config_time(split[k], f"data.split.{k}"))) for k in ("val", "test")]
        end = int(times.searchsorted(_config_time(split["end"], "data.split.end"))) if split.get("end") else n
        train_end, val_end, test_end = bounds[0], bounds[1], end
    else:
        try:
            parts = [float(p) for p in split]
        except (TypeError, ValueError):
            raise ConfigError(f"data.split must list three non-negative numbers (train, val, test), got {split!r}") from None
        if len(parts) != 3 or any(not np.isfinite(p) or p < 0 for p in parts):
            raise ConfigError(f"data.split must list three non-negative parts (train, val, test), got {list(split)}")
        parts = [int(p) if p.is_integer() else p for p in parts]
        if all(float(p).is_integer() for p in parts) and sum(parts) > 1:
            train_end, val_end, test_end = int(parts[0]), int(parts[0] + parts[1]), int(sum(parts))
            if test_end > n:
                raise DataError(f"data.split by rows {parts} needs {test_end} rows; the table has {n}")
        else:
            if sum(parts) > 1 + 1e-9:
                raise ConfigError(f"data.split fractions {parts} add up to {sum(parts):.3f} > 1")
            train_end = int(round(parts[0] * n))
            val_end = int(round((parts[0] + parts[1]) * n))
            test_end = int(round(sum(parts) * n))
    if not (0 < train_end <= val_end <= test_end <= n):
        raise DataError(f"data.split {split!r} gives empty or out-of-order parts on {n} rows: "
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
