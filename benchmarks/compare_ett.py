"""LSTM vs GRU vs stacked and parallel hybrids (plain, with attention, with a shared/coupled gate) on ETTh1.

Runs ``hybridrnn compare configs/compare/etth1_ot.yaml`` (the models and seeds are in the config) and copies the
commit-ready part of its report (report.md, its PNGs, results.csv) to ``benchmarks/results/compare_ett/``.

Budget (stated in the output and in the report): ETTh1 oil temperature (OT) only, look-back 96, horizon 96,
standard 12/4/4-month split, instance normalisation, no linear skip (the forecast comes from the recurrent encoder
alone), training windows at stride 2, hidden size 32, at most 6 epochs (patience 3),
6 models x 2 seeds, one CPU thread; 2.7 minutes on a quiet 2-core machine, 7.2 with six other jobs on it.

    python benchmarks/compare_ett.py [--out runs/compare_ett] [--results benchmarks/results/compare_ett]

A killed run picks up where it stopped (rerun the same command).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _progress import CompareProgress  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/compare/etth1_ot.yaml"
MAX_FILE_BYTES = 1_000_000


def publish(out: Path, results: Path, header: str) -> list[Path]:
    """Copy report.md (with ``header`` under its title), its PNGs and results.csv to ``results``."""
    if results.exists():
        shutil.rmtree(results)
    (results / "report_files").mkdir(parents=True)
    written = []
    lines = (out / "report.md").read_text().splitlines()
    text = "\n".join(lines[:1] + ["", header] + lines[1:]) + "\n"
    (results / "report.md").write_text(text)
    written.append(results / "report.md")
    for png in sorted((out / "report_files").glob("*.png")):
        if f"report_files/{png.name}" in text:          # only what the report links
            written.append(Path(shutil.copyfile(png, results / "report_files" / png.name)))
    written.append(Path(shutil.copyfile(out / "results.csv", results / "results.csv")))
    too_big = [p for p in written if p.stat().st_size > MAX_FILE_BYTES]
    if too_big:
        raise SystemExit(f"files over {MAX_FILE_BYTES} bytes would be committed: {too_big}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/compare_ett", help="the comparison folder (runs, full report)")
    parser.add_argument("--results", default="benchmarks/results/compare_ett", help="where the committed report goes")
    args = parser.parse_args()
    os.chdir(ROOT)
    torch.set_num_threads(1)
    from hybridrnn.experiments.compare import run_compare

    budget = ("Budget: ETTh1 OT only, look-back 96, horizon 96, 12/4/4-month split, per-window instance "
              "normalisation and no linear skip (the forecast comes from the recurrent encoder alone), training "
              "windows at stride 2, "
              "hidden 32, at most 6 epochs (patience 3), Adam lr 2e-3, batch 64, 2 seeds per model, "
              f"1 CPU thread (torch {torch.__version__}).")
    print(budget, flush=True)
    progress = CompareProgress()
    started, skipped = progress.started, progress.skipped

    run_compare(CONFIG, out_dir=args.out, progress=progress)
    minutes = (time.perf_counter() - started) / 60
    if skipped:     # a rerun over finished rows: keep the from-scratch time of the report it replaces
        previous = Path(args.results) / "report.md"
        found = re.search(r"in ([0-9.]+) minutes of wall time", previous.read_text()) if previous.is_file() else None
        if found is None or budget not in previous.read_text():
            raise SystemExit(f"{len(skipped)} rows were finished before and {previous} does not hold the from-scratch "
                             f"time of this budget: remove {args.out} and run again")
        minutes = float(found.group(1))
    header = (f"Produced by `python benchmarks/compare_ett.py` (`hybridrnn compare {CONFIG}`) in {minutes:.1f} "
              f"minutes of wall time on a shared 2-core CPU machine. {budget} A small budget: the numbers "
              "compare the models with each other under it; they are not tuned results for ETTh1.")
    written = publish(Path(args.out), Path(args.results), header)
    print(f"total {minutes:.1f} min; wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
