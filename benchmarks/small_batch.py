"""Small batches: the compiled kernels (hybridrnn.nn._compiled) against oneDNN and the pure-torch custom path.

Times, interleaved in one process on one thread (issue 16, item 3):

- ``step()`` at batch 1, hidden 64 (microseconds per call, no_grad, eval): ``LSTM``/``GRU`` with the compiled
  kernel, the same module with ``HYBRIDRNN_NO_COMPILE=1`` (pure torch), ``torch.nn.LSTMCell``/``GRUCell``, and a
  one-element ``torch.add`` that shows how loaded the machine was;
- whole sequences of 200 steps, input size = hidden size, forward under ``no_grad`` ("infer") and forward +
  backward of ``outputs.sum()`` ("train"), for a grid of batch and hidden sizes: ``torch.nn.LSTM``/``GRU``
  (oneDNN), our layer on the custom path with the compiled loop (forced at every batch size, to place
  ``_compiled.MAX_BATCH``), and the same layer on the pure-torch scan (``HYBRIDRNN_NO_COMPILE=1``);
- batch 32, hidden 128 with the default dispatch against ``HYBRIDRNN_NO_COMPILE=1``: what the check costs the
  large-batch path (it runs the scan either way).

Every round runs every case once; a ratio is the median over rounds of (case time / baseline time in the same
round). Process CPU time (one thread). Results: ``benchmarks/results/small_batch.md`` and ``.json``.

    python benchmarks/small_batch.py             # about 4-8 minutes on a loaded 2-core machine
    python benchmarks/small_batch.py --quick     # smoke test (writes small_batch_quick.*)
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridrnn.nn import _compiled  # noqa: E402
from hybridrnn.nn.recurrent import GRU, LSTM  # noqa: E402
from hybridrnn.train.checkpoint import atomic_write_text  # noqa: E402
from hybridrnn.train.allocator import keep_freed_memory  # noqa: E402
from hybridrnn.train.environment import cpu_model  # noqa: E402

ALLOCATOR = keep_freed_memory()   # as hybridrnn's training runs (train.keep_freed_memory), for every case alike

RESULTS = Path(__file__).resolve().parent / "results"
CLOCK = time.process_time
GRID = ((1, 64), (2, 64), (4, 64), (8, 64), (16, 64), (32, 64), (1, 128), (4, 128), (8, 128), (16, 128), (32, 128))
STEPS = 200


def _mode(compiled: bool, max_batch: int = 10 ** 9):
    """Switch the compiled kernels on (every batch size up to ``max_batch``) or off (the env var)."""
    if compiled:
        os.environ.pop(_compiled.ENV_DISABLE, None)
    else:
        os.environ[_compiled.ENV_DISABLE] = "1"
    _compiled.MAX_BATCH = max_batch


def _seq_cases(hidden: int) -> dict[str, tuple[Callable, nn.Module, bool, int]]:
    """name -> (run(x) -> outputs, module, compiled on, max batch)."""
    torch.manual_seed(0)
    cases = {}
    for kind, cls, torch_cls in (("LSTM", LSTM, nn.LSTM), ("GRU", GRU, nn.GRU)):
        ref = torch_cls(hidden, hidden, batch_first=True)
        ours = cls(hidden, hidden, path="custom")
        cases[f"torch.nn.{kind}"] = (lambda x, m=ref: m(x)[0], ref, True, 10 ** 9)
        cases[f"{kind} custom, compiled"] = (lambda x, m=ours: m(x)[0], ours, True, 10 ** 9)
        cases[f"{kind} custom, pure torch"] = (lambda x, m=ours: m(x)[0], ours, False, 10 ** 9)
    return cases


def _time_seq(run, module, compiled, max_batch, x, mode, reps) -> float:
    _mode(compiled, max_batch)
    module.train(mode == "train")
    module.zero_grad(set_to_none=True)
    start = CLOCK()
    for _ in range(reps):
        if mode == "infer":
            with torch.no_grad():
                run(x)
        else:
            run(x).sum().backward()
    return (CLOCK() - start) / reps


def bench_sequences(sizes, rounds: int, target_s: float, default_max_batch: int) -> list[dict]:
    rows = []
    for batch, hidden in sizes:
        cases = _seq_cases(hidden)
        if (batch, hidden) == (32, 128):                # the large-batch path with the default dispatch
            for kind in ("LSTM", "GRU"):
                run, module, _, _ = cases[f"{kind} custom, compiled"]
                cases[f"{kind} custom, default dispatch"] = (run, module, True, default_max_batch)
        x = torch.randn(batch, STEPS, hidden)
        reps = {}
        for name, case in cases.items():
            for mode in ("infer", "train"):
                once = _time_seq(*case, x, mode, 1)
                reps[(name, mode)] = max(1, min(50, round(target_s / max(once, 1e-6))))
        times = {(name, mode): [] for name in cases for mode in ("infer", "train")}
        names = list(cases)
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                for mode in ("infer", "train"):
                    gc.collect()
                    times[(name, mode)].append(_time_seq(*cases[name], x, mode, reps[(name, mode)]))
        print(f"  B{batch} H{hidden}: {rounds} rounds done", flush=True)
        for name in names:
            kind = name.split()[0].split(".")[-1]
            base = f"torch.nn.{kind}"
            row = {"batch": batch, "hidden": hidden, "steps": STEPS, "case": name}
            for mode in ("infer", "train"):
                t = times[(name, mode)]
                row[f"{mode}_ms"] = statistics.median(t) * 1e3
                row[f"{mode}_vs_torch"] = statistics.median(a / b for a, b in zip(t, times[(base, mode)]))
                pure = times.get((f"{kind} custom, pure torch", mode))
                row[f"{mode}_vs_pure"] = statistics.median(a / b for a, b in zip(t, pure))
            rows.append(row)
    _mode(True, default_max_batch)
    return rows


def bench_step(rounds: int, calls: int) -> list[dict]:
    """``step()`` at batch 1, hidden 64, no_grad, eval: microseconds per call."""
    H = 64
    torch.manual_seed(0)
    x_t = torch.randn(1, H)
    tiny = torch.zeros(1)
    cell, gcell = nn.LSTMCell(H, H), nn.GRUCell(H, H)
    lstm, gru = LSTM(H, H).eval(), GRU(H, H).eval()
    with torch.no_grad():
        ls, gs = lstm.step(x_t)[1], gru.step(x_t)[1]
    hc = (torch.zeros(1, H), torch.zeros(1, H))
    runs: dict[str, tuple[Callable, bool]] = {
        "one tiny op (torch.add of 1 element; machine load probe)": (lambda: torch.add(tiny, tiny, out=tiny), True),
        "torch.nn.LSTMCell": (lambda: cell(x_t, hc), True),
        "LSTM.step, compiled": (lambda: lstm.step(x_t, ls), True),
        "LSTM.step, pure torch": (lambda: lstm.step(x_t, ls), False),
        "torch.nn.GRUCell": (lambda: gcell(x_t, hc[0]), True),
        "GRU.step, compiled": (lambda: gru.step(x_t, gs), True),
        "GRU.step, pure torch": (lambda: gru.step(x_t, gs), False),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for fn, compiled in runs.values():
            _mode(compiled)
            for _ in range(50):
                fn()
        for r in range(rounds):
            for name, (fn, compiled) in (runs.items() if r % 2 == 0 else list(runs.items())[::-1]):
                _mode(compiled)
                start = CLOCK()
                for _ in range(calls):
                    fn()
                times[name].append((CLOCK() - start) / calls)
    _mode(True)
    return [{"case": k, "us_per_call": statistics.median(v) * 1e6} for k, v in times.items()]


def bench_dispatch_check(max_batch: int, calls: int = 20000) -> float:
    """Microseconds per call of the check a layer makes before each layer and direction's recurrence
    (``_compiled_sequence_ok``) at batch 32, hidden 128: all that the default dispatch adds to the scan there."""
    _mode(True, max_batch)
    layer = LSTM(128, 128, path="custom")
    xg, h0 = torch.randn(STEPS, 32, 512), torch.zeros(32, 128)
    for _ in range(100):
        layer._compiled_sequence_ok(xg, h0, None, None)
    start = CLOCK()
    for _ in range(calls):
        layer._compiled_sequence_ok(xg, h0, None, None)
    return (CLOCK() - start) / calls * 1e6


def render(meta: dict, step_rows: list[dict], seq_rows: list[dict]) -> str:
    lines = ["# Small batches: compiled kernels vs oneDNN vs the pure-torch custom path", "",
             f"Command: `{meta['command']}`", "", f"Allocator: {ALLOCATOR} (hybridrnn.train.allocator, as in "
             "training runs; every case alike).", "",
             f"torch {meta['torch']}, {meta['threads']} thread, CPU {meta['cpu']}, {meta['date']}; load average "
             f"before {meta['load_before']}, after {meta['load_after']} (2 cores). Process CPU time, medians over "
             f"{meta['rounds']} "
             "interleaved rounds; ratios are medians of per-round ratios. Default `_compiled.MAX_BATCH` = "
             f"{meta['max_batch']}.", "",
             "## step() at batch 1, hidden 64 (no_grad, eval)", "", "| case | us per call |", "|---|---|"]
    lines += [f"| {r['case']} | {r['us_per_call']:.1f} |" for r in step_rows]
    lines += ["", f"The check before each layer's recurrence (`_compiled_sequence_ok`) costs "
              f"{meta['dispatch_check_us']:.2f} us per call. On one thread the default dispatch runs every batch "
              "on the compiled loop (`_compiled.batch_limit()`), so the `compiled` rows are what a layer does."]
    lines += ["", f"## Whole sequences, {STEPS} steps, input size = hidden size", "",
              "`vs torch`: time / `torch.nn.LSTM` or `GRU` (oneDNN for the LSTM) in the same round; `vs pure`: time / "
              "the same layer on the pure-torch scan (`HYBRIDRNN_NO_COMPILE=1`). The compiled rows force the "
              "compiled loop at every batch size; `default dispatch` is what a layer does by default.", "",
              "| B | H | case | infer ms | infer vs torch | infer vs pure | train ms | train vs torch | "
              "train vs pure |", "|---|---|---|---|---|---|---|---|---|"]
    for r in seq_rows:
        lines.append(f"| {r['batch']} | {r['hidden']} | {r['case']} | {r['infer_ms']:.2f} | "
                     f"{r['infer_vs_torch']:.2f} | {r['infer_vs_pure']:.2f} | {r['train_ms']:.2f} | "
                     f"{r['train_vs_torch']:.2f} | {r['train_vs_pure']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if _compiled.kernels() is None:
        sys.exit(f"the compiled kernel is not available: {_compiled.build_error() or 'HYBRIDRNN_NO_COMPILE is set'}")
    default_max_batch = _compiled.MAX_BATCH
    rounds = 2 if args.quick else args.rounds
    meta = {"command": "python benchmarks/small_batch.py" + (" --quick" if args.quick else "")
            + (f" --rounds {args.rounds}" if args.rounds != 7 and not args.quick else ""),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model() or platform.processor(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "rounds": rounds,
            "max_batch": default_max_batch, "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg())}
    step_rows = bench_step(rounds + 2, 200 if args.quick else 2000)
    meta["dispatch_check_us"] = bench_dispatch_check(default_max_batch)
    sizes = ((1, 64), (32, 128)) if args.quick else GRID
    seq_rows = bench_sequences(sizes, rounds, 0.01 if args.quick else 0.05, default_max_batch)
    meta["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    stem = "small_batch_quick" if args.quick else "small_batch"
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps({"meta": meta, "step": step_rows, "sequences": seq_rows},
                                                           indent=2))
    text = render(meta, step_rows, seq_rows)
    atomic_write_text(RESULTS / f"{stem}.md", text)
    print(text)


if __name__ == "__main__":
    main()
