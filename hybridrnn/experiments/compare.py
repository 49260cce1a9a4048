"""Train every model x seed (x length) on one task and tabulate the results: ``hybridrnn compare``.

Layout of the output folder ``DIR``::

    DIR/compare.json          the plan (config, models, seeds, lengths, overrides)
    DIR/runs/<row id>/        one run directory per row (hybridrnn.api.train_run), plus row.json when done
    DIR/results.csv           one row per model x seed (x length), rebuilt after every finished row
    DIR/timings.json          inference times of every finished row's model, timed together at the end
    DIR/report.md, report.html (hybridrnn.experiments.report)

Resuming: a row is finished when its ``row.json`` exists (written atomically after training and evaluation);
a rerun of the same command skips finished rows, resumes a row whose run has a checkpoint (``state.json``) and
starts the others afresh.

Models are encoder specs, optionally followed by ``model:`` options in brackets, e.g.
``lstm:64``, ``(lstm:64|gru:64)[fusion=gate,share_input_projection=true]``, ``gru:64x2[tie_layers=true]``;
an option with a dot sets that config key instead (``gru:64[classifier.pooling=attention]``).
A config may list them in a ``compare:`` section (``models:``, ``seeds:``, ``lengths:``), which the command
line overrides, and name the test metrics the report's summary shows (``metrics: [scaled_mse, scaled_mae]``;
default: every metric the task reports).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd
import torch
import yaml

from hybridrnn._io import atomic_write_text
from hybridrnn.api import coerce_config, load_run, train_run
from hybridrnn.config import EXPERIMENT_SECTIONS, read_yaml
from hybridrnn.errors import ConfigError
from hybridrnn.experiments.report import write_report
from hybridrnn.experiments.results import BASE_COLUMNS, PLAN_FILE, ROW_FILE, label_slug, summarise_training
from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.nn.spec import parse_spec
from hybridrnn.nn.tying import count_parameters
from hybridrnn.tasks._common import encoder_options
from hybridrnn.train.checkpoint import STATE

TIMINGS_FILE = "timings.json"
#: rounds of the interleaved inference timing at the end of a comparison (the report shows their median)
TIMING_ROUNDS = 15

# ---------------------------------------------------------------------------------------------------------
# small I/O helpers
# ---------------------------------------------------------------------------------------------------------

def experiment_sections(config_path: str | os.PathLike) -> dict[str, dict]:
    """The experiment sections of ``config_path`` (``compare``, ``tune``; missing ones left out). Each run
    trains from ``config_path`` itself: a run's config leaves these sections out (``build_config``)."""
    raw = read_yaml(config_path)
    sections: dict[str, dict] = {}
    for key in EXPERIMENT_SECTIONS:
        if key in raw:
            value = raw[key]
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config file {str(config_path)!r}: section {key!r} must be a mapping, "
                                 f"got {type(value).__name__}")
            sections[key] = value or {}
    return sections


