"""Named datasets: bundled ones (inside the package), the project's ``shared/data`` ones, and user files.

A config's ``data.path`` is one of:

- ``bundled:NAME``: a file shipped in ``hybridrnn/datasets`` (works on a fresh install);
- ``shared:NAME``: a file of the shared data folder (``$HYBRIDRNN_SHARED_DATA``, else ``../shared/data``
  seen from the current directory or from the repository root); ``hybridrnn datasets`` lists the names;
- a bare registry name (``seattle_weather``) that is not an existing file: bundled first, then shared;
- a file path. A relative path is looked up relative to the config file's folder first (when the config was
  loaded from a file), then relative to the current directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hybridrnn.errors import DataError


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file (or data set name) that does not exist: a user's error (:class:`hybridrnn.errors.DataError`)
    that is also a ``FileNotFoundError``, so code catching either keeps working. The message names the path."""

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "datasets"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str
    relpath: str
    description: str
    bundled: bool = False


BUNDLED: dict[str, DatasetInfo] = {
    "seattle_weather": DatasetInfo("seattle_weather", "forecast", "seattle-weather.csv",
                                   "Seattle daily weather 2012-2015 (NOAA, public domain): temp_max/min, "
                                   "precipitation, wind, weather type", bundled=True),
}

SHARED: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo("ett/ETTh1", "forecast", "ett/ETTh1.csv", "ETTh1 hourly transformer loads + oil temperature OT (CC BY-ND 4.0)"),
    DatasetInfo("ett/ETTh2", "forecast", "ett/ETTh2.csv", "ETTh2 hourly transformer loads + oil temperature OT (CC BY-ND 4.0)"),
    DatasetInfo("stocks", "forecast", "stocks/stocks.csv.gz", "daily OHLCV of AAPL, GOOG, IBM, FB 2000-2013 (select with where: {Ticker: AAPL})"),
    DatasetInfo("beijing_pm25", "forecast", "beijing_pm25/pollution.csv", "Beijing hourly PM2.5 + weather 2010-2014 (NAs, categorical wind)"),
    DatasetInfo("seattle_weather", "forecast", "seattle_weather/seattle-weather.csv", "Seattle daily weather 2012-2015"),
    DatasetInfo("melbourne_temperature", "forecast", "melbourne_temperature/daily-min-temperatures.csv",
                "Melbourne daily minimum temperature 1981-1990 (two days absent: frequency steps)"),
    DatasetInfo("exchange_rate", "forecast", "exchange_rate/exchange_rate.txt.gz", "8 daily exchange rates 1990-2016, no header, no dates"),
    DatasetInfo("ucr", "classify", "ucr", "UCR/UEA: GunPoint, ItalyPowerDemand, ArrowHead, BasicMotions"),
    DatasetInfo("indoor_movement", "classify", "indoor_movement", "314 variable-length 4-channel RSS sequences"),
    DatasetInfo("sst", "classify", "sst", "SST-2 and SST-5 sentiment sentences"),
    DatasetInfo("mr", "classify", "mr", "10,662 movie-review sentences (sentiment)"),
    DatasetInfo("review_polarity", "classify", "review_polarity", "2,000 movie reviews (long-document sentiment)"),
    DatasetInfo("trec", "classify", "trec", "5,952 questions, 6 classes"),
    DatasetInfo("ptb", "language_model", "ptb", "Penn Treebank, word level (Mikolov)"),
    DatasetInfo("tinyshakespeare", "language_model", "tinyshakespeare", "1.1 M characters of Shakespeare"),
]}


def shared_data_dir() -> Path | None:
    """The shared data folder: ``$HYBRIDRNN_SHARED_DATA``, else ``../shared/data`` from the current directory
    or from the repository root; None when none exists."""
    env = os.environ.get("HYBRIDRNN_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def list_datasets() -> list[dict]:
    """Rows ``{name, task, path, description}`` for every bundled data set and every shared one present."""
    rows = [{"name": f"bundled:{d.name}", "task": d.task, "path": str(BUNDLED_DIR / d.relpath),
             "description": d.description} for d in BUNDLED.values()]
    root = shared_data_dir()
    if root is not None:
        rows += [{"name": f"shared:{d.name}", "task": d.task, "path": str(root / d.relpath), "description": d.description}
                 for d in SHARED.values() if (root / d.relpath).exists()]
    return rows


def resolve_data_path(path: str, config_dir: str | Path | None = None) -> Path:
    """The file that a config's ``data.path`` names (see the module docstring); a :class:`DataFileNotFoundError`
    (a ``DataError`` and a ``FileNotFoundError``) saying where it looked otherwise."""
    text = str(path)
    if text.startswith("bundled:"):
        name = text[len("bundled:"):]
        if name not in BUNDLED:
            raise DataFileNotFoundError(f"no bundled data set {name!r}; bundled: {', '.join(sorted(BUNDLED))}")
        return BUNDLED_DIR / BUNDLED[name].relpath
    if text.startswith("shared:"):
        name = text[len("shared:"):]
        if name not in SHARED:
            raise DataFileNotFoundError(f"no shared data set {name!r}; known: {', '.join(sorted(SHARED))}")
        root = shared_data_dir()
        if root is None or not (root / SHARED[name].relpath).exists():
            raise DataFileNotFoundError(f"shared data set {name!r} not found: set HYBRIDRNN_SHARED_DATA to the shared "
                                    f"data folder (looked in ../shared/data)")
        return root / SHARED[name].relpath
    p = Path(text).expanduser()
    tried = []
    if p.is_absolute():
        tried.append(p)
    else:
        if config_dir is not None:
            tried.append(Path(config_dir) / p)
        tried.append(Path.cwd() / p)
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    if not p.suffix and "/" not in text:
        if text in BUNDLED:
            return BUNDLED_DIR / BUNDLED[text].relpath
        if text in SHARED:
            return resolve_data_path(f"shared:{text}")
    raise DataFileNotFoundError(f"data file {text!r} not found (looked at {', '.join(str(t) for t in tried)}); "
                            f"relative paths are taken from the config file's folder, then the current directory")
