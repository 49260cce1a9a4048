"""Forecaster module and forecast task: strategies, instance norm, channel independence, no leakage, predict
round trips (business-day and hourly), the README config verbatim, artifacts, plots, and a learning test on
real (bundled) data. All CPU-sized."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hybridrnn.config import parse_yaml
from hybridrnn.api import build_config
from hybridrnn.nn.forecaster import Forecaster
from hybridrnn.nn.recurrent import GRU, LSTM
from hybridrnn.tasks.forecast import ForecastTask
from hybridrnn.tasks.forecast_config import ForecastConfig


def make_config(path, **data) -> ForecastConfig:
    window = data.pop("window", {"lookback": 16, "horizon": 4})
    model = data.pop("model", {"encoder": "gru:8"})
    train = data.pop("train", {"epochs": 1, "batch_size": 32})
    d = {"path": str(path), "time_column": "time", "target": ["y"], "split": [0.6, 0.2, 0.2]}
    d.update(data)
    return ForecastConfig.model_validate({"task": "forecast", "data": d, "window": window, "model": model, "train": train})


def hourly_frame(n=200, seed=0, start="2021-03-01 00:00") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=n, freq="h")
    y = np.sin(2 * np.pi * np.arange(n) / 24) + 0.1 * rng.normal(size=n)
    return pd.DataFrame({"time": t.strftime("%Y-%m-%d %H:%M:%S"), "y": y, "x": rng.normal(size=n)})


def fit_briefly(task, model, steps=3, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    done = 0
    while done < steps:
        for batch in task.train_batches(0, g):
            loss, _ = task.training_step(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model


# ---------------------------------------------------------------- the module

@pytest.mark.parametrize("strategy,attention", [("direct", None), ("direct", "additive"), ("direct", "self"),
                                                ("recursive", "dot"), ("seq2seq", "additive"), ("seq2seq", "general")])
def test_forecaster_shapes_and_attention_weights(strategy, attention):
    torch.manual_seed(0)
    inp = 3 if strategy == "recursive" else 4  # recursive: 1 target + 2 calendar; others add a covariate
    m = Forecaster(inp, 1, 5, GRU(inp, 8), lookback=12, future_size=2, strategy=strategy, attention=attention)
    y, w = m(torch.randn(3, 12, inp), torch.randn(3, 5, 2))
    assert y.shape == (3, 5, 1)
    if attention is None:
        assert w is None
    else:
        assert w.shape[0] == 3 and w.shape[-1] == 12
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_recursive_rollout_equals_running_encoder_on_fed_back_sequence():
    """Each recursive step must equal the encoder run over [past, previous predictions] (float64, 1e-10)."""
    torch.manual_seed(0)
    enc = LSTM(3, 6).double()
    m = Forecaster(3, 1, 4, enc, lookback=10, future_size=2, strategy="recursive").double()
    past, future = torch.randn(2, 10, 3, dtype=torch.float64), torch.randn(2, 4, 2, dtype=torch.float64)
    y, _ = m(past, future)
    seq = past
    for h in range(4):
        out, _ = enc(seq)
        ref = m.core.head(out[:, -1])
        torch.testing.assert_close(y[:, h], ref, rtol=0, atol=1e-10)
        seq = torch.cat([seq, torch.cat([ref, future[:, h]], dim=1)[:, None]], dim=1)


def test_recursive_rejects_past_covariates():
    with pytest.raises(ValueError, match="recursive strategy feeds its predictions back"):
        Forecaster(3, 1, 4, GRU(3, 4), strategy="recursive")


def test_instance_norm_is_affine_equivariant():
    """With instance norm, y(a * x + b) = a * y(x) + b for the normalised channels (float64)."""
    torch.manual_seed(0)
    m = Forecaster(2, 2, 3, GRU(2, 5), lookback=8, instance_norm=True, eps=0.0).double()
    x = torch.randn(4, 8, 2, dtype=torch.float64)
    y, _ = m(x)
    a, b = torch.tensor([3.0, 0.5], dtype=torch.float64), torch.tensor([100.0, -7.0], dtype=torch.float64)
    y2, _ = m(x * a + b)
    torch.testing.assert_close(y2, y * a + b, rtol=1e-9, atol=1e-9)


def test_channel_independence_applies_one_model_per_target():
    torch.manual_seed(0)
    m = Forecaster(3, 2, 4, LSTM(2, 6), lookback=9, channel_independent=True, linear_skip=True).double()
    x = torch.randn(5, 9, 3, dtype=torch.float64)  # 2 targets + 1 shared covariate
    y, _ = m(x)
    for c in range(2):
        yc, _ = m.core(torch.cat([x[:, :, c:c + 1], x[:, :, 2:]], dim=2), None)
        torch.testing.assert_close(y[:, :, c], yc[:, :, 0], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- the task: leakage

def test_scaler_sees_only_training_rows_and_windows_only_the_past(tmp_path):
    df = hourly_frame(200)
    a = tmp_path / "a.csv"
    df.to_csv(a, index=False)
    task_a = ForecastTask(make_config(a, covariates=["x"]))
    task_a.setup()
    train_end, val_end, _ = task_a.layout["bounds"]
    assert (train_end, val_end) == (120, 160)
    np.testing.assert_allclose(task_a.scaler.center, df[["y", "x"]].iloc[:120].mean().to_numpy(), rtol=1e-12)

    # the same series with a wildly different test part: the scaler, and every forecast made before the change,
    # are identical; the first forecast made after it differs (so the comparison can fail)
    r = 170
    wild = df.copy()
    wild.loc[r:, ["y", "x"]] = 1e6
    b = tmp_path / "b.csv"
    wild.to_csv(b, index=False)
    task_b = ForecastTask(make_config(b, covariates=["x"]))
    task_b.setup()
    np.testing.assert_array_equal(task_a.scaler.center, task_b.scaler.center)
    np.testing.assert_array_equal(task_a.scaler.scale, task_b.scaler.scale)
    torch.manual_seed(0)
    model = task_a.build_model()
    pa, _ = task_a.predict_windows(model, "test")
    pb, _ = task_b.predict_windows(model, "test")
    origins = task_a.origins["test"]
    before = origins <= r
    np.testing.assert_array_equal(pa[before], pb[before])
    assert not np.allclose(pa[origins == r + 1], pb[origins == r + 1])


# ---------------------------------------------------------------- the README config, end to end

ISSUE_CONFIG = """\
task: forecast
data: {path: prices.csv, time_column: Date, target: [Close], covariates: [Volume], split: [0.7, 0.1, 0.2], scaler: standard}
window: {lookback: 64, horizon: 8}
model: {encoder: "lstm:64>gru:64", attention: additive, dropout: 0.1}
train: {epochs: 30, batch_size: 64, lr: 0.001, seed: 0}
"""


def stock_frame(n=260, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2020-01-02", periods=n + 3).delete([10, 60, 90])  # three exchange holidays
    close = 100 * np.exp(np.cumsum(0.01 * rng.normal(size=n)))
    return pd.DataFrame({"Date": days.strftime("%Y-%m-%d"), "Close": close,
                         "Volume": rng.integers(1e5, 1e6, size=n)})


def test_issue_config_verbatim_trains_evaluates_and_predicts_business_days(tmp_path, monkeypatch):
    from conftest import evaluate_run, predict_run, train
    monkeypatch.chdir(tmp_path)
    stock_frame().to_csv("prices.csv", index=False)
    cfg = build_config(parse_yaml(ISSUE_CONFIG))
    assert isinstance(cfg, ForecastConfig)
    assert (cfg.data.target, cfg.data.covariates, cfg.window.horizon, cfg.model.attention) == (["Close"], ["Volume"], 8, "additive")
    run = train(cfg, out=tmp_path / "run", overrides=["train.epochs=1"], progress="none")
    metrics = evaluate_run(run)
    for key in ("loss", "mae", "mse", "mase", "scaled_mse", "naive_mae", "seasonal_naive_mae", "linear_mae", "beats_baselines"):
        assert np.isfinite(metrics[key]), key
    artifacts = json.loads((run / "forecast_artifacts.json").read_text())
    assert artifacts["layout"]["frequency"] == "B" and artifacts["scaler"]["columns"] == ["Close", "Volume"]

    new = stock_frame(100, seed=1)  # ends on a Friday? whatever it ends on, the next rows are business days
    new.to_csv("new.csv", index=False)
    predict_run(run, "new.csv", "forecast.csv")
    out = pd.read_csv("forecast.csv", parse_dates=["Date"])
    # the same through the CLI: `hybridrnn predict RUN --input NEW.csv --output FORECAST.csv`
    from typer.testing import CliRunner
    from hybridrnn.cli import app
    res = CliRunner().invoke(app, ["predict", str(run), "--input", "new.csv", "--output", "cli.csv"])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(pd.read_csv("cli.csv", parse_dates=["Date"]), out)
    expected = pd.bdate_range(pd.Timestamp(new["Date"].iloc[-1]) + pd.offsets.BDay(1), periods=8)
    assert list(out.columns) == ["Date", "Close"]
    assert list(out["Date"]) == list(expected) and (out["Date"].dt.day_of_week < 5).all()
    assert np.isfinite(out["Close"]).all()


def test_cli_evaluate_json_has_every_forecaster_per_step(tmp_path):
    """`hybridrnn evaluate RUN --json`: the flat metrics plus a report with the model and each baseline, overall
    and per horizon step, on the original and the scaled data."""
    from typer.testing import CliRunner
    from hybridrnn.cli import app
    from conftest import train
    path = tmp_path / "h.csv"
    hourly_frame(160).to_csv(path, index=False)
    cfg = make_config(path, window={"lookback": 24, "horizon": 3}, train={"epochs": 1, "batch_size": 32, "plots": False})
    run = train(cfg, out=tmp_path / "run", progress="none")
    res = CliRunner().invoke(app, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    rep = out["report"]
    assert set(rep["forecasters"]) == {"model", "naive", "seasonal_naive", "linear"} and rep["horizon"] == 3
    for name, f in rep["forecasters"].items():
        assert set(f["overall"]) == {"mae", "mse", "rmse", "mape", "smape", "mase"}
        assert all(len(v) == 3 for v in f["per_step"].values()) and len(f["scaled"]["per_step"]["mse"]) == 3
        assert f["overall"]["mae"] == pytest.approx(out["mae" if name == "model" else f"{name}_mae"])
        assert f["scaled"]["overall"]["mse"] == pytest.approx(out["scaled_mse" if name == "model" else f"{name}_scaled_mse"])
    assert out["beats_baselines"] == float(rep["beats_baselines"])

    res = CliRunner().invoke(app, ["evaluate", str(run)])   # the table: one row per forecaster
    assert res.exit_code == 0, res.output
    lines = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.count("│") > 2}
    assert {"model", "naive", "seasonal_naive", "linear"} <= set(lines)
    assert f"{out['seasonal_naive_mae']:.4g}" in lines["seasonal_naive"].split("│")[2]
    assert f"{out['mae']:.4g}" in lines["model"].split("│")[2] and "beats_baselines" in res.output


def test_metrics_by_forecaster_pivots_baseline_prefixes():
    from hybridrnn.api import metrics_table as metrics_by_forecaster
    rows, other = metrics_by_forecaster(
        {"mae": 1.0, "mse": 2.0, "naive_mae": 3.0, "naive_mse": 4.0, "seasonal_naive_mae": 5.0, "loss": 6.0,
         "naive_extra": 7.0}, ("naive", "seasonal_naive"))
    assert rows == {"model": {"mae": 1.0, "mse": 2.0}, "naive": {"mae": 3.0, "mse": 4.0},
                    "seasonal_naive": {"mae": 5.0}}
    assert other == {"naive_extra": 7.0, "loss": 6.0}
    rows, other = metrics_by_forecaster({"accuracy": 0.5}, ())
    assert rows == {"model": {"accuracy": 0.5}} and other == {}


def test_hourly_predict_round_trip_and_artifacts_only_reload(tmp_path):
    df = hourly_frame(150)
    path = tmp_path / "h.csv"
    df.to_csv(path, index=False)
    cfg = make_config(path, covariates=["x"], model={"encoder": "lstm:8", "strategy": "seq2seq", "attention": "general"})
    task = ForecastTask(cfg)
    task.setup()
    assert task.layout["calendar"] == ["hour", "dayofweek", "month"] and task.layout["future_size"] == 6
    torch.manual_seed(0)
    model = task.build_model()
    got = task.predict(model, path)
    assert list(got["time"]) == list(pd.date_range("2021-03-07 06:00", periods=4, freq="h"))  # after row 149
    task.save_artifacts(tmp_path)
    fresh = ForecastTask(cfg)  # no setup, no data: only the JSON artifacts
    fresh.load_artifacts(tmp_path)
    again = fresh.forecast(model, df.iloc[-40:])
    np.testing.assert_allclose(again["y"].to_numpy(), got["y"].to_numpy(), rtol=1e-6)


def test_dataframe_input_trains_like_the_same_csv(tmp_path):
    """The Python API takes a DataFrame (no file, no data.path): same windows, scaler and predictions as the CSV."""
    df = hourly_frame(150)
    df.to_csv(tmp_path / "h.csv", index=False)
    from_csv = ForecastTask(make_config(tmp_path / "h.csv", covariates=["x"]))
    cfg = make_config(tmp_path / "h.csv", covariates=["x"]).model_copy(deep=True)
    cfg.data.path = None
    with pytest.raises(ValueError, match="no data.path .* pass the data"):
        ForecastTask(cfg).setup()
    from_df = ForecastTask(cfg)
    from_csv.setup()
    from_df.setup(df.assign(time=pd.to_datetime(df["time"])))
    assert from_df.layout["data_file"] is None and from_df.layout["frequency"] == "h"
    np.testing.assert_array_equal(from_csv.scaler.center, from_df.scaler.center)
    torch.manual_seed(0)
    model = from_csv.build_model()
    np.testing.assert_array_equal(from_csv.predict_windows(model, "test")[0], from_df.predict_windows(model, "test")[0])
    assert from_df.evaluate(model, "test")["mae"] == pytest.approx(from_csv.evaluate(model, "test")["mae"])


def test_steps_frequency_forecasts_by_step(tmp_path):
    df = hourly_frame(120).drop(index=[30, 31]).reset_index(drop=True)  # a gap: not hourly any more
    path = tmp_path / "s.csv"
    df.to_csv(path, index=False)
    task = ForecastTask(make_config(path, frequency="steps", calendar=[]))
    task.setup()
    model = task.build_model()
    frame = task.forecast(model, path)
    assert list(frame.columns) == ["step", "y"] and frame["step"].tolist() == [118, 119, 120, 121]
    with pytest.raises(ValueError, match="calendar covariates need timestamps at a regular frequency"):
        ForecastTask(make_config(path, frequency="steps", calendar=["hour"])).setup()


def test_seasonal_naive_exists_iff_season_fits_in_lookback(tmp_path):
    """Hourly data: season 24. With a 24-step look-back the seasonal naive is a baseline (and is the value 24 h
    earlier); with 16 steps it cannot be computed from the window, and the report says why."""
    path = tmp_path / "p.csv"
    hourly_frame(160).to_csv(path, index=False)
    task = ForecastTask(make_config(path, window={"lookback": 24, "horizon": 4}))
    task.setup()
    model = task.build_model()
    rep = task.report(model, "test")
    assert rep["season"] == 24 and rep["skipped"] == {} and "seasonal_naive" in rep["forecasters"]
    past, _ = task._target_windows("test")
    np.testing.assert_array_equal(task._baselines("test")["seasonal_naive"], past[:, :4])  # y[t+h] = y[t+h-24]
    assert "seasonal_naive_mae" in task.evaluate(model, "test")

    short = ForecastTask(make_config(path, window={"lookback": 16, "horizon": 4}))
    short.setup()
    rep = short.report(short.build_model(), "test")
    assert set(rep["forecasters"]) == {"model", "naive", "linear"}
    assert "season 24 > lookback 16" in rep["skipped"]["seasonal_naive"]
    assert rep["notes"] and rep["notes"][0].startswith("seasonal_naive skipped: season 24 > lookback 16")


def test_report_per_step_and_plots(tmp_path):
    df = hourly_frame(160)
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    task = ForecastTask(make_config(path, window={"lookback": 24, "horizon": 4},
                                    model={"encoder": "gru:8", "attention": "additive"}))
    task.setup()
    torch.manual_seed(0)
    model = fit_briefly(task, task.build_model())
    rep = task.report(model, "test")
    assert set(rep["forecasters"]) == {"model", "naive", "seasonal_naive", "linear"}
    per_step = rep["forecasters"]["model"]["per_step"]["mae"]
    assert len(per_step) == 4
    assert np.mean(per_step) == pytest.approx(rep["forecasters"]["model"]["overall"]["mae"])
    flat = task.evaluate(model, "test")
    assert flat["naive_mae"] == pytest.approx(rep["forecasters"]["naive"]["overall"]["mae"])
    json.dumps(rep)  # JSON-ready
    paths = task.plots(model, tmp_path)
    assert [p.name for p in paths] == ["forecast_vs_actual.png", "error_by_step.png", "attention.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


# ---------------------------------------------------------------- learning on real data

def test_small_model_beats_naive_on_real_series():
    """Seattle daily max temperature (bundled, NOAA): a GRU of 16 units, a few seconds of training, beats the
    naive last-value forecast's test MAE over the same 3-day-ahead windows."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = ForecastConfig.model_validate({
        "task": "forecast",
        "data": {"path": "bundled:seattle_weather", "time_column": "date", "target": "temp_max",
                 "covariates": ["temp_min"], "split": [0.7, 0.1, 0.2]},
        "window": {"lookback": 21, "horizon": 3},
        "model": {"encoder": "gru:16", "instance_norm": True},
        "train": {"batch_size": 32}})
    task = ForecastTask(cfg)
    task.setup()
    model = fit_briefly(task, task.build_model(), steps=250, lr=3e-3)
    m = task.evaluate(model, "test")
    assert m["mae"] < m["naive_mae"], (m["mae"], m["naive_mae"])


