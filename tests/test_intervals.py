"""Prediction intervals: pinball loss, coverage, width and the split-conformal quantile against hand-worked
numbers; conformal intervals through predict / evaluate / backtest, kept by a loaded run; and a learning test:
on a series with known heteroscedastic noise, 80% intervals cover 0.7-0.9 of the test points."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hybridrnn
from hybridrnn.errors import ConfigError, DataError
from hybridrnn.tasks.forecast_metrics import (conformal_quantiles, interval_coverage, interval_pairs,
                                              interval_quantiles, interval_width, pinball_loss, quantile_text)


# ---------------------------------------------------------------- hand-worked numbers

def test_pinball_loss_by_hand():
    # d = y - f = [-1, 0, 1]: q = 0.1 -> [0.9, 0, 0.1]; q = 0.9 -> [0.1, 0, 0.9]
    assert pinball_loss([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], 0.1) == pytest.approx(1.0 / 3)
    assert pinball_loss([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], 0.9) == pytest.approx(1.0 / 3)
    # d = [-4, 6], q = 0.25: max(-1, 3) = 3 and max(1.5, -4.5) = 1.5 -> 2.25
    assert pinball_loss(np.array([[0.0, 10.0]]), np.array([[4.0, 4.0]]), 0.25) == pytest.approx(2.25)
    assert pinball_loss([1.0, 5.0], [3.0, 3.0], 0.5) == pytest.approx(0.5 * 2)     # q = 0.5: half the MAE


def test_coverage_width_and_names_by_hand():
    y, lo, hi = [1.0, 2.0, 3.0, 4.0], [0.0, 2.5, 3.0, 5.0], [2.0, 3.0, 3.0, 6.0]
    assert interval_coverage(y, lo, hi) == pytest.approx(0.5)          # in, out, in (bounds count), out
    assert interval_width(lo, hi) == pytest.approx((2 + 0.5 + 0 + 1) / 4)
    assert interval_quantiles(0.8) == (0.1, 0.9) and interval_quantiles(0.95) == (0.025, 0.975)
    assert [quantile_text(q) for q in (0.1, 0.9, 0.025, 0.5)] == ["0.1", "0.9", "0.025", "0.5"]
    assert interval_pairs(["y_q0.1", "y_q0.5", "y_q0.9", "y_q0.025", "y_q0.975"], "y_q") == \
        {"95": ("y_q0.025", "y_q0.975"), "80": ("y_q0.1", "y_q0.9")}
    with pytest.raises(ValueError, match="strictly between"):
        interval_quantiles(1.0)


def test_conformal_quantile_by_hand():
    r = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0])                    # n = 9, sorted 1..9
    q = conformal_quantiles(r, [0.5, 0.8, 0.9, 0.95])
    # ranks ceil(10 a): 5, 8, 9, 10 (> n: no finite quantile guarantees 95% from 9 residuals)
    np.testing.assert_array_equal(q, [5.0, 8.0, 9.0, np.inf])
    two = conformal_quantiles(np.stack([r, 10 * r], axis=1), [0.8])                # per column
    np.testing.assert_array_equal(two, [[8.0, 80.0]])


# ---------------------------------------------------------------- through the API

def hetero_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """A daily cycle with noise whose standard deviation follows the hour: 0.05 at night, 0.6 in the afternoon."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2022-01-01", periods=n, freq="h")
    hour = np.arange(n) % 24
    sigma = 0.05 + 0.55 * (np.sin(np.pi * hour / 24) ** 2)
    y = 2 * np.sin(2 * np.pi * hour / 24) + sigma * rng.normal(size=n)
    return pd.DataFrame({"time": t, "y": y})


def config(epochs: int = 2) -> dict:
    return {"task": "forecast", "data": {"time_column": "time", "target": "y", "split": [0.5, 0.25, 0.25]},
            "window": {"lookback": 24, "horizon": 4}, "model": {"encoder": "gru:8"},
            "train": {"epochs": epochs, "batch_size": 64, "progress": "none", "plots": False, "seed": 0,
                      "lr": 0.01}}


@pytest.fixture(scope="module")
def hetero_run():
    df = hetero_frame(960)
    return hybridrnn.fit(config(), data=df), df


