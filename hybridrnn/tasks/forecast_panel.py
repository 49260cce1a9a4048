"""Panels for the forecast task: a long table of many series (``data.id_column``) cut into one frame per series.

A series is named by its id value (several id columns: the values joined by ``/``); series keep the order in
which they first appear. The forecast task loads and validates each frame as a series of its own (one time grid
each, one frequency for all), fits a scaler per series on that series' training part and draws windows from
every series without ever mixing two (see :class:`hybridrnn.tasks.forecast.ForecastTask`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hybridrnn.data.timeseries import read_table
from hybridrnn.errors import DataError


def id_columns(id_column: str | Sequence[str] | None) -> list[str]:
    """``data.id_column`` as a list (empty: not a panel)."""
    if id_column is None:
        return []
    return [id_column] if isinstance(id_column, str) else list(id_column)


def series_frames(source: Any, ids: Sequence[str], where: Mapping[str, Any] | None = None, *,
                  header: bool = True) -> tuple[list[tuple[str, tuple, pd.DataFrame]], str]:
    """``([(series id, id values, frame), ...], source name)``: the rows of each series of ``source`` (after
    ``where``), in order of first appearance; a missing id column or an empty id cell is a ``DataError``."""
    raw, name = read_table(source, header=header)
    missing = [c for c in ids if c not in raw.columns]
    if missing:
        raise DataError(f"{name}: no id column(s) {missing} (data.id_column); the table has {list(raw.columns)}")
    for col, value in (where or {}).items():
        if col in raw.columns:
            raw = raw[(raw[col].astype(str) == str(value)).to_numpy()]
    empty = raw[list(ids)].isna().any(axis=1).to_numpy()
    if empty.any():
        first = int(np.flatnonzero(empty)[0])
        raise DataError(f"{name}: {int(empty.sum())} row(s) have an empty id ({', '.join(ids)}), the first at row "
                        f"{first}; every row of a panel belongs to a named series")
    keys = raw[list(ids)].astype(str)
    label = keys.iloc[:, 0] if len(ids) == 1 else keys.agg("/".join, axis=1)
    out = []
    for sid in pd.unique(label):
        rows = (label == sid).to_numpy()
        values = tuple(raw.loc[rows, list(ids)].iloc[0])
        out.append((str(sid), values, raw[rows].reset_index(drop=True)))
    return out, name


def offset_origins(parts: Sequence[np.ndarray], lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-series origins (local row numbers) -> ``(global origins, series index of each)``, the series' rows
    stacked in order (series ``i`` starts at row ``sum(lengths[:i])``)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    origins = [np.asarray(p, np.int64) + off for p, off in zip(parts, offsets)]
    series = [np.full(len(p), i, np.int64) for i, p in enumerate(parts)]
    return (np.concatenate(origins) if origins else np.zeros(0, np.int64),
            np.concatenate(series) if series else np.zeros(0, np.int64))