# ---------------------------------------------------------------- the shipped example configs

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIGS = sorted((REPO / "configs" / "forecast").rglob("*.yaml")) + [REPO / "configs" / "quickstart.yaml"]


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_example_configs_validate_and_load_their_data(path):
    """Every example config is a valid forecast config; its data loads and splits wherever the data is present
    (the quickstart's bundled data always is)."""
    from hybridrnn.api import load_config
    from hybridrnn.data.registry import resolve_data_path
    cfg = load_config(path)
    assert isinstance(cfg, ForecastConfig)
    try:
        resolve_data_path(cfg.data.path)
    except FileNotFoundError:
        assert path.name != "quickstart.yaml"
        pytest.skip(f"{cfg.data.path} not present")
    task = ForecastTask(cfg)
    task.setup()
    assert min(task.num_examples(s) for s in ("train", "val", "test")) > 0
    assert task.skipped_baselines() == {}  # every example's look-back holds a season


def test_quickstart_trains_and_predicts_from_a_data_set_name(tmp_path):
    """The README's main job in miniature: train the quickstart config (1 epoch, tiny encoder) and forecast from
    ``bundled:seattle_weather`` by name, the same as from the file; a missing input is an error naming it."""
    from hybridrnn.data.registry import BUNDLED_DIR
    from conftest import predict_run, train
    run = train(REPO / "configs" / "quickstart.yaml", out=tmp_path / "run", progress="none",
                overrides=["train.epochs=1", "model.encoder=gru:4", "train.plots=false"])
    predict_run(run, "bundled:seattle_weather", tmp_path / "by_name.csv")
    predict_run(run, BUNDLED_DIR / "seattle-weather.csv", tmp_path / "by_file.csv")
    by_name = pd.read_csv(tmp_path / "by_name.csv")
    assert list(by_name["date"]) == [f"2016-01-0{d}" for d in range(1, 8)]
    pd.testing.assert_frame_equal(by_name, pd.read_csv(tmp_path / "by_file.csv"))
    with pytest.raises(ValueError, match="nope.csv"):
        predict_run(run, tmp_path / "nope.csv", tmp_path / "x.csv")