def test_conformal_80_covers_between_70_and_90_percent_of_test_points(hetero_run):
    run, _ = hetero_run
    m = run.metrics(intervals="conformal", level=0.8)
    assert 0.7 <= m["coverage_80"] <= 0.9, m["coverage_80"]
    m95 = run.metrics(intervals="conformal", level=0.95)
    assert m95["coverage_95"] > m["coverage_80"] and m95["width_95"] > m["width_80"] > 0
    assert np.isfinite(m["pinball_80"]) and m["pinball_80"] > 0
    table = run.evaluate(intervals="conformal")
    assert table.loc["model", "coverage_80"] == m["coverage_80"]


def test_predict_intervals_columns_and_a_loaded_run_keeps_them(hetero_run, tmp_path):
    run, df = hetero_run
    new = df.iloc[-100:]
    out = run.predict(new, intervals="conformal", level=0.8)
    assert list(out.columns) == ["time", "y", "y_q0.1", "y_q0.9"]
    assert (out["y_q0.1"] < out["y"]).all() and (out["y"] < out["y_q0.9"]).all()
    half = run.task.conformal_half_width(0.8)[:, 0]
    np.testing.assert_allclose(out["y_q0.9"] - out["y"], half, rtol=1e-12)
    saved = run.save(tmp_path / "kept")
    loaded = hybridrnn.load(saved.path)                   # no training data: the run was trained on a DataFrame
    pd.testing.assert_frame_equal(loaded.predict(new, intervals="conformal", level=0.8), out)
    with pytest.raises(ConfigError, match="calibrated levels"):
        loaded.predict(new, intervals="conformal", level=0.8123)
    with pytest.raises(ConfigError, match="intervals must be one of"):
        loaded.predict(new, intervals="bootstrap")
    with pytest.raises(DataError, match="validation windows"):        # 0.999 needs 999 windows, there are ~230
        loaded.predict(new, intervals="conformal", level=0.999)
    assert list(loaded.predict(new).columns) == ["time", "y"]          # no intervals unless asked


def test_backtest_intervals_and_their_summary(hetero_run):
    run, df = hetero_run
    bt = run.backtest(df, intervals="conformal", level=0.8)
    assert {"forecast_q0.1", "forecast_q0.9"} <= set(bt.columns)
    np.testing.assert_allclose(bt["forecast_q0.9"] - bt["forecast"], bt["forecast"] - bt["forecast_q0.1"], rtol=1e-9)
    summary = run.backtest_summary(bt)
    inside = ((bt["actual"] >= bt["forecast_q0.1"]) & (bt["actual"] <= bt["forecast_q0.9"])).mean()
    assert summary.loc[("all", "all"), "coverage_80"] == pytest.approx(inside)
    assert 0.7 <= inside <= 0.9


def test_an_uncalibrated_run_calibrates_from_data_it_is_given(hetero_run, tmp_path):
    """A run without forecast_conformal.safetensors (e.g. trained before intervals existed) and without its
    training data: asking for intervals says what is missing; run.calibrate(data) writes the calibration."""
    run, df = hetero_run
    path = run.save(tmp_path / "bare").path
    (path / "forecast_conformal.safetensors").unlink()
    bare = hybridrnn.load(path)
    assert bare.task.conformal is None
    with pytest.raises(DataError, match="no data.path"):
        bare.predict(df.iloc[-50:], intervals="conformal")
    bare.calibrate(df)                                    # the validation part of df, split by data.split
    assert (path / "forecast_conformal.safetensors").exists()
    np.testing.assert_allclose(bare.task.conformal_half_width(0.8), run.task.conformal_half_width(0.8), rtol=1e-6)


# ---------------------------------------------------------------- the Forecaster's K outputs per target

