"""The long-range-dependency suite for LSTM, GRU and the stacked and parallel hybrids, over sequence lengths.

Runs ``hybridrnn compare configs/long_range/<problem>.yaml --lengths ...`` for
``lstm:H, gru:H, lstm:H>gru:H, (lstm:H|gru:H)`` on a stated reduced budget, then writes

- ``benchmarks/results/long_range.md``: the longest length each model solves, the test metric per length, the
  memory diagnostic (gradient reaching the first step, forget/update gate saturation) and how the figures compare
  with published LSTM/GRU results on the same tasks;
- ``benchmarks/results/long_range_<problem>.png``: the metric against length (mean over seeds);
- ``benchmarks/results/long_range_memory.png``: ||dL/ds_t|| against step t for every model at the longest length;
- with ``--problem digits``: ``long_range_digits.md`` and ``long_range_digits_memory.png`` (test accuracy of the
  four models on 64-step sequential digits, 2 seeds, 40 epochs: about 6 minutes).

The issue's full setting is hidden 128, lengths 50-400, 10 000 training sequences and up to 30 epochs (some
10^4 updates per run), which takes hours on a CPU. The default here took 11.7 minutes on one thread of a
quiet 2-core machine: hidden 64, lengths 25/50/100/200, 4 000 training sequences, 16 epochs (1 280 updates of
50), Adam 3e-3, one seed (lengths 25/50/100 at 8 epochs: 2.7 minutes quiet, 11.8 with six other jobs
running). "Solved" is the suite's definition (adding: test MSE < 0.01 against the 0.167 of always predicting 1;
copy: test loss < 10% of the memoryless baseline); a model that does not solve a length under this budget might
with more updates.

    python benchmarks/long_range.py [--problem adding|copy|digits] [--hidden 64] [--lengths 25,50,100,200]
        [--seeds 1] [--epochs 16] [--n-train 4000] [--lr 0.003] [--out runs/long_range] [--results benchmarks/results]

A killed run picks up where it stopped (rerun the same command).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from _progress import CompareProgress  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent

PUBLISHED = """\
## Published LSTM / GRU results on the same tasks

These papers train for far longer than the budget above (tens of thousands of updates or more, per length), so
they say what a model can learn on these tasks, and the table above says what it learns in a few hundred updates.

