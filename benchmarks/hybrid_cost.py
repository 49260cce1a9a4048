"""What a hybrid costs against its blocks (issue 16): a stacked ``lstm:H>gru:H`` and a parallel ``(lstm:H|gru:H)``
encoder against the sum of ``lstm:H`` and ``gru:H`` run alone, each on the path ``auto`` picks, one thread.

One training step is forward + backward of ``outputs.mean()`` for x ``(B, T, F)``. For the stack, the GRU block
reads the LSTM's H outputs, so its "alone" time is measured with input H (``gru:H`` on ``(B, T, H)``); for the
parallel encoder both read x. Rounds are interleaved (every case once per round, shuffled, after a warm-up
round); the figure is the median over rounds of the process CPU time per step, and the ratio is the median over
rounds of hybrid / (lstm + gru) in the same round. Target: at most 1.1.

    OMP_NUM_THREADS=1 python benchmarks/hybrid_cost.py [--rounds 15]     # writes results/hybrid_cost.md/.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from hybridrnn.data.text import atomic_write_text
from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.train.allocator import keep_freed_memory

ALLOCATOR = keep_freed_memory()   # as hybridrnn's training runs (train.keep_freed_memory), for every case alike

RESULTS = Path(__file__).resolve().parent / "results"
#: (batch, time, features, hidden): the ETTh1 comparison's shape (look-back 96, batch 64, hidden 64, 1 feature),
#: the same at look-back 336, and the layers grid's B32 H128 T200
SHAPES = ((64, 96, 1, 64), (64, 336, 1, 64), (32, 200, 128, 128))


def _step(module: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    t0 = time.process_time()
    for _ in range(reps):
        out, _ = module(x)
        out.mean().backward()
    return (time.process_time() - t0) / reps


def measure(batch: int, steps: int, features: int, hidden: int, rounds: int, reps: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, steps, features)
    xh = torch.randn(batch, steps, hidden)
    cases = {
        "lstm": (build_encoder(f"lstm:{hidden}", features), x),
        "gru": (build_encoder(f"gru:{hidden}", features), x),
        "gru on H": (build_encoder(f"gru:{hidden}", hidden), xh),
        "stack": (build_encoder(f"lstm:{hidden}>gru:{hidden}", features), x),
        "parallel": (build_encoder(f"(lstm:{hidden}|gru:{hidden})", features), x),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(rounds + 1):
        random.Random(r).shuffle(names)
        for name in names:
            module, inp = cases[name]
            t = _step(module, inp, reps)
            if r:                                          # round 0 warms up
                times[name].append(t)
    stack_ratio = [s / (a + b) for s, a, b in zip(times["stack"], times["lstm"], times["gru on H"])]
    par_ratio = [p / (a + b) for p, a, b in zip(times["parallel"], times["lstm"], times["gru"])]
    return {"batch": batch, "steps": steps, "features": features, "hidden": hidden,
            "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "stack_vs_sum": statistics.median(stack_ratio), "parallel_vs_sum": statistics.median(par_ratio)}


def render(meta: dict, rows: list[dict]) -> str:
    lines = ["# A hybrid against the sum of its blocks (issue 16: target at most 1.1x)", "",
             f"Command: `{meta['command']}`  ", f"Allocator: {ALLOCATOR} (as in training runs)  ",
             f"Date: {meta['date']}; torch {meta['torch']}, 1 thread, CPU "
             f"{meta['cpu']}; load average before / after {meta['load_before']} / {meta['load_after']}.  ",
             f"Training step = forward + backward; process CPU time, median of {meta['rounds']} interleaved rounds; "
             "ratios are medians of per-round ratios. Each block on the path `auto` picks (CPU: LSTM oneDNN, GRU "
             "the custom scan).", "",
             "| B | T | F | H | lstm ms | gru ms | gru on H ms | stack ms | stack / (lstm + gru on H) | parallel ms | "
             "parallel / (lstm + gru) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms"]
        lines.append(f"| {r['batch']} | {r['steps']} | {r['features']} | {r['hidden']} | {ms['lstm']:.1f} | "
                     f"{ms['gru']:.1f} | {ms['gru on H']:.1f} | {ms['stack']:.1f} | **{r['stack_vs_sum']:.2f}** | "
                     f"{ms['parallel']:.1f} | **{r['parallel_vs_sum']:.2f}** |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3, help="steps per case per round")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    meta = {"command": "OMP_NUM_THREADS=1 python benchmarks/hybrid_cost.py" + (f" --rounds {args.rounds}"
                                                                                 if args.rounds != 15 else ""),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "rounds": args.rounds,
            "load_before": [round(v, 2) for v in os.getloadavg()]}
    rows = []
    for shape in SHAPES:
        rows.append(measure(*shape, rounds=args.rounds, reps=args.reps))
        print(json.dumps(rows[-1]), flush=True)
    meta["load_after"] = [round(v, 2) for v in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "hybrid_cost.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    atomic_write_text(RESULTS / "hybrid_cost.md", render(meta, rows))
    print(render(meta, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
