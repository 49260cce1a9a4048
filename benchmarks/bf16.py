"""bf16 autocast (``train.bf16: true``) against fp32: speed and accuracy, on this machine's CPU.

Two parts, one process, 1 thread, interleaved (fp32 and bf16 alternate, so the drift of a shared machine hits
both alike), medians:

1. Layers: forward + backward of ``hybridrnn.nn.LSTM`` (fused and custom path) / ``GRU`` (hidden 128,
   batch 32, 100 steps, input 32) plus a linear head, fp32 against ``torch.autocast("cpu", dtype=torch.bfloat16)``,
   9 rounds. A case that cannot run in bf16 is reported with its error.
2. A real forecasting task through ``hybridrnn.api.train_run``: ``configs/quickstart.yaml`` (Seattle daily
   maximum temperature, 7-day horizon, bundled data, chronological 70/10/20 split) with ``lstm:64`` (custom
   path for both: the fused oneDNN LSTM has no bf16 kernel without AVX512-BF16 / AMX) and ``gru:64``, 10 epochs, no
   early stopping, seeds 0-2, ``train.bf16`` false / true. Reported: median seconds per epoch (training +
   validation) and the test MAE (degrees C) of the best-validation weights, mean over seeds.

Whether bf16 can be fast depends on the CPU: oneDNN runs bf16 matrix products natively only with AVX512-BF16 or
AMX; the flags of this CPU are printed and written with the results (``benchmarks/results/bf16.md``). On a CPU
without them the Trainer refuses ``train.bf16: true`` (``check_bf16``); this script lifts that guard to measure
what bf16 would do.

    python benchmarks/bf16.py              # about 5 minutes here
"""
from __future__ import annotations

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

from hybridrnn.nn import GRU, LSTM  # noqa: E402
from hybridrnn.train import checkpoint as ckpt  # noqa: E402
from hybridrnn.api import load, train_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROUNDS = 9
LAYER = dict(batch=32, steps=100, input=32, hidden=128)
TASK = dict(config=ROOT / "configs" / "quickstart.yaml", encoders=("lstm:64", "gru:64"), epochs=10, seeds=(0, 1, 2))


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx", "avx2", "fma"))


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "unknown")


def layer_part() -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    x = torch.randn(LAYER["batch"], LAYER["steps"], LAYER["input"], generator=g)
    y = torch.randn(LAYER["batch"], generator=g)
    for cls, path in ((LSTM, "fused"), (LSTM, "custom"), (GRU, "auto")):
        torch.manual_seed(0)
        rnn, head = cls(LAYER["input"], LAYER["hidden"], path=path), torch.nn.Linear(LAYER["hidden"], 1)
        name = f"{cls.__name__} (path {rnn.path})"
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                rnn(x)
        except RuntimeError as exc:
            rows.append({"layer": name, "error": str(exc).split(". ")[0]})
            print(f"{name}: bf16 fails: {rows[-1]['error']}")
            continue

        def step(bf16: bool) -> float:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out, _ = rnn(x)
                loss = torch.nn.functional.mse_loss(head(out[:, -1]).float().squeeze(-1), y)
            loss.backward()
            return time.perf_counter() - t0

        times = {False: [], True: []}
        for r in range(ROUNDS + 1):
            for bf16 in (False, True):
                t = step(bf16)
                if r:
                    times[bf16].append(t)
        fp32, bf = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"layer": name, "fp32_ms": fp32 * 1e3, "bf16_ms": bf * 1e3,
                     "speedup": fp32 / bf})
        print(f"{rows[-1]['layer']}: fp32 {fp32 * 1e3:.1f} ms, bf16 {bf * 1e3:.1f} ms, speed-up x{fp32 / bf:.2f}")
    return rows


def task_part(tmp: Path) -> list[dict]:
    results: dict[tuple[str, bool], list[dict]] = {}
    for seed in TASK["seeds"]:
        for encoder in TASK["encoders"]:
            for bf16 in (False, True):
                out = tmp / f"{encoder.replace(':', '')}-{seed}-{'bf16' if bf16 else 'fp32'}"
                train_run(TASK["config"], out=out, progress="none",
                      overrides=[f"model.encoder={encoder}", f"train.bf16={str(bf16).lower()}", "model.path=custom",
                                 f"train.epochs={TASK['epochs']}", "train.patience=null", f"train.seed={seed}",
                                 "train.num_threads=1", "train.plots=false", "train.device=cpu"])
                history = ckpt.read_jsonl(out / ckpt.METRICS)
                test = load(out).metrics(split="test")
                last = load(out, weights="last").metrics(split="test")
                best = ckpt.read_json(out / ckpt.STATE)
                results.setdefault((encoder, bf16), []).append({
                    "epoch_s": statistics.median(r["seconds"] for r in history),
                    "test_mae": test["mae"], "last_test_mae": last["mae"], "last_train_loss": history[-1]["train_loss"],
                    "val_loss": best["best_metric"], "best_epoch": best["best_epoch"]})
                print(f"{encoder} seed {seed} {'bf16' if bf16 else 'fp32'}: epoch {results[(encoder, bf16)][-1]['epoch_s']:.2f} s, "
                      f"test MAE {test['mae']:.3f}")
    rows = []
    for (encoder, bf16), runs in results.items():
        maes = [r["test_mae"] for r in runs]
        rows.append({"encoder": encoder, "precision": "bf16" if bf16 else "fp32",
                     "epoch_s": statistics.median(r["epoch_s"] for r in runs),
                     "last_test_mae_per_seed": [r["last_test_mae"] for r in runs],
                     "last_train_loss_per_seed": [r["last_train_loss"] for r in runs],
                     "test_mae_mean": statistics.mean(maes), "test_mae_sd": statistics.stdev(maes) if len(maes) > 1 else 0.0,
                     "test_mae_per_seed": maes, "best_epochs": [r["best_epoch"] for r in runs]})
    return rows


