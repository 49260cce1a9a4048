"""Reading the classification task's examples: labelled texts and labelled series, from files or frames.

Every problem with the data is a :class:`hybridrnn.errors.DataError` naming the file (or "the DataFrame"), the
line or column and what is wrong. Nothing here is fitted: the task fits its state on what these return.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from hybridrnn.data.text import read_labelled_lines
from hybridrnn.data.uea import SeriesSet, read_sequence_files, read_series_table, read_ts
from hybridrnn.errors import DataError, HybridRNNError
from hybridrnn.tasks._common import data_path
from hybridrnn.tasks.classify_config import SeriesDataConfig, TextDataConfig


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """The readers' ``FileNotFoundError`` / ``ValueError`` (their messages name the file) as ``DataError``."""
    try:
        yield
    except HybridRNNError:
        raise
    except (FileNotFoundError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(str(exc)) from None


def natural_key(s: str):
    """Sort key that puts numeric labels in numeric order ("2" before "10") ahead of the others."""
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def val_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, val)`` indices of ``n`` examples, ``fraction`` of them (at least one) in val at random."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise DataError(f"val_fraction {fraction} leaves no training examples out of {n}")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _text_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    for col in columns:
        if col not in frame.columns:
            raise DataError(f"{where}: column {col!r} not found; columns are {list(frame.columns)}")
    text_col = columns[0]
    if frame[text_col].isna().any():
        row = int(np.flatnonzero(frame[text_col].isna().to_numpy())[0])
        raise DataError(f"{where}: column {text_col!r} has empty texts (data row {row + 1})")


def read_texts(source: str | Path | pd.DataFrame, d: TextDataConfig) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a labelled text file in ``d.format``, or of a DataFrame with ``d.text_column`` and
    ``d.label_column``."""
    if isinstance(source, pd.DataFrame):
        _text_columns(source, [d.text_column, d.label_column], "the DataFrame")
        return source[d.text_column].astype(str).tolist(), source[d.label_column].astype(str).tolist()
    with data_errors():
        path = data_path(str(source))
        if d.format == "label_text":
            return read_labelled_lines(path, encoding=d.encoding)
        frame = pd.read_csv(path, encoding=d.encoding)
    _text_columns(frame, [d.text_column, d.label_column], str(path))
    return frame[d.text_column].astype(str).tolist(), frame[d.label_column].astype(str).tolist()


def read_unlabelled_texts(source: Any, d: TextDataConfig) -> tuple[list[str], str]:
    """Texts to classify and where they came from: a list of strings, a pandas Series, a DataFrame with
    ``d.text_column``, a CSV file with that column (when the data's format is ``csv``) or a file with one text
    per line. An empty text is an error naming its line."""
    if isinstance(source, pd.DataFrame):
        _text_columns(source, [d.text_column], "the DataFrame")
        texts, where = source[d.text_column].astype(str).tolist(), "the DataFrame"
    elif isinstance(source, (list, tuple, pd.Series)):
        texts, where = [str(t) for t in source], "the input texts"
    else:
        with data_errors():
            path = data_path(str(source))
            if d.format == "csv" and path.suffix.lower() == ".csv":
                frame = pd.read_csv(path, encoding=d.encoding)
            else:
                frame = None
                texts = path.read_bytes().decode(d.encoding).splitlines()
        where = str(path)
        if frame is not None:
            _text_columns(frame, [d.text_column], where)
            texts = frame[d.text_column].astype(str).tolist()
    texts = [t.strip() for t in texts]
    empty = [i + 1 for i, t in enumerate(texts) if not t]
    if empty:
        raise DataError(f"{where}: text {empty[0]} is empty; give one text per line")
    if not texts:
        raise DataError(f"{where}: no texts to classify")
    return texts, where


def read_series(source: str | Path, d: SeriesDataConfig, features: Sequence[str] | None = None) -> SeriesSet:
    """Labelled series from a file (or folder / zip for ``files``) in ``d.format``; ``features``: the CSV
    feature columns in the order the model was trained on (None: the config's, or every numeric column)."""
    if isinstance(source, pd.DataFrame):
        raise DataError("time-series classification reads files (.ts, a long CSV, or a folder / zip of sequence "
                        "files); pass the path of one, or a list of (time, channels) arrays to predict")
    with data_errors():
        path = data_path(str(source))
        if d.format == "ts":
            return read_ts(path)
        if d.format == "csv":
            return read_series_table(path, d.id_column, d.label_column, features or d.feature_columns,
                                     d.time_column)
        return read_sequence_files(path, d.pattern, d.labels_file, d.groups_file)


def split_by_groups(full: SeriesSet, d: SeriesDataConfig) -> dict[str, SeriesSet]:
    """The train / val / test parts of ``full`` by the group lists of the config (``files`` with groups)."""
    groups = np.asarray(full.groups)
    known = sorted(set(full.groups), key=natural_key)
    sets: dict[str, SeriesSet] = {}
    for split, wanted in (("train", d.train_groups), ("val", d.val_groups), ("test", d.test_groups)):
        if wanted:
            bad = sorted(set(wanted) - set(known))
            if bad:
                raise DataError(f"{d.groups_file}: groups {bad} not found; groups are {known}")
            sets[split] = full.subset(np.flatnonzero(np.isin(groups, wanted)).tolist())
    return sets


def series_inputs(source: Any, d: SeriesDataConfig, features: Sequence[str] | None) -> tuple[list[np.ndarray], str]:
    """Series to classify and where they came from: a file in the data's format (its labels are ignored), a
    list of ``(time, channels)`` arrays or one ``(n, time, channels)`` array."""
    if isinstance(source, np.ndarray) and source.ndim == 3:
        source = list(source)
    if isinstance(source, (list, tuple)):
        arrays = [np.asarray(s, dtype=np.float32) for s in source]
        bad = [i for i, a in enumerate(arrays) if a.ndim != 2 or a.shape[0] == 0]
        if bad:
            raise DataError(f"input series {bad[0]} has shape {arrays[bad[0]].shape}; expected (time, channels)")
        if not arrays:
            raise DataError("no series to classify")
        nonfinite = [i for i, a in enumerate(arrays) if not np.isfinite(a).all()]
        if nonfinite:
            raise DataError(f"input series {nonfinite[0]} has missing or infinite values")
        return arrays, "the input series"
    return read_series(source, d, features).series, str(source)
