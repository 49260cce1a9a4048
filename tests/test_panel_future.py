"""Panels (``data.id_column``) with known-future covariates, refit backtests of panels and the panel forecast
plot: every series reads its own future covariate over the horizon (predict, evaluate, backtest), a missing
future row of one series is an error naming the series, the column and the times, no backtest forecast reads a
target at or after its origin (sentinel rows), a refit retrains once per group of origins on the rows before
the group for every series, and the forecast plot draws one axis per series."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hybridrnn
from hybridrnn.errors import ConfigError, DataError

L, H = 16, 4
SENTINEL = 1e9
SPECS = {  # id: (rows, start, level, gain of the known-future temp)
    "A": (220, "2022-05-01 00:00", 10.0, 3.0),
    "B": (160, "2022-05-03 00:00", 100.0, 20.0),
    "C": (190, "2022-05-02 05:00", -5.0, 1.0),
}


def panel(specs=SPECS, seed: int = 0) -> pd.DataFrame:
    """``unique_id, ds, y, x, temp``: ``y = level + gain * temp`` plus a little noise, ``temp`` i.i.d. (known in
    advance: its past says nothing about its future), ``x`` an ordinary past covariate."""
    rng = np.random.default_rng(seed)
    parts = []
    for sid, (n, start, level, gain) in specs.items():
        temp = rng.normal(size=n)
        parts.append(pd.DataFrame({"unique_id": sid, "ds": pd.date_range(start, periods=n, freq="h"),
                                   "y": level + gain * temp + 0.05 * rng.normal(size=n), "x": rng.normal(size=n),
                                   "temp": temp}))
    return pd.concat(parts, ignore_index=True)


def config(epochs: int = 1, **data) -> dict:
    d = {"id_column": "unique_id", "time_column": "ds", "target": "y", "covariates": ["x"],
         "future_covariates": ["temp"], "split": [0.6, 0.2, 0.2], "calendar": ["hour"]}
    d.update(data)
    return {"task": "forecast", "data": d, "window": {"lookback": L, "horizon": H},
            "model": {"encoder": "gru:8", "strategy": "direct", "instance_norm": False},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 0.03, "progress": "none", "plots": False, "seed": 0}}


@pytest.fixture(scope="module")
def trained():
    df = panel()
    return hybridrnn.fit(config(epochs=8), data=df), df


def with_future_rows(df: pd.DataFrame, observed: dict[str, int], temps: dict[str, np.ndarray]) -> pd.DataFrame:
    """Each series' first ``observed[sid]`` rows, then one row per value of ``temps[sid]`` with empty target and
    past covariate (the rows a user adds for the horizon)."""
    parts = []
    for sid, n in observed.items():
        past = df[df["unique_id"] == sid].iloc[:n]
        times = pd.date_range(past["ds"].iloc[-1] + pd.Timedelta(hours=1), periods=len(temps[sid]), freq="h")
        parts += [past, pd.DataFrame({"unique_id": sid, "ds": times, "y": np.nan, "x": np.nan, "temp": temps[sid]})]
    return pd.concat(parts, ignore_index=True)


def test_panel_layout_puts_each_series_future_covariate_in_the_future_channels(trained):
    run, df = trained
    task = run.task
    lay = task.layout
    assert lay["future_size"] == 1 + 2 and lay["input_size"] == 1 + 1 + 1 + 2      # y, x, temp, hour sin/cos
    task.setup(df)
    origins, series = task.origins["train"], task.window_series["train"]
    batch = task._batch(origins)
    offsets = np.concatenate([[0], np.cumsum([st["rows"] for st in task.panel_state.values()])])
    for i, (sid, st) in enumerate(task.panel_state.items()):
        temp = df.loc[df["unique_id"] == sid, "temp"].to_numpy()
        scaled = st["scaler"].transform(temp[:, None], index=[st["scaler"].columns.index("temp")])[:, 0]
        pick = np.flatnonzero(series == i)[:3]
        assert len(pick) == 3
        for j in pick:
            t = origins[j] - offsets[i]                                          # row within the series
            np.testing.assert_allclose(batch["future"][j, :, 0].numpy(), scaled[t:t + H], rtol=1e-5)
            np.testing.assert_allclose(batch["past"][j, :, 2].numpy(), scaled[t - L:t], rtol=1e-5)


def test_panel_predict_reads_each_series_future_rows(trained, tmp_path):
    run, df = trained
    observed = {"A": 200, "B": 150, "C": 170}
    temps = {"A": np.array([1.0, -1.0, 2.0, 0.5]), "B": np.array([0.0, 1.0, -1.0, 1.5]),
             "C": np.array([-2.0, 0.0, 1.0, 1.0])}
    new = with_future_rows(df, observed, temps)
    out = run.predict(new)
    assert list(out.columns) == ["unique_id", "ds", "y"] and len(out) == 3 * H
    for sid, n in observed.items():
        last = pd.Timestamp(SPECS[sid][1]) + pd.Timedelta(hours=n - 1)
        got = out[out["unique_id"] == sid]
        assert list(got["ds"]) == list(pd.date_range(last + pd.Timedelta(hours=1), periods=H, freq="h")), sid
        gain = SPECS[sid][3]
        assert np.corrcoef(got["y"], gain * temps[sid])[0, 1] > 0.8, (sid, got["y"].tolist())   # follows temp
    flipped = run.predict(with_future_rows(df, observed, {**temps, "B": -temps["B"]}))
    np.testing.assert_array_equal(flipped["y"][:H], out["y"][:H])                  # only B's future moved
    assert not np.allclose(flipped["y"][H:2 * H], out["y"][H:2 * H])
    new.to_csv(tmp_path / "new.csv", index=False)
    loaded = hybridrnn.load(run.save(tmp_path / "run").path)
    pd.testing.assert_frame_equal(loaded.predict(tmp_path / "new.csv"), out)
    metrics = loaded.metrics(df)
    assert np.isfinite(metrics["mae"]) and metrics["mae"] < 0.5 * metrics["naive_mae"], metrics


def test_a_missing_future_row_of_one_series_names_the_series_column_and_times(trained, tmp_path):
    run, df = trained
    observed = {"A": 200, "B": 150, "C": 170}
    temps = {sid: np.zeros(H) for sid in observed}
    lacking = with_future_rows(df, observed, {**temps, "C": np.array([1.0, 2.0, np.nan, 0.0])})
    with pytest.raises(DataError, match=r"DataFrame: series C: .*after 2022-05-09 06:00:00 .* lacks 'temp' at "
                                        r"2022-05-09 09:00:00:"):
        run.predict(lacking)
    short = with_future_rows(df, observed, {**temps, "A": np.zeros(H - 1)})
    short.to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match=r"short.csv: series A: .* lacks 'temp' at 2022-05-09 11:00:00:"):
        run.predict(tmp_path / "short.csv")


def test_panel_backtest_with_future_covariates_never_reads_a_target_at_or_after_its_origin(trained):
    """Targets and past covariates from each origin on are sentinels in every series (the future covariate stays
    known): each origin's forecasts are bit for bit those of the clean table; its actuals show the sentinels."""
    run, df = trained
    options = {"start": "2022-05-09 00:00", "stride": 5}
    clean = run.backtest(df, **options)
    assert set(clean["id"]) == {"A", "B", "C"}
    cols = ["forecast", "naive", "linear"]                               # (season 24 > lookback: no seasonal naive)
    for cutoff in clean["cutoff"].unique()[:3]:
        dirty_df = df.copy()
        dirty_df.loc[dirty_df["ds"] > cutoff, ["y", "x"]] = SENTINEL
        dirty = run.backtest(dirty_df, **options)
        here = (clean["cutoff"] == cutoff).to_numpy()
        assert set(clean.loc[here, "id"]) == {"A", "B", "C"}
        np.testing.assert_array_equal(clean.loc[here, cols].to_numpy(), dirty.loc[here, cols].to_numpy())
        assert (dirty.loc[here, "actual"] == SENTINEL).all()
        later = (clean["cutoff"] > cutoff).to_numpy()
        assert later.any()                                                # later origins do read the sentinels
        assert not np.allclose(dirty.loc[later, "forecast"], clean.loc[later, "forecast"])


