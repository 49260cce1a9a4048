"""Time-series classification data: UCR/UEA ``.ts`` files, long-format CSV tables, one-file-per-sequence folders.

Every reader returns a :class:`SeriesSet`: a list of ``(time_i, channels)`` float arrays (lengths may differ),
their string labels and the class names in a fixed order. Missing values are an error (``ValueError`` naming
the file and line): nothing is filled or dropped silently.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


@dataclass
class SeriesSet:
    """Labelled multichannel series. ``series[i]``: ``(time_i, channels)`` float32; ``labels[i]``: a class name."""

    series: list[np.ndarray]
    labels: list[str]
    class_names: list[str]
    groups: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.series) != len(self.labels):
            raise ValueError(f"{len(self.series)} series but {len(self.labels)} labels")
        unknown = sorted(set(self.labels) - set(self.class_names))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not among the declared classes {self.class_names}")

    def __len__(self) -> int:
        return len(self.series)

    @property
    def channels(self) -> int:
        return int(self.series[0].shape[1]) if self.series else 0

    def subset(self, index: Sequence[int]) -> "SeriesSet":
        groups = [self.groups[i] for i in index] if self.groups is not None else None
        return SeriesSet([self.series[i] for i in index], [self.labels[i] for i in index], list(self.class_names),
                         groups, dict(self.meta))


# ---------------------------------------------------------------------------------------------------------
# .ts (sktime / UEA)
# ---------------------------------------------------------------------------------------------------------
def read_ts(path: str | Path) -> SeriesSet:
    """Read a UCR/UEA ``.ts`` file: univariate or multivariate, equal or variable length.

    Format: ``#`` comments, ``@key value`` headers up to ``@data``, then one case per line: channels separated
    by ``:``, values by ``,``, the class label after the last ``:``. Class order follows ``@classLabel true ...``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".ts file not found: {path}")
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    dims = None
    with path.open(encoding="utf-8", errors="strict") as handle:
        for lineno, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise ValueError(f"{path}:{lineno}: expected a '@' header or '@data' before the data, got {line[:40]!r}")
                key, _, value = line[1:].partition(" ")
                key = key.lower()
                if key == "data":
                    in_data = True
                else:
                    header[key] = value.strip()
                continue
            if header.get("timestamps", "false").lower() == "true":
                raise ValueError(f"{path}: time-stamped .ts files ('@timeStamps true') are not supported")
            parts = line.split(":")
            if len(parts) < 2:
                raise ValueError(f"{path}:{lineno}: expected '<channel>:...:<label>', got {line[:40]!r}")
            label, channels = parts[-1].strip(), parts[:-1]
            arrays = []
            for c, text in enumerate(channels):
                if "?" in text or "nan" in text.lower():
                    raise ValueError(f"{path}:{lineno}: channel {c} has missing values ('?' / NaN); "
                                     "fill or drop them before training")
                try:
                    arrays.append(np.asarray([float(v) for v in text.split(",")], dtype=np.float32))
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: channel {c} has a non-numeric value") from None
            lens = {a.size for a in arrays}
            if len(lens) != 1:
                raise ValueError(f"{path}:{lineno}: channels of one case have different lengths {sorted(lens)}")
            if dims is None:
                dims = len(arrays)
            elif len(arrays) != dims:
                raise ValueError(f"{path}:{lineno}: {len(arrays)} channels, earlier cases have {dims}")
            series.append(np.stack(arrays, axis=1))
            labels.append(label)
    if not series:
        raise ValueError(f"{path}: no cases after '@data'")
    if "dimensions" in header and int(header["dimensions"]) != dims:
        raise ValueError(f"{path}: header says @dimensions {header['dimensions']}, cases have {dims} channels")
    declared = header.get("classlabel", "")
    names = declared.split()[1:] if declared.lower().startswith("true") else []
    if not names:
        names = sorted(set(labels))
    meta = {"problem": header.get("problemname", path.stem), "source": str(path)}
    return SeriesSet(series, labels, names, meta=meta)


