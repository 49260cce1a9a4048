"""hybridrnn vs NeuralForecast's ``LSTM`` on the same series and the same test windows: the four tickers of
``shared:stocks`` as one panel, and Beijing PM2.5 with the weather as known-future covariates.

Both libraries run in one process (one thread, ``torch.set_num_threads(1)``) on the data hybridrnn loads (the
same rows, the same filled values, the same splits); each trains one LSTM of the same hidden size (one layer)
with a multi-quantile head (pinball loss at 0.1 / 0.5 / 0.9: hybridrnn ``model.loss: quantile``, NeuralForecast
``MQLoss(level=[80])``) for the same number of gradient updates of the same batch size, Adam at the same rate,
gradient norm clipped at 1, no validation-based early stopping or weight selection on either side (the weights
after the last update are evaluated). The test windows are those of hybridrnn's rolling-origin backtest
(``Run.backtest``, stride 1, every origin whose horizon lies after the validation part of its series); the very
same origins are given to NeuralForecast's ``predict`` as one look-back each (one pseudo-series per origin, with
the future covariates of its horizon in ``futr_df``), so both read exactly the same ``lookback`` rows per
forecast. The naive and seasonal-naive rows are hybridrnn's baselines on those windows.

Datasets (each from the repository's config, with the changes listed in the results file):

* ``stocks``: ``configs/forecast/stocks/panel.yaml`` (id Ticker, target Close, past covariate Volume, look-back 60,
  horizon 5, split 0.7 / 0.1 / 0.2 of every series, business days). NeuralForecast gets Volume as
  ``hist_exog_list`` and the ticker as a one-hot ``stat_exog_list`` (hybridrnn: ``model.id_embedding: 4``).
* ``pm25``: ``configs/forecast/beijing_pm25/pm25_future_weather.yaml`` (look-back 48, horizon 24; 2012-01-01 to
  2013-06-30 train, 2013-07 to 2013-12 validation, 2014 test; DEWP, TEMP, PRES, Iws known over the horizon, Is, Ir
  and the wind direction past-only, hour / day-of-week / month calendar features known over the horizon).
  NeuralForecast gets the same columns (``futr_exog_list``: the weather and hybridrnn's own calendar features;
  ``hist_exog_list``: Is, Ir and the one-hot wind direction).

Install (a separate venv; torch pinned on the same pip line, else pip pulls a CUDA build of several GB)::

    python -m venv /work/nfvenv
    /work/nfvenv/bin/pip install torch==2.13.0 neuralforecast==3.3.0
    /work/nfvenv/bin/pip install torch==2.13.0 -e .

Run (from the repository root)::

    OMP_NUM_THREADS=1 /work/nfvenv/bin/python benchmarks/forecast_nf.py [--datasets stocks pm25]
        [--stocks-epochs 20] [--pm25-epochs 4] [--out benchmarks/results/forecast_nf]

writes ``<out>.md`` (tables and reading) and ``<out>.json`` (raw numbers).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from hybridrnn.api.run import Run
from hybridrnn.data.calendar import calendar_features
from hybridrnn.tasks.forecast import ForecastTask
from hybridrnn.tasks.forecast_config import ForecastConfig
from hybridrnn.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
QUANTILES = [0.1, 0.5, 0.9]
HIDDEN = 32

NF_MAIN = "NeuralForecast `LSTM`, `MQLoss(level=[80])`"
DATASETS = {
    "stocks": {"config": "configs/forecast/stocks/panel.yaml", "batch_size": 64,
               "nf": [{"key": "nf", "scaler_type": "standard", "prescale": False,
                       "label": f"{NF_MAIN}, per-window `scaler_type='standard'` (default `recurrent=False`)"},
                      {"key": "nf_rec", "scaler_type": "standard", "prescale": False, "recurrent": True,
                       "label": f"{NF_MAIN}, per-window `scaler_type='standard'`, `recurrent=True`"}],
               "title": "Stocks panel (AAPL, GOOG, IBM, FB daily Close), look-back 60, horizon 5"},
    "pm25": {"config": "configs/forecast/beijing_pm25/pm25_future_weather.yaml", "batch_size": 128,
             "nf": [{"key": "nf", "scaler_type": "identity", "prescale": True,
                     "label": f"{NF_MAIN}, data scaled by hybridrnn's per-series robust scaler, "
                              "`scaler_type='identity'` (default `recurrent=False`)"},
                    {"key": "nf_rec", "scaler_type": "identity", "prescale": True, "recurrent": True,
                     "label": f"{NF_MAIN}, data scaled as above, `scaler_type='identity'`, `recurrent=True`"},
                    {"key": "nf_robust", "scaler_type": "robust", "prescale": False, "first_budget_only": True,
                     "label": f"{NF_MAIN}, raw data, its default per-window `scaler_type='robust'`"}],
             "title": "Beijing PM2.5 hourly, look-back 48, horizon 24, weather as known-future covariates"},
}
SHORT = {"hybridrnn": "hybridrnn (quantile head)", "conformal": "hybridrnn (point + conformal)",
         "nf": "NF LSTM", "nf_rec": "NF LSTM recurrent", "nf_robust": "NF LSTM, robust scaler on raw data"}


def hybridrnn_config(name: str, epochs: int, loss: str = "quantile") -> ForecastConfig:
    spec = DATASETS[name]
    raw = yaml.safe_load((ROOT / spec["config"]).read_text())
    raw["model"].update({"encoder": f"lstm:{HIDDEN}", "loss": loss})
    if loss == "quantile":
        raw["model"]["quantiles"] = QUANTILES
    raw["train"] = {**raw.get("train", {}), "epochs": epochs, "batch_size": spec["batch_size"], "lr": 1e-3,
                    "seed": 0, "clip_norm": 1.0, "patience": None, "plots": False, "progress": "none",
                    "num_threads": 1}
    return ForecastConfig.model_validate(raw)


# ----------------------------------------------------------------------------------------------- hybridrnn
def hybridrnn_side(name: str, epochs: int, workdir: Path, loss: str = "quantile") -> tuple[dict, Run, pd.DataFrame]:
    """Train hybridrnn for ``epochs`` epochs (last weights) and backtest it on the test period: with its quantile
    head's 80% interval (``loss="quantile"``), or, for a point model (``loss="mae"``), with split-conformal 80%
    intervals calibrated on the validation windows."""
    torch.set_num_threads(1)
    cfg = hybridrnn_config(name, epochs, loss)
    task = ForecastTask(cfg)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    task.setup()
    setup_cpu, setup_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    torch.manual_seed(0)
    model = task.build_model()
    trainer = Trainer(task, model, cfg.train)
    torch.set_num_threads(1)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    losses = []
    for epoch in range(epochs):
        record = trainer.train_one_epoch(epoch)
        losses.append(float(record.get("train_loss", record.get("loss", float("nan")))))
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    run = Run(workdir / f"hybridrnn-{name}-{loss}", cfg, task, model)
    run.path.mkdir(parents=True, exist_ok=True)
    if loss != "quantile":
        run.calibrate()                    # split-conformal: absolute residuals of the validation windows
    cpu0, wall0 = time.process_time(), time.perf_counter()
    frame = run.backtest(stride=1, intervals="model" if loss == "quantile" else "conformal", level=0.8)
    pred_cpu, pred_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    info = {"library": "hybridrnn", "loss": loss, "encoder": cfg.model.encoder, "strategy": cfg.model.strategy,
            "segment": cfg.model.segment, "instance_norm": cfg.model.instance_norm,
            "id_embedding": cfg.model.id_embedding, "params": sum(p.numel() for p in model.parameters()),
            "epochs": epochs, "batch_size": cfg.train.batch_size, "updates": epochs * task.num_train_batches(),
            "train_windows": task.num_examples("train"), "train_window_stride": cfg.window.stride,
            "setup_cpu_s": setup_cpu, "setup_wall_s": setup_wall, "train_cpu_s": train_cpu,
            "train_wall_s": train_wall, "predict_cpu_s": pred_cpu, "predict_wall_s": pred_wall,
            "epoch_losses": losses, "config": json.loads(cfg.model_dump_json())}
    return info, run, frame


# ----------------------------------------------------------------------------------------------- NeuralForecast
def series_tables(task: ForecastTask) -> dict[str, tuple[object, int]]:
    """``{series id: (SeriesTable, number of training rows)}`` as hybridrnn loaded and split them."""
    if task.panel_state is not None:
        tables, _, _ = task._panel_tables(task._configured_source(), time_range=True,
                                          frequency=task.layout["frequency"])
        return {sid: (t, int(t.times.get_loc(pd.Timestamp(task.panel_state[sid]["last_time"]))) + 1)
                for sid, _, t in tables}
    table = task.backtest_table()
    return {"series": (table, int(task.layout["bounds"][0]))}


def series_scaler(task: ForecastTask, sid: str):
    return task.panel_state[sid]["scaler"] if task.panel_state is not None else task.scaler


def nf_frames(task: ForecastTask, prescale: bool) -> tuple[dict[str, tuple], list[str], list[str]]:
    """One NeuralForecast frame per series (``unique_id, ds, y`` + exogenous columns; ``ds`` = row number) with
    the values hybridrnn reads (``prescale``: its numeric columns scaled by hybridrnn's scaler of the series,
    fitted on its training part), the training row count and times of each, and the exogenous column lists."""
    d, lay = task.config.data, task.layout
    hist = list(d.covariates)
    futr = list(d.future_covariates)
    out = {}
    for sid, (t, n_train) in series_tables(task).items():
        numeric = t.numeric.copy()
        if prescale:
            sc = series_scaler(task, sid)
            numeric[sc.columns] = sc.transform(numeric[sc.columns].to_numpy(np.float64))
        f = pd.DataFrame({"unique_id": sid, "ds": np.arange(len(t), dtype=np.int64),
                          "y": numeric[d.target[0]].to_numpy(np.float64)})
        for c in d.covariates + d.future_covariates:
            f[c] = numeric[c].to_numpy(np.float64)
        for c, cats in lay["categories"].items():
            for v in cats:
                f[f"{c}_{v}"] = (t.categorical[c].astype(str).to_numpy() == str(v)).astype(np.float64)
        if lay["calendar"]:
            cal = calendar_features(t.times, lay["calendar"], lay["calendar_encoding"])
            for j, c in enumerate(lay["calendar_columns"]):
                f[c] = cal[:, j].astype(np.float64)
        out[sid] = (f, n_train, t.times)
    hist += [f"{c}_{v}" for c, cats in lay["categories"].items() for v in cats]
    futr += list(lay["calendar_columns"]) if lay["calendar"] else []
    return out, hist, futr


def nf_side(name: str, task: ForecastTask, hybrid: dict, frame: pd.DataFrame, scaler_type: str,
            prescale: bool, recurrent: bool = False) -> tuple[dict, pd.DataFrame]:
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import MQLoss
    from neuralforecast.models import LSTM

    for logger in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "neuralforecast"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    L, H = task.layout["lookback"], task.layout["horizon"]
    frames, hist, futr = nf_frames(task, prescale)
    ids = list(frames)
    static = None
    if task.panel_state is not None:      # the ticker as a one-hot static input (hybridrnn: an id embedding)
        static = pd.DataFrame({"unique_id": ids, **{f"is_{s}": [float(s == t) for t in ids] for s in ids}})
    train = pd.concat([f.iloc[:n] for f, n, _ in frames.values()], ignore_index=True)
    torch.set_num_threads(1)
    model = LSTM(h=H, input_size=L, inference_input_size=L, encoder_n_layers=1, encoder_hidden_size=HIDDEN,
                 decoder_hidden_size=HIDDEN, decoder_layers=1, futr_exog_list=futr or None,
                 hist_exog_list=hist or None, stat_exog_list=None if static is None else list(static.columns[1:]),
                 loss=MQLoss(level=[80]), recurrent=recurrent, max_steps=hybrid["updates"], learning_rate=1e-3,
                 batch_size=len(ids), windows_batch_size=hybrid["batch_size"], inference_windows_batch_size=1024,
                 step_size=hybrid["train_window_stride"], scaler_type=scaler_type, random_seed=0,
                 early_stop_patience_steps=-1, val_check_steps=10 ** 9, gradient_clip_val=1.0,
                 accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                 enable_checkpointing=False, enable_model_summary=False)
    nf = NeuralForecast(models=[model], freq=1)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    nf.fit(df=train, static_df=static, val_size=0)
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    torch.set_num_threads(1)

    # hybridrnn's backtest origins, each as one pseudo-series of its look-back (+ its horizon's future covariates)
    origins = frame[frame["step"] == 1][["id", "cutoff"]].reset_index(drop=True)
    past_parts, futr_parts, static_parts = [], [], []
    for k, (sid, cutoff) in enumerate(origins.itertuples(index=False)):
        f, _, times = frames[str(sid)]
        o = int(times.get_loc(pd.Timestamp(cutoff))) + 1             # the first forecast row
        uid = f"{k:06d}"
        past = f.iloc[o - L:o].copy()
        past["unique_id"] = uid
        past_parts.append(past)
        if futr:
            fut = f.iloc[o:o + H][["ds"] + futr].copy()
            fut.insert(0, "unique_id", uid)
            futr_parts.append(fut)
        if static is not None:
            static_parts.append(static[static["unique_id"] == str(sid)].assign(unique_id=uid))
    past_df = pd.concat(past_parts, ignore_index=True)
    # the same look-backs: each pseudo-series' last y is hybridrnn's naive forecast of that origin
    last_y = past_df.groupby("unique_id", sort=True)["y"].last().to_numpy()
    if prescale:
        last_y = unscale(task, origins["id"], last_y)
    naive = frame[frame["step"] == 1]["naive"].to_numpy()
    if not np.allclose(last_y, naive, rtol=1e-6, atol=1e-6):
        raise RuntimeError("NeuralForecast's look-backs differ from hybridrnn's (last value != naive forecast)")
    futr_df = pd.concat(futr_parts, ignore_index=True) if futr else None
    static_df = pd.concat(static_parts, ignore_index=True) if static is not None else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    pred = nf.predict(df=past_df, futr_df=futr_df, static_df=static_df)
    pred_cpu, pred_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    torch.set_num_threads(1)
    pred = pred.reset_index() if "unique_id" not in pred.columns else pred
    pred = pred.sort_values(["unique_id", "ds"]).reset_index(drop=True)
    if len(pred) != len(origins) * H:
        raise RuntimeError(f"NeuralForecast returned {len(pred)} rows for {len(origins)} origins x {H}")
    k = pred["unique_id"].astype(int).to_numpy()
    step = (pred["ds"].to_numpy() - past_df.groupby("unique_id")["ds"].max().loc[pred["unique_id"]].to_numpy())
    sids = origins["id"].to_numpy()[k]
    back = (lambda v: unscale(task, sids, v)) if prescale else (lambda v: v)
    out = pd.DataFrame({"id": sids, "cutoff": origins["cutoff"].to_numpy()[k],
                        "step": step.astype(np.int64), "nf_forecast": back(pred["LSTM-median"].to_numpy()),
                        "nf_lo": back(pred["LSTM-lo-80"].to_numpy()), "nf_hi": back(pred["LSTM-hi-80"].to_numpy())})
    info = {"library": "neuralforecast LSTM", "params": sum(p.numel() for p in nf.models[0].parameters()),
            "max_steps": hybrid["updates"], "batch_size (series per step)": len(ids),
            "windows_batch_size": hybrid["batch_size"], "step_size": hybrid["train_window_stride"],
            "scaler_type": scaler_type, "prescaled_by_hybridrnn_scaler": prescale, "recurrent": recurrent,
            "hist_exog_list": hist, "futr_exog_list": futr,
            "stat_exog_list": [] if static is None else list(static.columns[1:]),
            "train_rows": int(len(train)), "train_cpu_s": train_cpu, "train_wall_s": train_wall,
            "predict_cpu_s": pred_cpu, "predict_wall_s": pred_wall}
    return info, out


def unscale(task: ForecastTask, sids, values: np.ndarray) -> np.ndarray:
    """Scaled target values of the series ``sids`` (one per value) back on the original scale."""
    sids = np.asarray(sids).astype(str)
    out = np.asarray(values, np.float64).copy()
    for sid in np.unique(sids):
        sc = series_scaler(task, sid)
        m = sids == sid
        out[m] = out[m] * sc.scale[0] + sc.center[0]
    return out


# ----------------------------------------------------------------------------------------------- scoring
def scores(frame: pd.DataFrame, variants: list[dict], conformal: bool) -> dict:
    """MAE / RMSE (overall, per series, per horizon step) of every forecaster; coverage, mean width and pinball
    loss (mean over q0.1 and q0.9) of each 80% interval."""
    extra = ["conformal"] if conformal else []
    points = {"hybridrnn": "forecast", **{k: f"{k}_forecast" for k in extra},
              **{v["key"]: f"{v['key']}_forecast" for v in variants}, "naive": "naive",
              "seasonal_naive": "seasonal_naive"}
    intervals = {"hybridrnn": ("forecast_q0.1", "forecast_q0.9"), **{k: (f"{k}_lo", f"{k}_hi") for k in extra},
                 **{v["key"]: (f"{v['key']}_lo", f"{v['key']}_hi") for v in variants}}

    def block(f: pd.DataFrame) -> dict:
        yy = f["actual"].to_numpy()
        out = {"windows": int((f["step"] == 1).sum()), "points": int(len(f))}
        out["mae"] = {k: float(np.mean(np.abs(f[c].to_numpy() - yy))) for k, c in points.items() if c in f}
        out["median_ae"] = {k: float(np.median(np.abs(f[c].to_numpy() - yy))) for k, c in points.items() if c in f}
        out["rmse"] = {k: float(np.sqrt(np.mean((f[c].to_numpy() - yy) ** 2))) for k, c in points.items() if c in f}
        out["intervals"] = {}
        for k, (lo, hi) in intervals.items():
            a, b = f[lo].to_numpy(), f[hi].to_numpy()
            pin = np.mean(np.maximum(0.1 * (yy - a), 0.9 * (a - yy)) + np.maximum(0.9 * (yy - b), 0.1 * (b - yy))) / 2
            out["intervals"][k] = {"coverage": float(np.mean((yy >= a) & (yy <= b))), "width": float(np.mean(b - a)),
                                   "pinball": float(pin)}
        return out

    result = {"all": block(frame)}
    if frame["id"].nunique() > 1:
        result["per_series"] = {str(s): block(g) for s, g in frame.groupby("id", sort=False)}
    y = frame["actual"]
    result["mae_by_step"] = {k: frame.assign(e=(frame[c] - y).abs()).groupby("step")["e"].mean().round(6).tolist()
                             for k, c in points.items() if c in frame}
    return result


def run_dataset(name: str, epochs: int, workdir: Path, variants: list[dict], with_conformal: bool = True) -> dict:
    print(f"[{name}] hybridrnn: training {epochs} epochs", flush=True)
    ours, run, frame = hybridrnn_side(name, epochs, workdir)
    print(f"[{name}] hybridrnn: {ours['updates']} updates, train CPU {ours['train_cpu_s']:.1f} s, "
          f"{int((frame['step'] == 1).sum())} test origins", flush=True)
    key = ["id", "cutoff", "step"]
    conformal = None
    if with_conformal:
        print(f"[{name}] hybridrnn point model (MAE loss) + conformal: training {epochs} epochs", flush=True)
        conformal, _, cf = hybridrnn_side(name, epochs, workdir, loss="mae")
        cf = cf[key + ["forecast", "forecast_q0.1", "forecast_q0.9"]].rename(columns={
            "forecast": "conformal_forecast", "forecast_q0.1": "conformal_lo", "forecast_q0.9": "conformal_hi"})
        frame = frame.merge(cf, on=key, how="left", validate="one_to_one")
        if frame["conformal_forecast"].isna().any():
            raise RuntimeError("the point model's backtest has other origins than the quantile model's")
    theirs = {}
    for v in variants:
        info, pred = nf_side(name, run.task, ours, frame, v["scaler_type"], v["prescale"], v.get("recurrent", False))
        info["label"] = v["label"]
        theirs[v["key"]] = info
        print(f"[{name}] {v['label']}: train CPU {info['train_cpu_s']:.1f} s", flush=True)
        pred = pred.rename(columns={"nf_forecast": f"{v['key']}_forecast", "nf_lo": f"{v['key']}_lo",
                                    "nf_hi": f"{v['key']}_hi"})
        frame = frame.merge(pred, on=key, how="left", validate="one_to_one")
        if frame[f"{v['key']}_forecast"].isna().any():
            raise RuntimeError(f"backtest rows without a NeuralForecast forecast ({v['label']})")
    s = scores(frame, variants, conformal is not None)
    first = frame.groupby("id", sort=False)["cutoff"].agg(["min", "max", "count"])
    origins = {str(i): {"first_cutoff": str(r["min"]), "last_cutoff": str(r["max"]),
                        "origins": int(r["count"]) // int(frame["step"].max())} for i, r in first.iterrows()}
    print(json.dumps(s["all"], indent=1), flush=True)
    return {"dataset": name, "title": DATASETS[name]["title"], "config": DATASETS[name]["config"],
            "hybridrnn": ours, "hybridrnn_conformal": conformal, "neuralforecast": theirs, "scores": s,
            "origins": origins}


# ----------------------------------------------------------------------------------------------- report
PROTOCOL = """## Protocol (the same on both sides)