# ---------------------------------------------------------------------------------------------------------
# the models to compare
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelEntry:
    """One model of a comparison: an encoder spec and ``model:`` options (``{"fusion": "gate"}``)."""

    encoder: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.options:
            return self.encoder
        inner = ",".join(f"{k}={_format_value(v)}" for k, v in self.options)
        return f"{self.encoder}[{inner}]"

    def overrides(self) -> list[str]:
        """``--set`` overrides that select this model (an option with a dot is a config key of its own, e.g.
        ``classifier.pooling=attention``; the others are ``model.`` keys)."""
        return [f"model.encoder={self.encoder}"] + [f"{k if '.' in k else 'model.' + k}={_format_value(v)}"
                                                    for k, v in self.options]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets and parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_model(item: str | dict) -> ModelEntry:
    """A :class:`ModelEntry` from ``"SPEC"``, ``"SPEC[key=value,...]"`` or ``{"encoder": SPEC, key: value}``."""
    if isinstance(item, ModelEntry):
        return item
    if isinstance(item, dict):
        item = dict(item)
        if "encoder" not in item:
            raise ConfigError(f"model entry {item!r}: needs an 'encoder' key (an encoder spec)")
        encoder = str(item.pop("encoder"))
        return ModelEntry(encoder, tuple(sorted(item.items())))
    text = str(item).strip()
    match = re.fullmatch(r"(?P<spec>[^\[\]]+?)\s*(\[(?P<opts>.*)\])?", text)
    if not match or not match.group("spec").strip():
        raise ConfigError(f"model {text!r}: expected an encoder spec optionally followed by [key=value,...], "
                         f"e.g. 'lstm:64' or '(lstm:64|gru:64)[fusion=gate]'")
    options = {}
    for part in _split_top_level(match.group("opts") or ""):
        if "=" not in part:
            raise ConfigError(f"model {text!r}: option {part!r} is not of the form key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        options[key] = yaml.safe_load(value)
    return ModelEntry(match.group("spec").strip(), tuple(sorted(options.items())))


def parse_models(models: str | Sequence[str | dict]) -> list[ModelEntry]:
    """Models from a comma-separated string (brackets may hold commas) or a list; duplicates are an error."""
    items = _split_top_level(models) if isinstance(models, str) else list(models)
    entries = [parse_model(m) for m in items]
    if not entries:
        raise ConfigError("no models to compare: give --models or a compare.models list in the config")
    labels = [e.label for e in entries]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"models listed twice: {duplicates}")
    for e in entries:
        parse_spec(e.encoder)   # a SpecError that points at the fault
    return entries


def parse_int_list(value: str | int | Sequence[int] | None, what: str) -> Optional[list[int]]:
    """``"50,100"`` / ``[50, 100]`` / ``3`` -> list of ints (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected integers separated by commas, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise ConfigError(f"{what}: expected positive integers, got {value!r}")
    return out


# ---------------------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowKey:
    """One cell of the comparison grid."""

    model: ModelEntry
    seed: int
    length: Optional[int] = None

    @property
    def run_id(self) -> str:
        slug = label_slug(self.model.label)[:40]
        digest = hashlib.sha1(self.model.label.encode()).hexdigest()[:8]
        tail = f"-L{self.length}" if self.length is not None else ""
        return f"{slug}-{digest}{tail}-s{self.seed}"

    def overrides(self) -> list[str]:
        out = self.model.overrides() + [f"train.seed={self.seed}"]
        if self.length is not None:
            out.append(f"data.length={self.length}")
        return out


def _has_split(task, split: str) -> bool:
    try:
        return task.num_examples(split) > 0
    except (NotImplementedError, KeyError, ValueError):
        return True         # the task cannot say: evaluate it and let it raise


def _leading_rows(batch: Any) -> int:
    """Size of the first axis of the first tensor in a batch (a tensor, or nested tuples / lists / dicts)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        if isinstance(item, (torch.Tensor, dict, list, tuple)):
            try:
                return _leading_rows(item)
            except TypeError:
                continue
    raise TypeError(f"cannot find a tensor in a batch of type {type(batch).__name__}")


def _first_batch(task, model) -> tuple[Any, int]:
    """The task's first training batch on the model's device, and how many sequences it holds."""
    generator = torch.Generator().manual_seed(0)
    batch = next(iter(task.train_batches(0, generator)))
    batch = task.to_device(batch, next(model.parameters()).device)
    return batch, _leading_rows(batch)


