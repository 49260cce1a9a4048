"""What ``train.keep_freed_memory`` (``hybridrnn.train.allocator``) does to a CPU training step.

Training steps (forward + backward, B32 H128 T200, input 128, a linear head and an MSE loss) of ``torch.nn.LSTM``,
our custom LSTM / GRU, the layer-norm LSTM, and the custom LSTM / GRU under bf16 autocast, interleaved over 7
rounds in one process; each process runs either with glibc's default allocator or after ``keep_freed_memory()``,
and several processes of each kind alternate (the allocator's state differs from process to process).

    python benchmarks/allocator.py [--processes 3]

Writes ``benchmarks/results/allocator.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measure(keep: bool) -> dict[str, float]:
    import torch

    from hybridrnn.nn.recurrent import GRU, LSTM
    from hybridrnn.train.allocator import keep_freed_memory

    if keep:
        keep_freed_memory()
    torch.set_num_threads(1)
    B, T, I, H = 32, 200, 128, 128
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(B, T, I, generator=g), torch.randn(B, generator=g)
    head = torch.nn.Linear(H, 1)
    cases = {"torch.nn.LSTM": (torch.nn.LSTM(I, H, batch_first=True), False),
             "LSTM custom": (LSTM(I, H, path="custom"), False), "GRU custom": (GRU(I, H, path="custom"), False),
             "LSTM layer_norm": (LSTM(I, H, path="custom", layer_norm=True), False),
             "LSTM custom, bf16 autocast": (LSTM(I, H, path="custom"), True),
             "GRU custom, bf16 autocast": (GRU(I, H, path="custom"), True)}

    def step(m, bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out, _ = m(x)
            loss = torch.nn.functional.mse_loss(head(out[:, -1]).float().squeeze(-1), y)
        loss.backward()

    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(7):
        for name, (m, bf16) in cases.items():
            step(m, bf16)
            start = time.process_time()
            for _ in range(3):
                step(m, bf16)
            times[name].append((time.process_time() - start) / 3 * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--child", choices=("default", "keep"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "keep")))
        return
    from hybridrnn.train.allocator import keep_freed_memory
    from hybridrnn.train.checkpoint import atomic_write_text

    runs = {"default": [], "keep": []}
    for _ in range(args.processes):
        for mode in ("default", "keep"):
            out = subprocess.run([sys.executable, __file__, "--child", mode], check=True, capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(mode, runs[mode][-1], flush=True)
    meta = {"command": "python benchmarks/allocator.py" + (f" --processes {args.processes}"
                                                            if args.processes != 3 else ""),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "setting": keep_freed_memory(), "load_after": [round(v, 2) for v in os.getloadavg()]}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "allocator.json", json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
    lines = ["# `train.keep_freed_memory`: glibc's default allocator against freed memory kept", "",
             f"Command: `{meta['command']}`; {meta['date']}; load average after {meta['load_after']}. Setting: "
             f"{meta['setting']}. Training step (forward + backward), B32 H128 T200, input 128, one thread, process "
             "CPU time (the kernel's page-fault time included), median of 7 interleaved rounds per process; one "
             "column per process, processes alternating default / kept.", "",
             "| case | default allocator (ms) | freed memory kept (ms) |", "|---|---|---|"]
    for case in runs["default"][0]:
        d = ", ".join(f"{r[case]:.1f}" for r in runs["default"])
        k = ", ".join(f"{r[case]:.1f}" for r in runs["keep"])
        lines.append(f"| {case} | {d} | {k} |")
    atomic_write_text(RESULTS / "allocator.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
