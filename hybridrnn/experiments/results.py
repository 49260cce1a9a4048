"""The comparison's results: the plan (``compare.json``), the columns of ``results.csv``, what each run's
``metrics.jsonl`` says, and a model label as part of a file name.

Shared by the harness that fills the table (:mod:`hybridrnn.experiments.compare`) and the report that reads it
(:mod:`hybridrnn.experiments.report`).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

from hybridrnn.errors import RunDirError

ROW_FILE = "row.json"
#: the plan of a comparison (config, models, seeds, lengths, overrides, metrics), in the comparison's folder
PLAN_FILE = "compare.json"
#: leading columns of results.csv (metric columns val_* and test_* follow)
BASE_COLUMNS = ["model", "encoder", "options", "seed", "length", "task", "parameters", "epochs",
                "epochs_to_best", "train_seconds", "train_seconds_per_epoch", "infer_ms_per_batch",
                "infer_ms_per_sequence", "infer_path", "run_dir"]


def read_plan(out_dir: Path) -> dict[str, Any]:
    """The plan of the comparison in ``out_dir`` (its ``compare.json``); ``{}`` when there is none."""
    path = Path(out_dir) / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def label_slug(label: str) -> str:
    """A model label as part of a file name: every run of characters other than letters and digits becomes one
    ``_`` (``(lstm:8|gru:8)[fusion=gate]`` -> ``lstm_8_gru_8_fusion_gate``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``run_dir/metrics.jsonl`` with nested mappings flattened (``{"val": {"loss": 1}}`` ->
    ``{"val_loss": 1}``); an empty list when the file is missing."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(_flatten(json.loads(line)))
        except json.JSONDecodeError as error:
            raise RunDirError(f"{path}: line {number} is not JSON ({error})") from None
    return records


def _flatten(record: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}_"))
        else:
            out[name] = value
    return out


def epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch records of a run (lines of metrics.jsonl that carry an ``epoch`` and a validation metric)."""
    return [r for r in read_metrics(run_dir) if "epoch" in r and any(k.startswith("val_") for k in r)]


def _seconds_of(record: dict[str, Any]) -> Optional[float]:
    for key in ("train_seconds", "epoch_seconds", "seconds", "time", "duration", "elapsed"):
        if isinstance(record.get(key), (int, float)):
            return float(record[key])
    return None


def summarise_training(run_dir: Path, monitor: str, mode: str) -> dict[str, Any]:
    """Epochs run, epoch of the best validation ``monitor`` and mean training seconds per epoch (None where
    metrics.jsonl does not say)."""
    records = epoch_records(run_dir)
    key = f"val_{monitor}"
    scored = [r for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    best = None
    if scored:
        pick = min if mode == "min" else max
        best = pick(scored, key=lambda r: r[key])["epoch"]
    seconds = [s for s in (_seconds_of(r) for r in records) if s is not None]
    return {"epochs": len(records) or None, "epochs_to_best": best,
            "train_seconds_per_epoch": (sum(seconds) / len(seconds)) if seconds else None}