@pytest.mark.parametrize("strategy,ci", [("direct", False), ("parallel", False), ("direct", True), ("parallel", True)])
def test_forecaster_outputs_per_target_shape_and_instance_norm_equivariance(strategy, ci):
    import torch
    from hybridrnn.nn.forecaster import Forecaster

    torch.manual_seed(0)
    m = Forecaster(3, 2, 8, "gru:6", lookback=16, strategy=strategy, segment=4 if strategy == "parallel" else None,
                   channel_independent=ci, instance_norm=True, eps=0.0, outputs_per_target=3).double()
    x = torch.randn(4, 16, 3, dtype=torch.float64)
    y, _ = m(x)
    assert y.shape == (4, 8, 2, 3)
    a = torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64)
    b = torch.tensor([100.0, -7.0, 0.0], dtype=torch.float64)
    m.norm_channels = 2
    y1, _ = m(x)
    y2, _ = m(x * a + b)                      # every one of the K values moves with the targets' location-scale
    torch.testing.assert_close(y2, y1 * a[:2, None] + b[:2, None], rtol=1e-9, atol=1e-9)
    default = Forecaster(3, 2, 8, "gru:6", lookback=16)
    assert default(x.float())[0].shape == (4, 8, 2)          # K = 1: the shape every existing caller gets


def test_forecaster_outputs_per_target_needs_a_direct_or_parallel_head():
    from hybridrnn.nn.forecaster import Forecaster

    with pytest.raises(ValueError, match="outputs_per_target > 1"):
        Forecaster(2, 1, 4, "gru:4", lookback=8, future_size=1, strategy="recursive", outputs_per_target=3)
    with pytest.raises(ValueError, match="linear_skip"):
        Forecaster(2, 1, 4, "gru:4", lookback=8, linear_skip=True, outputs_per_target=2)


# ---------------------------------------------------------------- quantile and distribution heads

def test_head_losses_by_hand_and_against_reference_densities():
    import torch
    from scipy import stats
    from hybridrnn.tasks.forecast_heads import head_loss, head_quantiles, point_forecast

    # quantile head: raw values out of order are sorted into q0.1 <= q0.5 <= q0.9 (rearrangement)
    raw = torch.tensor([[[[3.0, 1.0, 2.0]]]], dtype=torch.float64)               # (1, 1, 1, 3)
    y = torch.tensor([[[2.5]]], dtype=torch.float64)
    # d = y - q = [1.5, 0.5, -0.5]: 0.1 * 1.5 = 0.15, 0.5 * 0.5 = 0.25, max(0.9 * -0.5, -0.1 * -0.5) = 0.05
    assert float(head_loss(raw, y, "quantile", [0.1, 0.5, 0.9])) == pytest.approx((0.15 + 0.25 + 0.05) / 3)
    assert point_forecast(raw.numpy(), "quantile", [0.1, 0.5, 0.9]).item() == 2.0
    np.testing.assert_array_equal(head_quantiles(raw.numpy(), "quantile", [0.1, 0.5, 0.9], [0.1, 0.9]).ravel(), [1, 3])

    # gaussian: mu = 1, sigma = softplus(raw1 - raw0) + 1e-4 = 2 exactly
    gap = float(np.log(np.expm1(2.0 - 1e-4)))
    g = torch.tensor([[[[1.0, 1.0 + gap]]]], dtype=torch.float64)
    y = torch.tensor([[[4.0]]], dtype=torch.float64)
    assert float(head_loss(g, y, "gaussian", [])) == pytest.approx(-stats.norm.logpdf(4.0, 1.0, 2.0), rel=1e-9)
    q = head_quantiles(g.numpy(), "gaussian", [], [0.1, 0.9]).ravel()
    np.testing.assert_allclose(q, [1 - 2 * 1.2815515655446004, 1 + 2 * 1.2815515655446004], rtol=1e-9)

    # student t: nu = 2 + softplus(raw2 - raw0) = 5
    nu_gap = float(np.log(np.expm1(3.0)))
    t = torch.tensor([[[[1.0, 1.0 + gap, 1.0 + nu_gap]]]], dtype=torch.float64)
    assert float(head_loss(t, y, "student_t", [])) == pytest.approx(-stats.t.logpdf(4.0, 5, 1.0, 2.0), rel=1e-9)
    np.testing.assert_allclose(head_quantiles(t.numpy(), "student_t", [], [0.9]).ravel(),
                               [1 + 2 * stats.t.ppf(0.9, 5)], rtol=1e-9)
    with pytest.raises(ConfigError, match="not among them"):
        head_quantiles(raw.numpy(), "quantile", [0.1, 0.5, 0.9], [0.05])
    with pytest.raises(ConfigError, match="intervals='model' needs"):
        head_quantiles(raw.numpy()[..., 0], "mse", [], [0.1])


