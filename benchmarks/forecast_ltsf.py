"""ETTh1 / ETTh2 long-horizon benchmark of the segment-recurrent forecaster (SegRNN recipe), 3 seeds per horizon.

Trains the recipes ``configs/forecast/ett/etth1_segrnn_{H}.yaml`` (look-back 96, every stride-1 window, no dropped
batch, MSE loss, weights of the best validation epoch) at each horizon and seed, and writes
``benchmarks/results/forecast_ltsf.md`` (+ ``.json``): test MSE / MAE on the z-scale (mean +- std over seeds) next to
the published look-back-96 rows and hybridrnn's least-squares linear baseline on the same windows, with the CPU
minutes (process time, one thread) of each run. ``--data etth2`` runs the same recipes, untouched but for the file,
on ETTh2. Rows are appended to ``benchmarks/results/forecast_ltsf.jsonl`` as they finish, so an interrupted run
keeps what it did and a rerun skips finished (data, horizon, seed, overrides) rows.

    OMP_NUM_THREADS=1 python benchmarks/forecast_ltsf.py --horizons 96 192 336 720 --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/forecast_ltsf.py --data etth2 --seeds 0
    OMP_NUM_THREADS=1 python benchmarks/forecast_ltsf.py --tune --horizons 96 --set model.encoder=gru:512

``--tune`` prints validation figures only (what the recipe is chosen on) and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))   # benchmarks/ helpers
from _train import fit_in_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = {"etth1": "shared:ett/ETTh1", "etth2": "shared:ett/ETTh2"}

#: published look-back-96 test MSE / MAE (SegRNN repository README; best other model by MSE), from issue 15
PUBLISHED = {
    "etth1": {"SegRNN (published)": {96: (0.368, 0.395), 192: (0.408, 0.419), 336: (0.444, 0.440), 720: (0.446, 0.457)},
              "best other published (FEDformer / PatchTST)": {96: (0.376, 0.419), 192: (0.420, 0.448),
                                                               336: (0.459, 0.465), 720: (0.500, 0.488)},
              "DLinear (published)": {96: (0.386, 0.400), 192: (0.437, 0.432), 336: (0.481, 0.459),
                                      720: (0.519, 0.516)}},
    "etth2": {"SegRNN (published)": {96: (0.278, 0.335), 192: (0.359, 0.389), 336: (0.421, 0.436), 720: (0.432, 0.455)}},
}


def recipe(horizon: int) -> Path:
    return ROOT / "configs" / "forecast" / "ett" / f"etth1_segrnn_{horizon}.yaml"


def load(horizon: int, data: str, seed: int, overrides: list[str]):
    """The recipe with ``key.path=value`` overrides (values read as YAML), validated as a ForecastConfig."""
    import yaml

    from hybridrnn.tasks.forecast_config import ForecastConfig
    d = yaml.safe_load(recipe(horizon).read_text())
    sets = [f"train.seed={seed}", "train.plots=false", "train.progress=none"] + list(overrides)
    if data != "etth1":
        sets.append(f"data.path={DATA[data]}")
    for item in sets:
        key, value = item.split("=", 1)
        *parents, last = key.split(".")
        node = d
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    return ForecastConfig.model_validate(d)


def run_one(horizon: int, data: str, seed: int, overrides: list[str], tune: bool) -> dict:
    from hybridrnn.tasks.forecast import ForecastTask
    cfg = load(horizon, data, seed, overrides)
    fitted = fit_in_memory(ForecastTask(cfg), seed)
    task, model, result, cpu, wall = fitted.task, fitted.model, fitted.result, fitted.cpu_s, fitted.wall_s
    with torch.no_grad():
        val = task.evaluate(model, "val")
        test = None if tune else task.evaluate(model, "test")
    row = {"data": data, "horizon": horizon, "seed": seed, "overrides": list(overrides),
           "val_mse": val["scaled_mse"], "val_mae": val["scaled_mae"],
           "best_epoch": result.best_epoch, "epochs": result.epochs_run, "cpu_min": cpu / 60, "wall_min": wall / 60,
           "params": sum(p.numel() for p in model.parameters()), "encoder": cfg.model.encoder,
           "train_windows": task.num_examples("train"), "test_windows": task.num_examples("test")}
    if test is not None:
        row.update({"mse": test["scaled_mse"], "mae": test["scaled_mae"], "linear_mse": test["linear_scaled_mse"],
                    "linear_mae": test["linear_scaled_mae"]})
    print(json.dumps(row), flush=True)
    return row


DEFAULTS_DIR = ROOT / "configs" / "forecast" / "defaults"


def _set(d: dict, items: list[str]) -> dict:
    import yaml
    for item in items:
        key, value = item.split("=", 1)
        *parents, last = key.split(".")
        node = d
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    return d


def run_default(path: Path, seed: int, overrides: list[str] = (), tune: bool = False) -> dict:
    """Train a config that names only data, window (and a training budget): the default recipe."""
    import yaml

    from hybridrnn.tasks.forecast import ForecastTask
    from hybridrnn.tasks.forecast_config import ForecastConfig
    d = yaml.safe_load(path.read_text())
    d.setdefault("train", {}).update({"seed": seed, "plots": False, "progress": "none"})
    _set(d, list(overrides))
    cfg = ForecastConfig.model_validate(d, context={"config_dir": str(path.parent)})
    fitted = fit_in_memory(ForecastTask(cfg), seed)
    task, model, result, cpu = fitted.task, fitted.model, fitted.result, fitted.cpu_s
    with torch.no_grad():
        val = task.evaluate(model, "val")
        if tune:
            row = {"config": path.name, "overrides": list(overrides), "val_mae": val["mae"],
                   "val_linear_mae": val["linear_mae"], "val_scaled_mse": val["scaled_mse"],
                   "best_epoch": result.best_epoch, "epochs": result.epochs_run, "cpu_min": cpu / 60}
            print(json.dumps(row), flush=True)
            return row
        test = task.evaluate(model, "test")
    m = cfg.model
    row = {"config": str(path.relative_to(ROOT)), "seed": seed, "val_mae": val["mae"], "val_linear_mae": val["linear_mae"], "lookback": cfg.window.lookback,
           "horizon": cfg.window.horizon, "targets": len(cfg.data.target),
           "recipe": {k: getattr(m, k) for k in ("encoder", "strategy", "segment", "instance_norm",
                                                  "channel_independent")},
           "mae": test["mae"], "linear_mae": test["linear_mae"], "naive_mae": test["naive_mae"],
           "scaled_mse": test["scaled_mse"], "linear_scaled_mse": test["linear_scaled_mse"],
           "test_windows": task.num_examples("test"), "best_epoch": result.best_epoch, "epochs": result.epochs_run,
           "cpu_min": cpu / 60}
    print(json.dumps(row), flush=True)
    return row


def write_defaults_report(rows: list[dict]) -> None:
    md = ["# The default recipe on every forecasting data set, against the least-squares linear baseline", "",
          "Each config in `configs/forecast/defaults/` names only its data, window and a training budget (epochs, "
          "batch, patience); the model is whatever the defaults choose (`model.chosen_by_default` in `hybridrnn "
          "config show`). Test MAE on the original scale, every test window; the linear baseline (per target, least "
          "squares on the look-back) and the naive last value are scored on the same windows. Mean over seeds. "
          "CPU minutes: process time of one run, one thread.", "",
          "Command: `OMP_NUM_THREADS=1 python benchmarks/forecast_ltsf.py --defaults`", "",
          "| config | look-back / horizon | targets | default recipe | test MAE | linear MAE | naive MAE | beats linear "
          "| seeds | CPU min per run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for cfg in sorted({r["config"] for r in rows}):
        rs = [r for r in rows if r["config"] == cfg]
        r0, mae = rs[0], statistics.mean(r["mae"] for r in rs)
        rec = r0["recipe"]
        desc = (f"{rec['encoder']}, {rec['strategy']}" + (f", segment {rec['segment']}" if rec["segment"] else "")
                + f", norm {rec['instance_norm']}" + (", channel-indep." if rec["channel_independent"] else ""))
        md.append(f"| `{Path(cfg).name}` | {r0['lookback']} / {r0['horizon']} | {r0['targets']} | {desc} | "
                  f"{mae:.4g} | {r0['linear_mae']:.4g} | {r0['naive_mae']:.4g} | "
                  f"{'yes' if mae < r0['linear_mae'] else 'no'} | {len(rs)} | "
                  f"{statistics.mean(r['cpu_min'] for r in rs):.1f} |")
    md += ["", "Notes. The defaults chose `lstm:64` (the encoder default), no dropout. Two misses: ETTh1 (MAE "
           "1.578 against 1.426; on the z-scale MSE 0.404 against 0.382) and Melbourne (2.048 against 2.045, a tie). "
           "On ETTh1 even the tuned recipe (`etth1_segrnn_96.yaml`, GRU 256, dropout 0.5, MSE loss) beats the "
           "linear baseline on MSE (0.375 against 0.381) but not on MAE (0.403 against 0.390, z-scale): a linear "
           "least-squares fit on every stride-1 window is a strong MAE baseline here (better than DLinear's "
           "published 0.400). Not tried for lack of CPU time: an MAE training loss, dropout and a wider default "
           "encoder for the default recipe. Exchange rate: the model beats the linear baseline but not the naive "
           "last value (a near random walk)."]
    (RESULTS / "forecast_ltsf_defaults.md").write_text("\n".join(md) + "\n")
    (RESULTS / "forecast_ltsf_defaults.json").write_text(json.dumps(rows, indent=1))


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def write_report(rows: list[dict], command: str) -> None:
    md = ["# Segment-recurrent forecaster (SegRNN recipe) on ETTh1 / ETTh2, look-back 96", "",
          "Protocol: rows [0, 8640) / [8640, 11520) / [11520, 14400) train / val / test (each later split starts 96 "
          "rows early), all 7 columns z-scored with the training rows, every stride-1 window (train, val and test; no "
          "dropped batch), MSE loss, weights of the best validation epoch; MSE / MAE on the z-scale averaged over the "
          "7 variables and the horizon. Mean ± standard deviation over seeds. CPU minutes: process time of one run "
          "(training incl. the validation passes), one thread (`OMP_NUM_THREADS=1`, torch 2.13 CPU), on a 2-core "
          "machine shared with other jobs (wall time is longer and not comparable).", "",
          f"Recipes: `configs/forecast/ett/etth1_segrnn_{{96,192,336,720}}.yaml` (GRU 256, segment 24, parallel "
          "decoding, channel independence with a channel embedding, last-value instance normalisation, dropout 0.5, "
          "Adam 1e-3, batch 256; 8 epochs at H96 / H192, 5 at H336 / H720 to fit the CPU budget). Commands (each "
          "appends its rows; the table shows every row so far, the seeds column says how many ran): "
          f"{command}", "",
          "Tuning (validation split of ETTh1 H96 only, seed 0, 10 epochs, `--tune`): last-value normalisation "
          "val MSE 0.667 against 0.692 for mean/std normalisation (`instance_norm: standard`); a cosine schedule "
          "0.670 against 0.667 for a constant rate (kept constant). GRU 512 (SegRNN's width) was not tried: its "
          "H720 epoch costs ~140 CPU s against ~68 s at 256. Test figures were read only after the recipe was "
          "fixed.", ""]
    for data in ("etth1", "etth2"):
        drows = [r for r in rows if r["data"] == data and not r["overrides"] and "mse" in r]
        if not drows:
            continue
        hs = sorted({r["horizon"] for r in drows})
        md += [f"## {data.upper()}" + (" (the ETTh1 recipe, untouched)" if data == "etth2" else ""), "",
               "| model | " + " | ".join(f"H{h} MSE | H{h} MAE" for h in hs) + " |",
               "|---|" + "---|---|" * len(hs)]
        cells = []
        for h in hs:
            rs = [r for r in drows if r["horizon"] == h]
            cells += [_ms([r["mse"] for r in rs]), _ms([r["mae"] for r in rs])]
        md.append("| **hybridrnn segment GRU (ours)** | " + " | ".join(cells) + " |")
        for name, table in PUBLISHED.get(data, {}).items():
            md.append(f"| {name} | " + " | ".join(
                f"{table[h][0]:.3f} | {table[h][1]:.3f}" if h in table else "- | -" for h in hs) + " |")
        lin = []
        for h in hs:
            r = next(r for r in drows if r["horizon"] == h)
            lin += [f"{r['linear_mse']:.3f}", f"{r['linear_mae']:.3f}"]
        md.append("| linear least squares (ours, same windows) | " + " | ".join(lin) + " |")
        md += ["", "| horizon | seeds | test MSE per seed | val MSE per seed | best epoch / epochs | CPU min per run "
               "| params |", "|---|---|---|---|---|---|---|"]
        for h in hs:
            rs = sorted((r for r in drows if r["horizon"] == h), key=lambda r: r["seed"])
            md.append(f"| {h} | {len(rs)} | " + ", ".join(f"{r['mse']:.3f}" for r in rs) + " | "
                      + ", ".join(f"{r['val_mse']:.3f}" for r in rs) + " | "
                      + ", ".join(f"{r['best_epoch']}/{r['epochs']}" for r in rs) + " | "
                      + ", ".join(f"{r['cpu_min']:.1f}" for r in rs) + f" | {rs[0]['params']:,} |")
        md.append("")
    (RESULTS / "forecast_ltsf.md").write_text("\n".join(md))
    (RESULTS / "forecast_ltsf.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=sorted(DATA), default="etth1")
    p.add_argument("--horizons", type=int, nargs="+", default=[96, 192, 336, 720])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (tuning)")
    p.add_argument("--tune", action="store_true", help="validation only; writes nothing")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the .jsonl rows")
    p.add_argument("--defaults", nargs="*", default=None, metavar="CONFIG",
                   help="train the data+window-only configs of configs/forecast/defaults (or these) instead")
    args = p.parse_args(argv)
    if args.defaults is not None:
        jsonl = RESULTS / "forecast_ltsf_defaults.jsonl"
        paths = [Path(c).resolve() for c in args.defaults] or sorted(DEFAULTS_DIR.glob("*.yaml"))
        if not args.report_only:
            for path in paths:
                for seed in args.seeds:
                    if args.tune:
                        run_default(path, seed, args.overrides, tune=True)
                        continue
                    rel = str(path.relative_to(ROOT))
                    if any((r["config"], r["seed"]) == (rel, seed) for r in _read_rows(jsonl)):
                        print(f"{rel} seed {seed}: done before, skipped", flush=True)
                        continue
                    row = run_default(path, seed)
                    with jsonl.open("a") as f:
                        f.write(json.dumps(row) + "\n")
        if not args.tune:
            write_defaults_report(_read_rows(jsonl))
        return 0
    jsonl = RESULTS / "forecast_ltsf.jsonl"
    if not args.report_only:
        for h in args.horizons:
            for seed in args.seeds:
                done = [r for r in _read_rows(jsonl) if (r["data"], r["horizon"], r["seed"], r["overrides"]) ==
                        (args.data, h, seed, args.overrides)]
                if done and not args.tune:
                    print(f"{args.data} H{h} seed {seed}: done before, skipped", flush=True)
                    continue
                row = run_one(h, args.data, seed, args.overrides, args.tune)
                if not args.tune:
                    with jsonl.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    if not args.tune:
        write_report(_read_rows(jsonl), "; ".join(f"`OMP_NUM_THREADS=1 python benchmarks/forecast_ltsf.py {c}`" for c in (
            "--horizons 96 192 336 720 --seeds 0", "--horizons 96 --seeds 1 2", "--horizons 192 --seeds 1 2",
            "--horizons 336 --seeds 1 2", "--data etth2 --horizons 96 --seeds 0", "--horizons 720 --seeds 1")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