def _one_pass(task, model, batch) -> float:
    """Seconds of one forward pass and loss (eval mode, no_grad) on ``batch``."""
    device = next(model.parameters()).device
    if hasattr(task, "reset_state"):
        task.reset_state()      # a stateful task (language model) must not carry a state between passes
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    task.training_step(model, batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def recurrent_paths(model: torch.nn.Module) -> str:
    """The paths the model's recurrent layers run (``"LSTM fused, GRU custom"``; ``""`` when it has none):
    ``path="auto"`` picks the faster one by the measured rule of ``hybridrnn.nn.recurrent.auto_path``."""
    seen = []
    for module in model.modules():
        path, mode = getattr(module, "path", None), getattr(module, "mode", None)
        if isinstance(path, str) and isinstance(mode, str) and mode:
            item = f"{mode} {path}"
            if item not in seen:
                seen.append(item)
    return ", ".join(seen)


def measure_inference(task, model, repeats: int = 7, warmup: int = 3) -> tuple[float, int]:
    """Median wall milliseconds of one forward pass and loss (``task.training_step`` in eval mode, under
    ``no_grad``) on the first training batch, after ``warmup`` passes; and how many sequences that batch holds.

    One model alone; :func:`time_models` times several interleaved (what ``compare`` reports)."""
    timings = time_models([(task, model)], rounds=repeats, warmup=warmup)
    return timings[0]


def time_models(cases: Sequence[tuple[Any, torch.nn.Module]], rounds: int = 15, warmup: int = 3,
                seed: int = 0, threads: Optional[int] = 1) -> list[tuple[float, int]]:
    """Inference time of several models, interleaved: ``(median ms per batch, sequences per batch)`` per case.

    Each case is ``(task, model)``; each model runs ``task.training_step`` (eval mode, ``no_grad``) on its task's
    first training batch. Every model first runs ``warmup`` untimed passes (first-call allocations, oneDNN
    primitive creation, lazy initialisation); then ``rounds`` rounds each time every model once, in an order
    shuffled per round, so that a slow phase of the machine (another process, frequency scaling) spreads over
    all models instead of falling on one. ``threads``: torch threads while timing (1: the figures do not
    depend on how busy the other cores are; None: leave as set)."""
    import random

    prepared = []
    for task, model in cases:
        batch, rows = _first_batch(task, model)
        prepared.append((task, model, batch, rows, model.training))
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    times: list[list[float]] = [[] for _ in prepared]
    try:
        with torch.no_grad():
            for task, model, batch, _, _ in prepared:
                model.eval()
                for _ in range(warmup):
                    _one_pass(task, model, batch)
            order = list(range(len(prepared)))
            shuffle = random.Random(seed)
            for _ in range(max(1, rounds)):
                shuffle.shuffle(order)
                for i in order:
                    task, model, batch, _, _ = prepared[i]
                    times[i].append(_one_pass(task, model, batch))
    finally:
        torch.set_num_threads(previous_threads)
        for task, model, _, _, was_training in prepared:
            if hasattr(task, "reset_state"):
                task.reset_state()
            model.train(was_training)
    return [(1000.0 * statistics.median(t), rows) for t, (_, _, _, rows, _) in zip(times, prepared)]


def time_rows(out_dir: Path, keys: Iterable[RowKey], rounds: int = 15, warmup: int = 3) -> dict[str, dict]:
    """Time the models of every finished row of ``keys`` together (:func:`time_models`) and write
    ``out_dir/timings.json``: ``{run_id: {"infer_ms_per_batch", "infer_ms_per_sequence", "infer_path"}}``.

    Rows are timed at the end of a comparison rather than after each training, so that every model is timed
    in the same conditions: warm, one thread, interleaved with the others."""
    out_dir = Path(out_dir)
    ids, cases = [], []
    for key in keys:
        run_dir = out_dir / "runs" / key.run_id
        if not (run_dir / ROW_FILE).is_file():
            continue
        _, task, model = load_run(run_dir)
        task.setup()
        model.eval()
        ids.append(key.run_id)
        cases.append((task, model))
    timings = {}
    for run_id, (ms, rows), (_, model) in zip(ids, time_models(cases, rounds, warmup), cases):
        timings[run_id] = {"infer_ms_per_batch": ms, "infer_ms_per_sequence": ms / rows,
                           "infer_path": recurrent_paths(model)}
    atomic_write_text(out_dir / TIMINGS_FILE, json.dumps(timings, indent=2))
    return timings


def _run_row(key: RowKey, config_path: Path, run_dir: Path, overrides: Sequence[str], task_name: str) -> dict:
    """Train (or resume) one row's run, evaluate it and return the row."""
    all_overrides = list(overrides) + key.overrides()
    resume = run_dir if (run_dir / STATE).is_file() else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)    # a run killed before its first checkpoint: start it again
    started = time.perf_counter()
    if resume is not None:
        trained = train_run(out=run_dir, overrides=all_overrides, resume=resume).run_dir
    else:
        trained = train_run(config_path, out=run_dir, overrides=all_overrides).run_dir
    wall = time.perf_counter() - started

    config, task, model = load_run(trained)
    task.setup()    # the configured data, split as in training (with the fitted state loaded from the run)
    model.eval()
    row: dict[str, Any] = {"model": key.model.label, "encoder": key.model.encoder,
                           "options": json.dumps(dict(key.model.options), sort_keys=True),
                           "seed": key.seed, "length": key.length, "task": task_name,
                           "parameters": count_parameters(model)}
    summary = summarise_training(trained, task.monitor, task.monitor_mode)
    row.update(summary)
    if row["train_seconds_per_epoch"] is None and summary["epochs"]:
        row["train_seconds_per_epoch"] = wall / summary["epochs"]    # includes evaluation: an upper bound
    row["train_seconds"] = (row["train_seconds_per_epoch"] * row["epochs"]
                            if row["train_seconds_per_epoch"] is not None and row["epochs"] else wall)
    with torch.no_grad():      # the Task contract: evaluate() runs under no_grad (the Trainer's way)
        metrics = {"val": task.evaluate(model, "val")}
        if _has_split(task, "test"):            # a corpus with only a validation fraction has none
            metrics["test"] = task.evaluate(model, "test")
    # inference is timed at the end of the comparison, every model together (time_rows)
    row["infer_ms_per_batch"] = row["infer_ms_per_sequence"] = None
    row["infer_path"] = recurrent_paths(model)
    for split, values in metrics.items():
        for name, value in values.items():
            row[f"{split}_{name}"] = float(value)
    if not any(p.suffix == ".png" for p in trained.iterdir()):
        with torch.no_grad():
            task.plots(model, trained)
    row["run_dir"] = os.path.relpath(trained, run_dir.parent.parent)   # relative to the comparison folder
    return row