- **Data**: the rows hybridrnn loads for the config (the same filled values and splits: stocks 70 / 10 / 20 % of
  each series by time; PM2.5 train 2012-01-01 .. 2013-06-30, validation .. 2013-12-31, test 2014). NeuralForecast
  trains on the training rows of each series only (`val_size=0`), the rows hybridrnn's training windows come from.
- **Network**: one LSTM layer of 32 units on both sides, a multi-quantile output (0.1, 0.5, 0.9) trained by the
  pinball loss on the scaled targets; the point forecast is the 0.5 quantile.
- **Training**: Adam, lr 1e-3, batches of 64 (stocks) / 128 (PM2.5) windows, gradient norm clipped at 1, seed 0,
  float32, the same number of updates (hybridrnn epochs x batches per epoch = NeuralForecast `max_steps`); PM2.5
  training windows every 3rd origin on both sides (`window.stride: 3` / `step_size=3`). No validation during
  training, no early stopping, no best-epoch selection: both are scored with the weights after the last update
  (a plain `hybridrnn train` would keep the best-validation epoch; that is switched off here to match).
- **Test windows**: hybridrnn's `Run.backtest(stride=1)`: every origin whose forecast rows lie after the
  validation part of its series, each reading only its look-back. Each of these origins is given to
  NeuralForecast's `predict` as a pseudo-series holding exactly its look-back rows (and, for PM2.5, the future
  covariates of its horizon in `futr_df`); the script checks that the last value of every pseudo-series equals
  hybridrnn's naive forecast of that origin. Errors on the original scale over every (origin, step) point.
