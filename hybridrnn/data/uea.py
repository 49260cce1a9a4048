"""Time-series classification data: UCR/UEA ``.ts`` files, long-format CSV tables, one-file-per-sequence folders.

Every reader returns a :class:`SeriesSet`: a list of ``(time_i, channels)`` float arrays (lengths may differ),
their string labels and the class names in a fixed order. Missing and non-finite values, a missing label or id,
text that is not UTF-8 and malformed lines are each a :class:`hybridrnn.errors.DataError` (a ``ValueError``)
naming the file and line or row: nothing is filled or dropped silently. A file that does not exist is a
:class:`~hybridrnn.data.registry.DataFileNotFoundError` (a ``DataError`` and a ``FileNotFoundError``).
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from hybridrnn.data.registry import DataFileNotFoundError
from hybridrnn.data.timeseries import (
    read_table,  # the CSV reader that refuses malformed files
)
from hybridrnn.errors import DataError


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
            raise DataError(f"{len(self.series)} series but {len(self.labels)} labels")
        unknown = sorted(set(self.labels) - set(self.class_names))
        if unknown:
            where = f"{self.meta['source']}: " if self.meta.get("source") else ""
            raise DataError(f"{where}labels {unknown[:5]} are not among the declared classes {self.class_names}")

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
    Missing values (``?``, ``NaN``), infinite values, values beyond float32, empty labels, cases whose channels
    differ in number or length and a file that is not UTF-8 are :class:`DataError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f".ts file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = path.read_bytes()[:err.start].count(b"\n") + 1
        raise DataError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start}); a .ts file is "
                        f"UTF-8 text") from None
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    dims = None
    for lineno, raw in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{path}:{lineno}: expected a '@' header or '@data' before the data, got {line[:40]!r}")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
            else:
                header[key] = value.strip()
            continue
        if header.get("timestamps", "false").lower() == "true":
            raise DataError(f"{path}: time-stamped .ts files ('@timeStamps true') are not supported")
        label, arrays = _parse_case(path, lineno, line)
        if dims is None:
            dims = len(arrays)
        elif len(arrays) != dims:
            raise DataError(f"{path}:{lineno}: {len(arrays)} channels, earlier cases have {dims}")
        series.append(np.stack(arrays, axis=1))
        labels.append(label)
    if not series:
        raise DataError(f"{path}: no cases after '@data'" if in_data else f"{path}: no '@data' line (is it a .ts file?)")
    if "dimensions" in header:
        try:
            declared_dims = int(header["dimensions"])
        except ValueError:
            raise DataError(f"{path}: @dimensions {header['dimensions']!r} is not a whole number") from None
        if declared_dims != dims:
            raise DataError(f"{path}: header says @dimensions {header['dimensions']}, cases have {dims} channels")
    declared = header.get("classlabel", "")
    names = declared.split()[1:] if declared.lower().startswith("true") else []
    if len(set(names)) != len(names):
        raise DataError(f"{path}: @classLabel lists a class twice: {declared[:80]!r}")
    if not names:
        names = sorted(set(labels))
    meta = {"problem": header.get("problemname", path.stem), "source": str(path)}
    return SeriesSet(series, labels, names, meta=meta)


def _parse_case(path: Path, lineno: int, line: str) -> tuple[str, list[np.ndarray]]:
    """One ``.ts`` data line ``v,v,...:v,v,...:label`` -> ``(label, [channel values (time,) float32, ...])``."""
    parts = line.split(":")
    if len(parts) < 2:
        raise DataError(f"{path}:{lineno}: expected '<channel>:...:<label>', got {line[:40]!r}")
    label, channels = parts[-1].strip(), parts[:-1]
    if not label:
        raise DataError(f"{path}:{lineno}: the case has no class label after the last ':'")
    arrays = []
    for c, chunk in enumerate(channels):
        if "?" in chunk or "nan" in chunk.lower():
            raise DataError(f"{path}:{lineno}: channel {c} has missing values ('?' / NaN); "
                            "fill or drop them before training")
        try:
            values = np.asarray([float(v) for v in chunk.split(",")], dtype=np.float64)
        except ValueError:
            bad = next((v for v in chunk.split(",") if not _is_float(v)), chunk)
            raise DataError(f"{path}:{lineno}: channel {c} has a non-numeric value {bad.strip()[:40]!r}") from None
        with np.errstate(over="ignore"):
            as32 = values.astype(np.float32)
        if not np.isfinite(as32).all():
            j = int(np.flatnonzero(~np.isfinite(as32))[0])
            raise DataError(f"{path}:{lineno}: channel {c} has {int((~np.isfinite(as32)).sum())} non-finite "
                            f"value(s) (inf, or beyond float32); first at position {j}: {chunk.split(',')[j].strip()[:40]!r}")
        arrays.append(as32)
    lens = {a.size for a in arrays}
    if len(lens) != 1:
        raise DataError(f"{path}:{lineno}: channels of one case have different lengths {sorted(lens)}")
    return label, arrays


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------------
# long-format CSV: one row per time step
# ---------------------------------------------------------------------------------------------------------
def read_series_table(path: str | Path, id_column: str, label_column: str, feature_columns: Sequence[str] | None = None,
                      time_column: str | None = None, class_names: Sequence[str] | None = None) -> SeriesSet:
    """Read a CSV with one row per time step: ``id_column`` names the series, ``label_column`` its class.

    Rows of a series are ordered by ``time_column`` when given (else kept in file order). ``feature_columns``
    defaults to every other numeric column. A series whose rows disagree on the label is an error, as are a
    missing id, label or feature value and a non-finite feature value (:class:`DataError` naming the row).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"CSV file not found: {path}")
    frame, _ = read_table(path)
    if len(frame) == 0:
        raise DataError(f"{path}: has a header but no data rows")
    for col in [id_column, label_column] + ([time_column] if time_column else []) + list(feature_columns or []):
        if col not in frame.columns:
            raise DataError(f"{path}: column {col!r} not found; columns are {list(frame.columns)}")
    if feature_columns is None:
        skip = {id_column, label_column, time_column}
        feature_columns = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])
                           and not pd.api.types.is_bool_dtype(frame[c])]
        if not feature_columns:
            raise DataError(f"{path}: no numeric feature columns besides {sorted(c for c in skip if c)}")
    for col in [id_column, label_column] + ([time_column] if time_column else []):
        missing = frame[col].isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataError(f"{path}: column {col!r} has {int(missing.sum())} missing values (first at data row "
                            f"{row + 1})")
    for col in feature_columns:
        if not pd.api.types.is_numeric_dtype(frame[col]) or pd.api.types.is_bool_dtype(frame[col]):
            raise DataError(f"{path}: feature column {col!r} is not numeric (dtype {frame[col].dtype})")
        n_missing = int(frame[col].isna().sum())
        if n_missing:
            row = int(np.flatnonzero(frame[col].isna().to_numpy())[0])
            raise DataError(f"{path}: column {col!r} has {n_missing} missing values (first at data row {row + 1})")
        with np.errstate(over="ignore"):
            values = frame[col].to_numpy(dtype=np.float64).astype(np.float32)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: column {col!r} has {int(bad.sum())} non-finite values (inf, or beyond "
                            f"float32; first at data row {row + 1}: {frame[col].iloc[row]})")
    if time_column:
        try:
            frame[time_column].sort_values(kind="stable")
        except TypeError:
            raise DataError(f"{path}: time column {time_column!r} mixes numbers and text; it cannot be "
                            f"sorted") from None
    series, labels, ids = [], [], []
    for key, rows in frame.groupby(id_column, sort=False, dropna=False):
        if time_column:
            rows = rows.sort_values(time_column, kind="stable")
        row_labels = rows[label_column].astype(str).unique()
        if len(row_labels) != 1:
            raise DataError(f"{path}: series {key!r} has several labels {list(row_labels)[:5]}")
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
            try:
                self.zip = zipfile.ZipFile(self.root)
            except Exception as exc:  # noqa: BLE001 - sorted by _broken_archive
                if not _broken_archive(exc):
                    raise
                raise DataError(f"{self.root}: a broken zip archive ({type(exc).__name__}: {exc})") from None
        elif self.root.is_dir():
            self.zip = None
        elif self.root.is_file():
            raise DataError(f"{self.root}: not a zip archive (expected a folder or a .zip of sequence files)")
        else:
            raise DataFileNotFoundError(f"sequence archive not found (a folder or a .zip): {self.root}")

    def read(self, name: str) -> str:
        try:
            if self.zip is not None:
                data = self.zip.read(name)
            else:
                data = (self.root / name).read_bytes()
        except (KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise DataFileNotFoundError(f"{self.root}: no file {name!r}") from None
        except Exception as exc:  # noqa: BLE001 - sorted by _broken_archive
            if self.zip is None or not _broken_archive(exc):
                raise
            raise DataError(f"{self.root}: cannot read {name!r} from the archive ({type(exc).__name__}: "
                            f"{exc})") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            lineno = data[:err.start].count(b"\n") + 1
            raise DataError(f"{self.root}:{name}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})") from None


def _broken_archive(exc: BaseException) -> bool:
    """Whether reading a zip archive failed because the archive is damaged or unsupported (a user's data
    problem), not because of the disk: BadZipFile, an unsupported version or compression
    (NotImplementedError), an encrypted member (RuntimeError), a bad offset (ValueError, EOFError, OSError
    EINVAL or without errno), a corrupt compressed stream (zlib / lzma / bz2 errors)."""
    import errno

    if isinstance(exc, (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError,
                        EOFError, OverflowError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (None, errno.EINVAL)
    return type(exc).__module__ in ("zlib", "lzma", "bz2", "_compression", "_lzma", "_bz2")


def _read_csv_text(text: str, where: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` of ``text`` with its errors as :class:`DataError` naming ``where``; an empty text is an
    empty frame."""
    import warnings

    if not text.strip():
        return pd.DataFrame()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(text), **kwargs)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError, OverflowError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{where}: cannot be read as CSV: {first}") from None


def _read_two_columns(text: str, where: str) -> dict[str, str]:
    frame = _read_csv_text(text, where, comment=None, header=None, skipinitialspace=True, dtype=str,
                           keep_default_na=False)
    if frame.empty:
        raise DataError(f"{where}: no rows (expected two columns: id, value)")
    frame = frame[~frame[0].astype(str).str.startswith("#")]
    if frame.empty:
        raise DataError(f"{where}: no rows besides '#' comments (expected two columns: id, value)")
    if frame.shape[1] < 2:
        raise DataError(f"{where}: expected two columns (id, value), got {frame.shape[1]}")
    out: dict[str, str] = {}
    for i, (k, v) in enumerate(zip(frame[0], frame[1])):
        key, value = str(k).strip(), str(v).strip()
        if not key or not value:
            raise DataError(f"{where}: row {i + 1} has an empty {'id' if not key else 'value'} ({k!r}, {v!r})")
        if key in out and out[key] != value:
            raise DataError(f"{where}: id {key!r} appears twice with different values ({out[key]!r}, {value!r})")
        out[key] = value
    return out


def read_sequence_files(root: str | Path, pattern: str, labels_file: str, groups_file: str | None = None,
                        class_names: Sequence[str] | None = None) -> SeriesSet:
    """Read one CSV per sequence from a folder or zip ``root``.

    ``pattern`` names each sequence's file with ``{id}`` (e.g. ``dataset/MovementAAL_RSS_{id}.csv``); each file is
    numeric rows, one per time step, with optional ``#`` comment lines. ``labels_file`` is a two-column
    table ``id,label`` (``#`` lines skipped); ``groups_file`` likewise ``id,group`` (for group-wise splits).
    """
    if "{id}" not in pattern:
        raise DataError(f"pattern {pattern!r} must contain '{{id}}'")
    archive = _Archive(root)
    labels_by_id = _read_two_columns(archive.read(labels_file), f"{root}:{labels_file}")
    groups_by_id = _read_two_columns(archive.read(groups_file), f"{root}:{groups_file}") if groups_file else None
    series, labels, groups, ids = [], [], [], []
    channels = None
    for sid in sorted(labels_by_id, key=lambda s: (len(s), s)):
        name = pattern.replace("{id}", sid)
        where = f"{root}:{name}"
        frame = _read_csv_text(archive.read(name), where, comment="#", header=None, skipinitialspace=True)
        if frame.empty:
            raise DataError(f"{where}: no rows")
        if frame.isna().any().any():
            row, col = np.argwhere(frame.isna().to_numpy())[0]
            raise DataError(f"{where}: {int(frame.isna().sum().sum())} missing values; first at row {row + 1}, "
                            f"column {col + 1}")
        try:
            with np.errstate(over="ignore"):
                values = frame.to_numpy(dtype=np.float64).astype(np.float32)
        except (ValueError, TypeError):
            raise DataError(f"{where}: non-numeric values") from None
        if not np.isfinite(values).all():
            row, col = np.argwhere(~np.isfinite(values))[0]
            raise DataError(f"{where}: {int((~np.isfinite(values)).sum())} non-finite values (inf, or beyond "
                            f"float32); first at row {row + 1}, column {col + 1}")
        if channels is None:
            channels = values.shape[1]
        elif values.shape[1] != channels:
            raise DataError(f"{where}: {values.shape[1]} columns, earlier sequences have {channels}")
        series.append(values)
        labels.append(labels_by_id[sid])
        ids.append(sid)
        if groups_by_id is not None:
            if sid not in groups_by_id:
                raise DataError(f"{root}:{groups_file}: no group for sequence {sid!r}")
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
        raise DataError(f"classes {np.flatnonzero(counts == 0).tolist()} have no training examples")
    return (counts.sum() / (num_classes * counts)).astype(np.float32)

