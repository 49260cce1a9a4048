"""Sequence classification and language modelling next to published anchors, on a 2-core CPU budget.

Every run is an ordinary ``hybridrnn.api.train_run`` of a config like those in ``configs/classify`` and
``configs/language_model`` (data from ``../shared/data``), then the test split (Tiny Shakespeare: the whole
validation split, its standard report) is scored with the best weights. One intra-op thread; the budget of each
run (epochs, windows, sizes) is fixed here and written into the table; the whole script measured 17.4 CPU-minutes
on one thread (35 minutes of wall time on the shared, loaded 2-core machine), under the 25-minute budget.
Results: ``benchmarks/results/text.md`` (table) and ``text.jsonl`` (one record per run).

Anchors (the figure each row is set against):

- SST-2 test accuracy 82.7 and TREC test accuracy 91.2: CNN-rand (random word vectors, sentence-level
  training), Kim (2014) "Convolutional Neural Networks for Sentence Classification", EMNLP, Table 2.
- UCR GunPoint / ItalyPowerDemand / ArrowHead test accuracy 1.000 / 0.962 / 0.897: LSTM-FCN, Karim, Majumdar,
  Darabi & Chen (2017) "LSTM Fully Convolutional Networks for Time Series Classification", IEEE Access 6
  (arXiv:1709.05206); figures as quoted in issue 6.
- PTB word-level test perplexity 115.9: the 2x200 LSTM of Zaremba, Sutskever & Vinyals (2014) "Recurrent
  Neural Network Regularization" (arXiv:1409.2329; Table 1 gives 114.5 for it, 115.9 is the TensorFlow PTB
  tutorial's re-run of that "small" config), 13 epochs of SGD.
- Tiny Shakespeare validation loss 1.88 nats/char: the "baby GPT" of Karpathy's nanoGPT README (4 layers,
  4 heads, 128 wide, block 64, batch 12, 2000 iterations, about 3 minutes on a laptop CPU).

    OMP_NUM_THREADS=1 python benchmarks/text.py [--only sst2,trec,ucr,ptb,shakespeare] [--keep runs/bench-text]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HYBRIDRNN_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"

ANCHORS = {
    "sst2": (82.7, "CNN-rand, Kim 2014"),
    "trec": (91.2, "CNN-rand, Kim 2014"),
    "GunPoint": (100.0, "LSTM-FCN, Karim et al. 2017"),
    "ItalyPowerDemand": (96.2, "LSTM-FCN, Karim et al. 2017"),
    "ArrowHead": (89.7, "LSTM-FCN, Karim et al. 2017"),
    "ptb": (115.9, "2x200 LSTM, Zaremba et al. 2014"),
    "shakespeare": (1.88, "4x128 GPT, ~3 CPU-min, nanoGPT"),
}


# ---------------------------------------------------------------------------------------------------------
# the runs: (dataset, encoder, options); every budget is here
# ---------------------------------------------------------------------------------------------------------
def text_runs() -> list[dict]:
    models = {"sst2": [("lstm:128", "max"), ("lstm:128", "attention"), ("lstm:128>gru:128", "attention"),
                       ("(lstm:128|gru:128)", "attention")],
              "trec": [("lstm:128", "max"), ("gru:128", "max"), ("lstm:128>gru:128", "attention"),
                       ("(lstm:128|gru:128)", "attention")]}
    epochs = {"sst2": 3, "trec": 5}
    return [{"dataset": ds, "kind": "classify", "encoder": spec, "pooling": pooling, "epochs": epochs[ds]}
            for ds in ("sst2", "trec") for spec, pooling in models[ds]]


def ucr_runs() -> list[dict]:
    budget = {"GunPoint": 120, "ItalyPowerDemand": 120, "ArrowHead": 80}
    return [{"dataset": name, "kind": "classify", "encoder": spec, "pooling": pooling, "epochs": epochs}
            for name, epochs in budget.items()
            for spec, pooling in (("gru:64", "mean"), ("(lstm:64|gru:64)", "attention"))]


def ptb_runs() -> list[dict]:
    # a truncated budget: 5 "epochs" of 140 windows of 20 x 35 tokens = 490k tokens, about half a pass
    return [{"dataset": "ptb", "kind": "lm", "encoder": spec, "tie": True, "epochs": 5, "windows": 140}
            for spec in ("lstm:200x2", "lstm:200>gru:200")]


def shakespeare_runs() -> list[dict]:
    # epochs of 100 windows of 32 x 100 characters (320k characters); the training split has 1.0M
    return [{"dataset": "shakespeare", "kind": "lm", "encoder": spec, "tie": tie, "epochs": epochs, "windows": 100}
            for spec, tie, epochs in (("lstm:256", True, 8), ("lstm:256", False, 8), ("lstm:256>gru:256", True, 4),
                                      ("(lstm:128|gru:128)", True, 8))]


GROUPS = {"sst2": lambda: [r for r in text_runs() if r["dataset"] == "sst2"],
          "trec": lambda: [r for r in text_runs() if r["dataset"] == "trec"],
          "ucr": ucr_runs, "ptb": ptb_runs, "shakespeare": shakespeare_runs}


# ---------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------
def classify_config(run: dict) -> dict:
    ds, attention = run["dataset"], run["pooling"] == "attention"
    model = {"encoder": run["encoder"], "dropout": 0.3 if ds in ("sst2", "trec") else 0.1}
    if attention:
        model["attention"] = "self"
    classifier = {} if attention else {"pooling": run["pooling"]}
    train = {"epochs": run["epochs"], "lr": 0.005, "seed": 0, "progress": "none", "plots": False, "num_threads": 1}
    if ds == "sst2":
        data = {"kind": "text", "train": f"{SHARED}/sst/stsa.binary.train", "val": f"{SHARED}/sst/stsa.binary.dev",
                "test": f"{SHARED}/sst/stsa.binary.test", "tokenizer": "word", "split_punctuation": False}
        classifier["embedding_dim"] = 128
        train["batch_size"] = 50
    elif ds == "trec":
        data = {"kind": "text", "train": f"{SHARED}/trec/TREC.train.all", "test": f"{SHARED}/trec/TREC.test.all",
                "encoding": "latin-1", "val_fraction": 0.1, "tokenizer": "word"}
        classifier["embedding_dim"] = 128
        train["batch_size"] = 50
    else:
        data = {"kind": "timeseries", "format": "ts", "train": f"{SHARED}/ucr/{ds}/{ds}_TRAIN.ts",
                "test": f"{SHARED}/ucr/{ds}/{ds}_TEST.ts", "val_fraction": 0.2, "normalize": "series"}
        train.update(batch_size=8, lr=0.003)
    return {"task": "classify", "data": data, "model": model, "classifier": classifier, "train": train}


def lm_config(run: dict) -> dict:
    train = {"epochs": run["epochs"], "seed": 0, "progress": "none", "plots": False, "num_threads": 1}
    if run["dataset"] == "ptb":
        data = {"train": f"{SHARED}/ptb/ptb.train.txt.gz", "val": f"{SHARED}/ptb/ptb.valid.txt",
                "test": f"{SHARED}/ptb/ptb.test.txt", "level": "word"}
        lm = {"bptt": 35, "embedding_dim": 200, "input_dropout": 0.1, "output_dropout": 0.1,
              "eval_batch_size": 10, "max_val_tokens": 20000}
        model = {"encoder": run["encoder"], "dropout": 0.1}
        train.update(batch_size=20, lr=0.002, clip_norm=0.5)
    else:
        data = {"train": f"{SHARED}/tinyshakespeare/input.txt", "val_fraction": 0.1, "level": "char"}
        lm = {"bptt": 100, "embedding_dim": 64, "eval_batch_size": 16, "max_val_tokens": 30000}
        model = {"encoder": run["encoder"]}
        train.update(batch_size=32, lr=0.004, clip_norm=1.0)
    lm.update(tie_weights=run["tie"], windows_per_epoch=run["windows"])
    return {"task": "language_model", "data": data, "model": model, "lm": lm, "train": train}


# ---------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------
def run_one(run: dict, out_root: Path) -> dict:
    from hybridrnn.nn.tying import count_parameters
    from hybridrnn.api import load_run, train_run

    cfg = classify_config(run) if run["kind"] == "classify" else lm_config(run)
    name = f"{run['dataset']}-{len(list(out_root.glob(run['dataset'] + '-*')))}"
    t0, c0 = time.perf_counter(), time.process_time()
    run_dir = train_run(cfg, out=out_root / name).run_dir
    seconds = time.perf_counter() - t0
    config, task, model = load_run(run_dir)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    record = dict(run, params=count_parameters(model), train_seconds=round(seconds, 1),
                  epochs_run=len(history), best_epoch=max(history, key=lambda r: r.get("best", False))["epoch"]
                  if any(r.get("best") for r in history) else None)
    with torch.no_grad():
        if run["kind"] == "classify":
            m = task.evaluate(model, "test")
            record.update(metric="test accuracy %", value=100 * m["accuracy"], macro_f1=m["macro_f1"],
                          majority=100 * task.majority_accuracy("test"))
        elif run["dataset"] == "ptb":
            m = task.evaluate(model, "test")
            record.update(metric="test perplexity", value=m["perplexity"], loss=m["loss"],
                          unigram=task.unigram_perplexity("test"))
        else:
            task.config.lm.max_val_tokens = None          # the whole validation split
            m = task.evaluate(model, "val")
            record.update(metric="val loss nats/char", value=m["loss"], bpc=m["bpc"],
                          unigram=math.log(task.unigram_perplexity("val")))
    record["total_seconds"] = round(time.perf_counter() - t0, 1)
    record["cpu_seconds"] = round(time.process_time() - c0, 1)   # this process's CPU time: immune to other load
    return record


# ---------------------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------------------
def budget_text(r: dict) -> str:
    if r["kind"] == "classify":
        return f"{r['epochs']} epochs"
    if r["dataset"] == "ptb":
        tokens = r["epochs"] * r["windows"] * 20 * 35
        return f"{r['epochs']}x{r['windows']} windows of 20x35 = {tokens / 1e3:.0f}k tokens ({tokens / 929_589:.2f} passes)"
    chars = r["epochs"] * r["windows"] * 32 * 100
    return f"{r['epochs']}x{r['windows']} windows of 32x100 = {chars / 1e6:.2f}M chars ({chars / 1_003_854:.1f} passes)"


def model_text(r: dict) -> str:
    return _model_text(r).replace("|", "\\|")   # a spec's "|" would end a Markdown table cell


def _model_text(r: dict) -> str:
    if r["kind"] == "classify":
        return f"`{r['encoder']}` + {'attention pooling' if r['pooling'] == 'attention' else r['pooling'] + ' pooling'}"
    return f"`{r['encoder']}`, {'tied' if r['tie'] else 'untied'}"


def baseline_text(r: dict) -> str:
    if r["kind"] == "classify":
        return f"majority {r['majority']:.1f}"
    if r["dataset"] == "ptb":
        return f"unigram {r['unigram']:.0f}"
    return f"unigram {r['unigram']:.2f}"


def _fmt(r: dict, x: float) -> str:
    return f"{x:.3f}" if r["dataset"] == "shakespeare" else f"{x:.1f}"


def verdict(r: dict) -> str:
    """``better by X`` / ``worse by X`` (points of accuracy, perplexity, or nats per character)."""
    anchor = ANCHORS[r["dataset"]][0]
    gain = (anchor - r["value"]) if r["kind"] == "lm" else (r["value"] - anchor)
    if abs(gain) < 1e-9:
        return "equal"
    return f"{'better' if gain > 0 else 'worse'} by {_fmt(r, abs(gain))}"


def summary_lines(records: list[dict]) -> list[str]:
    """The best row of each data set against its anchor."""
    lines = []
    for ds in dict.fromkeys(r["dataset"] for r in records):
        rows = [r for r in records if r["dataset"] == ds]
        best = (min if rows[0]["kind"] == "lm" else max)(rows, key=lambda r: r["value"])
        lines.append(f"- {ds}: best {_fmt(best, best['value'])} ({_model_text(best)}) vs anchor "
                     f"{ANCHORS[ds][0]}: {verdict(best)}.")
    return lines


def write_table(records: list[dict], path: Path, wall: float, cpu: float, complete: bool) -> None:
    lines = ["# Text and time-series classification, language modelling: hybridrnn vs published anchors", "",
             f"`OMP_NUM_THREADS=1 python benchmarks/text.py` -- one intra-op thread, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}; CPU time {cpu / 60:.1f} min, wall time {wall / 60:.1f} min on a shared machine"
             f"{'' if complete else ' (INCOMPLETE: still running or stopped)'}.",
             "Every row is one seeded run (seed 0) of `hybridrnn train` with the budget shown, scored with its best "
             "(validation-selected) weights. CPU s = CPU seconds of that run (training + evaluation, one thread).", "",
             "| data | metric | anchor | model | params | budget | result | baseline | vs anchor | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        anchor, source = ANCHORS[r["dataset"]]
        value = f"{r['value']:.3f}" if r["dataset"] == "shakespeare" else f"{r['value']:.1f}"
        if r["kind"] == "classify":
            value += f" (F1 {r['macro_f1']:.3f})"
        lines.append(f"| {r['dataset']} | {r['metric']} | {anchor} ({source}) | {model_text(r)} | {r['params']:,} | "
                     f"{budget_text(r)} | {value} | {baseline_text(r)} | {verdict(r)} | {r['cpu_seconds']:.0f} |")
    lines += ["", "Best row per data set:", ""] + summary_lines(records)
    lines += ["", "Anchors: Kim (2014) EMNLP, Table 2 (CNN-rand); Karim et al. (2017) LSTM-FCN, arXiv:1709.05206 "
              "(figures as quoted in issue 6); Zaremba et al. (2014) arXiv:1409.2329 (2x200 LSTM; 115.9 is the "
              "TensorFlow PTB tutorial's run of that config, the paper's Table 1 says 114.5); nanoGPT README "
              "(Karpathy), baby GPT on a laptop CPU. The anchors had far larger budgets for PTB (13 epochs) and "
              "the text sets (25 epochs of Adadelta, early stopping on dev) than the rows here.", ""]
    from hybridrnn.data.text import atomic_write_text

    atomic_write_text(path, "\n".join(lines))


# ---------------------------------------------------------------------------------------------------------
# issue 12: AWD-LSTM on PTB, and pre-training + fine-tuning (ULMFiT) for SST-2 / MR / TREC
# ---------------------------------------------------------------------------------------------------------
CORPORA = ROOT / "runs" / "corpora"


def _norm(line: str) -> str:
    return " ".join(line.lower().split())


EVAL_SETS = {"sst2 test": (SHARED / "sst" / "stsa.binary.test", "utf-8"),
             "mr (all 10,662: its test fold is drawn from it)": (SHARED / "mr" / "rt-polarity.all", "latin-1"),
             "trec test": (SHARED / "trec" / "TREC.test.all", "latin-1")}


def _eval_sentences() -> dict[str, list[str]]:
    return {name: [_norm(line.split(" ", 1)[1]) for line in path.read_text(encoding=enc).split("\n") if " " in line]
            for name, (path, enc) in EVAL_SETS.items()}


def _grams(tokens: list[str], n: int = 8) -> set[int]:
    return {hash(tuple(tokens[i:i + n])) for i in range(len(tokens) - n + 1)}


def prepare_review_corpus(path: Path = CORPORA / "review_polarity.txt") -> Path:
    """Every sentence (one per line) of the 2,000 review_polarity reviews, files in sorted order, except those
    that equal an evaluation sentence or share an 8-gram of tokens with one (the count removed is written to
    ``PATH.removed``)."""
    import tarfile

    if path.exists():
        return path
    lines = []
    with tarfile.open(SHARED / "review_polarity" / "review_polarity.tar.gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".txt")
                          and "/pos/" in m.name or "/neg/" in m.name), key=lambda m: m.name)
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8", errors="replace")
            lines += [_norm(line) for line in text.splitlines() if line.strip()]
    evaluation = [r for rows in _eval_sentences().values() for r in rows]
    exact, grams = set(evaluation), set().union(*(_grams(r.split()) for r in evaluation))
    kept = [line for line in lines if line not in exact and not (_grams(line.split()) & grams)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    path.with_suffix(".removed").write_text(f"{len(lines) - len(kept)} of {len(lines)} sentences removed\n")
    return path


TEST_SETS = {"sst2 test": (SHARED / "sst" / "stsa.binary.test", "utf-8"),
             "mr test (fold 0)": (CORPORA / "mr.test", "latin-1"),
             "trec test": (SHARED / "trec" / "TREC.test.all", "latin-1")}
#: the labelled training text of the three target tasks, read without labels (ULMFiT's target corpus)
TARGET_TRAIN = [(SHARED / "sst" / "stsa.fine.train", "utf-8"), (CORPORA / "mr.train", "latin-1"),
                (SHARED / "trec" / "TREC.train.all", "latin-1")]


def prepare_target_corpus(path: Path = CORPORA / "review_plus_target.txt") -> Path:
    """The review corpus plus the training sentences of SST (the SST-5 training split, which holds SST-2's),
    MR (folds 1-9) and TREC, labels stripped, each target sentence written twice, at the start and at the end
    (ULMFiT's second step, LM fine-tuning on the target text, folded into one pre-training run by up-weighting
    it); the last 2% of the review sentences go to ``PATH.val.txt`` instead, the LM's validation text. A target sentence
    equal to a *test* sentence of SST-2, MR fold 0 or TREC, or sharing an 8-gram of tokens with one, is left
    out (SST and MR are both rottentomatoes snippets, so MR's training folds hold SST-2 test sentences); the
    count left out is written to ``PATH.removed``."""
    if path.exists():
        return path
    reviews = prepare_review_corpus().read_text(encoding="utf-8").rstrip("\n").split("\n")
    prepare_mr_split()
    tests = [_norm(line.split(" ", 1)[1]) for f, enc in TEST_SETS.values()
             for line in f.read_text(encoding=enc).split("\n") if " " in line]
    exact, grams = set(tests), set().union(*(_grams(r.split()) for r in tests))
    target = [_norm(line.split(" ", 1)[1]) for f, enc in TARGET_TRAIN
              for line in f.read_text(encoding=enc).split("\n") if " " in line]
    kept = [t for t in target if t not in exact and not (_grams(t.split()) & grams)]
    cut = int(len(reviews) * 0.98)          # the last 2% of the reviews: validation, never a target sentence
    path.write_text("\n".join(kept + reviews[:cut] + kept) + "\n", encoding="utf-8")
    path.with_suffix(".val.txt").write_text("\n".join(reviews[cut:]) + "\n", encoding="utf-8")
    path.with_suffix(".removed").write_text(f"{len(target) - len(kept)} of {len(target)} target training sentences "
                                            "removed (equal to a test sentence or sharing an 8-gram with one)\n")
    return path


def test_overlap_report(corpus: Path, n: int = 8) -> dict:
    """``overlap_report`` against the three *test* sets (the target corpus holds MR's training folds by design)."""
    text = corpus.read_text(encoding="utf-8").split("\n")
    sentences, grams = set(text), set().union(*(_grams(line.split(), n) for line in text))
    out = {}
    for name, (f, enc) in TEST_SETS.items():
        rows = [_norm(line.split(" ", 1)[1]) for line in f.read_text(encoding=enc).split("\n") if " " in line]
        out[name] = {"sentences": len(rows), "exact": sum(r in sentences for r in rows),
                     f"shared_{n}gram": sum(bool(_grams(r.split(), n) & grams) for r in rows)}
    return out


def prepare_mr_split() -> tuple[Path, Path]:
    """MR fold 0 of 10: every 10th line of rt-polarity.all (i % 10 == 0) is test, the rest train."""
    train, test = CORPORA / "mr.train", CORPORA / "mr.test"
    if not (train.exists() and test.exists()):
        lines = [l for l in (SHARED / "mr" / "rt-polarity.all").read_text(encoding="latin-1").split("\n") if l.strip()]
        CORPORA.mkdir(parents=True, exist_ok=True)
        train.write_text("\n".join(l for i, l in enumerate(lines) if i % 10) + "\n", encoding="latin-1")
        test.write_text("\n".join(l for i, l in enumerate(lines) if i % 10 == 0) + "\n", encoding="latin-1")
    return train, test


def overlap_report(corpus: Path, n: int = 8) -> dict:
    """How many sentences of each evaluation set occur in ``corpus`` (exact, after lower-casing and collapsing
    whitespace) or share an ``n``-gram of tokens with it."""
    text = corpus.read_text(encoding="utf-8").split("\n")
    sentences = set(text)
    grams = set().union(*(_grams(line.split(), n) for line in text))
    out = {}
    for name, rows in _eval_sentences().items():
        exact = sum(r in sentences for r in rows)
        shared = sum(bool(_grams(r.split(), n) & grams) for r in rows)
        out[name] = {"sentences": len(rows), "exact": exact, f"shared_{n}gram": shared}
    return out


def _train_and_score(config: Path, overrides: list[str], out: Path, split: str = "test") -> dict:
    from hybridrnn.api import train_run
    from hybridrnn.api.registry import load_config

    t0, c0 = time.perf_counter(), time.process_time()
    trained = train_run(load_config(config, overrides), out=out)    # best weights, eval mode, data in the task
    run_dir = trained.run_dir
    with torch.no_grad():
        metrics = trained.task.evaluate(trained.model, split)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"metrics": metrics, "history": history, "run_dir": str(run_dir),
            "wall_seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1)}


SCRATCH = ["model.pretrained=null", "train.unfreeze=null", "train.lr_decay_per_layer=null"]
#: variants of the classifier config: scratch, the ULMFiT recipe as written, and the LM's weights as a plain
#: initialisation (every layer trains from epoch 1 at one rate: the ablation of gradual unfreezing + decay)
VARIANTS = {"scratch": SCRATCH, "ulmfit": [], "plain": ["train.unfreeze=null", "train.lr_decay_per_layer=null"]}


def transfer_suite(out_root: Path, seeds: list[int], out: Path, variants: tuple[str, ...] = ("scratch", "ulmfit"),
                   append: bool = False) -> None:
    """Pre-train the review LM, then SST-2 / MR / TREC with and without it, ``seeds`` each (``append``: add
    the runs to the records already in ``out``'s .json, e.g. another variant)."""
    corpus = prepare_review_corpus()
    prepare_mr_split()
    overlap = overlap_report(corpus)
    print(json.dumps(overlap, indent=1), file=sys.stderr)
    lm_dir = ROOT / "runs" / "reviews_lm"
    if (lm_dir / "model.safetensors").exists():       # pre-trained before: its record from metrics.jsonl
        history = [json.loads(line) for line in (lm_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        best = min(history, key=lambda r: r["val_loss"])
        lm = {"metrics": {"perplexity": best["val_perplexity"]}, "history": history, "run_dir": str(lm_dir),
              "cpu_seconds": float(os.environ.get("REVIEWS_LM_CPU_SECONDS", "nan"))}
    else:
        lm = _train_and_score(ROOT / "configs/language_model/reviews_lm.yaml", [], lm_dir, split="val")
    records = {"overlap": overlap, "lm": lm, "runs": []}
    if append:
        records = json.loads(out.with_suffix(".json").read_text())
    for seed in seeds:                      # every data set at one seed before the next seed (budget cut-offs)
        for ds in ("sst2", "mr", "trec"):
            for variant in variants:
                pre = variant != "scratch"
                over = [f"train.seed={seed}", "train.plots=false", "train.progress=none"] + VARIANTS[variant]
                r = _train_and_score(ROOT / f"configs/classify/{ds}_pretrained.yaml", over,
                                     out_root / f"{ds}-{variant}-{seed}")
                records["runs"].append({"dataset": ds, "seed": seed, "pretrained": pre, "variant": variant,
                                        "accuracy": 100 * r["metrics"]["accuracy"], "cpu_seconds": r["cpu_seconds"],
                                        "epochs": len(r["history"])})
                print(f"{ds} seed {seed} {variant}: {records['runs'][-1]['accuracy']:.1f} "
                      f"({r['cpu_seconds']:.0f} CPU s)", file=sys.stderr, flush=True)
                out.with_suffix(".json").write_text(json.dumps(records, indent=1))
                write_transfer_table(records, out)


TARGETS = {"sst2": (84.0, 82.7), "mr": (78.0, 76.1), "trec": (92.0, 91.2)}


def _lm_record(lm_dir: Path, config: Path) -> dict:
    """Train the language model of ``config`` into ``lm_dir``, or read back the record of an earlier run there."""
    if not (lm_dir / "model.safetensors").exists():
        return _train_and_score(config, [], lm_dir, split="val")
    history = [json.loads(line) for line in (lm_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best = min(history, key=lambda r: r["val_loss"])
    return {"metrics": {"perplexity": best["val_perplexity"]}, "history": history, "run_dir": str(lm_dir),
            "cpu_seconds": float("nan")}


def target_transfer_suite(out_root: Path, seeds: list[int], out: Path = RESULTS / "text_transfer_target.md",
                          datasets: tuple[str, ...] = ("sst2", "mr", "trec"), extra: tuple[str, ...] = ()) -> None:
    """ULMFiT with the target text: the LM of ``configs/language_model/text_lm.yaml`` on the review corpus plus
    the (test-filtered) training sentences of SST, MR and TREC, then each classifier from scratch and with the
    LM's vocabulary and weights as a plain initialisation (every layer from epoch 1, one rate: the variant the
    review-only LM measured best), ``seeds`` each; ``extra`` overrides for both (e.g. ``train.epochs=10``), whose
    runs are added to those already in ``out``'s .json as rows of their own."""
    corpus = prepare_target_corpus()
    records = {"overlap": test_overlap_report(corpus), "removed": corpus.with_suffix(".removed").read_text().strip(),
               "runs": []}
    earlier = json.loads(out.with_suffix(".json").read_text()) if extra and out.with_suffix(".json").exists() else None
    if earlier:
        records["runs"] = earlier["runs"]
    print(json.dumps(records["overlap"], indent=1), file=sys.stderr)
    lm_dir = ROOT / "runs" / "text_lm"
    records["lm"] = earlier["lm"] if earlier else _lm_record(lm_dir, ROOT / "configs/language_model/text_lm.yaml")
    for seed in seeds:
        for ds in datasets:
            for variant in ("scratch", "plain"):
                over = [f"train.seed={seed}", "train.plots=false", "train.progress=none", *extra] + VARIANTS[variant]
                over += [] if variant == "scratch" else [f"model.pretrained={lm_dir}"]
                r = _train_and_score(ROOT / f"configs/classify/{ds}_pretrained.yaml", over,
                                     out_root / f"{ds}-target-{variant}-{seed}{'-'.join(('',) + extra)}")
                records["runs"].append({"dataset": ds, "seed": seed, "variant": variant, "epochs": len(r["history"]),
                                        "extra": " ".join(extra),
                                        "accuracy": 100 * r["metrics"]["accuracy"], "cpu_seconds": r["cpu_seconds"]})
                print(f"{ds} seed {seed} {variant}: {records['runs'][-1]['accuracy']:.1f} "
                      f"({r['cpu_seconds']:.0f} CPU s)", file=sys.stderr, flush=True)
                out.with_suffix(".json").write_text(json.dumps(records, indent=1))
                write_target_table(records, out)


def write_target_table(records: dict, out: Path) -> None:
    import statistics

    from hybridrnn.data.text import atomic_write_text

    def mean_sd(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else (f"{xs[0]:.1f}" if xs else "")

    lm = records["lm"]
    lines = ["# Pre-training with the target text (issue 12, ULMFiT steps 1 + 2 in one LM run): SST-2, MR, TREC", "",
             "`OMP_NUM_THREADS=1 python benchmarks/text.py --suite transfer-target` -- one thread, shared 2-core "
             "machine.", "",
             "Language model: `configs/language_model/text_lm.yaml` (`lstm:128`, tied 128-d embedding, weight drop "
             "0.2, AR/TAR, Adam) on `runs/corpora/review_plus_target.txt`: every review_polarity sentence (as in "
             "`text_transfer.md`) plus, twice each, the training sentences of SST (SST-5 train, labels stripped), MR "
             f"(folds 1-9) and TREC (train). {records['removed']}. Best validation perplexity "
             f"{lm['metrics'].get('perplexity', float('nan')):.1f}; {lm['cpu_seconds'] / 60:.1f} CPU-min.", "",
             "Overlap of the LM corpus with the test sets (exact sentence / any shared 8-gram of tokens):", "",
             "| test set | sentences | exact in corpus | sharing an 8-gram |", "|---|---|---|---|"]
    lines += [f"| {n} | {o['sentences']} | {o['exact']} | {o['shared_8gram']} |" for n, o in records["overlap"].items()]
    lines += ["", "Classifiers: `configs/classify/{sst2,mr,trec}_pretrained.yaml` with "
              "`train.unfreeze=null train.lr_decay_per_layer=null`; *scratch* also `model.pretrained=null` (own "
              "vocabulary, random init); *pre-trained* `model.pretrained=runs/text_lm` (the LM's vocabulary, "
              "embedding and LSTM as initialisation). Test accuracy % with the best-validation weights, mean ± sd "
              "over seeds.", "",
              "| data | seeds | scratch | pre-trained | effect | target | CNN-rand | per seed scratch / pre-trained | CPU s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for ds, extra in dict.fromkeys((r["dataset"], r.get("extra", "")) for r in records["runs"]):
        same = [r for r in records["runs"] if r["dataset"] == ds and r.get("extra", "") == extra]
        sc = [r["accuracy"] for r in same if r["variant"] == "scratch"]
        pr = [r["accuracy"] for r in same if r["variant"] == "plain"]
        effect = f"{statistics.mean(pr) - statistics.mean(sc):+.1f}" if pr else ""
        per = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(sc, pr))
        cpu = sum(r["cpu_seconds"] for r in same)
        lines.append(f"| {ds}{f' ({extra})' if extra else ''} | {len(sc)} | {mean_sd(sc)} | {mean_sd(pr)} | {effect} | {TARGETS[ds][0]} | "
                     f"{TARGETS[ds][1]} | {per} | {cpu:.0f} |")
    if records.get("notes"):
        lines += [""] + list(records["notes"])
    atomic_write_text(out, "\n".join(lines) + "\n")



def write_transfer_table(records: dict, out: Path) -> None:
    import statistics

    lm = records["lm"]
    lines = ["# Pre-training and transfer (issue 12, ULMFiT-style): SST-2, MR, TREC with and without a review LM", "",
             "`OMP_NUM_THREADS=1 python benchmarks/text.py --suite transfer` -- one thread, shared 2-core machine.", "",
             "Language model: `configs/language_model/reviews_lm.yaml` (`lstm:128`, tied 128-d embedding, weight drop "
             "0.2, AR/TAR, Adam) on every sentence of the 2,000 review_polarity reviews (IMDb, Pang & Lee 2004), "
             f"3 x 150 windows of 32 x 35 = 504k tokens (about a third of one pass); validation perplexity "
             f"{lm['metrics'].get('perplexity', float('nan')):.1f} on 20k held-out tokens; "
             f"{lm['cpu_seconds'] / 60:.1f} CPU-min. ULMFiT's second step (fine-tuning the LM on the target "
             "corpus) is not run.", "",
             "Overlap of the pre-training text with the evaluation sets (lower-cased, whitespace-collapsed; exact "
             "sentence and any shared 8-gram of tokens):", "",
             "| set | sentences | exact in corpus | sharing an 8-gram |", "|---|---|---|---|"]
    for name, o in records["overlap"].items():
        lines.append(f"| {name} | {o['sentences']} | {o['exact']} | {o['shared_8gram']} |")
    lines += ["", "Classifiers: `configs/classify/{sst2,mr,trec}_pretrained.yaml` (`lstm:128`, concat pooling, "
              "weight drop 0.2, Adam 0.003); *pre-trained*: vocabulary, embedding and LSTM from the LM, gradual "
              "unfreezing (head, then LSTM, then embedding, one group per epoch), lr / 2.6^k per group; *scratch*: "
              "the same config with `model.pretrained=null train.unfreeze=null train.lr_decay_per_layer=null` (own "
              "vocabulary, random init). MR: fold 0 of 10 (every 10th line) as test. Test accuracy %, best "
              "validation epoch.", "",
              "| data | seeds | scratch (mean) | pre-trained (mean) | effect | target | CNN-rand | per seed scratch / pre-trained | CPU s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for ds in ("sst2", "mr", "trec"):
        rows = [r for r in records["runs"] if r["dataset"] == ds]
        if not rows:
            continue
        sc = [r["accuracy"] for r in rows if r.get("variant", "scratch" if not r["pretrained"] else "ulmfit") == "scratch"]
        pr = [r["accuracy"] for r in rows if r.get("variant", "scratch" if not r["pretrained"] else "ulmfit") == "ulmfit"]
        m_sc = statistics.mean(sc) if sc else float("nan")
        m_pr = statistics.mean(pr) if pr else float("nan")
        seeds = sorted({r["seed"] for r in rows})
        per = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(sc, pr))
        lines.append(f"| {ds} | {len(seeds)} | {m_sc:.1f} | {m_pr:.1f} | {m_pr - m_sc:+.1f} | {TARGETS[ds][0]} | "
                     f"{TARGETS[ds][1]} | {per} | {sum(r['cpu_seconds'] for r in rows if r.get('variant') != 'plain'):.0f} |")
    plain = [r for r in records["runs"] if r.get("variant") == "plain"]
    if plain:
        lines += ["", "Ablation (*plain*: the LM's vocabulary and weights as initialisation, every layer trained from "
                  "epoch 1 at one rate: `train.unfreeze=null train.lr_decay_per_layer=null`):", "",
                  "| data | seed | scratch | ULMFiT recipe | plain init | CPU s |", "|---|---|---|---|---|---|"]
        for r in plain:
            same = {v: x["accuracy"] for x in records["runs"] if x["dataset"] == r["dataset"] and x["seed"] == r["seed"]
                    for v in [x.get("variant", "scratch" if not x["pretrained"] else "ulmfit")]}
            lines.append(f"| {r['dataset']} | {r['seed']} | {same.get('scratch', float('nan')):.1f} | "
                         f"{same.get('ulmfit', float('nan')):.1f} | {r['accuracy']:.1f} | {r['cpu_seconds']:.0f} |")
        for ds in dict.fromkeys(r["dataset"] for r in plain):
            seeds = {r["seed"] for r in plain if r["dataset"] == ds}
            mean = {v: statistics.mean(x["accuracy"] for x in records["runs"] if x["dataset"] == ds and x["seed"] in seeds
                                       and x.get("variant", "scratch" if not x["pretrained"] else "ulmfit") == v)
                    for v in ("scratch", "ulmfit", "plain")}
            lines.append(f"| {ds} | mean of {len(seeds)} | {mean['scratch']:.1f} | {mean['ulmfit']:.1f} | "
                         f"{mean['plain']:.1f} ({mean['plain'] - mean['scratch']:+.1f}) | |")
    if records.get("notes"):        # the reading of the figures, written by whoever ran the suite (kept in the .json)
        lines += [""] + list(records["notes"])
    from hybridrnn.data.text import atomic_write_text

    atomic_write_text(out, "\n".join(lines) + "\n")


def write_awd_results(run: Path, out: Path = RESULTS / "text_awd.md") -> None:
    """``text_awd.md`` from a ``ptb_awd`` run made with the commands it lists: the curve from ``RUN/metrics.jsonl``,
    the test evaluation ``RUN_test.json`` (the output of ``hybridrnn evaluate RUN --json``), the CPU time and
    the commands ``RUN_cpu.json`` ({"total": s, "detail": text, "commands": [...]}) and the reading, written by
    whoever ran it, ``RUN_notes.md``."""
    from hybridrnn.api import load_run
    from hybridrnn.nn.tying import count_parameters

    _, _, model = load_run(run)
    hist = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    test = json.loads((run.parent / f"{run.name}_test.json").read_text())
    cpu = json.loads((run.parent / f"{run.name}_cpu.json").read_text())
    notes = run.parent / f"{run.name}_notes.md"
    P = 265 * 20 * 34.1 / 929_589      # passes per epoch (variable BPTT mean length 0.975 * 35)
    best = min(hist, key=lambda r: r["val_loss"])
    averaging = next((r["epoch"] for r in hist if r.get("nt_asgd_averaged")), None)
    lines = ["# PTB word level with the AWD-LSTM options (issue 12)", "",
             f"Recipe: `configs/language_model/ptb_awd.yaml` (`lstm:400>lstm:200`, tied 200-d embedding, "
             f"{count_parameters(model):,} parameters; weight drop 0.3, locked dropout 0.3 in / 0.2 between / 0.3 out, "
             "embedding dropout 0.05, AR 2, TAR 1, variable BPTT around 35, NT-ASGD with interval 5, SGD lr 20, clip "
             "0.25, batch 20), one thread:", "", "```", *cpu["commands"], "```", "",
             f"Each short epoch is 265 windows of 20 x ~34 tokens = {P:.2f} passes of the 929k training tokens; "
             f"validation scores the first 20k validation tokens (`lm.max_val_tokens`), test the whole test split "
             f"(82k tokens) with the best weights (the averaged ones once NT-ASGD averages). CPU time: "
             f"{cpu['total'] / 60:.1f} CPU-min ({cpu['detail']}).", "",
             f"**Test perplexity {test['perplexity']:.1f}** after {len(hist)} epochs ({len(hist) * P:.1f} passes), best "
             f"validation perplexity {best['val_perplexity']:.1f} (epoch {best['epoch']}); NT-ASGD started averaging "
             f"at epoch {averaging}. Anchors: Zaremba et al. 2014 small 2x200 LSTM 114.5 (13 epochs), AWD-LSTM 57.3 "
             "(3x1150, 750 epochs).", "",
             "| epoch | passes | train loss (with AR/TAR) | val perplexity | NT-ASGD averaged |", "|---|---|---|---|---|"]
    for r in hist:
        if r["epoch"] % 5 == 0 or r["epoch"] <= 2 or r["epoch"] >= len(hist) - 2 or r["epoch"] == averaging:
            lines.append(f"| {r['epoch']} | {r['epoch'] * P:.2f} | {r['train_loss']:.3f} | {r['val_perplexity']:.1f} | "
                         f"{r.get('nt_asgd_averaged', 0)} |")
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    from hybridrnn.data.text import atomic_write_text

    atomic_write_text(out, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups of {', '.join(GROUPS)}")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories here (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=RESULTS / "text.md")
    ap.add_argument("--table-only", action="store_true",
                    help="rewrite the table from the .jsonl next to --out, without training (CPU/wall totals summed)")
    ap.add_argument("--suite", choices=("anchors", "transfer", "transfer-target", "awd-table"), default="anchors",
                    help="anchors: the table above; transfer: issue 12's pre-training suite (text_transfer.md); "
                         "awd-table: text_awd.md from the PTB AWD run in --keep (see write_awd_results)")
    ap.add_argument("--seeds", default="0,1,2", help="transfer suite: classifier seeds")
    ap.add_argument("--variants", default="scratch,ulmfit", help=f"transfer suite: of {', '.join(VARIANTS)}")
    ap.add_argument("--datasets", default="sst2,mr,trec", help="transfer-target suite: which classifiers")
    ap.add_argument("--extra", action="append", default=[], help="transfer-target suite: a config override for "
                    "both variants (repeatable), its runs added as rows of their own")
    ap.add_argument("--append", action="store_true", help="transfer suite: add to text_transfer.json's runs")
    args = ap.parse_args(argv)
    if args.suite == "awd-table":
        write_awd_results(args.keep or ROOT / "scratch" / "ptb_awd_full")
        print((RESULTS / "text_awd.md").read_text())
        return 0
    if args.suite == "transfer-target":
        torch.set_num_threads(1)
        target_transfer_suite(args.keep or ROOT / "runs" / "bench-transfer", [int(x) for x in args.seeds.split(",")],
                              datasets=tuple(args.datasets.split(",")), extra=tuple(args.extra))
        print((RESULTS / "text_transfer_target.md").read_text())
        return 0
    if args.suite == "transfer":
        torch.set_num_threads(1)
        out_root = args.keep or ROOT / "runs" / "bench-transfer"
        transfer_suite(out_root, [int(s) for s in args.seeds.split(",")], RESULTS / "text_transfer.md",
                       tuple(args.variants.split(",")), args.append)
        print((RESULTS / "text_transfer.md").read_text())
        return 0
    if args.table_only:
        records = [json.loads(line) for line in args.out.with_suffix(".jsonl").read_text().splitlines() if line]
        write_table(records, args.out, sum(r["total_seconds"] for r in records),
                    sum(r["cpu_seconds"] for r in records), complete=True)
        print(args.out.read_text())
        return 0
    torch.set_num_threads(1)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown groups {unknown}; choose from {', '.join(GROUPS)}")
    if not SHARED.is_dir():
        ap.error(f"shared data not found at {SHARED} (set HYBRIDRNN_SHARED_DATA)")
    runs = [r for g in groups for r in GROUPS[g]()]
    jsonl = args.out.with_suffix(".jsonl")
    records: list[dict] = []
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        out_root = args.keep or Path(tmp)
        out_root.mkdir(parents=True, exist_ok=True)
        for i, run in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {run['dataset']} {_model_text(run)} ({budget_text(run)}) ...", file=sys.stderr,
                  flush=True)
            rec = run_one(run, out_root)
            records.append(rec)
            print(f"    {rec['metric']} {rec['value']:.4g}  ({rec['cpu_seconds']:.0f} CPU s; "
                  f"CPU {(time.process_time() - c0) / 60:.1f} min, wall {(time.perf_counter() - t0) / 60:.1f} min so far)",
                  file=sys.stderr, flush=True)
            write_table(records, args.out, time.perf_counter() - t0, time.process_time() - c0, complete=i == len(runs))
            from hybridrnn.data.text import atomic_write_text

            atomic_write_text(jsonl, "".join(json.dumps(r) + "\n" for r in records))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