- **Intervals (80%)**: hybridrnn: the quantile head's 0.1 / 0.9 outputs (`intervals="model"`), and separately a
  point model (`loss: mae`, same budget) with split-conformal intervals calibrated on the validation windows
  (`intervals="conformal"`; hybridrnn refuses conformal level 0.8 on the quantile model itself, whose head already
  has those quantiles). NeuralForecast: `MQLoss(level=[80])`, columns `LSTM-lo-80` / `LSTM-hi-80`.
- **Budgets**: stocks 20 epochs (`panel.yaml` leaves `train` out: the default 20); PM2.5 the config's 4 epochs
  and 20 epochs (the 20-epoch budget was added after the 4-epoch run, because 140 updates is far below the
  few-CPU-minutes budget; no other budget was tried, nothing was tuned on the test split or on validation).
- **Timing**: process CPU time and wall time of training only, one thread. hybridrnn: the loop of
  `Trainer.train_one_epoch` (its data set-up, `task.setup()`, is timed apart and is a fraction of a second);
  NeuralForecast: `NeuralForecast.fit` (includes building its dataset and the Lightning trainer).

## Where the two sides differ

1. **Architecture** (each library's own way of using one LSTM layer). hybridrnn uses the recipe these configs
   resolve to, `strategy: parallel` (SegRNN-style): the LSTM reads the look-back in segments (stocks 5 rows:
   12 recurrent steps; PM2.5 12 rows: 4 steps) through a linear segment embedding, and the horizon is forecast
   from the final state with the horizon's known-future inputs; it has more parameters (see the tables) and far
   fewer recurrent steps. NeuralForecast's `LSTM` reads one row per step (60 / 48 steps). In its default
   `recurrent=False` mode it decodes forecast step *s* from the LSTM state at look-back position *L - h + s*
   (`hidden_state[:, -self.h:]` in `neuralforecast/models/lstm.py`, concatenated with the future covariates of
   step *s*, through a linear decoder, `decoder_layers=1`): step *s* never sees the last *h - s* observations,
   so every step is in effect an *h*-step-ahead forecast (its MAE is flat over the horizon, below). With
   `recurrent=True` (second NeuralForecast row) it trains one step ahead and forecasts recursively, but
   neuralforecast 3.3 then averages the quantile outputs into one value (`output_batch.mean(dim=-1)` in
   `BaseModel._predict_step_recurrent_single`): its 80% "interval" has zero width and its point forecast is the
   mean of the three quantile outputs; only its MAE is meaningful.
2. **Normalisation**. Stocks: hybridrnn scales each series with a standard scaler fitted on its training part
   and standardises each window's target (`instance_norm: true`); NeuralForecast standardises every temporal
   input per window (`scaler_type='standard'`). PM2.5: hybridrnn: a robust scaler fitted on the training rows
   plus `instance_norm: last` (subtract the window's last value); NeuralForecast (main rows): the same
   robust-scaled values with `scaler_type='identity'`, its forecasts unscaled with the same scaler. Its default
   per-window `scaler_type='robust'` on the raw data (last NeuralForecast row, first budget only) breaks on
   windows where a known-future column is constant over the look-back (the day-of-week cosine over a
   Thursday + Friday look-back; the month inside one month when the horizon crosses into the next): the median
   absolute deviation is 0, its fallback (std x 0.674) is a float32 rounding residue instead of an exact 0, so
   the scale is about 1e-6 and the horizon values of that column become 1e5 to 1e6 (measured: 652,227 for the
   day-of-week cosine of the origin 2014-01-17 23:00), and those forecasts run into the millions; its median
   absolute error is the usable figure.
3. **Series identity** (stocks). hybridrnn: a learned 4-dimensional embedding of the ticker (`id_embedding: 4`);
   NeuralForecast: the one-hot ticker as `stat_exog_list`, appended to every input step.
4. **Batches**. hybridrnn: shuffled epochs, every training window once per epoch; NeuralForecast: each update
   draws `windows_batch_size` windows at random from the training windows of all series (`batch_size` = the
   number of series). The same number of updates and windows per update, not the same sequence of batches.
5. **Inputs** are the same columns: stocks Close + Volume (NeuralForecast `hist_exog_list`); PM2.5
   `futr_exog_list` = DEWP, TEMP, PRES, Iws and hybridrnn's own calendar features (hour, day of week, month as
   sin / cos, computed by `hybridrnn.data.calendar.calendar_features`), `hist_exog_list` = Is, Ir and the one-hot
   wind direction (categories of the training rows). Both read the future covariates over the look-back too.
"""


def reading(results: list[dict]) -> str:
    """A short, number-driven reading of the results."""
    out = ["## Reading", ""]
    for r in results:
        a, ours = r["scores"]["all"], r["hybridrnn"]
        mae, iv = a["mae"], a["intervals"]
        h, nf, naive = mae["hybridrnn"], mae.get("nf"), mae["naive"]
        words = [f"**{r['dataset']}, {ours['epochs']} epochs ({ours['updates']:,} updates)**: hybridrnn test MAE "
                 f"{fmt(h)}"]
        if nf is not None:
            words.append(f"NeuralForecast LSTM (default mode) {fmt(nf)} (hybridrnn {abs(h - nf) / nf:.0%} "
                         f"{'lower' if h < nf else 'higher'})")
        if "nf_rec" in mae:
            rec = mae["nf_rec"]
            words.append(f"NeuralForecast `recurrent=True` {fmt(rec)} (hybridrnn {abs(h - rec) / rec:.0%} "
                         f"{'lower' if h < rec else 'higher'})")
        if "conformal" in mae:
            words.append(f"hybridrnn point model {fmt(mae['conformal'])}")
        words.append(f"naive {fmt(naive)} (hybridrnn {abs(h - naive) / naive:.0%} "
                     f"{'better' if h < naive else 'worse'} than naive)")
        text = ", ".join(words) + "."
        if "nf" in iv:
            text += (f" 80% intervals: hybridrnn quantile head covers {iv['hybridrnn']['coverage']:.2f} (mean width "
                     f"{fmt(iv['hybridrnn']['width'], 1)})")
            if "conformal" in iv:
                text += (f", hybridrnn conformal {iv['conformal']['coverage']:.2f} (width "
                         f"{fmt(iv['conformal']['width'], 1)})")
            text += (f", NeuralForecast {iv['nf']['coverage']:.2f} (width {fmt(iv['nf']['width'], 1)}).")
        learned = {k: v for k, v in mae.items() if k not in ("naive", "seasonal_naive", "nf_robust")}
        best = min(learned, key=learned.get)
        step1 = r["scores"]["mae_by_step"]
        text += (f" Lowest MAE of the learned forecasters: {SHORT.get(best, best)} ({fmt(learned[best])}"
                 f"{'; still above naive' if learned[best] > naive else ''}). First-step MAE: "
                 + ", ".join(f"{SHORT.get(k, k)} {fmt(v[0], 2)}" for k, v in step1.items()
                             if k not in ("seasonal_naive", "nf_robust")) + ".")
        nf_info = r["neuralforecast"].get("nf")
        if nf_info:
            text += (f" Training CPU time: hybridrnn {ours['train_cpu_s']:.1f} s, NeuralForecast "
                     f"{nf_info['train_cpu_s']:.1f} s ({nf_info['train_cpu_s'] / max(ours['train_cpu_s'], 1e-9):.1f}x)")
            rec = r["neuralforecast"].get("nf_rec")
            if rec:
                text += (f", NeuralForecast `recurrent=True` {rec['train_cpu_s']:.1f} s "
                         f"({rec['train_cpu_s'] / max(ours['train_cpu_s'], 1e-9):.1f}x)")
            text += "."
        out += [text, ""]
    out += ["Caveats: one seed and one run per row, so gaps of a few percent (e.g. hybridrnn against NeuralForecast "
            "`recurrent=True` on PM2.5) are within what another seed could change (not measured); wall times are "
            "2-3x the CPU times because the two cores were shared with other jobs (load about 5), so compare CPU "
            "times; NeuralForecast's default-mode MAE is flat over the horizon by construction (difference 1 below), "
            "and its `recurrent=True` rows have no usable interval.", ""]
    return "\n".join(out)


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"


def markdown(results: list[dict], argv: list[str], versions: dict) -> str:
    lines = ["# hybridrnn vs NeuralForecast `LSTM`: stocks panel and Beijing PM2.5 (same windows, same series)", "",
             "Command: `" + " ".join(["OMP_NUM_THREADS=1 nice -n 10 /work/nfvenv/bin/python benchmarks/forecast_nf.py",
                                      *argv]) + "`", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". One process, "
             "`torch.set_num_threads(1)`, 2 CPU cores shared with other jobs (times are noisy).", "",
             "NeuralForecast in its own venv, torch pinned on the same pip line: `python -m venv /work/nfvenv && "
             "/work/nfvenv/bin/pip install torch==2.13.0 neuralforecast==3.3.0 && /work/nfvenv/bin/pip install "
             "torch==2.13.0 -e .` (installed as is, ray included; no `--no-deps` needed).",
             "", PROTOCOL, "", reading(results), ""]
    for r in results:
        ours, theirs, s = r["hybridrnn"], r["neuralforecast"], r["scores"]
        a = s["all"]
        lines += [f"## {r['title']}: {ours['epochs']} epochs ({ours['updates']:,} updates)", "",
                  f"Config: `{r['config']}` with `model.encoder: lstm:{HIDDEN}`, `model.loss: quantile` "
                  f"(quantiles {QUANTILES}), `train: {{epochs: {ours['epochs']}, batch_size: {ours['batch_size']}, "
                  "lr: 0.001, clip_norm: 1.0, seed: 0}`; hybridrnn's own recipe otherwise (strategy "
                  f"`{ours['strategy']}`, segment {ours['segment']}, instance_norm `{ours['instance_norm']}`, "
                  f"id_embedding {ours['id_embedding']}).", "",
                  "Test origins (hybridrnn backtest, stride 1, after each series' validation part; the same for "
                  "NeuralForecast): " + "; ".join(f"{i} {o['origins']:,} (cutoffs {o['first_cutoff'][:16]} .. "
                                                   f"{o['last_cutoff'][:16]})" for i, o in r["origins"].items())
                  + f"; {a['windows']:,} windows, {a['points']:,} forecast points.", "",
                  "| forecaster | test MAE | test RMSE | 80% coverage | 80% mean width | pinball (q0.1, q0.9) "
                  "| params | updates | train CPU s | train wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
        rows = [("hybridrnn `lstm:32`, quantile head (`intervals='model'`)", "hybridrnn", ours, ours["updates"])]
        if r.get("hybridrnn_conformal"):
            c = r["hybridrnn_conformal"]
            rows.append(("hybridrnn `lstm:32`, point model (`loss: mae`) + split-conformal 80% "
                         "(`intervals='conformal'`)", "conformal", c, c["updates"]))
        rows += [(info["label"], k, info, info["max_steps"]) for k, info in theirs.items()]
        for label, k, info, updates in rows:
            iv = a["intervals"][k]
            lines.append(f"| {label} | {fmt(a['mae'][k])} | {fmt(a['rmse'][k])} | {fmt(iv['coverage'])} "
                         f"| {fmt(iv['width'])} | {fmt(iv['pinball'])} | {info['params']:,} | {updates:,} "
                         f"| {info['train_cpu_s']:.1f} | {info['train_wall_s']:.1f} |")
        for b in ("naive", "seasonal_naive"):
            if b in a["mae"]:
                lines.append(f"| {b.replace('_', ' ')} (reference) | {fmt(a['mae'][b])} | {fmt(a['rmse'][b])} "
                             "| | | | | | | |")
        lines += ["", f"Median absolute error: " + ", ".join(f"{k} {fmt(v)}" for k, v in a["median_ae"].items())
                  + ".", "",
                  f"hybridrnn data set-up (reading, splitting, scaling, windows; not in its train time above): "
                  f"{ours['setup_cpu_s']:.1f} s CPU; NeuralForecast's `fit` time includes its own data set-up and "
                  "Lightning's. Forecasting every test window: hybridrnn backtest "
                  f"{ours['predict_cpu_s']:.1f} s CPU (with its baselines); NeuralForecast `predict` "
                  + ", ".join(f"{info['predict_cpu_s']:.1f} s CPU" for info in theirs.values()) + ".", ""]
        if "per_series" in s:
            keys = ["hybridrnn", *(["conformal"] if r.get("hybridrnn_conformal") else []), *theirs]
            head = [SHORT.get(k, k) for k in keys]
            lines += ["Per series: test MAE (coverage of the 80% interval):", "",
                      f"| series | windows | {' | '.join(head)} | naive | seasonal naive |",
                      "|---|---|" + "---|" * len(keys) + "---|---|"]
            for sid, p in s["per_series"].items():
                cells = [f"{fmt(p['mae'][k])} ({fmt(p['intervals'][k]['coverage'], 2)})" for k in keys]
                lines.append(f"| {sid} | {p['windows']:,} | {' | '.join(cells)} | {fmt(p['mae']['naive'])} "
                             f"| {fmt(p['mae'].get('seasonal_naive', float('nan')))} |")
            lines.append("")
        lines += ["MAE by horizon step: " + "; ".join(
            f"{k}: " + ", ".join(fmt(x, 2) for x in v) for k, v in s["mae_by_step"].items()), ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["stocks", "pm25"], choices=list(DATASETS))
    p.add_argument("--stocks-epochs", type=int, nargs="+", default=[20],
                   help="training budget(s) in hybridrnn epochs (NeuralForecast: the same number of updates); "
                        "default: panel.yaml's (the default) 20")
    p.add_argument("--pm25-epochs", type=int, nargs="+", default=[4, 20],
                   help="default: pm25_future_weather.yaml's 4, and 20")
    p.add_argument("--no-conformal", dest="conformal", action="store_false",
                   help="skip the second hybridrnn model (point forecast + split-conformal intervals)")
    p.add_argument("--out", default="benchmarks/results/forecast_nf")
    p.add_argument("--render", action="store_true", help="only rewrite <out>.md from <out>.json (no training)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        saved = json.loads(out.with_suffix(".json").read_text())
        text = markdown(saved["results"], saved["argv"], saved["versions"])
        out.with_suffix(".md").write_text(text)
        print(text)
        return 0
    torch.set_num_threads(1)
    import neuralforecast
    import pytorch_lightning
    import hybridrnn
    versions = {"hybridrnn": hybridrnn.__version__, "neuralforecast": neuralforecast.__version__,
                "torch": torch.__version__, "pytorch-lightning": pytorch_lightning.__version__,
                "pandas": pd.__version__, "numpy": np.__version__, "python": platform.python_version()}
    results = []
    with tempfile.TemporaryDirectory(prefix="forecast-nf-") as tmp:
        for name in args.datasets:
            budgets = args.stocks_epochs if name == "stocks" else args.pm25_epochs
            for i, epochs in enumerate(budgets):
                variants = [v for v in DATASETS[name]["nf"] if i == 0 or not v.get("first_budget_only")]
                results.append(run_dataset(name, epochs, Path(tmp), variants, args.conformal))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"argv": argv, "versions": versions, "results": results},
                                                   indent=1, default=str) + "\n")
    text = markdown(results, argv, versions)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
