"""Data layer of forecasting: table validation messages, frequencies, splits, scalers, windows, calendar,
metrics and baselines, dataset registry. Everything is small and fast; shared-data tests skip without it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hybridrnn.data.calendar import auto_calendar, calendar_columns, calendar_features
from hybridrnn.data.registry import list_datasets, resolve_data_path, shared_data_dir
from hybridrnn.data.scalers import Scaler
from hybridrnn.data.timeseries import (TableError, future_times, gather_windows, infer_frequency, load_table,
                                       season_length, split_bounds, window_origins)
from hybridrnn.tasks.forecast_metrics import (LinearBaseline, forecast_metrics, mase_scale, metrics_by_step,
                                              naive_forecast, seasonal_naive_forecast)

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="../shared/data not present")


def hourly_csv(tmp_path: Path, rows: list[str], name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text("time,y,x\n" + "\n".join(rows) + "\n")
    return path


def good_rows(n: int = 6) -> list[str]:
    return [f"2020-01-01 {h:02d}:00,{h}.5,{10 * h}" for h in range(n)]


# ---------------------------------------------------------------- error messages (exact text)

def test_non_numeric_value_message(tmp_path):
    rows = good_rows()
    rows[3] = "2020-01-01 03:00,abc,30"
    rows[5] = "2020-01-01 05:00,n/a?,50"
    path = hourly_csv(tmp_path, rows)
    with pytest.raises(TableError) as e:
        load_table(path, time_column="time", numeric=["y", "x"])
    assert str(e.value) == (f"{path}: column 'y' has 2 non-numeric value(s); first at row 3 (line 5), "
                            f"time 2020-01-01 03:00:00: 'abc'")


def test_missing_value_message_and_fill(tmp_path):
    rows = good_rows()
    rows[2] = "2020-01-01 02:00,,20"
    rows[4] = "2020-01-01 04:00,NA,40"
    path = hourly_csv(tmp_path, rows)
    with pytest.raises(TableError) as e:
        load_table(path, time_column="time", numeric=["y", "x"])
    assert str(e.value) == (f"{path}: column 'y' has 2 missing value(s); first at row 2 (line 4), time "
                            f"2020-01-01 02:00:00. Set data.fill to 'ffill' or 'interpolate' to fill them")
    t = load_table(path, time_column="time", numeric=["y", "x"], fill="ffill")
    assert t.numeric["y"].tolist() == [0.5, 1.5, 1.5, 3.5, 3.5, 5.5] and t.filled == {"y": 2}
    t = load_table(path, time_column="time", numeric=["y", "x"], fill="interpolate")
    assert t.numeric["y"].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]


def test_leading_missing_cannot_be_filled(tmp_path):
    rows = good_rows()
    rows[0] = "2020-01-01 00:00,,0"
    path = hourly_csv(tmp_path, rows)
    with pytest.raises(TableError, match=r"column 'y' has 1 leading missing value\(s\) that ffill cannot fill "
                                         r"\(from row 0 \(line 2\)"):
        load_table(path, time_column="time", numeric=["y"], fill="ffill")


def test_duplicated_timestamp_message(tmp_path):
    rows = good_rows()
    rows[4] = "2020-01-01 03:00,4.5,40"
    path = hourly_csv(tmp_path, rows)
    with pytest.raises(TableError) as e:
        load_table(path, time_column="time", numeric=["y"])
    assert str(e.value) == (f"{path}: time column 'time' has 1 duplicated timestamp(s); first at row 4 (line 6): "
                            f"2020-01-01 03:00:00 (same as the row before)")


def test_decreasing_timestamp_message(tmp_path):
    rows = good_rows()
    rows[2], rows[3] = rows[3], rows[2]
    path = hourly_csv(tmp_path, rows)
    with pytest.raises(TableError, match=r"is not in increasing order: 1 step\(s\) go back in time; first at row 3 "
                                         r"\(line 5\): 2020-01-01 02:00:00 after 2020-01-01 03:00:00"):
        load_table(path, time_column="time", numeric=["y"])


def test_irregular_timestamp_message(tmp_path):
    rows = good_rows(8)
    del rows[5], rows[2]
    path = hourly_csv(tmp_path, rows)
    with pytest.raises(TableError) as e:
        load_table(path, time_column="time", numeric=["y"], frequency="h")
    assert str(e.value) == (f"{path}: irregular timestamps at frequency 'h': 2 step(s) off the grid; first at row 2 "
                            f"(line 4): 2020-01-01 03:00:00 follows 2020-01-01 01:00:00 (expected 2020-01-01 "
                            f"02:00:00). Fill the gaps in the file, or set data.frequency: steps")
    t = load_table(path, time_column="time", numeric=["y"], frequency="steps")
    assert t.frequency == "steps" and len(t) == 6


def test_bad_date_and_missing_column_messages(tmp_path):
    rows = good_rows()
    rows[1] = "yesterday,1.5,10"
    path = hourly_csv(tmp_path, rows)
    with pytest.raises(TableError) as e:
        load_table(path, time_column="time", numeric=["y"])
    assert str(e.value) == (f"{path}: time column 'time' has 1 value(s) that are not dates; first at row 1 "
                            f"(line 3): 'yesterday'")
    with pytest.raises(TableError, match=r"no column\(s\) \['z'\]; the table has \['time', 'y', 'x'\]"):
        load_table(hourly_csv(tmp_path, good_rows(), "ok.csv"), time_column="time", numeric=["y", "z"])


def test_dataframe_source_and_where_filter():
    df = pd.DataFrame({"Ticker": ["A", "B"] * 10, "Date": np.repeat(pd.bdate_range("2021-01-04", periods=10), 2),
                       "Close": np.arange(20.0)})
    t = load_table(df, time_column="Date", numeric=["Close"], where={"Ticker": "B"})
    assert t.source == "DataFrame" and t.numeric["Close"].tolist() == list(range(1, 20, 2)) and t.frequency == "B"
    with pytest.raises(TableError, match=r"no row has Ticker == 'C'"):
        load_table(df, time_column="Date", numeric=["Close"], where={"Ticker": "C"})


def test_parquet_source_matches_csv(tmp_path):
    pytest.importorskip("pyarrow")
    df = pd.DataFrame({"time": pd.date_range("2021-01-01", periods=30, freq="h"), "y": np.arange(30.0),
                       "x": np.linspace(0, 1, 30)})
    df.to_parquet(tmp_path / "t.parquet")
    df.assign(time=df["time"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(tmp_path / "t.csv", index=False)
    a = load_table(tmp_path / "t.parquet", time_column="time", numeric=["y", "x"])
    b = load_table(tmp_path / "t.csv", time_column="time", numeric=["y", "x"])
    assert a.frequency == b.frequency == "h" and (a.times == b.times).all()
    pd.testing.assert_frame_equal(a.numeric, b.numeric)
    bad = df.copy()
    bad.loc[[4, 9], "y"] = np.nan
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(TableError, match=r"bad.parquet: column 'y' has 2 missing value\(s\); first at row 4, time "
                                         r"2021-01-01 04:00:00"):
        load_table(tmp_path / "bad.parquet", time_column="time", numeric=["y", "x"])


# ---------------------------------------------------------------- frequency and future timestamps

def test_business_days_with_holidays_inferred_and_continued():
    days = pd.bdate_range("2021-11-01", "2021-12-31").drop(pd.Timestamp("2021-11-25"))  # Thanksgiving
    days = days.drop(pd.Timestamp("2021-12-24"))
    assert pd.infer_freq(days) is None  # pandas alone cannot name it
    assert infer_frequency(days) == "B"
    nxt = future_times(pd.Timestamp("2021-12-31"), "B", 3)  # a Friday
    assert list(nxt.strftime("%Y-%m-%d")) == ["2022-01-03", "2022-01-04", "2022-01-05"]
    assert season_length("B") == 5 and season_length("h") == 24 and season_length("D") == 7


def test_weekend_row_is_error_for_business_days():
    df = pd.DataFrame({"d": pd.to_datetime(["2021-01-08", "2021-01-09", "2021-01-11"]), "y": [1.0, 2.0, 3.0]})
    with pytest.raises(TableError, match=r"frequency 'B' \(business days\) but 1 timestamp\(s\) fall on a weekend; "
                                         r"first at row 1: 2021-01-09"):
        load_table(df, time_column="d", numeric=["y"], frequency="B")


def test_time_from_several_columns():
    df = pd.DataFrame({"year": [2010] * 4, "month": [1] * 4, "day": [1, 1, 2, 2], "hour": [22, 23, 0, 1],
                       "v": [1.0, 2.0, 3.0, 4.0]})
    t = load_table(df, time_column=["year", "month", "day", "hour"], numeric=["v"])
    assert t.frequency == "h" and t.times[2] == pd.Timestamp("2010-01-02 00:00")


# ---------------------------------------------------------------- splits and windows

def test_split_forms():
    times = pd.date_range("2020-01-01", periods=100, freq="D")
    assert split_bounds(100, [0.7, 0.1, 0.2], times) == (70, 80, 100)
    assert split_bounds(100, [50, 20, 20], times) == (50, 70, 90)
    assert split_bounds(100, {"val": "2020-02-10", "test": "2020-03-01"}, times) == (40, 60, 100)
    assert split_bounds(100, {"val": "2020-02-10", "test": "2020-03-01", "end": "2020-03-11"}, times) == (40, 60, 70)
    with pytest.raises(ValueError, match="add up to 1.200 > 1"):
        split_bounds(100, [0.7, 0.3, 0.2], times)
    with pytest.raises(ValueError, match="needs 120 rows; the table has 100"):
        split_bounds(100, [100, 10, 10], times)


def test_windows_never_read_past_forecast_time():
    values = torch.arange(50, dtype=torch.float64)[:, None]  # value == row number
    lookback, horizon = 7, 3
    for begin, end in [(0, 30), (30, 40), (40, 50)]:
        origins = window_origins(begin, end, lookback, horizon)
        assert len(origins) > 0
        past, future = gather_windows(values, torch.from_numpy(origins), lookback, horizon)
        t = torch.from_numpy(origins).double()[:, None]
        assert torch.equal(past[:, :, 0], t + torch.arange(-lookback, 0))  # exactly rows [t - L, t)
        assert torch.equal(future[:, :, 0], t + torch.arange(horizon))   # exactly rows [t, t + H)
        assert future.min() >= begin and future.max() < end             # targets inside their split
        assert past.min() >= 0


# ---------------------------------------------------------------- scalers

def test_scalers_fit_training_rows_only_and_round_trip():
    rng = np.random.default_rng(0)
    train = rng.normal(5.0, 2.0, size=(200, 2))
    for kind in ("standard", "minmax", "robust", "none"):
        s = Scaler.fit(kind, train, ["a", "b"])
        back = Scaler.from_dict(s.to_dict())
        x = rng.normal(size=(5, 2)) * 1000
        np.testing.assert_allclose(back.inverse_transform(back.transform(x)), x, rtol=1e-12, atol=1e-9)
    z = Scaler.fit("standard", train, ["a", "b"]).transform(train)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-12)
    m = Scaler.fit("minmax", train, ["a", "b"]).transform(train)
    np.testing.assert_allclose([m.min(0), m.max(0)], [[0, 0], [1, 1]], atol=1e-12)
    r = Scaler.fit("robust", train, ["a", "b"])
    np.testing.assert_allclose(r.center, np.median(train, axis=0))
    const = Scaler.fit("standard", np.ones((10, 1)) * 3.0, ["c"])
    assert const.scale[0] == 1.0 and const.transform(np.array([[4.0]]))[0, 0] == 1.0


# ---------------------------------------------------------------- calendar

def test_calendar_features():
    times = pd.DatetimeIndex(["2021-03-01 00:00", "2021-03-01 06:00", "2021-03-06 12:00"])
    f = calendar_features(times, ["hour", "dayofweek"], "sincos")
    assert calendar_columns(["hour", "dayofweek"], "sincos") == ["hour_sin", "hour_cos", "dayofweek_sin", "dayofweek_cos"]
    np.testing.assert_allclose(f[:, 0], [0.0, 1.0, 0.0], atol=1e-6)   # sin(2 pi h / 24)
    np.testing.assert_allclose(f[:, 1], [1.0, 0.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(f[2, 2], np.sin(2 * np.pi * 5 / 7), atol=1e-6)  # Saturday = 5
    oh = calendar_features(times, ["dayofweek"], "onehot")
    assert oh.shape == (3, 7) and oh[0, 0] == 1 and oh[2, 5] == 1 and oh.sum() == 3
    assert auto_calendar("h") == ["hour", "dayofweek", "month"] and auto_calendar("B") == ["dayofweek", "month"]
    assert auto_calendar("steps") == []


# ---------------------------------------------------------------- metrics and baselines

def test_metrics_by_hand():
    y = np.array([[[1.0], [2.0]], [[4.0], [0.0]]])      # 2 windows, horizon 2, 1 target
    p = np.array([[[2.0], [2.0]], [[1.0], [0.0]]])
    m = forecast_metrics(y, p, mase_scale=np.array([2.0]))
    assert m["mae"] == pytest.approx(1.0) and m["mse"] == pytest.approx(2.5) and m["rmse"] == pytest.approx(2.5 ** 0.5)
    assert m["mape"] == pytest.approx(100 * (1 / 1 + 0 + 3 / 4) / 3)       # the zero target is left out
    assert m["smape"] == pytest.approx(100 * (2 / 3 + 0 + 6 / 5 + 0) / 4)  # 0/0 counts as 0
    assert m["mase"] == pytest.approx(0.5)
    by = metrics_by_step(y, p)
    assert by["mae"] == pytest.approx([2.0, 0.0]) and by["mse"] == pytest.approx([5.0, 0.0])
    assert mase_scale(np.array([[0.0], [1.0], [3.0], [6.0]]), 1)[0] == pytest.approx(2.0)


def test_baselines():
    past = np.arange(24, dtype=float).reshape(2, 12, 1)
    assert naive_forecast(past, 3)[:, :, 0].tolist() == [[11, 11, 11], [23, 23, 23]]
    assert seasonal_naive_forecast(past, 5, 4)[0, :, 0].tolist() == [8, 9, 10, 11, 8]
    with pytest.raises(ValueError, match="season 13 and lookback 12"):
        seasonal_naive_forecast(past, 5, 13)
    # windows whose future is an exact linear function of the past (per target) are fitted exactly
    rng = np.random.default_rng(1)
    past = rng.normal(size=(300, 8, 2))
    w_true = rng.normal(size=(2, 8, 3))
    b_true = rng.normal(size=(2, 3))
    future = np.einsum("nlc,clh->nhc", past, w_true) + b_true.T[None]
    lin = LinearBaseline().fit(past, future)
    np.testing.assert_allclose(lin.weights[:, :8], w_true, atol=1e-4)
    np.testing.assert_allclose(lin.weights[:, 8], b_true, atol=1e-4)
    p_ = rng.normal(size=(5, 8, 2))
    np.testing.assert_allclose(lin.predict(p_), np.einsum("nlc,clh->nhc", p_, w_true) + b_true.T[None], atol=1e-4)
    again = LinearBaseline.from_dict(lin.to_dict())
    np.testing.assert_array_equal(again.predict(p_), lin.predict(p_))


# ---------------------------------------------------------------- registry and shared data

def test_registry_bundled_and_errors():
    rows = list_datasets()
    assert {"name", "task", "path", "description"} <= set(rows[0])
    bundled = resolve_data_path("bundled:seattle_weather")
    assert bundled.exists() and bundled.stat().st_size < 1_000_000
    assert resolve_data_path("seattle_weather") == bundled
    with pytest.raises(FileNotFoundError, match="no bundled data set 'nope'"):
        resolve_data_path("bundled:nope")
    with pytest.raises(FileNotFoundError, match="relative paths are taken from the config file's folder"):
        resolve_data_path("missing/file.csv")


def test_bundled_data_loads_daily():
    t = load_table(resolve_data_path("bundled:seattle_weather"), time_column="date", numeric=["temp_max"],
                   categorical=["weather"])
    assert t.frequency == "D" and len(t) == 1461 and set(t.categorical["weather"]) == {"sun", "fog", "rain", "drizzle", "snow"}


@needs_shared
def test_shared_stock_is_business_daily_and_pm25_reports_missing():
    aapl = load_table(SHARED / "stocks/stocks.csv.gz", time_column="Date", numeric=["Close", "Volume"],
                      where={"Ticker": "AAPL"})
    assert aapl.frequency == "B" and len(aapl) == 3270
    with pytest.raises(TableError, match=r"pollution.csv: column 'pm2.5' has 2067 missing value\(s\); first at row 0 "
                                         r"\(line 2\), time 2010-01-01 00:00:00"):
        load_table(SHARED / "beijing_pm25/pollution.csv", time_column=["year", "month", "day", "hour"], numeric=["pm2.5"])
    melb = SHARED / "melbourne_temperature/daily-min-temperatures.csv"
    with pytest.raises(TableError, match=r"irregular timestamps at frequency 'D': 2 step\(s\) off the grid; first at "
                                         r"row 1460 \(line 1462\): 1985-01-01"):
        load_table(melb, time_column="Date", numeric=["Temp"])


# ---------------------------------------------------------------- user errors: classes, empty files, inf, row ranges, grid

def test_table_errors_are_data_errors_and_config_values_are_config_errors(tmp_path):
    from hybridrnn.errors import ConfigError, DataError, HybridRNNError

    assert issubclass(TableError, DataError) and issubclass(TableError, HybridRNNError)
    path = hourly_csv(tmp_path, good_rows())
    with pytest.raises(ConfigError, match="unknown fill 'zero'"):
        load_table(path, time_column="time", numeric=["y"], fill="zero")
    with pytest.raises(ConfigError, match="unknown frequency 'XYZ'"):
        load_table(path, time_column="time", numeric=["y"], frequency="XYZ")
    with pytest.raises(ConfigError, match=r"data.start: 'not a date' is not a date"):
        load_table(path, time_column="time", numeric=["y"], start="not a date")
    with pytest.raises(ConfigError, match="data.split"):
        split_bounds(100, [0.5, "x", 0.2], None)
    with pytest.raises(DataError, match="needs 120 rows; the table has 100"):
        split_bounds(100, [100, 10, 10], None)


def test_missing_file_is_a_data_error_and_a_file_not_found_error(tmp_path):
    from hybridrnn.errors import DataError

    with pytest.raises(DataError, match="data file not found") as info:
        load_table(tmp_path / "nope.csv", time_column="time", numeric=["y"])
    assert isinstance(info.value, FileNotFoundError)


def test_empty_and_header_only_csv_name_the_file(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TableError, match=r"empty.csv: the file is empty \(no header, no rows\)"):
        load_table(empty, time_column="time", numeric=["y"])
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    with pytest.raises(TableError, match=r"blank.csv: the file has no columns"):
        load_table(blank, time_column="time", numeric=["y"])
    header_only = tmp_path / "header.csv"
    header_only.write_text("time,y,x\n")
    with pytest.raises(TableError) as info:
        load_table(header_only, time_column="time", numeric=["y"])
    assert str(info.value) == "header.csv".join([str(tmp_path) + "/", ": has a header but no data rows "
                                                                       "(columns: ['time', 'y', 'x'])"])
    assert "start=None" not in str(info.value)


@pytest.mark.parametrize("cell", ["inf", "-inf", "1e999", "Infinity"])
def test_non_finite_values_are_refused_at_load_time(tmp_path, cell):
    rows = good_rows()
    rows[2] = f"2020-01-01 02:00,{cell},20"
    rows[4] = "2020-01-01 04:00,-inf,40"
    with pytest.raises(TableError) as info:
        load_table(hourly_csv(tmp_path, rows), time_column="time", numeric=["y", "x"])
    msg = str(info.value)
    assert "column 'y' has 2 non-finite value(s)" in msg
    assert "first at row 2 (line 4), time 2020-01-01 02:00:00" in msg
    # a DataFrame source too (e.g. the API), and fill does not touch them
    frame = pd.DataFrame({"time": pd.date_range("2020-01-01", periods=4, freq="h"), "y": [1.0, np.inf, 2.0, 3.0]})
    with pytest.raises(TableError, match=r"DataFrame: column 'y' has 1 non-finite value\(s\).*first at row 1"):
        load_table(frame, time_column="time", numeric=["y"], fill="ffill")


def test_nothing_is_guessed_from_a_malformed_header_or_long_rows(tmp_path):
    dup = tmp_path / "dup.csv"
    dup.write_text("time,y,y\n2020-01-01 00:00,1,2\n")
    with pytest.raises(TableError, match=r"dup.csv: the header names column 'y' twice \(columns 2 and 3\)"):
        load_table(dup, time_column="time", numeric=["y"])
    # every data row one field longer than the header: pandas would take the first column as the index
    longer = tmp_path / "longer.csv"
    longer.write_text("time,y\n2020-01-01 00:00,1,5\n2020-01-01 01:00,2,6\n2020-01-01 02:00,3,7\n")
    with pytest.raises(TableError, match="some rows have more fields than the header"):
        load_table(longer, time_column="time", numeric=["y"])


def test_mixed_utc_offsets_convert_and_offsets_mixed_with_naive_times_are_refused(tmp_path):
    dst = tmp_path / "dst.csv"
    dst.write_text("time,y\n2020-03-29 00:00+01:00,1\n2020-03-29 01:00+01:00,2\n2020-03-29 03:00+02:00,3\n")
    table = load_table(dst, time_column="time", numeric=["y"], frequency="h")
    assert list(table.times) == list(pd.date_range("2020-03-28 23:00", periods=3, freq="h"))
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("time,y\n2020-01-01 00:00+01:00,1\n2020-01-01 01:00,2\n")
    with pytest.raises(TableError, match=r"mixes times with a UTC offset .*row 0.* and without one .*row 1"):
        load_table(mixed, time_column="time", numeric=["y"])


def test_rows_validates_only_the_given_range(tmp_path):
    rows = good_rows(10)
    rows[1] = "2020-01-01 01:00,,10"          # a missing value far outside the look-back
    rows[2] = "2020-01-01 02:00,inf,20"       # and a non-finite one
    path = hourly_csv(tmp_path, rows)
    with pytest.raises(TableError):
        load_table(path, time_column="time", numeric=["y", "x"])
    table = load_table(path, time_column="time", numeric=["y", "x"], frequency="h", rows=slice(-4, None))
    assert list(table.rows) == [6, 7, 8, 9] and len(table) == 4
    assert table.times[0] == pd.Timestamp("2020-01-01 06:00") and np.isfinite(table.numeric.to_numpy()).all()
    rows[8] = "2020-01-01 08:00,,80"
    with pytest.raises(TableError) as info:
        load_table(hourly_csv(tmp_path, rows), time_column="time", numeric=["y"], frequency="h", rows=slice(-4, None))
    assert "first at row 8 (line 10)" in str(info.value)
    assert str(info.value).endswith("(only rows 6-9, the 4 rows read, were checked)")
    with pytest.raises(TableError, match=r"no rows in the range 20: \(the table has 10 rows\)"):
        load_table(path, time_column="time", numeric=["y"], rows=slice(20, None))


def test_check_time_grid_refuses_times_off_the_training_grid():
    from hybridrnn.data.timeseries import check_time_grid, time_grid_mask

    last = pd.Timestamp("2015-12-31")
    # continuing, overlapping or starting later on the same grid: accepted
    check_time_grid(pd.date_range("2016-01-01", periods=5, freq="D"), last, "D")
    check_time_grid(pd.date_range("2015-11-01", periods=90, freq="D"), last, "D")
    check_time_grid(pd.bdate_range("2016-01-01", periods=10), last, "B")
    check_time_grid(pd.date_range("2014-01-01", periods=40, freq="MS"), pd.Timestamp("2015-12-01"), "MS")
    check_time_grid(pd.date_range("2020-01-01 00:30", periods=3, freq="h"), "2020-01-01 00:30", "h")
    check_time_grid(pd.date_range("2020-01-01 00:30", periods=3, freq="h"), "2020-01-01", "steps")
    # every timestamp shifted by one hour: off the daily grid, named with its row and the grid around it
    shifted = pd.date_range("2016-01-01 01:00", periods=5, freq="D")
    with pytest.raises(TableError) as info:
        check_time_grid(shifted, last, "D", source="in.csv", rows=np.arange(3, 8))
    assert str(info.value).startswith("in.csv: 5 timestamp(s) are off the training data's 'D' grid, which runs "
                                      "through its last time 2015-12-31 00:00:00; first at row 3 (line 5): "
                                      "2016-01-01 01:00:00 (the grid has 2016-01-01 00:00:00 and "
                                      "2016-01-02 00:00:00 on either side)")
    with pytest.raises(TableError, match=r"1 timestamp\(s\) are off .*'B' grid.*2016-01-02 00:00:00"):
        check_time_grid(pd.DatetimeIndex(["2016-01-01", "2016-01-02", "2016-01-04"]), last, "B")
    with pytest.raises(TableError, match=r"'2D' grid.*2015-12-02 00:00:00 \(the grid has 2015-12-01 00:00:00 and "
                                         r"2015-12-03 00:00:00"):
        check_time_grid(pd.date_range("2015-12-01", periods=4, freq="D"), last, "2D")
    with pytest.raises(TableError, match="'MS' grid"):
        check_time_grid(pd.DatetimeIndex(["2016-01-01", "2016-02-02"]), last + pd.Timedelta(days=1), "MS")
    assert time_grid_mask(pd.date_range("2020-01-01 00:05", periods=3, freq="15min"), "2020-01-01",
                          "15min").tolist() == [False, False, False]


def test_table_columns_reads_the_header_with_the_loader_errors(tmp_path):
    from hybridrnn.data.timeseries import table_columns

    path = hourly_csv(tmp_path, good_rows())
    assert table_columns(path) == ["time", "y", "x"]
    assert table_columns(pd.DataFrame({"a": [1], 2: [3]})) == ["a", "2"]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TableError, match="empty.csv: the file is empty"):
        table_columns(empty)