- **Adding problem.** Hochreiter & Schmidhuber (1997, *Long Short-Term Memory*, Neural Computation 9(8),
  experiment 4) introduced it (in a slightly different form) and solved it with LSTM for minimal lags of 100 to
  1000 steps. Le, Jaitly & Hinton (2015, *A Simple Way to Initialize Recurrent Networks of Rectified Linear
  Units*, arXiv:1504.00941) use the form generated here (values in [0, 1], two markers, MSE against the 0.167 of
  predicting 1) at T = 150, 200, 300 and 400 with 100 hidden units, and report LSTMs learning it, with ReLU RNNs
  initialised at the identity (IRNN) comparable to them. Arjovsky, Shah & Bengio (2016, *Unitary Evolution
  Recurrent Neural Networks*, ICML, arXiv:1511.06464) run T = 100, 200, 400 and 750: their LSTM goes far below
  the 0.167 baseline at every length. Tallec & Ollivier (2018, *Can Recurrent Neural Networks Warp Time?*, ICLR,
  arXiv:1804.11188) run T = 200 and 750 and find chrono initialisation of the gate biases converging faster than
  the standard initialisation (`init: chrono` with `chrono_tmax: T` in a
  config's `model:` section).
- **Copy memory.** Arjovsky et al. (2016) introduced the version generated here (10 symbols from 8, delay T,
  baseline 10 log 8 / (T + 20)) at T = 100, 200, 300 and 500: their LSTM stays at or near the memoryless baseline
  while the unitary RNN goes well below it. Tallec & Ollivier (2018) find standard-initialised LSTMs stuck at the
  baseline at T = 500 and 2000, and chrono-initialised ones solving it.
- **Sequential digits** (`problem: digits`) is a small stand-in for pixel-by-pixel MNIST (Le et al. 2015), with
  64 steps instead of 784: `python benchmarks/long_range.py --problem digits` writes `long_range_digits.md`.

So an LSTM should solve the adding problem at all the lengths above given enough updates, and the copy task is
where plain LSTMs are known to fail at long delays. A model that does not solve a length here has not failed for
good: on the adding problem every model first sits on a plateau at the 0.167 of predicting 1, then drops within
an epoch or two once it finds the markers (see the learning curves in the full report); an unsolved length is one
where that drop did not come within the budget.
"""


def memory_figure(out: Path, results: pd.DataFrame, length: int, path: Path, examples: int = 128) -> list[dict]:
    """Gradient norm against step for the seed-0 run of every model at ``length`` (one line each) and the gates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybridrnn.experiments.memory import gate_statistics, state_gradient_norms
    from hybridrnn.api import load_run

    rows = results[(results["length"] == length) & (results["seed"] == results["seed"].min())]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    summary = []
    for _, row in rows.iterrows():
        config, task, model = load_run(out / row["run_dir"])
        x, y = task.examples("test")
        x, y = task.inputs(x[:examples]), y[:examples]

        def loss_of_outputs(outputs, model=model, task=task, y=y):
            pred = model.head(outputs) if model.per_step else model.head(model.encoder.final_output(outputs))
            return torch.stack([task.loss(pred[b:b + 1], y[b:b + 1]) for b in range(len(y))])

        norms = state_gradient_norms(model.encoder, x, loss_of_outputs)["state"]
        gates = gate_statistics(model.encoder, x)
        ax.plot(np.arange(len(norms)), norms, label=row["model"])
        summary.append({"model": row["model"], "first_over_last": float(norms[0] / norms[-1]),
                        "gates": [(g["kind"], g["mean"][g["memory_gate"]], g["saturated_low"], g["saturated_high"])
                                  for g in gates]})
    ax.set_yscale("log")
    ax.set(xlabel="step t (state entering it)", ylabel="mean ||dL/ds_t|| (h and c)",
           title=f"gradient reaching each step, {rows['model'].size} models at T={length} (test, {examples} sequences)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return summary


def cell(text: str) -> str:
    """A markdown table cell (the parallel spec's ``|`` escaped)."""
    return str(text).replace("|", "\\|")


def run_digits(args, models: list[str]) -> None:
    """Sequential digits (64 steps, 10 classes): test accuracy of every model, and the memory diagnostic."""
    from hybridrnn.experiments.compare import run_compare

    epochs = args.epochs
    budget = (f"Budget: sequential digits (sklearn load_digits, 8x8 images read pixel by pixel: 64 steps, 1 feature; "
              f"1197 / 300 / 300 images), hidden {args.hidden}, {args.seeds} seed(s), {epochs} epochs of batch 32 "
              f"({epochs * 38} updates), Adam lr 2e-3, gradient clipping 1.0, xavier/orthogonal init (forget bias 1), "
              f"1 CPU thread (torch {torch.__version__}).")
    print(budget, flush=True)
    overrides = [f"train.epochs={epochs}", "train.batch_size=32", "train.lr=0.002", "train.patience=null",
                 "train.num_threads=1", "train.progress=none"]
    progress = CompareProgress()
    out = Path(args.out) / "digits"
    run_compare("configs/long_range/digits.yaml", models, args.seeds, out, None, overrides, progress=progress)
    results = pd.read_csv(out / "results.csv")
    results_dir = Path(args.results)
    memory_png = results_dir / "long_range_digits_memory.png"
    results = results.assign(length=64)       # one length: the memory figure reads it
    memory = memory_figure(out, results, 64, memory_png)
    minutes = progress.seconds() / 60
    train_minutes = results["train_seconds"].sum() / 60
    lines = ["# Long-range-dependency suite: sequential digits", "",
             f"Produced by `python benchmarks/long_range.py --problem digits` in {minutes:.1f} minutes of wall time "
             f"({train_minutes:.1f} of them training, summed over the {len(results)} runs) on a shared 2-core CPU "
             f"machine. {budget} Always guessing the most frequent class scores about 0.10. Full report: "
             f"`{out}/report.md` (not committed).", "",
             "Mean (± standard deviation) over seeds:", "",
             "| model | test accuracy | test loss | parameters | train s/epoch | epochs to best |", "|---|---|---|---|---|---|"]
    for model in models:
        mine = results[results["model"] == model]
        spread = f" ± {mine['test_accuracy'].std():.3f}" if len(mine) > 1 else ""
        lines.append(f"| {cell(model)} | {mine['test_accuracy'].mean():.3f}{spread} | {mine['test_loss'].mean():.3f} | "
                     f"{int(mine['parameters'].iloc[0]):,} | {mine['train_seconds_per_epoch'].mean():.3g} | "
                     f"{mine['epochs_to_best'].mean():.3g} |")
    lines += ["", "## Memory diagnostic (seed 0, 128 test images)", "",
              "| model | first / last gradient | memory gates: mean (<0.1, >0.9) |", "|---|---|---|"]
    for m in memory:
        gates = "; ".join(f"{kind} {'f' if kind == 'lstm' else 'z'} {mean:.2f} ({lo:.0%}, {hi:.0%})"
                          for kind, mean, lo, hi in m["gates"])
        lines.append(f"| {cell(m['model'])} | {m['first_over_last']:.3g} | {gates} |")
    lines += ["", f"![gradient against step]({memory_png.name})", "",
              "Pixel-by-pixel MNIST (784 steps) is the published version of this task (Le, Jaitly & Hinton 2015, "
              "arXiv:1504.00941, report about 65% test accuracy for their LSTM and 97% for the IRNN; later work "
              "with better-tuned LSTMs reaches about 98%); 8x8 digits in 64 steps are a much easier stand-in, "
              "so the figures here are not comparable with those."]
    md = results_dir / "long_range_digits.md"
    md.write_text("\n".join(lines) + "\n")
    print(f"total {minutes:.1f} min; wrote {md}, {memory_png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problem", default="adding", choices=["adding", "copy", "digits"])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lengths", default="25,50,100,200")
    parser.add_argument("--seeds", type=int, default=None, help="default 1 (adding, copy), 2 (digits)")
    parser.add_argument("--epochs", type=int, default=None, help="default 16 (adding, copy), 40 (digits)")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--out", default="runs/long_range")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()
    digits = args.problem == "digits"
    args.seeds = args.seeds or (2 if digits else 1)
    args.epochs = args.epochs or (40 if digits else 16)
    os.chdir(ROOT)
    torch.set_num_threads(1)
    from hybridrnn.experiments.compare import run_compare
    from hybridrnn.tasks.long_range_config import SOLVED_CRITERIA as SOLVED
    from hybridrnn.tasks.long_range_report import longest_solved

    H = args.hidden
    models = [f"lstm:{H}", f"gru:{H}", f"lstm:{H}>gru:{H}", f"(lstm:{H}|gru:{H})"]
    if args.problem == "digits":
        return run_digits(args, models)
    # adding keeps the plain names (the README links them); copy gets its own
    stem = "long_range" if args.problem == "adding" else f"long_range_{args.problem}"
    command = " ".join(["python benchmarks/long_range.py"] + sys.argv[1:])
    lengths = [int(v) for v in args.lengths.split(",")]
    updates = args.epochs * (args.n_train // args.batch_size)
    budget = (f"Budget: {args.problem}, hidden {H}, lengths {lengths}, {args.seeds} seed(s), {args.n_train} training / "
              f"500 validation / 500 test sequences, {args.epochs} epochs of batch {args.batch_size} "
              f"({updates} updates), Adam lr {args.lr:g}, gradient clipping 1.0, xavier/orthogonal init (forget "
              f"bias 1), 1 CPU thread (torch {torch.__version__}).")
    print(budget, flush=True)
    overrides = [f"data.n_train={args.n_train}", "data.n_val=500", "data.n_test=500",
                 f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
                 "train.patience=null", "train.num_threads=1", "train.progress=none"]
    progress = CompareProgress()
    started, skipped = progress.started, progress.skipped

    out = Path(args.out) / args.problem
    run_compare(f"configs/long_range/{args.problem}.yaml", models, args.seeds, out, lengths, overrides,
                progress=progress)
    results = pd.read_csv(out / "results.csv")
    train_minutes = results["train_seconds"].sum() / 60
    column, threshold, description = SOLVED[args.problem]

    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    plot = results_dir / f"long_range_{args.problem}.png"
    shutil.copyfile(out / "report_files" / "metric_vs_length.png", plot)
    memory_png = results_dir / f"{stem}_memory.png"
    memory = memory_figure(out, results, max(lengths), memory_png)
    minutes = (time.perf_counter() - started) / 60

    # the wall time of a run from scratch: this one's if it trained every row, else the one recorded before
    record = results_dir / f"{stem}.json"
    full_minutes = minutes if not skipped else None
    if full_minutes is None and record.is_file():
        previous = json.loads(record.read_text())
        if previous.get("budget") == budget:
            full_minutes = previous.get("full_run_minutes")
    header, rows = longest_solved(results, column, threshold)
    per_length = results.groupby(["model", "length"], sort=False)[column].agg(["mean", "std"]).reset_index()
    lines = [f"# Long-range-dependency suite: {args.problem} problem", "",
             f"Produced by `{command}` on a shared 2-core CPU machine: "
             f"{train_minutes:.1f} minutes of training summed over the {len(results)} runs (the script's wall time "
             + (f"with evaluation and the diagnostic: {full_minutes:.1f} minutes from scratch). " if full_minutes else
                f"with evaluation and the diagnostic: {minutes:.1f} minutes for this invocation, which did not "
                f"retrain runs finished before). ")
             + f"{budget} "
             f"Solved: {description}. Full comparison report (learning curves, timings): "
             f"`{out}/report.md` (not committed).", "",
             "## Longest length solved", "",
             "Each cell: seeds that solved that length; 'longest solved': the longest length solved by at least "
             "half of the seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    lines += ["", f"## Test `{column[5:]}` by length (mean over seeds; solved below {threshold:g})", "",
              "| model | " + " | ".join(f"T={L}" for L in lengths) + " | parameters | train s/epoch (longest T) |",
              "|---|" + "---|" * (len(lengths) + 2)]
    for model in models:
        cells = []
        for L in lengths:
            sub = per_length[(per_length["model"] == model) & (per_length["length"] == L)]
            cells.append("-" if sub.empty else f"{sub['mean'].iloc[0]:.4f}")
        mine = results[(results["model"] == model) & (results["length"] == max(lengths))]
        lines.append(f"| {cell(model)} | " + " | ".join(cells) +
                     f" | {int(mine['parameters'].iloc[0]):,} | {mine['train_seconds_per_epoch'].mean():.3g} |")
    lines += ["", f"![{column} against length]({plot.name})", "",
              f"## Memory diagnostic at T={max(lengths)} (seed {results['seed'].min()}, 128 test sequences)", "",
              "`||dL/ds_0|| / ||dL/ds_T||`: the gradient of the loss with respect to the state entering the first "
              "step, relative to the last step (close to 1: the loss still reaches the start of the sequence; "
              "orders of magnitude below: it vanishes). Gates: mean of the LSTM forget gate f / GRU update gate z "
              "in torch's parameterisation (h' = (1 - z) * n + z * h, the textbook gate is 1 - z), so for both "
              "a value near 1 keeps the memory; and the fractions below 0.1 and above 0.9.", "",
              "| model | first / last gradient | memory gates: mean (<0.1, >0.9) |", "|---|---|---|"]
    for m in memory:
        gates = "; ".join(f"{kind} {'f' if kind == 'lstm' else 'z'} {mean:.2f} ({lo:.0%}, {hi:.0%})"
                          for kind, mean, lo, hi in m["gates"])
        lines.append(f"| {cell(m['model'])} | {m['first_over_last']:.3g} | {gates} |")
    lines += ["", f"![gradient against step]({memory_png.name})", "", PUBLISHED]
    md = results_dir / f"{stem}.md"
    md.write_text("\n".join(lines) + "\n")
    record.write_text(json.dumps(
        {"budget": budget, "train_minutes": train_minutes, "invocation_minutes": minutes,
         "full_run_minutes": full_minutes, "problem": args.problem, "lengths": lengths, "models": models,
         "longest_solved": {r[0]: r[-1].strip("*") for r in rows}, "memory": memory}, indent=2))
    print(f"total {minutes:.1f} min; wrote {md}, {plot}, {memory_png}")


if __name__ == "__main__":
    main()