def main() -> None:
    from hybridrnn.train import trainer as trainer_module

    trainer_module.check_bf16 = lambda config, device: None      # measure bf16 even where the Trainer refuses it
    torch.set_num_threads(1)
    started = time.perf_counter()
    flags = cpu_flags()
    print(f"CPU: {cpu_model()}; vector/matrix flags: {' '.join(flags) or 'none'}")
    print(f"budget: layers {ROUNDS} rounds x 3 layers x 2 precisions; task {len(TASK['encoders'])} encoders x "
          f"{len(TASK['seeds'])} seeds x 2 precisions x {TASK['epochs']} epochs of configs/quickstart.yaml; 1 thread")
    layers = layer_part()
    with tempfile.TemporaryDirectory() as tmp:
        tasks = task_part(Path(tmp))
    total = time.perf_counter() - started
    write(layers, tasks, flags, total)
    print(f"total {total:.0f} s; wrote {RESULTS / 'bf16.md'}")


def write(layers, tasks, flags, total) -> None:
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    native = any(f in flags for f in ("avx512_bf16", "amx_bf16"))
    lines = [
        "# bf16 autocast against fp32 on CPU",
        "",
        f"Generated by `python benchmarks/bf16.py` ({date}, torch {torch.__version__}, 1 thread, {cpu_model()}; "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}; total {total:.0f} s).",
        "",
        f"CPU flags relevant to bf16: `{' '.join(flags) or 'none'}`. "
        + ("This CPU has native bf16 instructions (AVX512-BF16 / AMX)." if native else
           "This CPU has **no** AVX512-BF16 and **no** AMX, so oneDNN cannot run bf16 matrix products natively "
           "here: bf16 is converted to and from fp32 around fp32 arithmetic. Expect no speed-up on this machine; "
           "re-run the script on a CPU with AMX (Sapphire Rapids or later) to measure the gain there."),
        "",
        f"## Layers: forward + backward, batch {LAYER['batch']}, {LAYER['steps']} steps, input {LAYER['input']}, "
        f"hidden {LAYER['hidden']} (median of {ROUNDS} interleaved rounds)",
        "",
        "| layer | fp32 (ms) | bf16 autocast (ms) | speed-up |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['layer']} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} | x{r['speedup']:.2f} |" if "error" not in r
              else f"| {r['layer']} | | fails: {r['error']} | |" for r in layers]
    lines += [
        "",
        f"## Forecasting (configs/quickstart.yaml, Seattle daily max temperature, horizon 7), {TASK['epochs']} "
        f"epochs, seeds {', '.join(map(str, TASK['seeds']))}",
        "",
        "Both encoders on the custom path (`model.path: custom`; the fused LSTM cannot run in bf16 here). Test MAE "
        "in degrees C with the best-validation weights (mean ± sd over seeds); epoch time is the median over all "
        "epochs and seeds (training + validation).",
        "",
        "| encoder | precision | epoch (s) | test MAE (best val) | per seed | best epochs | test MAE after the last "
        "epoch, per seed | last train loss, per seed |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    lines += [f"| `{r['encoder']}` | {r['precision']} | {r['epoch_s']:.2f} | {r['test_mae_mean']:.3f} ± "
              f"{r['test_mae_sd']:.3f} | {', '.join(f'{m:.3f}' for m in r['test_mae_per_seed'])} | "
              f"{', '.join(map(str, r['best_epochs']))} | {', '.join(f'{m:.3f}' for m in r['last_test_mae_per_seed'])} | "
              f"{', '.join(f'{m:.4f}' for m in r['last_train_loss_per_seed'])} |" for r in tasks]
    lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bf16.md").write_text("\n".join(lines))
    (RESULTS / "bf16.json").write_text(json.dumps({"date": date, "flags": flags, "layers": layers, "task": tasks},
                                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
