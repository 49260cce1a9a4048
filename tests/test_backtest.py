"""Rolling-origin backtests (``Run.backtest``, ``hybridrnn.experiments.backtest.backtest_command``): the long
table's layout, origins from ``start`` by ``stride``, baselines on the same origins, the summary per step and
series, and no forecast ever reading a row after its cutoff (sentinel rows), with and without refitting."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hybridrnn
from hybridrnn.errors import ConfigError, DataError
from hybridrnn.tasks.forecast_metrics import backtest_summary

L, H = 24, 6
SENTINEL = 1e9


def frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = pd.date_range("2021-03-01", periods=n, freq="h")
    y = np.sin(2 * np.pi * np.arange(n) / 24) + 0.1 * rng.normal(size=n)
    return pd.DataFrame({"time": t, "y": y, "x": rng.normal(size=n)})


def config(epochs: int = 1) -> dict:
    return {"task": "forecast",
            "data": {"time_column": "time", "target": ["y"], "covariates": ["x"], "split": [0.6, 0.2, 0.2]},
            "window": {"lookback": L, "horizon": H}, "model": {"encoder": "gru:6", "attention": "additive"},
            "train": {"epochs": epochs, "batch_size": 64, "progress": "none", "plots": False, "seed": 1}}


@pytest.fixture(scope="module")
def run():
    return hybridrnn.fit(config(), data=frame())


def poisoned(df: pd.DataFrame, origin_time) -> pd.DataFrame:
    """``df`` with every value at or after ``origin_time`` (the first forecast time) replaced by a sentinel."""
    out = df.copy()
    out.loc[out["time"] >= origin_time, ["y", "x"]] = SENTINEL
    return out


def test_layout_origins_actuals_and_baselines(run):
    df = frame()
    bt = run.backtest(df)
    assert list(bt.columns) == ["id", "cutoff", "time", "step", "target", "actual", "forecast", "naive",
                                "seasonal_naive", "linear"]
    # default start: the first forecast time after the training data's validation part (rows 0-191 of 240)
    cutoffs = bt["cutoff"].drop_duplicates().reset_index(drop=True)
    assert cutoffs.iloc[0] == df["time"].iloc[191] and cutoffs.iloc[-1] == df["time"].iloc[240 - H - 1]
    assert len(cutoffs) == 240 - H - 192 + 1 and len(bt) == len(cutoffs) * H
    assert (bt["time"] - bt["cutoff"] == bt["step"] * pd.Timedelta(hours=1)).all()
    by_time = df.set_index("time")["y"]
    np.testing.assert_array_equal(bt["actual"].to_numpy(), by_time.loc[bt["time"]].to_numpy())
    np.testing.assert_allclose(bt["naive"].to_numpy(), by_time.loc[bt["cutoff"]].to_numpy(), rtol=1e-12)
    season_ago = bt["time"] - pd.Timedelta(hours=24)                      # season 24 >= horizon: one season back
    np.testing.assert_allclose(bt["seasonal_naive"].to_numpy(), by_time.loc[season_ago].to_numpy(), rtol=1e-12)
    assert (bt["id"] == "series").all() and (bt["target"] == "y").all()

    strided = run.backtest(df, start="2021-03-08 10:00", stride=5)
    first = pd.Timestamp("2021-03-08 10:00")
    assert strided["time"].min() == first
    starts = strided["cutoff"].drop_duplicates() + pd.Timedelta(hours=1)
    assert ((starts - first) / pd.Timedelta(hours=1) % 5 == 0).all() and len(starts) == (240 - H - 178) // 5 + 1
    # the same origins give the same numbers, whatever else is backtested with them
    merged = strided.merge(bt, on=["cutoff", "time", "step", "target"], suffixes=("", "_all"))
    assert len(merged) > 0
    for col in ("forecast", "naive", "seasonal_naive", "linear"):
        np.testing.assert_allclose(merged[col], merged[col + "_all"], rtol=1e-6, atol=1e-9)


def test_no_forecast_reads_a_row_at_or_after_its_origin(run):
    """Every value from each origin on is a sentinel; the forecasts (model and baselines) made at that origin are
    bit for bit those of the clean table, while the actuals show the sentinels (so the comparison can fail)."""
    df = frame()
    clean = run.backtest(df, start="2021-03-08 00:00", stride=7)
    cols = ["forecast", "naive", "seasonal_naive", "linear"]
    for cutoff in clean["cutoff"].unique():
        origin = pd.Timestamp(cutoff) + pd.Timedelta(hours=1)
        dirty = run.backtest(poisoned(df, origin), start="2021-03-08 00:00", stride=7)
        here_c, here_d = clean[clean["cutoff"] == cutoff], dirty[dirty["cutoff"] == cutoff]
        np.testing.assert_array_equal(here_c[cols].to_numpy(), here_d[cols].to_numpy())
        assert (here_d["actual"] == SENTINEL).all()
        later = dirty["cutoff"] > cutoff
        if later.any():                                                    # later origins do read the sentinels
            assert not np.allclose(dirty.loc[later, "forecast"], clean.loc[later.to_numpy(), "forecast"])


def test_refit_trains_on_rows_before_each_group_of_origins(run):
    """refit=1: one model per origin, trained on the rows before it only: with every row from the last origin on
    poisoned, every forecast equals the clean one; and the refitted models are not the run's model."""
    df = frame()
    options = {"start": "2021-03-09 12:00", "stride": 20, "refit": 1}
    clean = run.backtest(df, **options)
    cutoffs = clean["cutoff"].unique()
    assert len(cutoffs) == 2
    last_origin = pd.Timestamp(cutoffs[-1]) + pd.Timedelta(hours=1)
    dirty = run.backtest(poisoned(df, last_origin), **options)
    cols = ["forecast", "naive", "seasonal_naive", "linear"]
    np.testing.assert_array_equal(clean[cols].to_numpy(), dirty[cols].to_numpy())
    reused = run.backtest(df, start=options["start"], stride=20)
    assert not np.allclose(clean["forecast"], reused["forecast"])
    np.testing.assert_allclose(clean["naive"], reused["naive"], rtol=1e-12)   # the same origins