def test_refit_panel_backtest_retrains_per_group_of_origins_on_the_rows_before_it(monkeypatch):
    """refit=2 over 5 distinct origin times (B ends before the last two): 3 models, each trained with data.end at
    its group's first origin (every series cut there); with every target and past covariate from the last group's
    origin on poisoned in every series, every forecast equals the clean one; the rows and their order are those of a backtest
    without refitting, the forecasts are not."""
    import hybridrnn.api.run as run_module

    df = panel()
    run = hybridrnn.fit(config(epochs=1), data=df)
    ends, real = [], run_module.train_run

    def counting(cfg, data=None, **kw):
        ends.append(pd.Timestamp(cfg.data.end))
        return real(cfg, data=data, **kw)

    monkeypatch.setattr(run_module, "train_run", counting)
    options = {"start": "2022-05-09 00:00", "stride": 5, "refit": 2, "intervals": "conformal", "level": 0.8}
    clean = run.backtest(df, **options)
    origins = sorted(pd.Timestamp(c) + pd.Timedelta(hours=1) for c in clean["cutoff"].unique())
    assert len(origins) == 5 and ends == origins[::2]
    assert set(clean.loc[clean["cutoff"] >= origins[3] - pd.Timedelta(hours=1), "id"]) == {"A", "C"}
    reused = run.backtest(df, start=options["start"], stride=5, intervals="conformal", level=0.8)
    same = ["id", "cutoff", "time", "step", "target", "actual", "naive"]           # (season 24 > lookback: no seasonal naive)
    pd.testing.assert_frame_equal(clean[same], reused[same])
    assert not np.allclose(clean["forecast"], reused["forecast"])
    assert (clean["forecast_q0.9"] > clean["forecast"]).all()          # each refitted model calibrated its own

    ends.clear()
    dirty_df = df.copy()
    dirty_df.loc[dirty_df["ds"] >= origins[-1], ["y", "x"]] = SENTINEL        # (temp: known over the horizon)
    dirty = run.backtest(dirty_df, **options)
    assert ends == origins[::2]
    cols = ["forecast", "forecast_q0.1", "forecast_q0.9", "naive", "linear"]
    np.testing.assert_array_equal(clean[cols].to_numpy(), dirty[cols].to_numpy())
    assert (dirty.loc[dirty["time"] >= origins[-1], "actual"] == SENTINEL).all()


