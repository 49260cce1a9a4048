"""Plots of a trained forecaster on the test split: forecast vs actual, error by horizon step, attention map.

A panel (``data.id_column``) gets ``forecast_vs_actual.png`` as one small axis per series (the first
:data:`MAX_PANEL_SERIES` in the panel's order; the title says how many of how many) and ``error_by_step.png``
over all its windows."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hybridrnn._io import new_figure, save_figure


def _axis(task, rows: np.ndarray):
    times = task.table.times
    return rows if times is None else times[rows]


def time_label(value) -> str:
    """A time for a title: ``2015-03-22`` for a midnight time stamp (daily data), else as pandas prints it."""
    try:
        import pandas as pd

        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        return str(value)
    return stamp.strftime("%Y-%m-%d") if stamp == stamp.normalize() else str(stamp)


#: a panel's forecast plot draws at most this many series (one axis each)
MAX_PANEL_SERIES = 8


def forecast_plots(task, model, run_dir: Path, split: str = "test") -> list[Path]:
    """Write ``forecast_vs_actual.png``, ``error_by_step.png`` and (with attention, one series) ``attention.png``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if task.num_examples(split) == 0:
        return []
    if getattr(task, "panel_state", None) is not None:
        return panel_forecast_plots(task, model, run_dir, split)
    lay = task.layout
    L, H, targets = lay["lookback"], lay["horizon"], lay["targets"]
    origins = task.origins[split]
    scaled_pred, weights = task.predict_windows(model, split, with_weights=True)
    pred = task._unscale(scaled_pred)
    base = {k: task._unscale(v) for k, v in task._baselines(split).items()}
    truth = task._unscale(task._target_windows(split)[1])
    actual = task._targets_original(task.table)
    band = task.plot_band(model, split) if hasattr(task, "plot_band") else None   # (lower, upper, label) or None
    paths = []

    # 1. forecast vs actual: consecutive non-overlapping windows across the start of the test span
    n_win = int(max(3, min(20, 400 // H)))
    picks = np.arange(0, len(origins), H)[:n_win]
    shown = targets[:3]
    fig, axes = new_figure(len(shown), 1, figsize=(11, 3.2 * len(shown)), squeeze=False)
    lo, hi = int(origins[picks[0]]) - min(L, 2 * H), int(origins[picks[-1]]) + H
    rows = np.arange(lo, hi)
    for c, ax in enumerate(axes[:, 0]):
        ax.plot(_axis(task, rows), actual[rows, c], color="black", lw=1.2, label="actual")
        for j, i in enumerate(picks):
            fut = np.arange(origins[i], origins[i] + H)
            ax.plot(_axis(task, fut), pred[i, :, c], color="tab:red", lw=1.4, label="model" if j == 0 else None)
            if band is not None:
                ax.fill_between(_axis(task, fut), band[0][i, :, c], band[1][i, :, c], color="tab:red", alpha=0.15,
                                lw=0, label=band[2] if j == 0 else None)
            ax.plot(_axis(task, fut), base["naive"][i, :, c], color="tab:gray", lw=0.9, ls="--",
                    label="naive" if j == 0 else None)
            ax.plot(_axis(task, fut), base["linear"][i, :, c], color="tab:blue", lw=0.9, ls=":",
                    label="linear" if j == 0 else None)
            ax.axvline(_axis(task, np.array([origins[i]]))[0], color="tab:green", lw=0.4, alpha=0.5)
        ax.set_title(f"{targets[c]}: {H}-step forecasts from {len(picks)} origins ({split} split; green = forecast time)")
        ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    paths.append(save_figure(fig, run_dir / "forecast_vs_actual.png"))

    # 2. error by horizon step
    paths.append(error_by_step_plot(pred, base, truth, split, run_dir))

    # 3. attention weights of one window
    if weights is not None:
        i = int(picks[min(1, len(picks) - 1)])
        w = weights[i]  # (queries, lookback)
        # one summary row (or identical rows: every horizon step reads the same context): a bar per look-back
        # step in a short panel, not a tall heat map of one repeated row
        single = w.shape[0] == 1 or np.allclose(w, w[:1])
        fig, (ax0, ax1) = new_figure(2, 1, figsize=(10, 5 if single else 6),
                                     gridspec_kw={"height_ratios": [1, 0.6 if single else 1.3]})
        past_rows = np.arange(origins[i] - L, origins[i])
        ax0.plot(np.arange(-L, 0), actual[past_rows, 0], color="black", lw=1.2, label=f"{targets[0]} (look-back)")
        ax0.plot(np.arange(0, H), truth[i, :, 0], color="gray", lw=1.0, label="actual (horizon)")
        ax0.plot(np.arange(0, H), pred[i, :, 0], color="tab:red", lw=1.2, label="forecast")
        ax0.axvline(-0.5, color="tab:green", lw=0.8)
        ax0.set_xlim(-L - 0.5, H - 0.5)
        ax0.set_xlabel("step (0 = first forecast step)")
        ax0.legend(fontsize=8, loc="upper left")
        when = "" if task.table.times is None else f" at {time_label(task.table.times[origins[i]])}"
        ax0.set_title(f"attention over the look-back, one {split} window (forecast time{when})")
        ax1.set_xlabel("look-back step (-1 = the last observed step)")
        if single:
            ax1.bar(np.arange(-L, 0), w[0], width=0.9, color="tab:purple")
            ax1.set_xlim(-L - 0.5, H - 0.5)      # aligned with the series above
            ax1.set_ylabel("weight")
            ax1.set_title("attention weights" + ("" if w.shape[0] == 1 else
                                                 f" (the same for all {w.shape[0]} horizon steps)"), fontsize=9)
            ax1.grid(alpha=0.3, axis="y")
        else:
            im = ax1.imshow(w, aspect="auto", cmap="viridis", interpolation="nearest",
                            extent=(-L - 0.5, -0.5, w.shape[0] + 0.5, 0.5))
            ax1.set_ylabel("query (horizon step)")
            fig.colorbar(im, ax=ax1, shrink=0.9, label="weight")
        fig.tight_layout()
        paths.append(save_figure(fig, run_dir / "attention.png"))
    return paths


def error_by_step_plot(pred: np.ndarray, base: dict[str, np.ndarray], truth: np.ndarray, split: str,
                       run_dir: Path) -> Path:
    """``error_by_step.png``: the MAE of the model and each baseline per horizon step; ``pred``, each of
    ``base`` and ``truth``: ``(windows, horizon, targets)`` on the original scale."""
    H = truth.shape[1]
    steps = np.arange(1, H + 1)
    fig, ax = new_figure(figsize=(7, 4))
    for name, p, style in [("model", pred, dict(color="tab:red", lw=2))] + \
            [(k, v, dict(ls="--", lw=1.2)) for k, v in base.items()]:
        ax.plot(steps, np.abs(p - truth).mean(axis=(0, 2)), marker="o" if H <= 24 else None, ms=3, label=name, **style)
    ax.set_xlabel("horizon step")
    ax.set_ylabel("MAE (original scale)")
    ax.set_title(f"error by horizon step, {split} split ({truth.shape[0]} windows)")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, run_dir / "error_by_step.png")


def panel_forecast_plots(task, model, run_dir: Path, split: str = "test") -> list[Path]:
    """A panel's plots: ``forecast_vs_actual.png`` (:func:`panel_forecast_figure`) and ``error_by_step.png``
    over the windows of every series (each unscaled with its own series' scaler)."""
    fig, _ = panel_forecast_figure(task, model, split)
    paths = [save_figure(fig, run_dir / "forecast_vs_actual.png")]
    pred = task._unscale(task.predict_windows(model, split)[0])          # sets the windows' series
    base = {k: task._unscale(v) for k, v in task._baselines(split).items()}
    truth = task._unscale(task._target_windows(split)[1])
    paths.append(error_by_step_plot(pred, base, truth, split, run_dir))
    return paths


def panel_forecast_figure(task, model, split: str = "test", max_series: int = MAX_PANEL_SERIES):
    """``(fig, axes)``: one axis per series of a panel that has windows in ``split`` (the first ``max_series``
    in the panel's order; the title says so when there are more), each with the series' actual values (its
    first target) over consecutive non-overlapping windows, the model's forecasts from their origins and, when
    the model has intervals (:meth:`ForecastTask.plot_band`), their band; ``axes``: a list, one per series."""
    lay = task.layout
    L, H, target = lay["lookback"], lay["horizon"], lay["targets"][0]
    origins, series = task.origins[split], task.window_series[split]
    pred = task._unscale(task.predict_windows(model, split)[0])[..., 0]          # (n, H), original scale
    band = task.plot_band(model, split)
    names = list(task.panel_state)
    shown = [(sid, table, off) for sid, table, off in task.panel_tables if (series == names.index(sid)).any()]
    total, shown = len(shown), shown[:max_series]
    cols = 1 if len(shown) == 1 else 2
    rows = math.ceil(len(shown) / cols)
    fig, grid = new_figure(rows, cols, figsize=(6.5 * cols, 2.7 * rows), squeeze=False)
    axes = list(grid.ravel()[:len(shown)])
    for ax in grid.ravel()[len(shown):]:
        fig.delaxes(ax)
    n_win = int(max(2, min(8, 200 // H)))
    for ax, (sid, table, off) in zip(axes, shown):
        mine = np.flatnonzero(series == names.index(sid))
        picks = mine[::H][:n_win]                        # consecutive non-overlapping windows of this series
        local = origins[picks] - off                     # their origins: rows of the series' own table
        actual = table.numeric[target].to_numpy(np.float64)
        stamps = np.arange(len(table)) if table.times is None else table.times
        span = np.arange(max(int(local[0]) - min(L, 2 * H), 0), int(local[-1]) + H)
        ax.plot(stamps[span], actual[span], color="black", lw=1.1, label="actual")
        for j, (i, t) in enumerate(zip(picks, local)):
            fut = stamps[np.arange(t, t + H)]
            ax.plot(fut, pred[i], color="tab:red", lw=1.3, label="model" if j == 0 else None)
            if band is not None:
                ax.fill_between(fut, band[0][i, :, 0], band[1][i, :, 0], color="tab:red", alpha=0.18, lw=0,
                                label=band[2] if j == 0 else None)
            ax.axvline(stamps[t], color="tab:green", lw=0.5, alpha=0.6)
        ax.set_title(f"{sid} ({len(mine)} {split} windows)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=25, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.25)
    axes[0].legend(loc="upper left", fontsize=7)
    of = f"{len(shown)} of {total} series" if total > len(shown) else f"{total} series"
    fig.suptitle(f"{target}: {H}-step forecasts from consecutive {split} origins, {of} (green = forecast time)",
                 fontsize=10)
    fig.tight_layout()
    return fig, axes
