"""Panels (``data.id_column``): many series in one long table, one global model. Series of unequal lengths and
start dates, windows that never mix two series, a scaler per series fitted on its own training part (round trip
exact), predict for every id with its own future timestamps, too-short series as an error or a named warning,
per-series evaluation and backtests, and a learning test: the global model beats seasonal naive on every series."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hybridrnn
from hybridrnn.errors import DataError

L, H = 48, 12
SPECS = {  # id: (rows, start, level, amplitude, phase)
    "A": (420, "2021-01-01 00:00", 10.0, 2.0, 0.0),
    "B": (300, "2021-01-04 00:00", 100.0, 20.0, 2.0),
    "C": (360, "2021-01-02 05:00", -5.0, 0.5, 4.0),
}


def panel(specs=SPECS, noise: float = 0.3, seed: int = 0) -> pd.DataFrame:
    """A long table ``unique_id, ds, y`` (NeuralForecast's names): daily seasons that differ in level, amplitude
    and phase, noise ``noise * amplitude``."""
    rng = np.random.default_rng(seed)
    parts = []
    for sid, (n, start, level, amp, phase) in specs.items():
        ds = pd.date_range(start, periods=n, freq="h")
        hour = ds.hour.to_numpy()
        y = level + amp * np.sin(2 * np.pi * hour / 24 + phase) + noise * amp * rng.normal(size=n)
        parts.append(pd.DataFrame({"unique_id": sid, "ds": ds, "y": y}))
    return pd.concat(parts, ignore_index=True)


def config(epochs: int = 1, **data) -> dict:
    d = {"id_column": "unique_id", "time_column": "ds", "target": "y", "split": [0.6, 0.2, 0.2]}
    d.update(data)
    return {"task": "forecast", "data": d, "window": {"lookback": L, "horizon": H},
            "model": {"encoder": "gru:16", "strategy": "direct", "instance_norm": False},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "progress": "none", "plots": False, "seed": 0}}


@pytest.fixture(scope="module")
def trained():
    df = panel()
    return hybridrnn.fit(config(epochs=12), data=df), df


def test_windows_never_mix_series_and_scaling_is_per_series(trained):
    run, df = trained
    task = run.task
    task.setup(df)
    lengths = [st["rows"] for st in task.panel_state.values()]
    assert lengths == [420, 300, 360] and list(task.panel_state) == ["A", "B", "C"]
    row_series = np.repeat(np.arange(3), lengths)
    for split in ("train", "val", "test"):
        origins, series = task.origins[split], task.window_series[split]
        assert len(origins) and set(series) == {0, 1, 2}
        for t, s in zip(origins, series):
            assert (row_series[t - L:t + H] == s).all()                # look-back and horizon: one series
    for i, (sid, st) in enumerate(task.panel_state.items()):
        y = df.loc[df["unique_id"] == sid, "y"].to_numpy()
        train_rows = int(round(0.6 * len(y)))
        np.testing.assert_allclose(st["scaler"].center, [y[:train_rows].mean()], rtol=1e-12)
        np.testing.assert_allclose(st["scaler"].scale, [y[:train_rows].std()], rtol=1e-12)
        block = task.values[row_series == i, 0].double().numpy()
        np.testing.assert_allclose(block, (y - y[:train_rows].mean()) / y[:train_rows].std(), rtol=1e-5, atol=1e-6)
    truth_scaled = task._target_windows("test")[1]
    task._current_series = task.window_series["test"]
    back = task._unscale(truth_scaled)
    full = df["y"].to_numpy()
    expected = full[task.origins["test"][:, None] + np.arange(H)][..., None]    # rows in the stacked order
    np.testing.assert_allclose(back, expected, rtol=1e-6)


def test_predict_returns_every_id_with_its_own_future_times(trained, tmp_path):
    run, df = trained
    out = run.predict(df)
    assert list(out.columns) == ["unique_id", "ds", "y"] and len(out) == 3 * H
    for sid, (n, start, *_rest) in SPECS.items():
        last = pd.Timestamp(start) + pd.Timedelta(hours=n - 1)
        got = out.loc[out["unique_id"] == sid, "ds"]
        assert list(got) == list(pd.date_range(last + pd.Timedelta(hours=1), periods=H, freq="h")), sid
    only_b = run.predict(df[df["unique_id"] == "B"])
    pd.testing.assert_frame_equal(only_b, out[out["unique_id"] == "B"].reset_index(drop=True))
    loaded = hybridrnn.load(run.save(tmp_path / "panel").path)
    pd.testing.assert_frame_equal(loaded.predict(df), out)                 # per-series state saved whole
    unknown = df.assign(unique_id=df["unique_id"].replace("C", "Z"))
    with pytest.raises(DataError, match="series Z was not in the training data"):
        loaded.predict(unknown)
    with_iv = loaded.predict(df, intervals="conformal", level=0.8)
    assert list(with_iv.columns) == ["unique_id", "ds", "y", "y_q0.1", "y_q0.9"]
    # normalised conformal: one quantile of the scaled residuals, times each series' own scale
    half = (with_iv["y_q0.9"] - with_iv["y"]).to_numpy().reshape(3, H)
    scales = np.array([st["scaler"].scale[0] for st in loaded.task.panel_state.values()])
    np.testing.assert_allclose(half / scales[:, None], np.tile(half[0] / scales[0], (3, 1)), rtol=1e-9)
    assert loaded.task.conformal["units"] == "scaled"


def test_global_model_beats_seasonal_naive_on_every_series(trained):
    run, df = trained
    table = run.evaluate_series()
    for sid in SPECS:
        model, snaive = table.loc[(sid, "model"), "mae"], table.loc[(sid, "seasonal_naive"), "mae"]
        assert model < snaive, (sid, model, snaive)
    overall = run.metrics()
    assert overall["mae"] < overall["seasonal_naive_mae"] and np.isfinite(overall["mase"])


def test_backtest_per_series(trained):
    run, df = trained
    bt = run.backtest(df, stride=12)
    assert set(bt["id"]) == {"A", "B", "C"}
    for sid, part in bt.groupby("id"):
        y = df[df["unique_id"] == sid].set_index("ds")["y"]
        np.testing.assert_array_equal(part["actual"].to_numpy(), y.loc[part["time"]].to_numpy())
        np.testing.assert_allclose(part["naive"].to_numpy(), y.loc[part["cutoff"]].to_numpy(), rtol=1e-12)
    summary = run.backtest_summary(bt)
    assert {("A", "all"), ("B", "all"), ("C", "all"), ("all", "all")} <= set(summary.index)


def test_too_short_series_is_an_error_or_a_named_warning():
    specs = dict(SPECS, D=(40, "2021-01-05 00:00", 1.0, 1.0, 0.0))
    df = panel(specs)
    with pytest.raises(DataError, match="series too short .*D: "):
        hybridrnn.fit(config(), data=df)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = hybridrnn.fit(config(short_series="skip"), data=df)
    assert any("skipping 1 series" in str(w.message) and "D:" in str(w.message) for w in caught)
    assert list(run.task.panel_state) == ["A", "B", "C"]
    with pytest.raises(DataError, match="no id column"):
        hybridrnn.fit(config(id_column="store"), data=df)


def test_static_covariates_are_constant_channels_per_series(tmp_path):
    from hybridrnn.errors import ConfigError

    df = panel()
    df["region"] = df["unique_id"].map({"A": "north", "B": "north", "C": "south"})
    df["size"] = df["unique_id"].map({"A": 1.0, "B": 3.0, "C": 8.0})
    run = hybridrnn.fit(config(static_covariates=["region", "size"]), data=df, out=tmp_path / "s")
    lay = run.task.layout
    assert lay["static"]["region"] == {"kind": "categorical", "categories": ["north", "south"]}
    assert lay["static"]["size"]["kind"] == "numeric" and lay["static_size"] == 3 \
        and lay["input_size"] == 1 + 3 + len(lay["calendar_columns"])
    task = run.task
    task.setup(df)
    size = (np.array([1.0, 3.0, 8.0]) - 4.0) / np.std([1.0, 3.0, 8.0])
    start = 0
    for i, (sid, st) in enumerate(task.panel_state.items()):
        block = task.values[start:start + st["rows"], 1:4].numpy()      # after the target: region one-hot, size
        start += st["rows"]
        expected = [1.0 if sid != "C" else 0.0, 1.0 if sid == "C" else 0.0, size[i]]
        np.testing.assert_allclose(block, np.tile(expected, (len(block), 1)), rtol=1e-6)
    out = run.predict(df)
    pd.testing.assert_frame_equal(hybridrnn.load(tmp_path / "s").predict(df), out)
    run.task.panel_state["B"]["static"] = {"region": "south", "size": "8.0"}   # the model reads them
    assert not np.allclose(run.predict(df)["y"][H:2 * H], out["y"][H:2 * H])
    bad = df.copy()
    bad.loc[bad.index[-1], "size"] = 9.0
    with pytest.raises(DataError, match="series C: static covariate 'size' must hold one value"):
        hybridrnn.fit(config(static_covariates=["size"]), data=bad)
    with pytest.raises(ConfigError, match="need data.id_column"):
        hybridrnn.fit(config(id_column=None, static_covariates=["size"]), data=df)


def test_id_embedding_is_a_learned_lookup_of_the_series(tmp_path):
    import torch
    from hybridrnn.errors import ConfigError
    from hybridrnn.tasks.forecast_panel import IdEmbedding

    df = panel()
    cfg = config()
    cfg["model"]["id_embedding"] = 4
    run = hybridrnn.fit(cfg, data=df, out=tmp_path / "e")
    model = run.model
    assert isinstance(model, IdEmbedding) and model.embed.weight.shape == (4, 3)
    lay = run.task.layout
    assert lay["id_onehot"] == {"start": 1, "num_ids": 3, "dim": 4}
    task = run.task
    task.setup(df)
    past = task._batch(task.origins["test"][:5])["past"]
    onehot = past[:, :, 1:4]
    series = task.window_series["test"][:5]
    torch.testing.assert_close(onehot, torch.nn.functional.one_hot(torch.as_tensor(series), 3).float()[:, None].expand(-1, L, -1))
    out = run.predict(df)
    pd.testing.assert_frame_equal(hybridrnn.load(tmp_path / "e").predict(df), out)
    with torch.no_grad():
        model.embed.weight[:, 1] += 5.0                                # B's embedding moves: only B's forecast does
    moved = run.predict(df)
    assert not np.allclose(moved["y"][H:2 * H], out["y"][H:2 * H])
    np.testing.assert_array_equal(moved["y"][:H], out["y"][:H])
    with pytest.raises(ConfigError, match="needs data.id_column"):
        hybridrnn.fit(dict(cfg, data={**cfg["data"], "id_column": None}), data=df[df["unique_id"] == "A"])


def test_a_panel_from_a_csv_path_evaluates_backtests_and_predicts_from_the_path(tmp_path):
    df = panel()
    df.to_csv(tmp_path / "panel.csv", index=False)
    run = hybridrnn.fit(config(path=str(tmp_path / "panel.csv")))
    assert np.isfinite(run.metrics()["mae"])
    assert set(run.backtest(stride=24)["id"]) == {"A", "B", "C"}
    pd.testing.assert_frame_equal(run.predict(tmp_path / "panel.csv").drop(columns="ds"),
                                  run.predict(df).drop(columns="ds"))