def test_refit_panel_backtest_of_a_panel_split_by_row_counts_is_a_config_error():
    df = panel()
    run = hybridrnn.fit(config(split=[100, 30, 20]), data=df)
    with pytest.raises(ConfigError, match="refit of a panel needs data.split as fractions or dates"):
        run.backtest(df, start="2022-05-09 00:00", stride=5, refit=2)


def test_panel_forecast_plot_draws_one_axis_per_series_with_the_band(trained, tmp_path):
    from hybridrnn._io import save_figure
    from hybridrnn.tasks.forecast_plots import panel_forecast_figure

    run, df = trained
    task = run.task
    task.setup(df)
    fig, axes = panel_forecast_figure(task, run.model)
    assert len(axes) == len(fig.axes) == 3 and [ax.get_title().split(" ")[0] for ax in axes] == ["A", "B", "C"]
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == ["actual", "model", "conformal 80%"]                 # the run was calibrated after training
    assert fig._suptitle.get_text().startswith("y: 4-step forecasts") and "3 series" in fig._suptitle.get_text()
    save_figure(fig, tmp_path / "all.png")
    fig, axes = panel_forecast_figure(task, run.model, max_series=2)    # capped: the title says so
    assert len(axes) == len(fig.axes) == 2 and "2 of 3 series" in fig._suptitle.get_text()
    save_figure(fig, tmp_path / "capped.png")
    paths = task.plots(run.model, tmp_path / "run")
    assert sorted(p.name for p in paths) == ["error_by_step.png", "forecast_vs_actual.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
