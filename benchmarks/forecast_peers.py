"""hybridrnn vs Darts' ``BlockRNNModel`` (LSTM) on the same univariate ETTh1 task, from one process.

Task: ETTh1 oil temperature (OT) only, look-back 96, horizon 24, the standard 12/4/4-month split (rows [0, 8640)
train, test targets in [11520, 14400)), z-scored with the training rows' mean and std (the same numbers for both
libraries: hybridrnn's fitted scaler is applied to the series given to Darts), every stride-1 training window
(8,521) and every test window (2,857), test MSE / MAE on the z-scale.

The same size of network on both sides: one LSTM layer of ``--hidden`` units and one linear layer. Darts 0.48
``BlockRNNModel(model="LSTM", hidden_fc_sizes=None)`` maps the LSTM outputs at the last 24 look-back steps through
a shared ``Linear(H, 1)``; hybridrnn ``Forecaster(strategy="direct", encoder="lstm:H")`` (no attention, no
instance norm, no calendar features) maps the last state through ``Linear(H, 24)``. Adam lr 1e-3, batch
``--batch-size``, ``--epochs`` epochs, no gradient clipping, no validation during training, float32, seed 0,
1 thread. hybridrnn trains through its own ``ForecastTask`` + ``Trainer.train_one_epoch``; Darts through
``fit`` (PyTorch Lightning). Seconds per epoch are the median of the epochs, measured around each epoch
(hybridrnn) and by a Lightning callback between epoch start and end (Darts), so both exclude set-up and
evaluation; the ratio is also taken from ``--timing-rounds`` alternated single epochs of fresh models (the machine's
load changes over minutes, alternating gives both libraries the same conditions).

    OMP_NUM_THREADS=1 python benchmarks/forecast_peers.py [--epochs 5] [--hidden 64] [--batch-size 32]
        [--out benchmarks/results/forecast_peers.md]

Darts is an optional benchmark dependency: ``pip install darts pytorch-lightning`` with the installed torch kept
(e.g. ``pip install darts pytorch-lightning -c constraints.txt`` where constraints.txt pins ``torch==2.13.0``).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from hybridrnn.tasks.forecast import ForecastTask
from hybridrnn.tasks.forecast_config import ForecastConfig
from hybridrnn.train.trainer import Trainer

LOOKBACK, HORIZON = 96, 24
TRAIN_END, VAL_END, TEST_END = 8640, 11520, 14400


def hybridrnn_side(data: str, args, recipe: bool = False) -> tuple[dict, ForecastTask]:
    torch.manual_seed(0)
    cfg = ForecastConfig.model_validate({
        "task": "forecast",
        "data": {"path": data, "time_column": "date", "target": ["OT"], "split": [TRAIN_END, VAL_END - TRAIN_END,
                 TEST_END - VAL_END], "scaler": "standard", "calendar": []},
        "window": {"lookback": LOOKBACK, "horizon": HORIZON},
        "model": {"encoder": f"lstm:{args.hidden}", "strategy": "direct", "instance_norm": recipe, "linear_skip": recipe},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 1e-3, "seed": 0, "clip_norm": None,
                  "plots": False, "progress": "none"},
    })
    task = ForecastTask(cfg)
    task.setup()
    model = task.build_model()
    trainer = Trainer(task, model, cfg.train)
    times = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        trainer.train_one_epoch(epoch)
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        m = task.evaluate(model, "test")
    return {"library": "hybridrnn", "s_per_epoch": statistics.median(times), "epoch_times": times,
            "mse": m["scaled_mse"], "mae": m["scaled_mae"], "params": sum(p.numel() for p in model.parameters()),
            "train_windows": task.num_examples("train"), "test_windows": task.num_examples("test"),
            "naive_mse": m["naive_scaled_mse"], "naive_mae": m["naive_scaled_mae"],
            "linear_mse": m["linear_scaled_mse"], "linear_mae": m["linear_scaled_mae"]}, task


def plain_torch_epoch(task: ForecastTask, args) -> float:
    """Seconds of one epoch of a hand-written PyTorch loop (``torch.nn.LSTM`` + ``Linear``, Adam) over the same
    batches: the floor that any library's per-epoch time is measured against."""
    torch.manual_seed(0)
    lstm, head = torch.nn.LSTM(1, args.hidden, batch_first=True), torch.nn.Linear(args.hidden, HORIZON)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
    t0 = time.perf_counter()
    for batch in task.train_batches(0, torch.Generator().manual_seed(0)):
        out, _ = lstm(batch["past"])
        loss = torch.nn.functional.mse_loss(head(out[:, -1]), batch["target"][:, :, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def darts_side(task: ForecastTask, args) -> dict:
    import pytorch_lightning as pl
    from darts import TimeSeries
    from darts.models import BlockRNNModel

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "darts"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times, self._t0 = [], None

        def on_train_epoch_start(self, trainer, module):
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.times.append(time.perf_counter() - self._t0)

    def make(epochs: int, timer: EpochTimer):
        torch.manual_seed(0)
        return BlockRNNModel(input_chunk_length=LOOKBACK, output_chunk_length=HORIZON, model="LSTM",
                             hidden_dim=args.hidden, n_rnn_layers=1, hidden_fc_sizes=None, dropout=0.0,
                             batch_size=args.batch_size, n_epochs=epochs, optimizer_kwargs={"lr": 1e-3},
                             random_state=0, save_checkpoints=False,
                             pl_trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False, "logger": False,
                                                "enable_model_summary": False, "enable_checkpointing": False,
                                                "callbacks": [timer]})

    # the very same z-scored values hybridrnn trains on (its scaler, fitted on the training rows)
    scaled = task.values[:TEST_END, 0].numpy().astype(np.float32)
    times = task.table.times[:TEST_END]
    series = TimeSeries.from_times_and_values(times, scaled[:, None])
    train = series[:TRAIN_END]

    # timing: one epoch of a fresh hybridrnn model, then one of a fresh Darts model, alternated (the load of the
    # shared machine changes over minutes; alternating gives both libraries the same conditions)
    ours_t, theirs_t, plain_t = [], [], []
    for _ in range(args.timing_rounds):
        plain_t.append(plain_torch_epoch(task, args))
        torch.manual_seed(0)
        m = task.build_model()
        trainer = Trainer(task, m, task.config.train)
        t0 = time.perf_counter()
        trainer.train_one_epoch(0)
        ours_t.append(time.perf_counter() - t0)
        t = EpochTimer()
        make(1, t).fit(train, verbose=False)
        torch.set_num_threads(1)
        theirs_t += t.times
        print(f"interleaved epoch: plain torch {plain_t[-1]:.2f} s, hybridrnn {ours_t[-1]:.2f} s, darts "
              f"{theirs_t[-1]:.2f} s", flush=True)

    timer = EpochTimer()
    model = make(args.epochs, timer)
    torch.set_num_threads(1)
    model.fit(train, verbose=False)
    torch.set_num_threads(1)
    # every test window: origin t in [11520, 14400 - 24], input rows [t - 96, t)
    forecasts = model.historical_forecasts(series, start=VAL_END, forecast_horizon=HORIZON, stride=1, retrain=False,
                                           last_points_only=False, overlap_end=False, verbose=False)
    pred = np.stack([f.values()[:, 0] for f in forecasts]).astype(np.float64)
    first = [int(times.get_loc(f.start_time())) for f in forecasts]
    truth = np.stack([scaled[t:t + HORIZON] for t in first]).astype(np.float64)
    if first[0] != VAL_END or len(first) != TEST_END - HORIZON - VAL_END + 1:
        raise RuntimeError(f"Darts test windows start at row {first[0]} ({len(first)} windows); expected "
                           f"{VAL_END} ({TEST_END - HORIZON - VAL_END + 1})")
    err = pred - truth
    params = sum(p.numel() for p in model.model.parameters())
    return {"library": "darts BlockRNNModel (LSTM)", "s_per_epoch": statistics.median(timer.times),
            "epoch_times": timer.times, "interleaved": {"hybridrnn": ours_t, "darts": theirs_t, "plain": plain_t}, "mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err))),
            "params": params, "train_windows": len(train) - LOOKBACK - HORIZON + 1, "test_windows": len(first)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="shared:ett/ETTh1")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--timing-rounds", type=int, default=3, help="alternated one-epoch timings of each library")
    p.add_argument("--no-recipe", dest="recipe", action="store_false",
                   help="skip the extra hybridrnn run with instance norm + linear skip")
    p.add_argument("--out", default="benchmarks/results/forecast_peers.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"budget: univariate ETTh1 OT, look-back {LOOKBACK}, horizon {HORIZON}, hidden {args.hidden}, batch "
          f"{args.batch_size}, {args.epochs} epochs each, 1 thread", flush=True)
    ours, task = hybridrnn_side(args.data, args)
    print(ours, flush=True)
    recipe = None
    if args.recipe:  # accuracy reference: the library's recommended head (not part of the speed comparison)
        recipe, _ = hybridrnn_side(args.data, args, recipe=True)
        recipe["library"] = "hybridrnn + instance_norm + linear_skip (accuracy reference)"
        print(recipe, flush=True)
    try:
        import darts
        import pytorch_lightning
        versions = f"darts {darts.__version__}, pytorch-lightning {pytorch_lightning.__version__}"
        theirs = darts_side(task, args)
        print(theirs, flush=True)
    except ImportError as exc:
        versions, theirs = f"darts not available: {exc}", None
    lines = ["# hybridrnn vs Darts BlockRNNModel (LSTM): univariate ETTh1 OT, look-back 96, horizon 24", "",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/forecast_peers.py --epochs {args.epochs} --hidden "
             f"{args.hidden} --batch-size {args.batch_size}` (one process; torch {torch.__version__}, {versions}; "
             "1 thread; 2 CPU cores shared with other jobs, so absolute times are noisy: compare the ratio).", "",
             "Same data (hybridrnn's z-scored OT, scaler fitted on rows [0, 8640)), same size of network (one LSTM "
             f"of {args.hidden} and one linear layer: Darts maps the LSTM outputs of the last 24 look-back steps through "
             f"a shared Linear({args.hidden}, 1), hybridrnn the last state through Linear({args.hidden}, 24)), Adam 1e-3, "
             f"batch {args.batch_size}, {args.epochs} epochs "
             f"over all {ours['train_windows']:,} stride-1 training windows, no clipping, no validation; test MSE / "
             f"MAE on the z-scale over all {ours['test_windows']:,} test windows (rows 11520-14400).", "",
             "| library | s / epoch (median) | epochs (s) | test MSE | test MAE | params |", "|---|---|---|---|---|---|"]
    for r in [ours] + ([theirs] if theirs else []) + ([recipe] if recipe else []):
        lines.append(f"| {r['library']} | {r['s_per_epoch']:.2f} | {', '.join(f'{t:.1f}' for t in r['epoch_times'])} "
                     f"| {r['mse']:.4f} | {r['mae']:.4f} | {r['params']:,} |")
    lines += ["", f"Same test windows: naive (last value) MSE {ours['naive_mse']:.4f} / MAE {ours['naive_mae']:.4f}; "
                  f"least-squares linear on the look-back MSE {ours['linear_mse']:.4f} / MAE {ours['linear_mae']:.4f}."]
    if theirs:
        il = theirs["interleaved"]
        ratio_il = statistics.median(il["darts"]) / statistics.median(il["hybridrnn"])
        ratio = theirs["s_per_epoch"] / ours["s_per_epoch"]
        plain = statistics.median(il["plain"])
        lines += ["", f"Alternated one-epoch timings (fresh models; a hand-written PyTorch loop, hybridrnn, Darts; "
                      f"{len(il['darts'])} rounds): plain PyTorch {', '.join(f'{t:.1f}' for t in il['plain'])} s, "
                      f"hybridrnn {', '.join(f'{t:.1f}' for t in il['hybridrnn'])} s, Darts "
                      f"{', '.join(f'{t:.1f}' for t in il['darts'])} s. Median ratio Darts / hybridrnn "
                      f"**{ratio_il:.2f}x** (target at least 2x); hybridrnn / plain PyTorch "
                      f"{statistics.median(il['hybridrnn']) / plain:.2f}x, Darts / plain PyTorch "
                      f"{statistics.median(il['darts']) / plain:.2f}x. Ratio of the training runs' medians above: "
                      f"{ratio:.2f}x.", "",
                  "Reading: on this task an epoch is 267 batches of 32 windows x 96 steps, and the LSTM's own "
                  "forward and backward dominate: a library can only add overhead on top of the plain loop, so the "
                  "2x target (measured on AirPassengers, 100-odd windows, where per-batch overhead dominates) is "
                  "not reachable here by the training loop alone.", "",
                  f"Accuracy after {args.epochs} epochs: test MSE {ours['mse']:.4f} (hybridrnn) vs {theirs['mse']:.4f} "
                  f"(Darts), {'equal or better' if ours['mse'] <= theirs['mse'] else 'worse'}; MAE {ours['mae']:.4f} vs "
                  f"{theirs['mae']:.4f}."]
    else:
        lines += ["", f"Darts was not run: {versions}."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
