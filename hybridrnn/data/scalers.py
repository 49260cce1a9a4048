"""Per-column scalers fitted on the training rows only, saved and loaded as plain JSON dicts.

Every scaler maps ``x`` to ``(x - center) / scale`` column by column, so one pair of vectors describes it:

- ``standard``: center = mean, scale = standard deviation (population, ``ddof=0``, as scikit-learn);
- ``minmax``: center = min, scale = max - min (the training part maps to ``[0, 1]``);
- ``robust``: center = median, scale = inter-quartile range (25th to 75th percentile);
- ``none``: center = 0, scale = 1.

A column that is constant on the training part gets scale 1 (it is only shifted), never a division by zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hybridrnn.errors import ConfigError, DataError, RunDirError

SCALERS = ("standard", "minmax", "robust", "none")


@dataclass
class Scaler:
    """``x -> (x - center) / scale`` per column; ``columns`` names them (for the JSON and error messages)."""

    kind: str
    columns: list[str]
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, kind: str, values: np.ndarray, columns: Sequence[str]) -> "Scaler":
        """Fit on ``values: (rows, columns)`` (the training rows, and only those)."""
        if kind not in SCALERS:
            raise ConfigError(f"unknown scaler {kind!r}; expected one of {', '.join(SCALERS)}")
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(columns):
            raise DataError(f"scaler fit expects values of shape (rows, {len(columns)}), got {values.shape}")
        if values.shape[0] == 0:
            raise DataError("scaler fit got no rows (the training split is empty)")
        if kind == "standard":
            center, scale = values.mean(axis=0), values.std(axis=0)
        elif kind == "minmax":
            center, scale = values.min(axis=0), values.max(axis=0) - values.min(axis=0)
        elif kind == "robust":
            q25, q50, q75 = np.percentile(values, [25, 50, 75], axis=0)
            center, scale = q50, q75 - q25
        else:
            center, scale = np.zeros(values.shape[1]), np.ones(values.shape[1])
        scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
        return cls(kind, list(columns), np.asarray(center, np.float64), np.asarray(scale, np.float64))

    def _check(self, values: np.ndarray, index: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
        center, scale = (self.center, self.scale) if index is None else (self.center[list(index)], self.scale[list(index)])
        if values.shape[-1] != center.shape[0]:
            raise DataError(f"scaler expects {center.shape[0]} columns in the last axis, got shape {values.shape}")
        return center, scale

    def transform(self, values: np.ndarray, index: Sequence[int] | None = None) -> np.ndarray:
        """Scale ``values: (..., columns)``; ``index`` selects a subset of the fitted columns (in that order)."""
        values = np.asarray(values, dtype=np.float64)
        center, scale = self._check(values, index)
        return (values - center) / scale

    def inverse_transform(self, values: np.ndarray, index: Sequence[int] | None = None) -> np.ndarray:
        """Back to the original scale: ``values * scale + center`` (``index`` as in :meth:`transform`)."""
        values = np.asarray(values, dtype=np.float64)
        center, scale = self._check(values, index)
        return values * scale + center

    def to_dict(self) -> dict:
        return {"kind": self.kind, "columns": list(self.columns),
                "center": [float(v) for v in self.center], "scale": [float(v) for v in self.scale]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        """The scaler :meth:`to_dict` wrote; a malformed dict (a damaged run file) is a :class:`RunDirError`."""
        if not isinstance(d, dict):
            raise RunDirError(f"scaler JSON must be an object, got {type(d).__name__}")
        for key in ("kind", "columns", "center", "scale"):
            if key not in d:
                raise RunDirError(f"scaler JSON lacks the key {key!r} (has {sorted(map(str, d))})")
        if d["kind"] not in SCALERS:
            raise RunDirError(f"scaler JSON has an unknown kind {d['kind']!r}")
        if not isinstance(d["columns"], list) or not all(isinstance(c, str) for c in d["columns"]):
            raise RunDirError("scaler JSON 'columns' must be a list of column names")
        try:
            center, scale = np.asarray(d["center"], np.float64), np.asarray(d["scale"], np.float64)
        except (TypeError, ValueError):
            raise RunDirError("scaler JSON 'center' and 'scale' must be lists of numbers") from None
        if center.ndim != 1 or scale.ndim != 1 or not (len(d["columns"]) == center.shape[0] == scale.shape[0]):
            raise RunDirError(f"scaler JSON has {len(d['columns'])} columns but {center.size} centers "
                              f"and {scale.size} scales")
        if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale != 0).all()):
            raise RunDirError("scaler JSON has a non-finite center or scale, or a zero scale")
        return cls(d["kind"], list(d["columns"]), center, scale)