# ---------------------------------------------------------------------------------------------------------
# long-format CSV: one row per time step
# ---------------------------------------------------------------------------------------------------------
def read_series_table(path: str | Path, id_column: str, label_column: str, feature_columns: Sequence[str] | None = None,
                      time_column: str | None = None, class_names: Sequence[str] | None = None) -> SeriesSet:
    """Read a CSV with one row per time step: ``id_column`` names the series, ``label_column`` its class.

    Rows of a series are ordered by ``time_column`` when given (else kept in file order). ``feature_columns``
    defaults to every other numeric column. A series whose rows disagree on the label is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    frame = pd.read_csv(path)
    for col in [id_column, label_column] + ([time_column] if time_column else []) + list(feature_columns or []):
        if col not in frame.columns:
            raise ValueError(f"{path}: column {col!r} not found; columns are {list(frame.columns)}")
    if feature_columns is None:
        skip = {id_column, label_column, time_column}
        feature_columns = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]
        if not feature_columns:
            raise ValueError(f"{path}: no numeric feature columns besides {sorted(c for c in skip if c)}")
    for col in feature_columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            raise ValueError(f"{path}: feature column {col!r} is not numeric (dtype {frame[col].dtype})")
        n_missing = int(frame[col].isna().sum())
        if n_missing:
            row = int(np.flatnonzero(frame[col].isna().to_numpy())[0])
            raise ValueError(f"{path}: column {col!r} has {n_missing} missing values (first at data row {row + 1})")
    series, labels, ids = [], [], []
    for key, rows in frame.groupby(id_column, sort=False):
        if time_column:
            rows = rows.sort_values(time_column, kind="stable")
        row_labels = rows[label_column].astype(str).unique()
        if len(row_labels) != 1:
            raise ValueError(f"{path}: series {key!r} has several labels {list(row_labels)[:5]}")
        series.append(rows[list(feature_columns)].to_numpy(dtype=np.float32))
        labels.append(str(row_labels[0]))
        ids.append(str(key))
    names = list(class_names) if class_names else sorted(set(labels))
    return SeriesSet(series, labels, names, meta={"source": str(path), "ids": ids, "features": list(feature_columns)})


# ---------------------------------------------------------------------------------------------------------
# one CSV per sequence (a folder or a zip archive), a labels table and optional groups
# ---------------------------------------------------------------------------------------------------------
class _Archive:
    """Read files by relative name from a folder or a zip archive."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.is_file() and zipfile.is_zipfile(self.root):
            self.zip = zipfile.ZipFile(self.root)
        elif self.root.is_dir():
            self.zip = None
        else:
            raise FileNotFoundError(f"sequence archive not found (a folder or a .zip): {self.root}")

    def read(self, name: str) -> str:
        try:
            if self.zip is not None:
                return self.zip.read(name).decode("utf-8")
            return (self.root / name).read_text(encoding="utf-8")
        except (KeyError, FileNotFoundError):
            raise FileNotFoundError(f"{self.root}: no file {name!r}") from None


def _read_two_columns(text: str, where: str) -> dict[str, str]:
    frame = pd.read_csv(io.StringIO(text), comment=None, header=None, skipinitialspace=True, dtype=str)
    frame = frame[~frame[0].astype(str).str.startswith("#")]
    if frame.shape[1] < 2:
        raise ValueError(f"{where}: expected two columns (id, value), got {frame.shape[1]}")
    return {str(k).strip(): str(v).strip() for k, v in zip(frame[0], frame[1])}


def read_sequence_files(root: str | Path, pattern: str, labels_file: str, groups_file: str | None = None,
                        class_names: Sequence[str] | None = None) -> SeriesSet:
    """Read one CSV per sequence from a folder or zip ``root``.

    ``pattern`` names each sequence's file with ``{id}`` (e.g. ``dataset/MovementAAL_RSS_{id}.csv``); each file is
    numeric rows, one per time step, with optional ``#`` comment lines. ``labels_file`` is a two-column
    table ``id,label`` (``#`` lines skipped); ``groups_file`` likewise ``id,group`` (for group-wise splits).
    """
    if "{id}" not in pattern:
        raise ValueError(f"pattern {pattern!r} must contain '{{id}}'")
    archive = _Archive(root)
    labels_by_id = _read_two_columns(archive.read(labels_file), f"{root}:{labels_file}")
    groups_by_id = _read_two_columns(archive.read(groups_file), f"{root}:{groups_file}") if groups_file else None
    series, labels, groups, ids = [], [], [], []
    channels = None
    for sid in sorted(labels_by_id, key=lambda s: (len(s), s)):
        name = pattern.replace("{id}", sid)
        where = f"{root}:{name}"
        frame = pd.read_csv(io.StringIO(archive.read(name)), comment="#", header=None, skipinitialspace=True)
        if frame.empty:
            raise ValueError(f"{where}: no rows")
        if frame.isna().any().any():
            raise ValueError(f"{where}: missing values")
        try:
            values = frame.to_numpy(dtype=np.float32)
        except ValueError:
            raise ValueError(f"{where}: non-numeric values") from None
        if channels is None:
            channels = values.shape[1]
        elif values.shape[1] != channels:
            raise ValueError(f"{where}: {values.shape[1]} columns, earlier sequences have {channels}")
        series.append(values)
        labels.append(labels_by_id[sid])
        ids.append(sid)
        if groups_by_id is not None:
            if sid not in groups_by_id:
                raise ValueError(f"{root}:{groups_file}: no group for sequence {sid!r}")
            groups.append(groups_by_id[sid])
    names = list(class_names) if class_names else sorted(set(labels), key=_natural_key)
    return SeriesSet(series, labels, names, groups if groups_by_id is not None else None,
                     meta={"source": str(root), "ids": ids})


def _natural_key(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def class_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """``n / (k * n_c)`` per class (sklearn's 'balanced'); a class absent from ``labels`` is an error."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"classes {np.flatnonzero(counts == 0).tolist()} have no training examples")
    return (counts.sum() / (num_classes * counts)).astype(np.float32)

