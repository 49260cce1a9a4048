"""torch's float32 products (MKL) against oneDNN's (``hybridrnn.nn._onednn``) on this CPU, and what the switch
gives a language model's training step.

1. The products of one B32 T200 training step at input 128, G*H = 512: the input projection (6400 x 128 @ 128 x
   512), its input gradient, a weight gradient over the 6400 rows; and one per-step product (32 x 128 @ 128 x 512).
2. A PTB-sized language model (vocabulary 10,000, ``lstm:200``, embedding 200, tied and untied output), a training
   step on 20 x 70 tokens with the products on oneDNN (the default) and on torch's MKL (``_onednn.MIN_ROWS`` set
   out of reach), interleaved.

One thread, process CPU time, medians; the allocator keeps freed memory, as training runs do.

    python benchmarks/onednn.py

Writes ``benchmarks/results/onednn.md`` and ``.json``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from hybridrnn.nn import _onednn  # noqa: E402
from hybridrnn.nn.language_model import LanguageModel  # noqa: E402
from hybridrnn.train.allocator import keep_freed_memory  # noqa: E402
from hybridrnn.train.checkpoint import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, n: int) -> float:
    for _ in range(3):
        fn()
    runs = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            fn()
        runs.append((time.process_time() - start) / n)
    return statistics.median(runs)


def products() -> list[dict]:
    torch.manual_seed(0)
    x, w, d = torch.randn(6400, 128), torch.randn(512, 128), torch.randn(6400, 512)
    h = torch.randn(32, 128)
    wt = w.t().contiguous()
    lp = _onednn._product
    cases = [("input projection x @ W^T, (6400, 128) @ (128, 512)", lambda: x @ w.t(), lambda: lp(x, w), 6400 * 128 * 512),
             ("its input gradient d @ W, (6400, 512) @ (512, 128)", lambda: d @ w, lambda: lp(d, wt), 6400 * 512 * 128),
             ("weight gradient d^T @ x over 6400 rows", lambda: d.t() @ x, lambda: _onednn.weight_grad(d, x),
              6400 * 512 * 128),
             ("one step h @ W^T, (32, 128) @ (128, 512)", lambda: h @ w.t(), lambda: lp(h, w), 32 * 128 * 512)]
    rows = []
    for name, mkl, dnn, macs in cases:
        n = 2000 if "one step" in name else 20
        t_mkl, t_dnn = timed(mkl, n), timed(dnn, n)
        rows.append({"product": name, "mkl_ms": t_mkl * 1e3, "onednn_ms": t_dnn * 1e3,
                     "mkl_gflops": 2 * macs / t_mkl / 1e9, "onednn_gflops": 2 * macs / t_dnn / 1e9})
        print(rows[-1], flush=True)
    return rows


def language_model() -> list[dict]:
    rows = []
    vocab = 10_000
    for tie in (True, False):
        torch.manual_seed(0)
        model = LanguageModel(vocab, "lstm:200", embedding_dim=200, tie_weights=tie)
        tokens, targets = torch.randint(0, vocab, (20, 70)), torch.randint(0, vocab, (20, 70))

        def step():
            out = model(tokens)
            logits = out[0] if isinstance(out, tuple) else out
            torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1)).backward()

        times = {"onednn": [], "mkl": []}
        default_rows = _onednn.MIN_ROWS
        for _ in range(5):
            for mode in times:
                _onednn.MIN_ROWS = default_rows if mode == "onednn" else 10 ** 12
                step()
                start = time.process_time()
                for _ in range(3):
                    step()
                times[mode].append((time.process_time() - start) / 3 * 1e3)
        _onednn.MIN_ROWS = default_rows
        rows.append({"output": "tied" if tie else "untied", "onednn_ms": statistics.median(times["onednn"]),
                     "mkl_ms": statistics.median(times["mkl"])})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    torch.set_num_threads(1)
    setting = keep_freed_memory()
    if not _onednn.available():
        raise SystemExit("this torch build has no oneDNN linear op")
    prods, lm = products(), language_model()
    meta = {"command": "python benchmarks/onednn.py", "date": dt.datetime.now(dt.timezone.utc).isoformat(
        timespec="seconds"), "torch": torch.__version__, "allocator": setting,
            "load_after": [round(v, 2) for v in os.getloadavg()]}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "onednn.json", json.dumps({"meta": meta, "products": prods, "lm": lm}, indent=1)
                      + "\n")
    lines = ["# float32 products: torch's MKL against oneDNN (`hybridrnn.nn._onednn`)", "",
             f"Command: `{meta['command']}`; {meta['date']}; torch {meta['torch']}, one thread, process CPU time, "
             f"medians; load average after {meta['load_after']}. Allocator: {setting}.", "",
             "| product | MKL ms | oneDNN ms | MKL GFLOP/s | oneDNN GFLOP/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['product']} | {r['mkl_ms']:.3f} | {r['onednn_ms']:.3f} | {r['mkl_gflops']:.0f} | "
              f"{r['onednn_gflops']:.0f} |" for r in prods]
    lines += ["", "Language model training step (vocabulary 10,000, `lstm:200`, embedding 200, 20 x 70 tokens):", "",
              "| output layer | products on MKL (ms) | on oneDNN (ms) | speed-up |", "|---|---|---|---|"]
    lines += [f"| {r['output']} | {r['mkl_ms']:.1f} | {r['onednn_ms']:.1f} | x{r['mkl_ms'] / r['onednn_ms']:.2f} |"
              for r in lm]
    atomic_write_text(RESULTS / "onednn.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
