"""``hybridrnn backtest RUN --input FILE --output FILE [--start DATE] [--stride K] [--refit N]``: the body of the
command (the CLI calls :func:`backtest_command`).

Writes the long table of :meth:`hybridrnn.api.run.Run.backtest` (``id, cutoff, time, step, target, actual,
forecast, naive, seasonal_naive, linear``) to ``--output`` (CSV; ``.tsv``: tab-separated) and its summary per
series and horizon step (:meth:`Run.backtest_summary`) next to it as ``<output stem>.summary.csv``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from hybridrnn.api.run import load


def summary_path(output: str | Path) -> Path:
    """``forecasts.csv -> forecasts.summary.csv`` (same folder, same separator)."""
    output = Path(output)
    return output.with_name(f"{output.stem}.summary{output.suffix or '.csv'}")


def _write(frame: pd.DataFrame, path: Path, index: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=index, sep="\t" if path.suffix.lower() == ".tsv" else ",")


def backtest_command(run: str | Path, input: Any, output: str | Path, start: str | None = None, stride: int = 1,
                     refit: int | None = None, intervals: str | None = None, level: float = 0.8) -> str:
    """Backtest the run in ``run`` on ``input`` (a file or a data set name), write the long table to ``output``
    and the summary to :func:`summary_path` ``(output)``; returns a short text for the terminal: the overall
    MAE of the model and each baseline (and the interval coverage), and where the files are.

    start: the first forecast time (a date, or a row number for a ``steps`` series; default: the first after
    the training data's validation part); stride: every K-th origin; refit: retrain every N origins (slow);
    intervals / level: ``"conformal"`` or ``"model"`` intervals of that coverage (see ``Run.predict``)."""
    r = load(run)
    options: dict[str, Any] = {"start": start, "stride": stride, "refit": refit}
    if intervals is not None:
        options.update(intervals=intervals, level=level)
    frame = r.backtest(input, **options)
    summary = r.backtest_summary(frame)
    output = Path(output)
    _write(frame, output, index=False)
    _write(summary, summary_path(output), index=True)
    overall = summary.loc[("all", "all")]
    parts = [f"{k[:-4]} {overall[k]:.6g}" for k in summary.columns if k.endswith("_mae")]
    lines = [f"backtest: {int(overall['origins'])} origins x horizon {frame['step'].max()} -> {output}",
             "MAE: " + ", ".join(parts)]
    lines += [f"{k}: {overall[k]:.3f}" for k in summary.columns if k.startswith("coverage_")]
    lines.append(f"summary per series and step: {summary_path(output)}")
    return "\n".join(lines)