def collect_rows(out_dir: Path, keys: Iterable[RowKey]) -> list[dict]:
    """Finished rows of ``keys`` (those with a row.json), in grid order, with their inference times from
    ``timings.json`` (:func:`time_rows`) where it has them."""
    timings_path = Path(out_dir) / TIMINGS_FILE
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    rows = []
    for key in keys:
        path = Path(out_dir) / "runs" / key.run_id / ROW_FILE
        if path.is_file():
            rows.append({**json.loads(path.read_text()), **timings.get(key.run_id, {})})
    return rows


def write_results_csv(out_dir: Path, rows: list[dict]) -> Path:
    """``out_dir/results.csv`` from ``rows`` (base columns, then val_*, then test_* metric columns)."""
    frame = pd.DataFrame(rows)
    metric_cols = sorted(c for c in frame.columns if c.startswith("val_")) + \
        sorted(c for c in frame.columns if c.startswith("test_"))
    frame = frame.reindex(columns=BASE_COLUMNS + metric_cols)
    path = Path(out_dir) / "results.csv"
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def _check_encoder(config) -> None:
    """Build the config's recurrent encoder alone (on one input feature) so that options the layers refuse
    (``fusion=sum`` over branches of different widths, ...) fail before any model trains."""
    model = getattr(config, "model", None)
    if model is None or not isinstance(getattr(model, "encoder", None), str):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # idle-option warnings come again when the model is built
        build_encoder(model.encoder, 1, **encoder_options(model))


