"""``train.bf16: true`` against float32 on this machine's CPU: where bf16 pays, the layers' speed, and accuracy.

Everything on one thread, in one process per part, interleaved (every variant once per round, so the drift of a
shared machine hits all alike), medians. Timed by the thread's CPU time (``time.thread_time``) and by the wall
clock: on a loaded machine the CPU time is the steadier of the two (a preempted thread does not count the
time it waits); both are written.

1. ``--parts``: the matmuls of one training step at B32 H128 T200 one by one, float32 against bf16 (oneDNN, the
   product rounded to bf16 by torch's CPU matmul): the per-step recurrent product ``h @ W_hh^T`` (forward) and
   ``dG @ W_hh`` (backward), each as the scan would run it in bf16 (cast of the float32 operand into a buffer,
   bf16 product, float32 add) against one float32 ``addmm``; the weight gradient ``dG^T @ H`` over all T*B
   rows; the hoisted input projection ``x @ W_ih^T + b`` (input 32 and 128).
2. ``--layers``: forward + backward of ``hybridrnn.nn.LSTM`` / ``GRU`` (hidden 128, batch 32, 200 steps, input
   32 and 128) and a linear head on the last step, with a mean-squared loss:

   - float32 on the fused (oneDNN) and the custom path;
   - bf16 autocast with the scans' bf16 parts chosen by hand (``hybridrnn.nn._scan.BF16_PARTS``): none (input
     projection and head in bf16, recurrence float32), ``weight`` (plus ``dW_hh``), ``forward`` /
     ``forward+backward+weight`` (plus the per-step products);
   - what ``train.bf16: true`` runs (the library's defaults), and, for reference, ``torch.nn.LSTM`` under
     autocast: oneDNN's bf16 LSTM, which the library does not run (it rounds the cell state to bf16 at every
     step; ``tests/test_bf16.py``).
3. ``--tasks``: real training through ``hybridrnn.api.train_run``, float32 against ``train.bf16: true``, seeds 0-2:
   ETTh1 OT (``configs/forecast/ett/etth1_univariate_ot.yaml``, look-back 96, horizon 96, window stride 4,
   point-wise (``segment=1``: the encoder runs 96 steps, not 4 segments), no linear skip so that the forecast
   comes from the recurrent encoder alone, ``lstm:128`` and ``gru:128``, 4 epochs) and TREC question
   classification (``configs/classify/trec.yaml``, ``gru:128``, 5 epochs). Test metrics
   with the best-validation weights (mean ± sd over seeds) and the median seconds per training epoch.

    python benchmarks/bf16.py                    # all three parts: about 40 minutes on a loaded 2-core machine
    python benchmarks/bf16.py --parts --layers   # the speed parts only: a few minutes

Results: ``benchmarks/results/bf16.md`` and ``bf16.json`` (each part's section is replaced when it runs, the others
kept from the JSON).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hybridrnn.nn import GRU, LSTM, _compiled, _scan  # noqa: E402
from hybridrnn.train.allocator import keep_freed_memory  # noqa: E402

ALLOCATOR = keep_freed_memory()   # as hybridrnn's training runs (train.keep_freed_memory), for every case alike

RESULTS = Path(__file__).resolve().parent / "results"
B, T, H = 32, 200, 128
INPUTS = (32, 128)
LAYER_ROUNDS = 11
PART_ROUNDS = 25
ETT = dict(config=ROOT / "configs" / "forecast" / "ett" / "etth1_univariate_ot.yaml", encoders=("lstm:128", "gru:128"),
           overrides=("window.stride=4", "model.segment=1", "model.segment_embed=0", "model.linear_skip=false",
                      "train.epochs=4", "train.patience=null", "train.lr=0.002"), metric="scaled_mse")
TREC = dict(config=ROOT / "configs" / "classify" / "trec.yaml", encoders=("gru:128",),
            overrides=("train.epochs=5", "train.patience=null"), metric="accuracy")
SEEDS = (0, 1, 2)
FINDINGS = "## Findings"


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx", "avx2", "fma"))


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                "unknown")


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def interleaved(cases: dict, rounds: int, repeat: dict | None = None) -> dict:
    """``{name: fn}`` -> ``{name: (cpu_ms, wall_ms)}``: medians over ``rounds`` interleaved rounds (a warm-up
    round first); ``repeat[name]`` calls per timing (default 1)."""
    repeat = repeat or {}
    cpu = {k: [] for k in cases}
    wall = {k: [] for k in cases}
    for r in range(rounds + 1):
        for name, fn in cases.items():
            n = repeat.get(name, 1)
            c0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(n):
                fn()
            c1, w1 = time.thread_time(), time.perf_counter()
            if r:
                cpu[name].append((c1 - c0) / n * 1e3)
                wall[name].append((w1 - w0) / n * 1e3)
    return {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in cases}


# ---------------------------------------------------------------------------------------------------- parts
def parts_part() -> list[dict]:
    bf = torch.bfloat16
    g = torch.Generator().manual_seed(0)
    cases, pairs, repeat = {}, [], {}

    def pair(label, fp32, low, n):
        cases[f"{label} fp32"], cases[f"{label} bf16"] = fp32, low
        repeat[f"{label} fp32"] = repeat[f"{label} bf16"] = n
        pairs.append(label)

    for cell, G in (("LSTM", 4), ("GRU", 3)):
        h, w = torch.randn(B, H, generator=g), torch.randn(G * H, H, generator=g)
        x, out, w_t, w_t_low = torch.randn(B, G * H, generator=g), torch.empty(B, G * H), w.t(), w.t().to(bf)
        h_low, prod = torch.empty(B, H, dtype=bf), torch.empty(B, G * H, dtype=bf)
        pair(f"{cell}: per-step forward h @ W_hh^T (+ xg)",
             lambda x=x, h=h, w_t=w_t, out=out: torch.addmm(x, h, w_t, out=out),
             lambda x=x, h=h, hl=h_low, wl=w_t_low, p=prod, out=out: torch.add(
                 x, torch.mm(hl.copy_(h), wl, out=p), out=out), 200)
        d, dg, dh = torch.randn(B, H, generator=g), torch.randn(B, G * H, generator=g), torch.empty(B, H)
        dg_low, w_low, prod_h = torch.empty(B, G * H, dtype=bf), w.to(bf), torch.empty(B, H, dtype=bf)
        pair(f"{cell}: per-step backward dG @ W_hh (+ d_out)",
             lambda d=d, dg=dg, w=w, dh=dh: torch.addmm(d, dg, w, out=dh),
             lambda d=d, dg=dg, gl=dg_low, wl=w_low, p=prod_h, dh=dh: torch.add(
                 d, torch.mm(gl.copy_(dg), wl, out=p), out=dh), 200)
        rows_g, rows_h = torch.randn(T * B, G * H, generator=g), torch.randn(T * B, H, generator=g)
        low_g, low_h = rows_g.to(bf), rows_h.to(bf)
        pair(f"{cell}: dW_hh = dG^T @ H over T*B rows", lambda a=rows_g, b=rows_h: a.t() @ b,
             lambda a=low_g, b=low_h: (a.t() @ b).float(), 5)
        for inp in INPUTS:
            xs, w_ih = torch.randn(T * B, inp, generator=g), torch.randn(G * H, inp, generator=g)
            b_ih = torch.randn(G * H, generator=g)
            pair(f"{cell}: input projection, input {inp} (cast in, float out)",
                 lambda xs=xs, w=w_ih, b=b_ih: torch.addmm(b, xs, w.t()),
                 lambda xs=xs, w=w_ih, b=b_ih: torch.addmm(b.to(bf), xs.to(bf), w.to(bf).t()).float(), 5)
    times = interleaved(cases, PART_ROUNDS, repeat)
    rows = []
    for label in pairs:
        (c32, w32), (c16, w16) = times[f"{label} fp32"], times[f"{label} bf16"]
        rows.append({"op": label, "fp32_cpu_ms": c32, "bf16_cpu_ms": c16, "speedup_cpu": c32 / c16,
                     "fp32_wall_ms": w32, "bf16_wall_ms": w16, "speedup_wall": w32 / w16})
        print(f"{label}: fp32 {c32 * 1e3:.1f} us, bf16 {c16 * 1e3:.1f} us, x{c32 / c16:.2f} (cpu)")
    return rows


# --------------------------------------------------------------------------------------------------- layers
def layers_part() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    default_parts = _scan.BF16_PARTS
    variants = (("bf16: input projection + head only (recurrence float32)", frozenset()),
                ("bf16: + dW_hh (weight)", frozenset({"weight"})),
                ("bf16: + per-step forward product", frozenset({"forward", "weight"})),
                ("bf16: + per-step forward and backward products", frozenset({"forward", "backward", "weight"})))
    for cls in (LSTM, GRU):
        for inp in INPUTS:
            x, y = torch.randn(B, T, inp, generator=g), torch.randn(B, generator=g)
            torch.manual_seed(0)
            fused, custom = cls(inp, H, path="fused"), cls(inp, H, path="custom")
            custom.load_state_dict(fused.state_dict())
            auto = cls(inp, H)
            auto.load_state_dict(fused.state_dict())
            torch_cls = getattr(torch.nn, cls.__name__)(inp, H, batch_first=True)
            torch_cls.load_state_dict(fused.state_dict())
            head = torch.nn.Linear(H, 1)

            def step(rnn, bf16, parts=default_parts, compiled=True):
                def run():
                    _scan.BF16_PARTS = parts
                    if not compiled:
                        os.environ[_compiled.ENV_DISABLE] = "1"
                    try:
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                            out, _ = rnn(x)
                            loss = torch.nn.functional.mse_loss(head(out[:, -1]).float().squeeze(-1), y)
                        loss.backward()
                    finally:
                        _scan.BF16_PARTS = default_parts
                        os.environ.pop(_compiled.ENV_DISABLE, None)
                return run

            # the custom path runs the compiled loop (hybridrnn.nn._compiled: bf16 dW_hh, float32 products); the
            # per-step bf16 products exist only in the pure-torch scan, timed here with the compiled loop off
            cases = {"float32, fused": step(fused, False), "float32, custom (compiled loop)": step(custom, False),
                     "float32, custom (pure-torch scan)": step(custom, False, compiled=False)}
            cases.update({f"{label}, custom (pure-torch scan)": step(custom, True, parts, compiled=False)
                          for label, parts in variants})
            cases[f"train.bf16 as shipped, path={auto.path} (auto)"] = step(auto, True)
            if auto.path != "fused":
                cases["train.bf16 as shipped, path=fused (float32 inside)"] = step(fused, True)
            else:
                cases["train.bf16, path=custom (compiled loop)"] = step(custom, True)
            if cls is LSTM:
                cases["torch.nn.LSTM under autocast: oneDNN bf16, cell state bf16 (not used)"] = step(torch_cls, True)
            times = interleaved(cases, LAYER_ROUNDS)
            base_name = "float32, fused" if auto.path == "fused" else "float32, custom (compiled loop)"
            base_cpu, base_wall = times[base_name]
            for name, (c, w) in times.items():
                rows.append({"layer": cls.__name__, "input": inp, "case": name, "cpu_ms": c, "wall_ms": w,
                             "speedup_cpu": base_cpu / c, "speedup_wall": base_wall / w, "baseline": base_name})
                print(f"{cls.__name__} input {inp}: {name}: {c:.1f} ms cpu ({w:.1f} wall), x{base_cpu / c:.2f} "
                      f"vs {base_name}")
    return rows


# ---------------------------------------------------------------------------------------------------- tasks
def tasks_part(tmp: Path) -> list[dict]:
    from hybridrnn.api import load as load_run, train_run
    from hybridrnn.train import checkpoint as ckpt

    rows = []
    for name, spec in (("ETTh1 OT (H96)", ETT), ("TREC", TREC)):
        for encoder in spec["encoders"]:
            runs = {False: [], True: []}
            for seed in SEEDS:
                for bf16 in (False, True):
                    out = tmp / f"{name[:4]}-{encoder.replace(':', '')}-{seed}-{int(bf16)}"
                    train_run(spec["config"], out=out, progress="none",
                              overrides=[f"model.encoder={encoder}", f"train.bf16={str(bf16).lower()}",
                                         f"train.seed={seed}", "train.num_threads=1", "train.plots=false",
                                         "train.device=cpu", *spec["overrides"]])
                    history = ckpt.read_jsonl(out / ckpt.METRICS)
                    metrics = load_run(out).metrics(split="test")
                    runs[bf16].append({"metric": float(metrics[spec["metric"]]),
                                       "epoch_s": statistics.median(r["seconds"] for r in history),
                                       "last_train_loss": history[-1]["train_loss"]})
                    print(f"{name} {encoder} seed {seed} {'bf16' if bf16 else 'fp32'}: {spec['metric']} "
                          f"{runs[bf16][-1]['metric']:.4f}, epoch {runs[bf16][-1]['epoch_s']:.1f} s (load {load()})")
            for bf16, rs in runs.items():
                values = [r["metric"] for r in rs]
                rows.append({"task": name, "encoder": encoder, "precision": "bf16" if bf16 else "fp32",
                             "metric": spec["metric"], "mean": statistics.mean(values),
                             "sd": statistics.stdev(values), "per_seed": values,
                             "epoch_s": statistics.median(r["epoch_s"] for r in rs),
                             "last_train_loss": [r["last_train_loss"] for r in rs],
                             "overrides": list(spec["overrides"])})
    return rows


# ---------------------------------------------------------------------------------------------------- output
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", action="store_true")
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--tasks", action="store_true")
    args = parser.parse_args()
    if not (args.parts or args.layers or args.tasks):
        args.parts = args.layers = args.tasks = True
    torch.set_num_threads(1)
    path = RESULTS / "bf16.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if "parts" not in results:     # an old file (another layout): start afresh
        results = {}
    print(f"CPU: {cpu_model()}; flags: {' '.join(cpu_flags())}; native bf16 (oneDNN): "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}; load {load()}")
    stamp = lambda: {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "load_before": load()}
    for flag, key, fn in ((args.parts, "parts", parts_part), (args.layers, "layers", layers_part)):
        if flag:
            meta = stamp()
            t0 = time.perf_counter()
            rows = fn()
            results[key] = {**meta, "load_after": load(), "seconds": time.perf_counter() - t0, "rows": rows}
    if args.tasks:
        meta = stamp()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            rows = tasks_part(Path(tmp))
        results["tasks"] = {**meta, "load_after": load(), "seconds": time.perf_counter() - t0, "rows": rows}
    results["machine"] = {"cpu": cpu_model(), "flags": cpu_flags(), "torch": torch.__version__,
                          "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    write_md(results)
    print(f"wrote {path} and bf16.md")


def write_md(results: dict) -> None:
    m = results["machine"]
    lines = ["# bf16 (`train.bf16: true`) against float32 on CPU", "",
             f"Generated by `python benchmarks/bf16.py` (torch {m['torch']}, 1 thread, {m['cpu']}; CPU flags "
             f"`{' '.join(m['flags'])}`; oneDNN native bf16: {m['native_bf16']}). Times are medians of interleaved "
             "rounds in one process, by the thread's CPU time (steady on a shared machine) and by the wall clock. "
             f"Allocator: {ALLOCATOR} (hybridrnn.train.allocator, as in training runs).", ""]
    if "parts" in results:
        p = results["parts"]
        lines += [f"## Where bf16 pays: the matmuls of one training step, B{B} H{H} T{T} ({p['date']}, load "
                  f"{p['load_before']} / {p['load_after']}; median of {PART_ROUNDS} rounds)", "",
                  "bf16 column: as the scan would run it (cast into a bf16 buffer, bf16 product, float32 add), or "
                  "for the whole-sequence matmuls cast in, product, cast out.", "",
                  "| matmul | fp32 (us, cpu) | bf16 (us, cpu) | speed-up (cpu) | speed-up (wall) |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['op']} | {r['fp32_cpu_ms'] * 1e3:.1f} | {r['bf16_cpu_ms'] * 1e3:.1f} | "
                  f"x{r['speedup_cpu']:.2f} | x{r['speedup_wall']:.2f} |" for r in p["rows"]]
        lines.append("")
    if "layers" in results:
        p = results["layers"]
        lines += [f"## Layers: forward + backward, B{B} H{H} T{T}, linear head on the last step ({p['date']}, load "
                  f"{p['load_before']} / {p['load_after']}; median of {LAYER_ROUNDS} rounds)", "",
                  "Speed-up against float32 on the path `auto` picks (LSTM: fused oneDNN; GRU: the custom path's compiled "
                  "loop).", "",
                  "| layer | input | case | cpu (ms) | wall (ms) | speed-up (cpu) | speed-up (wall) |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {r['layer']} | {r['input']} | {r['case']} | {r['cpu_ms']:.1f} | {r['wall_ms']:.1f} | "
                  f"x{r['speedup_cpu']:.2f} | x{r['speedup_wall']:.2f} |" for r in p["rows"]]
        lines.append("")
    if "tasks" in results:
        p = results["tasks"]
        lines += [f"## Accuracy: float32 against `train.bf16: true`, seeds {', '.join(map(str, SEEDS))} ({p['date']}, "
                  f"load {p['load_before']} / {p['load_after']}; {p['seconds'] / 60:.0f} min)", "",
                  f"ETTh1: `{ETT['config'].relative_to(ROOT)}` with `{' '.join(ETT['overrides'])}`; TREC: "
                  f"`{TREC['config'].relative_to(ROOT)}` with `{' '.join(TREC['overrides'])}`. Test metric with the "
                  "best-validation weights; epoch = median seconds of a training epoch (wall).", "",
                  "| task | encoder | precision | test metric | mean ± sd | per seed | epoch (s) |",
                  "|---|---|---|---|---:|---|---:|"]
        lines += [f"| {r['task']} | `{r['encoder']}` | {r['precision']} | {r['metric']} | {r['mean']:.4f} ± "
                  f"{r['sd']:.4f} | {', '.join(f'{v:.4f}' for v in r['per_seed'])} | {r['epoch_s']:.2f} |"
                  for r in p["rows"]]
        lines.append("")
    md = RESULTS / "bf16.md"
    previous = md.read_text() if md.exists() else ""
    if FINDINGS in previous:       # the hand-written findings (from the last full run) are kept
        lines += [previous[previous.index(FINDINGS):].rstrip(), ""]
    md.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
