"""The compiled loop against the pure-torch scan at larger batches, on 1 and 2 intra-op threads: the evidence for
``hybridrnn.nn._compiled.batch_limit`` (the compiled loop at every batch on up to 2 threads).

Each size: a plain ``LSTM`` and ``GRU`` (``path="custom"``, input = hidden), inference and training (forward +
backward of ``out.sum()``), the compiled loop (forced at every batch) against the same layer with
``HYBRIDRNN_NO_COMPILE=1``, interleaved, median of 5 calls each. One thread: process CPU time; two threads: wall
time (CPU time adds the threads). The allocator keeps freed memory, as training runs do.

    python benchmarks/compiled_vs_scan.py            # about 2 minutes on a quiet 2-core machine
    python benchmarks/compiled_vs_scan.py --render   # the markdown again from the JSON

Writes ``benchmarks/results/compiled_vs_scan.md`` and ``.json``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = ((32, 64, 200), (32, 128, 200), (64, 64, 200), (64, 128, 200), (128, 128, 100), (256, 256, 50))
RESULTS = Path(__file__).resolve().parent / "results"


def measure(threads: int) -> list[dict]:
    """In this process with ``threads`` intra-op threads: compiled / scan time ratios for every size."""
    import torch

    from hybridrnn.nn import _compiled
    from hybridrnn.nn.recurrent import GRU, LSTM
    from hybridrnn.train.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(threads)
    if _compiled.kernels() is None:
        sys.exit(f"the compiled kernel is not available: {_compiled.build_error()}")
    _compiled.MAX_BATCH = 10 ** 6                   # force the compiled loop at every batch, whatever the threads
    clock = time.process_time if threads == 1 else time.perf_counter

    def timed(fn, n=5):
        fn()
        times = []
        for _ in range(n):
            start = clock()
            fn()
            times.append(clock() - start)
        return statistics.median(times)

    rows = []
    for batch, hidden, steps in SIZES:
        torch.manual_seed(0)
        x = torch.randn(batch, steps, hidden)
        for cls in (LSTM, GRU):
            layer = cls(hidden, hidden, path="custom")
            for mode in ("infer", "train"):
                def run():
                    with torch.set_grad_enabled(mode == "train"):
                        out = layer(x)[0]
                        if mode == "train":
                            out.sum().backward()
                compiled = timed(run)
                os.environ[_compiled.ENV_DISABLE] = "1"
                scan = timed(run)
                del os.environ[_compiled.ENV_DISABLE]
                rows.append({"threads": threads, "batch": batch, "hidden": hidden, "steps": steps,
                             "cell": cls.__name__, "mode": mode, "compiled_ms": compiled * 1e3,
                             "scan_ms": scan * 1e3, "ratio": compiled / scan})
                print(f"threads {threads} B{batch} H{hidden} T{steps} {cls.__name__} {mode}: compiled / scan "
                      f"{compiled / scan:.2f}", flush=True)
    return rows


def render(meta: dict, rows: list[dict]) -> str:
    lines = ["# Compiled loop against the pure-torch scan, 1 and 2 threads", "",
             f"Command: `{meta['command']}`; {meta['date']}; load average after {meta['load_after']}. Ratio = "
             "compiled loop time / pure-torch scan time (below 1: the compiled loop is faster); one thread by "
             "process CPU time, two by wall time; median of 5 calls. Plain `LSTM` / `GRU`, `path=\"custom\"`, "
             "input = hidden; the allocator keeps freed memory.", "",
             "| threads | batch | hidden | T | LSTM infer | LSTM train | GRU infer | GRU train |",
             "|---|---|---|---|---|---|---|---|"]
    by = {(r["threads"], r["batch"], r["hidden"], r["cell"], r["mode"]): r["ratio"] for r in rows}
    for threads in (1, 2):
        for batch, hidden, steps in SIZES:
            cells = [f"{by[(threads, batch, hidden, c, m)]:.2f}" for c in ("LSTM", "GRU") for m in ("infer", "train")]
            lines.append(f"| {threads} | {batch} | {hidden} | {steps} | " + " | ".join(cells) + " |")
    slower = [r for r in rows if r["ratio"] > 1.0]
    lines += ["", "Slower than the scan: " + (", ".join(
        f"{r['cell']} {r['mode']} B{r['batch']} H{r['hidden']} on {r['threads']} thread(s) ({r['ratio']:.2f})"
        for r in slower) or "nowhere") + ". `hybridrnn.nn._compiled.batch_limit()` lets the compiled loop take "
        "every batch on up to 2 threads.", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--threads":
        print(json.dumps(measure(int(sys.argv[2]))))
        return
    from hybridrnn.train.checkpoint import atomic_write_text

    path = RESULTS / "compiled_vs_scan.json"
    if sys.argv[1:] == ["--render"]:                # the markdown again from the last run's JSON
        data = json.loads(path.read_text())
        atomic_write_text(RESULTS / "compiled_vs_scan.md", render(data["meta"], data["rows"]))
        return
    rows = []
    for threads in (1, 2):              # a fresh process per thread count: torch fixes some pools at first use
        out = subprocess.run([sys.executable, __file__, "--threads", str(threads)], check=True,
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    meta = {"command": "python benchmarks/compiled_vs_scan.py",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "load_after": [round(v, 2) for v in os.getloadavg()]}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(path, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    text = render(meta, rows)
    atomic_write_text(RESULTS / "compiled_vs_scan.md", text)
    print(text)


if __name__ == "__main__":
    main()