def test_summary_by_hand():
    bt = pd.DataFrame({
        "id": ["a", "a", "a", "a", "b", "b"], "cutoff": [0, 0, 1, 1, 0, 0], "time": [1, 2, 2, 3, 1, 2],
        "step": [1, 2, 1, 2, 1, 2], "target": "y", "actual": [1.0, 2.0, 3.0, 4.0, 0.0, 0.0],
        "forecast": [2.0, 2.0, 1.0, 4.0, 1.0, -3.0], "naive": [1.0, 1.0, 1.0, 1.0, 0.0, 0.0],
        "forecast_q0.1": [0.0, 1.0, 2.0, 3.0, -1.0, -1.0], "forecast_q0.9": [3.0, 3.0, 2.5, 5.0, 1.0, -0.5]})
    s = backtest_summary(bt)
    assert s.loc[("a", 1), "forecast_mae"] == pytest.approx((1 + 2) / 2)
    assert s.loc[("a", "all"), "forecast_mae"] == pytest.approx((1 + 0 + 2 + 0) / 4)
    assert s.loc[("all", 2), "forecast_rmse"] == pytest.approx(np.sqrt((0 + 0 + 9) / 3))
    assert s.loc[("all", "all"), "naive_mae"] == pytest.approx((0 + 1 + 2 + 3 + 0 + 0) / 6)
    assert s.loc[("a", "all"), "origins"] == 2 and s.loc[("b", "all"), "origins"] == 1
    # 80% interval [q0.1, q0.9]: in, in, out (3 > 2.5), in, in, out (0 > -0.5)
    assert s.loc[("all", "all"), "coverage_80"] == pytest.approx(4 / 6)
    assert s.loc[("all", "all"), "width_80"] == pytest.approx((3 + 2 + 0.5 + 2 + 2 + 0.5) / 6)


def test_backtest_command_writes_table_and_summary(run, tmp_path):
    from hybridrnn.experiments.backtest import backtest_command, summary_path

    run.save(tmp_path / "run")
    frame().to_csv(tmp_path / "in.csv", index=False)
    text = backtest_command(tmp_path / "run", str(tmp_path / "in.csv"), tmp_path / "out" / "bt.csv",
                            start="2021-03-09 00:00", stride=3, refit=None)
    table = pd.read_csv(tmp_path / "out" / "bt.csv", parse_dates=["cutoff", "time"])
    expected = hybridrnn.load(tmp_path / "run").backtest(frame(), start="2021-03-09 00:00", stride=3)
    np.testing.assert_allclose(table["forecast"], expected["forecast"], rtol=1e-9)
    summary = pd.read_csv(summary_path(tmp_path / "out" / "bt.csv"), index_col=[0, 1])
    assert summary_path(tmp_path / "out" / "bt.csv").name == "bt.summary.csv"
    assert "forecast_mae" in summary.columns and "origins" in text and "MAE" in text


def test_bad_start_and_stride_are_user_errors(run):
    with pytest.raises(DataError, match="no backtest origin from 2030"):
        run.backtest(frame(), start="2030-01-01")
    with pytest.raises(ConfigError, match="stride"):
        run.backtest(frame(), stride=0)
    with pytest.raises(ConfigError, match="refit"):
        run.backtest(frame(), refit=0)


def test_backtest_of_the_configured_data_reads_it_as_training_did(tmp_path):
    """Without data, the backtest reads data.path with data.start / end (here: leading missing values that only
    data.start keeps out) and, by default, starts after the validation part."""
    df = frame()
    df.loc[:9, "y"] = np.nan
    df.to_csv(tmp_path / "s.csv", index=False)
    cfg = config()
    cfg["data"].update(path=str(tmp_path / "s.csv"), fill="interpolate", start="2021-03-01 12:00")
    run = hybridrnn.fit(cfg)
    bt = run.backtest()
    assert bt["cutoff"].min() == pd.Timestamp("2021-03-01 12:00") + pd.Timedelta(hours=round(0.8 * 228) - 1)
    with pytest.raises(DataError, match="leading missing"):
        run.backtest(df)                                  # a given table is read whole: data.start is not applied


def test_refit_with_conformal_intervals_calibrates_each_refitted_model(run):
    bt = run.backtest(frame(), start="2021-03-09 12:00", stride=20, refit=2, intervals="conformal", level=0.8)
    assert {"forecast_q0.1", "forecast_q0.9"} <= set(bt.columns) and len(bt["cutoff"].unique()) == 2
    half = bt["forecast_q0.9"] - bt["forecast"]
    assert np.isfinite(half).all() and (half > 0).all()
    reused = run.backtest(frame(), start="2021-03-09 12:00", stride=20, intervals="conformal", level=0.8)
    assert not np.allclose(half, reused["forecast_q0.9"] - reused["forecast"])   # the refitted model's own calibration
