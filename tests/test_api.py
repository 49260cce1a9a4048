"""The Python API (``hybridrnn.fit`` / ``load`` / ``Run``) and a trained run standing on its own: a run predicts,
evaluates new data and exports with its training data gone, with the same numbers as before, through Python and
through the CLI."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import hybridrnn
from hybridrnn.cli import app
from hybridrnn.errors import DataError


def hourly_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = pd.date_range("2021-03-01", periods=n, freq="h")
    y = np.sin(2 * np.pi * np.arange(n) / 24) + 0.1 * rng.normal(size=n)
    return pd.DataFrame({"time": t, "y": y, "x": rng.normal(size=n)})


def config(path=None) -> dict:
    data = {"time_column": "time", "target": ["y"], "covariates": ["x"], "split": [0.6, 0.2, 0.2]}
    if path is not None:
        data["path"] = str(path)
    return {"task": "forecast", "data": data, "window": {"lookback": 24, "horizon": 6},
            "model": {"encoder": "lstm:8", "attention": "additive"},
            "train": {"epochs": 2, "batch_size": 32, "progress": "none", "plots": False, "seed": 3}}


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.fixture
def csv_run(tmp_path_factory):
    """A forecaster trained by the CLI from a CSV, then the CSV moved away."""
    root = tmp_path_factory.mktemp("api")
    data = root / "data" / "series.csv"
    data.parent.mkdir()
    frame = hourly_frame()
    frame.to_csv(data, index=False)
    import yaml

    (root / "cfg.yaml").write_text(yaml.safe_dump(config(data)))
    result = cli("train", root / "cfg.yaml", "--out", root / "run")
    assert result.exit_code == 0, result.output
    new = root / "new.csv"
    frame.iloc[-60:].to_csv(new, index=False)
    before_py = hybridrnn.load(root / "run").predict(new)
    before_eval = hybridrnn.load(root / "run").metrics(new)
    shutil.rmtree(data.parent)               # the training data is gone from here on
    return root, frame, new, before_py, before_eval


def test_a_run_predicts_and_evaluates_without_its_training_data(csv_run):
    root, frame, new, before_py, before_eval = csv_run
    run = hybridrnn.load(root / "run")
    after = run.predict(new)
    pd.testing.assert_frame_equal(after, before_py)                    # bit for bit: the state was saved whole
    assert list(after.columns) == ["time", "y"] and len(after) == 6
    assert after["time"].iloc[0] == frame["time"].iloc[-1] + pd.Timedelta(hours=1)
    assert run.metrics(new) == before_eval                             # evaluate --input reads only the input
    res = cli("predict", root / "run", "--input", new, "--output", root / "f.csv")
    assert res.exit_code == 0, res.output
    via_cli = pd.read_csv(root / "f.csv", parse_dates=["time"])
    np.testing.assert_allclose(via_cli["y"].to_numpy(), before_py["y"].to_numpy(), rtol=1e-12)
    res = cli("evaluate", root / "run", "--input", new, "--json")
    assert res.exit_code == 0, res.output
    assert '"mae": %r' % before_eval["mae"] in res.output


def test_evaluate_without_input_names_the_missing_training_file(csv_run):
    root = csv_run[0]
    res = cli("evaluate", root / "run")
    assert res.exit_code == 2
    assert "series.csv" in res.output and "Traceback" not in res.output
    with pytest.raises(FileNotFoundError, match="series.csv"):
        hybridrnn.load(root / "run").evaluate()


def test_fit_predict_evaluate_load_round_trip_matches_the_cli(tmp_path):
    frame = hourly_frame()
    frame.to_csv(tmp_path / "series.csv", index=False)
    run = hybridrnn.fit(config(), data=frame, out=tmp_path / "py")     # a DataFrame, no data.path
    assert isinstance(run.model, __import__("torch").nn.Module) and run.config.task == "forecast"
    table = run.evaluate()
    assert table.index[0] == "model" and set(table.index) == {"model", "naive", "seasonal_naive", "linear"}
    assert {"mae", "mse", "loss"} <= set(table.columns) and np.isnan(table.loc["naive", "loss"])
    forecast = run.predict(frame.iloc[-40:])
    again = hybridrnn.load(tmp_path / "py")
    pd.testing.assert_frame_equal(again.predict(frame.iloc[-40:]), forecast)
    with pytest.raises(DataError, match="no data.path"):               # trained on a DataFrame: say what to pass
        again.evaluate()
    pd.testing.assert_frame_equal(again.evaluate(data=frame), run.evaluate(data=frame))
    # the CLI on the same data and seed gives the same forecast
    import yaml

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config(tmp_path / "series.csv")))
    assert cli("train", tmp_path / "cfg.yaml", "--out", tmp_path / "cli").exit_code == 0
    frame.iloc[-40:].to_csv(tmp_path / "new.csv", index=False)
    res = cli("predict", tmp_path / "cli", "--input", tmp_path / "new.csv")
    via_cli = pd.read_csv(__import__("io").StringIO(res.output), parse_dates=["time"])
    np.testing.assert_allclose(via_cli["y"].to_numpy(), forecast["y"].to_numpy(), rtol=1e-6)


def test_fit_without_out_trains_in_a_temporary_folder_that_save_keeps(tmp_path):
    run = hybridrnn.fit(config(), data=hourly_frame())
    temporary = run.path
    assert (temporary / "model.safetensors").exists() and tmp_path not in temporary.parents
    run.save(tmp_path / "kept")
    assert run.path == tmp_path / "kept" and (tmp_path / "kept" / "forecast_artifacts.json").exists()
    pd.testing.assert_frame_equal(hybridrnn.load(tmp_path / "kept").predict(hourly_frame().iloc[-30:]),
                                  run.predict(hourly_frame().iloc[-30:]))
    with pytest.raises(ValueError, match="already exists"):
        run.save(temporary)


def test_a_run_refuses_what_its_task_cannot_do(tmp_path):
    run = hybridrnn.fit({"task": "long_range", "data": {"problem": "adding", "length": 5, "n_train": 16, "n_val": 8,
                                                        "n_test": 8},
                         "model": {"encoder": "gru:4"}, "train": {"epochs": 1, "batch_size": 8, "progress": "none"}},
                        out=tmp_path / "lr")
    with pytest.raises(NotImplementedError, match="does not support generate"):
        run.generate("x", 3)


def test_predict_reads_only_the_look_back_and_checks_the_time_grid(tmp_path):
    frame = hourly_frame()
    run = hybridrnn.fit(config(), data=frame, out=tmp_path / "run")
    new = frame.iloc[-60:].reset_index(drop=True)
    clean = run.predict(new)
    far = new.copy()
    far.loc[5, "y"] = np.nan                       # outside the last 24 rows: never read
    pd.testing.assert_frame_equal(run.predict(far), clean)
    near = new.copy()
    near.loc[50, "x"] = np.inf                     # inside the look-back: an error that says what was checked
    with pytest.raises(DataError, match=r"x.*only rows 36-59"):
        run.predict(near)
    shifted = new.assign(time=new["time"] + pd.Timedelta(minutes=30))
    with pytest.raises(DataError, match="off the training data's 'h' grid"):
        run.predict(shifted)
    later = new.assign(time=new["time"] + pd.Timedelta(hours=5))   # whole steps later: the same grid
    assert later["time"].iloc[-1] + pd.Timedelta(hours=1) == run.predict(later)["time"].iloc[0]


def test_backtest_command_writes_the_long_table_and_its_summary(csv_run):
    root, frame, new, *_ = csv_run                          # the training CSV is gone: only the run is used
    frame.to_csv(root / "history.csv", index=False)
    res = cli("backtest", root / "run", "--input", root / "history.csv", "--output", root / "bt" / "f.csv",
              "--start", str(frame["time"].iloc[200]), "--stride", "12")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(root / "bt" / "f.csv", parse_dates=["cutoff", "time"])
    assert set(table["cutoff"]) == {frame["time"].iloc[199], frame["time"].iloc[211], frame["time"].iloc[223]}
    assert (table["time"] > table["cutoff"]).all() and len(table) == 3 * 6
    assert {"actual", "forecast", "naive", "linear"} <= set(table.columns)
    assert (root / "bt" / "f.summary.csv").exists() and "MAE" in res.output


def test_a_cli_trained_forecaster_carries_its_conformal_intervals(csv_run):
    root, frame, new, before_py, _ = csv_run              # trained by `hybridrnn train`, training CSV gone
    assert (root / "run" / "forecast_conformal.safetensors").exists()
    got = hybridrnn.load(root / "run").predict(new, intervals="conformal", level=0.8)
    assert {"y_q0.1", "y_q0.9"} <= set(got.columns)
    np.testing.assert_array_equal(got["y"].to_numpy(), before_py["y"].to_numpy())
    assert (got["y_q0.1"] < got["y"]).all() and (got["y"] < got["y_q0.9"]).all()
