"""The Trainer's overhead: one epoch through ``Trainer`` against a bare hand-written PyTorch loop.

Both sides train the same model (``tests/toy_task.py``'s GRU/LSTM + linear head, from the same initial weights)
on the same data, with the same batches (``epoch_generator(seed, epoch)`` shuffles), the same optimizer (Adam)
and the same gradient clipping by global norm. Three things are timed per size, in one process, interleaved
(each round runs every case once, in a shuffled order, so the drift of a shared machine hits all cases
alike; ``gc.collect()`` before each), medians over rounds:

- ``loop``: the training pass only: ``Trainer.train_one_epoch`` against the bare loop
  ``zero_grad / forward / mse / backward / clip_grad_norm_ / step``;
- ``epoch``: whole epochs as ``hybridrnn train`` runs them: one ``Trainer.fit`` call for N more epochs
  (training, validation, early-stopping bookkeeping, the plain one-line-per-epoch log, metrics.jsonl and the
  atomic, fsynced checkpoint of weights + optimizer + state, written in the background while the next epoch
  trains; ``fit`` waits for the last one) against N epochs of the bare loop plus a validation pass, per epoch;
- ``epoch+bar``: the same with the rich progress bar (rendered as on a terminal, into a buffer) instead of
  the plain log line.

Before timing, one epoch of each from the same weights is checked to give bit-identical weights (the Trainer
does the same arithmetic as the bare loop). Results: ``benchmarks/results/trainer.md`` (and ``trainer.json``).

    python benchmarks/trainer.py             # 9 rounds, 1 thread (about 5 minutes here)
    python benchmarks/trainer.py --rounds 3  # quicker
    python benchmarks/trainer.py --clock cpu # process CPU time: steadier on a busy shared machine
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import io
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from rich.console import Console  # noqa: E402

from hybridrnn.api import coerce_config  # noqa: E402
from hybridrnn.api import registry  # noqa: E402
from hybridrnn.train.callbacks import CheckpointCallback, ProgressCallback  # noqa: E402
from hybridrnn.train.progress import BarProgress, PlainProgress  # noqa: E402
from hybridrnn.train.seeding import epoch_generator, seed_everything  # noqa: E402
from hybridrnn.train.task import iterate_minibatches  # noqa: E402
from hybridrnn.train.trainer import Trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# (name, encoder, seq_len, features, n_train, n_val, batch, epochs per timed `epoch` case): a small model where
# fixed per-step and per-epoch costs show most, and a mid-sized one
SIZES = (("small", "gru:32", 24, 4, 2048, 512, 64, 4),
         ("medium", "lstm:128", 64, 16, 1024, 512, 64, 3))
SEED = 0
CLIP = 1.0


def make(size, run_dir: Path):
    name, encoder, seq_len, features, n_train, n_val, batch, _ = size
    registry.TASKS["toy"] = "toy_task:ToyTask"
    config = coerce_config({"task": "toy", "model": {"encoder": encoder},
                            "data": {"n_train": n_train, "n_val": n_val, "n_test": 0, "seq_len": seq_len,
                                     "features": features},
                            "train": {"epochs": 1, "batch_size": batch, "lr": 1e-3, "clip_norm": CLIP,
                                      "seed": SEED, "device": "cpu", "plots": False}})
    task = registry.get_task_class("toy")(config)
    task.setup()
    seed_everything(SEED)
    model = task.build_model()
    return config, task, model


class BareLoop:
    """What one would write by hand: the same batches, optimizer and clipping, nothing else."""

    def __init__(self, task, model, config):
        self.model, self.cfg = model, config.train
        self.x, self.y = task.splits["train"]
        self.xv, self.yv = task.splits["val"]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=self.cfg.lr)
        self.epoch = 0

    def train_pass(self):
        model, opt = self.model, self.opt
        model.train()
        for idx in iterate_minibatches(len(self.y), self.cfg.batch_size, epoch_generator(self.cfg.seed, self.epoch)):
            loss = F.mse_loss(model(self.x[idx]).float(), self.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_norm)
            opt.step()
        self.epoch += 1

    def full_epoch(self):
        self.train_pass()
        self.model.eval()
        with torch.no_grad():                              # the metrics the task's evaluate() reports
            pred = self.model(self.xv).float()
            F.mse_loss(pred, self.yv).item(), (pred - self.yv).abs().mean().item()


def check_same_arithmetic(size, tmp: Path) -> None:
    config, task, model = make(size, tmp / f"check-{size[0]}")
    bare = BareLoop(task, copy.deepcopy(model), config)
    trainer = Trainer(task, model, config.train)
    bare.train_pass()
    trainer.train_one_epoch(0)
    for (name, a), b in zip(model.state_dict().items(), bare.model.state_dict().values()):
        if not torch.equal(a, b):
            raise AssertionError(f"{size[0]}: Trainer and bare loop differ after one epoch in {name}")


def timed(fn, clock=time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default=",".join(s[0] for s in SIZES), help="comma-separated size names")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time (a quiet machine); cpu: this process's CPU time, all its threads "
                             "(the background checkpoint writer included; fsync waits are not), which a busy "
                             "shared machine disturbs far less")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"budget: {args.rounds} rounds + 1 warm-up; per round and size: 1 epoch of each loop case, N epochs of "
          f"each epoch case; {args.threads} thread(s); sizes: " + "; ".join(
              f"{s[0]} = {s[1]}, seq {s[2]}, {s[3]} features, {s[4]} train / {s[5]} val windows, batch {s[6]}, "
              f"N = {s[7]}" for s in SIZES))
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for size in [s for s in SIZES if s[0] in args.sizes.split(",")]:
            check_same_arithmetic(size, tmp)
            # four independent set-ups (same initial weights), so each case keeps its own optimizer state
            cases = {}
            for case in ("bare loop", "trainer loop", "bare epoch", "trainer epoch", "trainer epoch+bar"):
                config, task, model = make(size, tmp)
                if case.startswith("bare"):
                    bare = BareLoop(task, model, config)
                    cases[case] = bare.train_pass if case == "bare loop" else (
                        lambda b=bare, n=size[7]: [b.full_epoch() for _ in range(n)])
                elif case == "trainer loop":
                    trainer = Trainer(task, model, config.train)
                    counter = iter(range(10**6))
                    cases[case] = (lambda tr=trainer, c=counter: tr.train_one_epoch(next(c)))
                else:
                    run_dir = tmp / f"run-{size[0]}-{case[-3:]}"
                    if case.endswith("bar"):    # the rich bar, rendered as on a terminal (into a buffer)
                        progress = BarProgress(Console(file=io.StringIO(), force_terminal=True, width=120))
                    else:
                        progress = PlainProgress(Console(file=io.StringIO(), highlight=False, soft_wrap=True))
                    run_dir.mkdir()
                    trainer = Trainer(task, model, config.train,      # what train_run attaches to every run
                                      callbacks=[ProgressCallback(progress), CheckpointCallback(run_dir)])

                    def more_epochs(tr=trainer, n=size[7]):
                        tr.config.epochs = tr.epoch + n
                        tr.fit()
                    cases[case] = more_epochs
            times = {case: [] for case in cases}
            order = list(cases)
            for r in range(args.rounds + 1):               # round 0 warms up (allocator, oneDNN primitives)
                random.Random(r).shuffle(order)            # no case always runs first or after the same one
                for case in order:
                    gc.collect()
                    t = timed(cases[case], clock)
                    if r > 0:
                        times[case].append(t)
            per_epoch = {case: 1 if "loop" in case else size[7] for case in times}
            times = {case: [t / per_epoch[case] for t in ts] for case, ts in times.items()}
            med = {case: statistics.median(ts) for case, ts in times.items()}
            for what in ("loop", "epoch", "epoch+bar"):
                bare, ours = med[f"bare {what.split('+')[0]}"], med[f"trainer {what}"]
                rows.append({"size": size[0], "encoder": size[1], "timed": what, "bare_s": bare, "trainer_s": ours,
                             "overhead_pct": 100 * (ours / bare - 1),
                             "spread_pct": 100 * (max(times[f"trainer {what}"]) - min(times[f"trainer {what}"])) / ours,
                             "bare_times_s": times[f"bare {what.split('+')[0]}"], "trainer_times_s": times[f"trainer {what}"]})
                r_ = rows[-1]
                print(f"{size[0]:>6} {what:>5}: bare {bare * 1e3:8.1f} ms  trainer {ours * 1e3:8.1f} ms  "
                      f"overhead {r_['overhead_pct']:+5.1f}%")
    total = time.perf_counter() - started
    write_results(rows, args, total)
    print(f"total {total:.0f} s; wrote {RESULTS / 'trainer.md'}")


def write_results(rows, args, total) -> None:
    RESULTS.mkdir(exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "threads": args.threads, "rounds": args.rounds, "clock": args.clock, "cpu": cpu, "load_average": os.getloadavg(),
            "total_seconds": round(total, 1)}
    lines = [
        "# Trainer overhead against a bare PyTorch loop",
        "",
        "Generated by `python benchmarks/trainer.py` "
        f"--clock {args.clock} ({args.rounds} interleaved rounds in shuffled order after 1 warm-up, medians, "
        f"{args.threads} thread; {'process CPU time' if args.clock == 'cpu' else 'wall time'}; "
        f"{meta['date']}, "
        f"torch {meta['torch']}, {cpu}, load average {', '.join(f'{x:.1f}' for x in meta['load_average'])}).",
        "",
        "Same model, initial weights, batches (same shuffles), Adam and clip-by-norm on both sides; one epoch of "
        "each from the same weights gives bit-identical weights (checked before timing). `loop`: the training pass "
        "only (`Trainer.train_one_epoch` vs zero_grad/forward/loss/backward/clip/step). `epoch`: a whole epoch as "
        "`hybridrnn train` runs it, per epoch of one `Trainer.fit` call for N epochs (small: 4, medium: 3): training, "
        "validation, the one-line log, metrics.jsonl and the atomic fsynced checkpoint, written in the background "
        "while the next epoch trains (fit waits for the last one); vs N bare epochs plus a validation pass each. "
        "`epoch+bar`: "
        "the same with the rich progress bar rendered as on a terminal. "
        "Data: the synthetic regression task of `tests/toy_task.py`.",
        "",
        "| size | model | timed | bare loop (ms) | Trainer (ms) | overhead | Trainer spread over rounds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | `{r['encoder']}` | {r['timed']} | {r['bare_s'] * 1e3:.1f} | "
                     f"{r['trainer_s'] * 1e3:.1f} | {r['overhead_pct']:+.1f}% | {r['spread_pct']:.0f}% |")
    lines += ["", f"Target: at most 10% over the bare loop. Total benchmark time {total:.0f} s. The spread column "
              "(slowest minus fastest round, over the median) shows how much a shared machine moves single "
              "epochs; a few percent either way between medians, negative overheads included, is within that "
              "noise.", ""]
    (RESULTS / "trainer.md").write_text("\n".join(lines))
    (RESULTS / "trainer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
