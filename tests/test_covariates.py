"""Known-future covariates (``data.future_covariates``): the model's future channels carry them over the horizon
(after the past channels, before the calendar), predict reads their values from the input's rows after the last
observed target and names the column and the times it lacks, and a model that knows them learns what a model
without them cannot."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hybridrnn
from hybridrnn.errors import DataError

L, H = 16, 4


def frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """``y`` is three times a known-future ``temp`` (i.i.d., so its past says nothing about its future) plus a
    little noise; ``x`` is an ordinary past covariate."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2022-05-01", periods=n, freq="h")
    temp = rng.normal(size=n)
    return pd.DataFrame({"time": t, "y": 3 * temp + 0.05 * rng.normal(size=n), "x": rng.normal(size=n), "temp": temp})


def config(future=("temp",), epochs: int = 20) -> dict:
    return {"task": "forecast",
            "data": {"time_column": "time", "target": "y", "covariates": ["x"], "future_covariates": list(future),
                     "split": [0.6, 0.2, 0.2], "calendar": ["hour"]},
            "window": {"lookback": L, "horizon": H}, "model": {"encoder": "gru:8", "strategy": "direct", "instance_norm": False},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 0.03, "progress": "none", "plots": False, "seed": 0}}


@pytest.fixture(scope="module")
def run():
    return hybridrnn.fit(config(), data=frame())


def with_future_rows(df: pd.DataFrame, observed: int, temps) -> pd.DataFrame:
    """The first ``observed`` rows, then one row per value of ``temps`` with the target left empty."""
    past = df.iloc[:observed]
    times = pd.date_range(past["time"].iloc[-1] + pd.Timedelta(hours=1), periods=len(temps), freq="h")
    fut = pd.DataFrame({"time": times, "y": np.nan, "x": np.nan, "temp": temps})
    return pd.concat([past, fut], ignore_index=True)


def test_layout_puts_future_covariates_in_the_future_channels(run):
    task = run.task
    lay = task.layout
    assert lay["future_covariates"] == ["temp"] and lay["future_size"] == 1 + 2      # temp + hour sin/cos
    assert lay["input_size"] == 1 + 1 + 1 + 2
    batch = task._batch(task.origins["train"][:3])
    temp = task.scaler.transform(frame()[["temp"]].to_numpy(), index=[task.scaler.columns.index("temp")])[:, 0]
    for i, t in enumerate(task.origins["train"][:3]):
        np.testing.assert_allclose(batch["future"][i, :, 0].numpy(), temp[t:t + H], rtol=1e-6)   # rows [t, t+H)
        np.testing.assert_allclose(batch["past"][i, :, 2].numpy(), temp[t - L:t], rtol=1e-6)      # and the past


def test_a_model_that_knows_the_future_covariate_learns_it(run):
    m = run.metrics()
    assert m["mae"] < 0.5 * m["linear_mae"] and m["mae"] < 0.5 * m["naive_mae"], m


def test_predict_reads_the_future_rows_and_names_what_is_missing(run):
    df = frame()
    temps = np.array([1.0, -1.0, 2.0, 0.5])
    out = run.predict(with_future_rows(df, 300, temps))
    assert list(out["time"]) == list(pd.date_range(df["time"].iloc[299] + pd.Timedelta(hours=1), periods=H, freq="h"))
    np.testing.assert_allclose(out["y"], 3 * temps, atol=1.0)                 # it follows the given temperatures
    other = run.predict(with_future_rows(df, 300, -temps))
    assert not np.allclose(out["y"], other["y"])
    longer = run.predict(with_future_rows(df, 300, np.r_[temps, 9.0, 9.0]))   # rows after the horizon: unused
    pd.testing.assert_frame_equal(longer, out)
    with pytest.raises(DataError, match=r"after 2022-05-13 11:00:00 .* lacks 'temp' at 2022-05-13 12:00:00, 2022-05-13 13:00:00, 2022-05-13 14:00:00, 2022-05-13 15:00:00"):
        run.predict(df.iloc[:300])
    with pytest.raises(DataError, match=r"lacks 'temp' at 2022-05-13 14:00:00:"):
        run.predict(with_future_rows(df, 300, [1.0, 2.0, np.nan, 0.0]))


def test_backtest_reads_future_covariates_over_the_horizon_only_as_known_values(run):
    """A backtest forecast at an origin reads the past rows and, over the horizon, only the future covariate:
    poisoning the target and the past covariate from the origin on changes nothing."""
    df = frame()
    clean = run.backtest(df, stride=9)
    cutoff = clean["cutoff"].iloc[0]
    dirty = df.copy()
    dirty.loc[dirty["time"] > cutoff, ["y", "x"]] = 1e9
    poisoned = run.backtest(dirty, stride=9)
    first = clean["cutoff"] == cutoff
    np.testing.assert_array_equal(clean.loc[first, "forecast"], poisoned.loc[first.to_numpy(), "forecast"])


def test_predict_from_a_csv_whose_last_rows_carry_only_the_future_covariates(run, tmp_path):
    df = frame()
    new = with_future_rows(df, 300, [1.0, -1.0, 2.0, 0.5])
    new.to_csv(tmp_path / "new.csv", index=False)                      # the target cells of the last 4 rows: empty
    assert ",," in (tmp_path / "new.csv").read_text().splitlines()[-1]
    pd.testing.assert_frame_equal(run.predict(tmp_path / "new.csv"), run.predict(new))
    df.iloc[:300].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match=r"short.csv: .* lacks 'temp'"):
        run.predict(tmp_path / "short.csv")