def head_config(loss: str, **model) -> dict:
    cfg = config(epochs=2)
    cfg["model"].update({"loss": loss, **model})
    return cfg


def test_quantile_head_predicts_monotone_quantile_columns_and_reports_pinball(tmp_path):
    df = hetero_frame(480)
    run = hybridrnn.fit(head_config("quantile", quantiles=[0.1, 0.5, 0.9]), data=df, out=tmp_path / "q")
    out = run.predict(df.iloc[-60:])
    assert list(out.columns) == ["time", "y", "y_q0.1", "y_q0.5", "y_q0.9"]
    assert (out["y_q0.1"] <= out["y_q0.5"]).all() and (out["y_q0.5"] <= out["y_q0.9"]).all()
    np.testing.assert_array_equal(out["y"], out["y_q0.5"])                     # the point forecast is the median
    pd.testing.assert_frame_equal(run.predict(df.iloc[-60:], intervals="model", level=0.8), out)
    m = run.metrics(intervals="model", level=0.8)
    assert np.isfinite(m["pinball"]) and 0 < m["coverage_80"] <= 1 and m["width_80"] > 0
    with pytest.raises(ConfigError, match="already gives"):
        run.predict(df.iloc[-60:], intervals="conformal", level=0.8)
    both = run.predict(df.iloc[-60:], intervals="conformal", level=0.5)        # q0.25 / q0.75: the head lacks them
    assert list(both.columns) == ["time", "y", "y_q0.1", "y_q0.25", "y_q0.5", "y_q0.75", "y_q0.9"]
    pd.testing.assert_frame_equal(hybridrnn.load(tmp_path / "q").predict(df.iloc[-60:]), out)
    bt = run.backtest(df, stride=10)
    assert {"forecast_q0.1", "forecast_q0.5", "forecast_q0.9"} <= set(bt.columns)
    assert "coverage_80" in run.backtest_summary(bt).columns


@pytest.mark.parametrize("loss", ["gaussian", "student_t"])
def test_distribution_heads_train_and_give_model_intervals(loss, tmp_path):
    df = hetero_frame(480)
    run = hybridrnn.fit(head_config(loss), data=df, out=tmp_path / loss)
    assert np.isfinite(run.history[-1]["val_loss"])
    out = run.predict(df.iloc[-60:], intervals="model", level=0.9)
    assert list(out.columns) == ["time", "y", "y_q0.05", "y_q0.95"]
    assert (out["y_q0.05"] < out["y"]).all() and (out["y"] < out["y_q0.95"]).all()
    assert list(run.predict(df.iloc[-60:]).columns) == ["time", "y"]
    m = run.metrics(intervals="model", level=0.9)
    assert 0 < m["coverage_90"] <= 1


def test_head_options_are_checked():
    from hybridrnn.api import build_config

    with pytest.raises(ConfigError, match="must include 0.5"):
        build_config(head_config("quantile", quantiles=[0.1, 0.9]))
    with pytest.raises(ConfigError, match="strictly increasing"):
        build_config(head_config("quantile", quantiles=[0.5, 0.1]))
    with pytest.raises(ConfigError, match="direct or parallel"):
        hybridrnn.fit(head_config("gaussian", strategy="seq2seq"), data=hetero_frame(200))
    point = hybridrnn.fit(config(epochs=1), data=hetero_frame(200))
    with pytest.raises(ConfigError, match="intervals='model' needs"):
        point.predict(hetero_frame(200), intervals="model")


def test_forecast_plot_draws_the_band(hetero_run, tmp_path):
    run, df = hetero_run
    run.task.setup(df)                       # the training data's splits (earlier tests evaluated other data)
    lower, upper, label = run.task.plot_band(run.model, "test")
    assert label == "conformal 80%" and lower.shape == upper.shape == (run.task.num_examples("test"), 4, 1)
    assert (upper > lower).all()
    paths = run.task.plots(run.model, tmp_path)
    assert (tmp_path / "forecast_vs_actual.png") in paths
    quant = hybridrnn.fit(head_config("quantile", quantiles=[0.05, 0.5, 0.95]), data=hetero_frame(300))
    lower, upper, label = quant.task.plot_band(quant.model, "test")
    assert label == "model q0.05-q0.95" and (upper >= lower).all()