def check_rows(config_path: Path, keys: Sequence[RowKey], overrides: Sequence[str]) -> None:
    """Validate the config of every model (and length) before training any: a ValueError listing each model
    whose options the task refuses, rather than a failure after the other models have trained."""
    errors, seen = [], set()
    for key in keys:
        if (key.model, key.length) in seen:
            continue
        seen.add((key.model, key.length))
        try:
            config = coerce_config(config_path, list(overrides) + key.overrides())
            _check_encoder(config)
        except ValueError as error:     # ConfigError and pydantic's ValidationError are ValueErrors
            where = key.model.label + (f" (length {key.length})" if key.length is not None else "")
            errors.append(f"{where}: {error}")
    if errors:
        raise ConfigError("these models cannot run on this task:\n  " + "\n  ".join(errors))


def run_compare(config_path: str | os.PathLike, models: str | Sequence[str | dict] | None = None,
                seeds: int | Sequence[int] | None = None, out_dir: str | os.PathLike = "compare",
                lengths: str | Sequence[int] | None = None, overrides: Sequence[str] = (),
                report: bool = True, progress=print) -> Path:
    """Train every model x seed (x length) on the task of ``config_path``; write ``out_dir/results.csv`` and the
    report. Returns the path of results.csv.

    Args:
        models: specs (see :func:`parse_models`); default the config's ``compare.models``.
        seeds: a count ``n`` (seeds ``0..n-1``) or explicit seeds; default ``compare.seeds`` or 3.
        lengths: sequence lengths (sets ``data.length``, for the long-range suite); default ``compare.lengths``.
        overrides: ``--set key=value`` strings applied to every run (before the model, seed and length).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    section = experiment_sections(config_path).get("compare", {})
    unknown = set(section) - {"models", "seeds", "lengths", "metrics"}
    if unknown:
        raise ConfigError(f"config {str(config_path)!r}: unknown keys in compare: {sorted(unknown)} "
                         "(expected models, seeds, lengths, metrics)")
    metrics = section.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise ConfigError(f"config {str(config_path)!r}: compare.metrics must be a list of metric names "
                         f"(without val_/test_), got {metrics!r}")
    entries = parse_models(models if models is not None else section.get("models") or [])
    seeds = seeds if seeds is not None else section.get("seeds", 3)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else parse_int_list(seeds, "seeds")
    if isinstance(seeds, int) and seeds < 1:
        raise ConfigError(f"seeds: expected at least 1, got {seeds}")
    length_list = parse_int_list(lengths if lengths is not None else section.get("lengths"), "lengths")
    task_name = str(read_yaml(config_path).get("task", ""))

    keys = [RowKey(m, s, length) for length in (length_list or [None]) for m in entries for s in seed_list]
    plan = {"config": str(config_path), "train_config": str(Path(config_path).resolve()), "task": task_name, "models": [e.label for e in entries],
            "seeds": seed_list, "lengths": length_list, "overrides": list(overrides), "metrics": metrics,
            "rows": [{"run_id": k.run_id, "model": k.model.label, "seed": k.seed, "length": k.length}
                     for k in keys]}
    atomic_write_text(out_dir / PLAN_FILE, json.dumps(plan, indent=2))

    check_rows(config_path, keys, overrides)
    for number, key in enumerate(keys, 1):
        run_dir = out_dir / "runs" / key.run_id
        what = f"[{number}/{len(keys)}] {key.model.label} seed {key.seed}" + \
            (f" length {key.length}" if key.length is not None else "")
        if (run_dir / ROW_FILE).is_file():
            progress(f"{what}: done before, skipped")
            continue
        progress(f"{what}: training")
        row = _run_row(key, config_path, run_dir, overrides, task_name)
        atomic_write_text(run_dir / ROW_FILE, json.dumps(row, indent=2))
        write_results_csv(out_dir, collect_rows(out_dir, keys))
    progress(f"timing inference: every finished model, {TIMING_ROUNDS} interleaved rounds")
    time_rows(out_dir, keys, rounds=TIMING_ROUNDS)
    results = write_results_csv(out_dir, collect_rows(out_dir, keys))
    if report:
        write_report(out_dir)
    return results
