"""minGRU / minLSTM against our GRU (issue 16, item 4): training time and accuracy, one CPU thread.

1. Speed: one training step (forward + backward of ``outputs.mean()``) of ``mingru:128`` (both paths: the
   sequential ``loop``, what ``auto`` runs on CPU, and the log-space ``log_scan``), ``minlstm:128`` and ``gru:128``
   (``path="custom"`` and the default ``path="auto"``) at batch 32, input 128, T = 100, 1000, 4000. Rounds are
   interleaved (every model once per round, in a shuffled order, after a warm-up round); the figure is the median
   of the process CPU time per step. Also the float32 error of each path against a float64 run at each T.
2. Accuracy, a short budget: the adding problem (``configs/long_range/adding.yaml``, T=100, hidden 64) and ETTh1
   OT (``configs/compare/etth1_ot.yaml``, hidden 32), ``gru`` vs ``mingru`` vs ``minlstm``, several seeds; test
   metric and CPU seconds per run.

Writes ``benchmarks/results/minimal.md`` and ``benchmarks/results/minimal.json``.

    OMP_NUM_THREADS=1 python benchmarks/minimal.py                 # everything, about 12 CPU minutes
    OMP_NUM_THREADS=1 python benchmarks/minimal.py --only speed    # or: --only accuracy
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import sys

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))   # benchmarks/ helpers
from _train import fit_in_memory  # noqa: E402
from hybridrnn.train.allocator import keep_freed_memory  # noqa: E402

ALLOCATOR = keep_freed_memory()   # as hybridrnn's training runs (train.keep_freed_memory), for every case alike

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BATCH, HIDDEN = 32, 128
REPEATS = {100: 15, 1000: 7, 4000: 3}
SPEED_MODELS = ["gru:128 custom", "gru:128 auto", "mingru:128 loop", "mingru:128 log_scan", "minlstm:128 loop"]


def make(name: str, dtype=torch.float32):
    from hybridrnn.nn.minimal import MinGRU, MinLSTM
    from hybridrnn.nn.recurrent import GRU
    spec, path = name.split()
    kind = spec.split(":")[0]
    if kind == "gru":
        return GRU(HIDDEN, HIDDEN, path=path).to(dtype)
    return (MinGRU if kind == "mingru" else MinLSTM)(HIDDEN, HIDDEN, path=path).to(dtype)


def train_step(model, x) -> float:
    """CPU seconds of one forward + backward."""
    t0 = time.process_time()
    out, _ = model(x)
    out.mean().backward()
    seconds = time.process_time() - t0
    for p in model.parameters():
        p.grad = None
    return seconds


def float32_error(time_steps: int) -> dict[str, float]:
    """Largest |h_float32 - h_float64| over the outputs of one minGRU on the same input, per path."""
    torch.manual_seed(0)
    ref_model = make("mingru:128 loop", torch.float64)
    x = torch.randn(BATCH, time_steps, HIDDEN, dtype=torch.float64)
    with torch.no_grad():
        ref, _ = ref_model(x)
        errors = {}
        for path, chunk in (("loop", None), ("log_scan", None), ("log_scan", 256)):
            m = make(f"mingru:128 {path}")
            m.load_state_dict({k: v.float() for k, v in ref_model.state_dict().items()})
            m.chunk = chunk
            out, _ = m(x.float())
            errors[path + ("" if chunk is None else f" chunk={chunk}")] = float((out.double() - ref).abs().max())
    return errors


def speed() -> list[dict]:
    rows = []
    for time_steps, repeats in REPEATS.items():
        torch.manual_seed(0)
        models = {name: make(name) for name in SPEED_MODELS}
        x = torch.randn(BATCH, time_steps, HIDDEN)
        times = {name: [] for name in models}
        for name, m in models.items():  # warm-up round
            train_step(m, x)
        order = list(models)
        for _ in range(repeats):
            random.shuffle(order)
            for name in order:
                times[name].append(train_step(models[name], x))
        ref = statistics.median(times["gru:128 custom"])
        errors = float32_error(time_steps)
        for name in SPEED_MODELS:
            med = statistics.median(times[name])
            row = {"T": time_steps, "model": name, "path_run": models[name].path, "ms": 1e3 * med,
                   "vs_gru_custom": med / ref, "repeats": repeats}
            print(json.dumps(row), flush=True)
            rows.append(row)
        rows.append({"T": time_steps, "float32_error": errors})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _config(path: Path, overrides: dict) -> dict:
    d = yaml.safe_load(path.read_text())
    for section in ("compare", "tune"):
        d.pop(section, None)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = d
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return d


def run(task_name: str, encoder: str, seed: int) -> dict:
    """Train one model on the short budget; test metrics and CPU seconds."""
    common = {"model.encoder": encoder, "train.seed": seed, "train.plots": False, "train.progress": "none",
              "train.num_threads": 1}
    if task_name == "adding":
        from hybridrnn.tasks.long_range import LongRangeTask as TaskClass
        from hybridrnn.tasks.long_range_config import LongRangeConfig as ConfigClass
        d = _config(ROOT / "configs/long_range/adding.yaml", {
            **common, "data.n_train": 4000, "data.n_val": 500, "data.n_test": 500, "train.epochs": 12,
            "train.lr": 0.003, "train.patience": None})
        metrics = ("mse", "solved")
    else:
        from hybridrnn.tasks.forecast import ForecastTask as TaskClass
        from hybridrnn.tasks.forecast_config import ForecastConfig as ConfigClass
        d = _config(ROOT / "configs/compare/etth1_ot.yaml", common)
        metrics = ("scaled_mse", "scaled_mae")
    cfg = ConfigClass.model_validate(d)
    fitted = fit_in_memory(TaskClass(cfg), seed)
    task, model, result, cpu = fitted.task, fitted.model, fitted.result, fitted.cpu_s
    with torch.no_grad():
        test = task.evaluate(model, "test")
    row = {"task": task_name, "encoder": encoder, "seed": seed, "epochs": result.epochs_run, "cpu_s": cpu,
           "params": sum(p.numel() for p in model.parameters()), **{k: float(test[k]) for k in metrics}}
    print(json.dumps(row), flush=True)
    return row


def accuracy(seeds: list[int]) -> list[dict]:
    rows = []
    for task_name, encoders in (("adding", ["gru:64", "mingru:64", "minlstm:64", "mingru:64x2"]),
                                ("etth1", ["gru:32", "mingru:32", "minlstm:32"])):
        for seed in seeds:
            for encoder in encoders:
                rows.append(run(task_name, encoder, seed))
    return rows


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def report(speed_rows: list[dict], acc_rows: list[dict], runs: list[dict]) -> str:
    made = "; ".join(f"`{r['command']}` ({r['part']}, {r['minutes']:.1f} minutes of wall time)" for r in runs)
    md = ["# minGRU and minLSTM against the GRU (issue 16, item 4)", "",
          f"Produced by {made} on a shared 2-core CPU machine (other processes running), one thread, torch "
          f"{torch.__version__}, {platform.machine()}; allocator (speed part): {ALLOCATOR}.", ""]
    if speed_rows:
        md += ["## Training step time (forward + backward), batch 32, input 128, hidden 128", "",
               "Median process CPU time of one step over interleaved rounds (shuffled order, after a warm-up); "
               "an epoch of N batches costs N times this. `gru:128 auto` resolves to the custom path on CPU "
               "(`benchmarks/results/auto_path.md`). `mingru loop` is what `mingru:128` runs by default on CPU; `log_scan` is the log-space parallel scan "
               "with its default blocks of 256 steps.", "",
               "| model | path run | T=100 ms | T=1000 ms | T=4000 ms | vs gru custom (100 / 1000 / 4000) |",
               "|---|---|---|---|---|---|"]
        by = {(r["model"], r["T"]): r for r in speed_rows if "model" in r}
        for name in SPEED_MODELS:
            cells = [by.get((name, t)) for t in REPEATS]
            ms = " | ".join(f"{c['ms']:.1f}" if c else "-" for c in cells)
            ratio = " / ".join(f"{c['vs_gru_custom']:.2f}x" if c else "-" for c in cells)
            path = next((c["path_run"] for c in cells if c), "-")
            md.append(f"| {name.split()[0]} ({name.split()[1]}) | {path} | {ms} | {ratio} |")
        noise = [abs(by[("gru:128 auto", t)]["ms"] / by[("gru:128 custom", t)]["ms"] - 1) for t in REPEATS
                 if ("gru:128 auto", t) in by and ("gru:128 custom", t) in by]
        md += ["", f"Repeats per T: {REPEATS}. The two GRU rows run the same code (auto is custom on CPU): their "
                   f"difference, up to {100 * max(noise, default=0):.0f}% here, is the measurement noise of this "
                   f"shared machine.", "",
               "Float32 error of minGRU's outputs against the same model in float64 (largest absolute difference; "
               "the outputs are O(1)):", "", "| T | " + " | ".join(
                   next(r for r in speed_rows if "float32_error" in r)["float32_error"]) + " |",
               "|---|" + "---|" * len(next(r for r in speed_rows if "float32_error" in r)["float32_error"])]
        for r in speed_rows:
            if "float32_error" in r:
                md.append(f"| {r['T']} | " + " | ".join(f"{v:.1e}" for v in r["float32_error"].values()) + " |")
        md.append("")
    if acc_rows:
        md += ["## Accuracy on a short budget", "",
               "Adding problem: `configs/long_range/adding.yaml` at T=100 with 4000 / 500 / 500 sequences, 12 epochs "
               "of batch 50 (960 updates), lr 0.003, no early stopping; solved below test MSE 0.01 (predicting 1 "
               "gives 0.167). ETTh1 OT: `configs/compare/etth1_ot.yaml` as it is (look-back 96, horizon 96, 6 "
               "epochs, patience 3), test MSE / MAE on the z-scale. Mean ± std over seeds; CPU seconds of training "
               "per run (mean).", "",
               "| task | encoder | parameters | seeds | test metric | second metric | solved / epochs | CPU s |",
               "|---|---|---|---|---|---|---|---|"]
        keys = []
        for r in acc_rows:
            if (r["task"], r["encoder"]) not in keys:
                keys.append((r["task"], r["encoder"]))
        for task_name, encoder in keys:
            rs = [r for r in acc_rows if r["task"] == task_name and r["encoder"] == encoder]
            if task_name == "adding":
                first, second = f"MSE {_mean_std([r['mse'] for r in rs])}", "-"
                third = f"{sum(int(r['solved']) for r in rs)}/{len(rs)} solved"
            else:
                first = f"MSE {_mean_std([r['scaled_mse'] for r in rs])}"
                second = f"MAE {_mean_std([r['scaled_mae'] for r in rs])}"
                third = f"{statistics.mean(r['epochs'] for r in rs):.1f} epochs"
            md.append(f"| {task_name} | {encoder} | {rs[0]['params']:,} | {len(rs)} | {first} | {second} | {third} | "
                      f"{statistics.mean(r['cpu_s'] for r in rs):.1f} |")
        md.append("")
    return "\n".join(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["speed", "accuracy", "report"], default=None,
                        help="rerun one part, keeping the other from benchmarks/results/minimal.json ('report': "
                             "only rewrite minimal.md from minimal.json)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    start = time.perf_counter()
    out_json = RESULTS / "minimal.json"
    if args.only == "report":
        kept = json.loads(out_json.read_text())
        (RESULTS / "minimal.md").write_text(report(kept["speed"], kept["accuracy"], kept["runs"]))
        return
    kept = json.loads(out_json.read_text()) if args.only and out_json.exists() else {}
    command = "OMP_NUM_THREADS=1 python benchmarks/minimal.py" + (f" --only {args.only}" if args.only else "") + \
        (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] else "")
    speed_rows = speed() if args.only in (None, "speed") else kept.get("speed", [])
    acc_rows = accuracy(args.seeds) if args.only in (None, "accuracy") else kept.get("accuracy", [])
    minutes = (time.perf_counter() - start) / 60
    runs = [r for r in kept.get("runs", []) if args.only is not None and r["part"] != args.only]
    runs.append({"part": args.only or "all", "command": command, "minutes": minutes})
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"speed": speed_rows, "accuracy": acc_rows, "runs": runs}, indent=1) + "\n")
    (RESULTS / "minimal.md").write_text(report(speed_rows, acc_rows, runs))
    print(f"wrote {RESULTS / 'minimal.md'} ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
