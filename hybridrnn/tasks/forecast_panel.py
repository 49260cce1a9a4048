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
import torch
from torch import Tensor, nn

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


def static_values(frame: pd.DataFrame, columns: Sequence[str], sid: str, name: str) -> dict[str, str]:
    """``{column: value}`` (as text) of a series' static covariates; a column missing, empty or holding more
    than one value in the series is a ``DataError`` naming the series and the column."""
    out = {}
    for col in columns:
        if col not in frame.columns:
            raise DataError(f"{name}: no column {col!r} (data.static_covariates)")
        values = pd.unique(frame[col].dropna().astype(str))
        if len(values) != 1 or frame[col].isna().any():
            shown = ", ".join(values[:5]) if len(values) else "none"
            raise DataError(f"{name}: series {sid}: static covariate {col!r} must hold one value in every row of the "
                            f"series; it has {len(values)} distinct value(s) ({shown})"
                            + (" and empty cells" if frame[col].isna().any() else ""))
        out[col] = str(values[0])
    return out


def fit_statics(per_series: Sequence[dict[str, str]], columns: Sequence[str]) -> dict[str, dict]:
    """The encoding of static covariates from the training series' values: ``{column: {"kind": "numeric",
    "mean", "std"}}`` when every value is a number, else ``{"kind": "categorical", "categories": [...]}``."""
    out = {}
    for col in columns:
        values = [s[col] for s in per_series]
        numbers = pd.to_numeric(pd.Series(values), errors="coerce")
        if numbers.notna().all():
            std = float(numbers.std(ddof=0))
            out[col] = {"kind": "numeric", "mean": float(numbers.mean()), "std": std if std > 1e-12 else 1.0}
        else:
            out[col] = {"kind": "categorical", "categories": sorted(set(values))}
    return out


def encode_statics(values: dict[str, str], encoding: dict[str, dict]) -> np.ndarray:
    """``(static_size,)`` float32: each numeric static standardised, each categorical one-hot (an unseen value:
    zeros), in the order of ``encoding``."""
    parts = []
    for col, enc in encoding.items():
        if enc["kind"] == "numeric":
            try:
                parts.append([(float(values[col]) - enc["mean"]) / enc["std"]])
            except ValueError:
                raise DataError(f"static covariate {col!r} was numeric in training; got {values[col]!r}") from None
        else:
            parts.append([1.0 if values[col] == c else 0.0 for c in enc["categories"]])
    return np.asarray([v for p in parts for v in p], np.float32)


def static_size(encoding: dict[str, dict]) -> int:
    """Input channels the static covariates take."""
    return sum(1 if e["kind"] == "numeric" else len(e["categories"]) for e in encoding.values())


class IdEmbedding(nn.Module):
    """A forecaster with a learned embedding of the series id (``model.id_embedding``).

    The task puts a one-hot of the series id into channels ``[start, start + num_ids)`` of ``past`` (constant
    over the look-back); this module replaces them by ``E[id]`` (``E: (num_ids, dim)``, a bias-free linear map of
    the one-hot, i.e. an embedding lookup) and calls ``inner`` (a Forecaster built for ``input_size - num_ids +
    dim`` channels). ``forward(past, future)`` keeps the Forecaster's signature and outputs."""

    def __init__(self, inner: nn.Module, start: int, num_ids: int, dim: int):
        super().__init__()
        self.inner, self.start, self.num_ids = inner, start, num_ids
        self.embed = nn.Linear(num_ids, dim, bias=False)

    def forward(self, past: Tensor, future: Tensor | None = None):
        """past ``(B, L, input_size)`` with the one-hot id at ``[start, start + num_ids)``; see Forecaster."""
        a, b = self.start, self.start + self.num_ids
        emb = self.embed(past[:, :, a:b])                                   # (B, L, dim)
        return self.inner(torch.cat([past[:, :, :a], emb, past[:, :, b:]], dim=2), future)
