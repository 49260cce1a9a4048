"""The report of a comparison: ``DIR/report.md`` and a self-contained ``DIR/report.html`` from ``DIR/results.csv``.

Contents: a summary table (mean ± standard deviation over seeds, the best value of each column in bold, and
whether each model's difference from the best on the primary metric is larger than the seed spread), learning
curves, the primary metric against parameter count and against training time, the task's own plots of the best
run, and for comparisons over lengths the longest length each model solves and the metric against length.

"Larger than the seed spread" is decided by Welch's two-sided t-test (unequal variances) on the per-seed test
values of that model and of the best model, at p < 0.05. With fewer than two seeds on either side there is no
spread to compare with and the table says "n/a". The primary metric is the task's monitored metric on the
test split (``test_loss`` for every task of hybridrnn unless the task says otherwise), or on the validation split
for a task without a test split (a character corpus split by ``val_fraction``).

Figures are PNG files in ``DIR/report_files/``; the markdown links them, the HTML embeds them as base64.
"""
from __future__ import annotations

import base64
import html
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind

from hybridrnn._io import atomic_write_text, save_figure
from hybridrnn.api import coerce_config, get_task_class
from hybridrnn.config import read_yaml
from hybridrnn.errors import ConfigError, HybridRNNError, RunDirError
from hybridrnn.experiments.results import BASE_COLUMNS, epoch_records, label_slug, read_plan

#: metric names (after the val_/test_ prefix) where larger is better; every other metric is minimised
HIGHER_IS_BETTER = ("accuracy", "acc", "f1", "auc", "r2", "precision", "recall", "solved", "bleu", "beats_baselines")
SIGNIFICANCE_LEVEL = 0.05
FILES = "report_files"


def higher_is_better(column: str) -> bool:
    """Whether larger values of a results column are better (metric name after ``val_``/``test_``)."""
    name = column.split("_", 1)[1] if column.startswith(("val_", "test_")) else column
    return any(name == h or name.endswith("_" + h) or name.startswith(h + "_") for h in HIGHER_IS_BETTER)


def welch_p_value(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Two-sided Welch t-test p-value for samples ``a`` and ``b``; None when either has fewer than 2 values.
    Two constant samples give p = 1 when equal and 0 when not."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


# ---------------------------------------------------------------------------------------------------------
# a tiny document model rendered to both markdown and HTML
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Block:
    kind: str            # "h1", "h2", "h3", "p", "table", "image"
    content: Any
    caption: str = ""


def _md_cell(value: str) -> str:
    return str(value).replace("|", "\\|")


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(b.kind[1])} {b.content}\n")
        elif b.kind == "p":
            out.append(f"{b.content}\n")
        elif b.kind == "table":
            header, rows = b.content
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "---|" * len(header))
            for row in rows:
                out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
            out.append("")
        elif b.kind == "image":
            out.append(f"![{b.caption}]({b.content})\n")
    return "\n".join(out)


def _html_inline(text: str) -> str:
    """Escape, then turn markdown ``**bold**`` and ``code`` into tags."""
    text = html.escape(str(text))
    parts = text.split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _breakable(text: str) -> str:
    """HTML text that may wrap after a spec's or a column name's separators (``|``, ``>``, ``,``, ``_``, ``]``,
    ``)``); tags and entities stay whole."""
    out = []
    for part in re.split(r"(<[^>]*>|&[a-z]+;|&#[0-9]+;)", text):
        if part.startswith("<"):
            out.append(part)
        elif part.startswith("&"):
            out.append(part + ("<wbr>" if part == "&gt;" else ""))
        else:
            out.append(re.sub(r"([|,_\])])", r"\1<wbr>", part))
    return "".join(out)


def markdown_blocks(markdown: str) -> list[Block]:
    """Blocks of a small markdown text (what a task's ``report_sections`` returns): tables (lines starting
    with ``|``) and paragraphs, separated by blank lines."""
    blocks = []
    for chunk in re.split(r"\n\s*\n", markdown.strip()):
        lines = [line.strip() for line in chunk.strip().splitlines() if line.strip()]
        if not lines:
            continue
        if all(line.startswith("|") for line in lines) and len(lines) >= 2:
            def cells(line):
                inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
                return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]
            body = [cells(line) for line in lines[2:]] if set(lines[1]) <= set("|-: ") else \
                [cells(line) for line in lines[1:]]
            blocks.append(Block("table", (cells(lines[0]), body)))
        else:
            blocks.append(Block("p", " ".join(lines)))
    return blocks


def render_html(blocks: list[Block], root: Path, title: str) -> str:
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{_html_inline(b.content)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_html_inline(b.content)}</p>")
        elif b.kind == "table":
            header, rows = b.content
            cells = "".join(f"<th>{_breakable(_html_inline(h))}</th>" for h in header)
            lines = [f"<table><thead><tr>{cells}</tr></thead><tbody>"]
            for row in rows:   # the first cell (a model spec) may wrap after its separators; numbers never wrap
                lines.append("<tr>" + "".join(f"<td>{_breakable(_html_inline(c)) if i == 0 else _html_inline(c)}</td>"
                                              for i, c in enumerate(row)) + "</tr>")
            lines.append("</tbody></table>")
            body.append("\n".join(lines))
        elif b.kind == "image":
            data = base64.b64encode((root / b.content).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em;max-width:100%}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4;font-weight:600}"
             "td{white-space:nowrap}td:first-child{white-space:normal;overflow-wrap:anywhere;max-width:22em}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "figcaption{color:#666;font-size:0.9em}code{background:#f4f4f4;padding:0 3px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------------------

def _fmt(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:#.3g}" if magnitude < 100 else f"{value:.0f}"
    if magnitude >= 1e-3:
        return f"{value:.4f}"
    return f"{value:.2e}"


def _fmt_std(value: float) -> str:
    """A standard deviation to two significant digits."""
    if value is None or not np.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.2g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.1e}"


def summary_table(results: pd.DataFrame, columns: list[str], primary: str, group: list[str],
                  maximise: Callable[[str], bool] = higher_is_better) -> tuple[list, list]:
    """Header and rows of the summary: mean ± std per group, best in bold, and the Welch test on ``primary``.

    With ``group = ["length", "model"]`` the best value and the test are taken among the models of each length.
    """
    stats = results.groupby(group, sort=False)[list(dict.fromkeys(columns + [primary]))].agg(["mean", "std", "count"])

    def peers(idx):   # the rows competing with idx: same length, or all of them
        if len(group) == 1:
            return list(stats.index)
        return [i for i in stats.index if i[:-1] == idx[:-1]]

    def best_index(idx, col):
        means = stats.loc[peers(idx), (col, "mean")].dropna()
        if means.empty:
            return None
        return means.idxmax() if maximise(col) else means.idxmin()

    header = list(group) + ["seeds"] + columns + [f"differs from best ({primary})"]
    rows = []
    for idx in stats.index:
        keys = idx if isinstance(idx, tuple) else (idx,)
        row = [str(int(k)) if isinstance(k, float) and k.is_integer() else str(k) for k in keys]
        row.append(str(int(stats.loc[idx, (primary, "count")])))
        for col in columns:
            mean, std = stats.loc[idx, (col, "mean")], stats.loc[idx, (col, "std")]
            constant = col == "parameters" and (pd.isna(std) or std == 0)   # the same model every seed
            text = _fmt(mean) + (f" ± {_fmt_std(std)}" if pd.notna(std) and not constant else "")
            best = best_index(idx, col)
            tied = stats.loc[peers(idx), (col, "mean")].nunique() <= 1    # nothing to single out
            if best is not None and not tied and pd.notna(mean) and mean == stats.loc[best, (col, "mean")]:
                text = f"**{text}**"
            row.append(text)
        best = best_index(idx, primary)
        if best is None:
            row.append("n/a")
        elif best == idx:
            row.append("best")
        else:
            p = welch_p_value(results.loc[_group_mask(results, group, idx), primary].dropna(),
                              results.loc[_group_mask(results, group, best), primary].dropna())
            row.append("n/a (one seed)" if p is None else
                       (f"yes (p={p:.3f})" if p < SIGNIFICANCE_LEVEL else f"no (p={p:.3f})"))
        rows.append(row)
    return header, rows


def _group_mask(frame: pd.DataFrame, group: list[str], idx) -> pd.Series:
    keys = idx if isinstance(idx, tuple) else (idx,)
    mask = pd.Series(True, index=frame.index)
    for col, value in zip(group, keys):
        mask &= frame[col] == value
    return mask


# ---------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    save_figure(fig, path)      # atomic, mode 0644 like every other file hybridrnn writes


def _legend(ax, entries: int, **kwargs) -> None:
    """A legend inside the axes for a few entries, to the right of them for more (so it hides no line);
    ``kwargs`` go to ``ax.legend`` (``handles``, ...)."""
    kwargs.setdefault("fontsize", 8)
    if entries > 4:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, **kwargs)
    else:
        ax.legend(**kwargs)


def _colors(models: list[str]) -> dict[str, Any]:
    cmap = _plt().get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(models)}


#: line styles that tell the seeds of a model apart in the learning curves (then repeated)
SEED_STYLES = ("-", "--", ":", "-.")


def plot_learning_curves(results: pd.DataFrame, root: Path, monitor: str, path: Path) -> bool:
    """Validation ``monitor`` against epoch: one colour per model, one line style per seed (the legend lists
    both), per length a panel."""
    plt = _plt()
    from matplotlib.lines import Line2D

    models = list(dict.fromkeys(results["model"]))
    colors = _colors(models)
    seeds = list(dict.fromkeys(results["seed"]))
    styles = {seed: SEED_STYLES[i % len(SEED_STYLES)] for i, seed in enumerate(seeds)}
    lengths = [None] if results["length"].isna().all() else sorted(results["length"].dropna().unique())
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4), squeeze=False)
    drew = False
    for ax, length in zip(axes[0], lengths):
        frame = results if length is None else results[results["length"] == length]
        shown_models, shown_seeds, values = [], [], []
        for _, row in frame.iterrows():
            records = epoch_records(root / str(row["run_dir"]))
            points = [(r["epoch"], r[f"val_{monitor}"]) for r in records if f"val_{monitor}" in r]
            if not points:
                continue
            x, y = zip(*points)
            values.extend(y)
            shown_models += [row["model"]] * (row["model"] not in shown_models)
            shown_seeds += [row["seed"]] * (row["seed"] not in shown_seeds)
            ax.plot(x, y, color=colors[row["model"]], ls=styles[row["seed"]], alpha=0.85, lw=1.3,
                    marker="." if len(x) < 15 else None)
            drew = True
        ax.set(xlabel="epoch", ylabel=f"validation {monitor}",
               title="learning curves" + (f" (length {int(length)})" if length is not None else ""))
        if values and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if shown_models:
            handles = [Line2D([], [], color=colors[m], lw=2, label=str(m)) for m in shown_models]
            if len(shown_seeds) > 1:
                handles += [Line2D([], [], color="0.3", ls=styles[s], lw=1.3, label=f"seed {s}")
                            for s in shown_seeds]
            _legend(ax, len(handles), handles=handles, handlelength=2.6)
    if drew:
        _save(fig, path)
    else:
        plt.close(fig)
    return drew


def monitor_is_log_scale(frame: pd.DataFrame, column: str) -> bool:
    values = frame[column].dropna() if column in frame else pd.Series(dtype=float)
    return bool(len(values) and (values > 0).all() and values.max() / max(values.min(), 1e-12) > 30)


def plot_metric_against(results: pd.DataFrame, x: str, xlabel: str, metric: str, path: Path) -> None:
    """Mean ± std of ``metric`` against mean ``x`` per model (per length when there are lengths: the longest)."""
    plt = _plt()
    frame = results
    note = ""
    if results["length"].notna().any():
        longest = results["length"].max()
        frame = results[results["length"] == longest]
        note = f" (length {int(longest)})"
    models = list(dict.fromkeys(frame["model"]))
    colors = _colors(models)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for model in models:
        sub = frame[frame["model"] == model]
        ax.scatter(sub[x], sub[metric], color=colors[model], alpha=0.35, s=14)
        ax.errorbar(sub[x].mean(), sub[metric].mean(), yerr=sub[metric].std() if len(sub) > 1 else None,
                    xerr=sub[x].std() if len(sub) > 1 else None, fmt="o", color=colors[model], capsize=3,
                    label=model, ms=7)
    ax.set(xlabel=xlabel, ylabel=metric.replace("_", " "), title=f"{metric.replace('_', ' ')} against {xlabel}{note}")
    if monitor_is_log_scale(frame, metric):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    _legend(ax, len(models))
    _save(fig, path)


def plot_metric_vs_length(results: pd.DataFrame, metric: str, threshold: Optional[float], path: Path) -> None:
    plt = _plt()
    models = list(dict.fromkeys(results["model"]))
    colors = _colors(models)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for model in models:
        sub = results[results["model"] == model].groupby("length")[metric]
        mean, std = sub.mean(), sub.std().fillna(0)
        ax.errorbar(mean.index, mean.values, yerr=std.values, marker="o", capsize=3, color=colors[model], label=model)
    if threshold is not None:
        ax.axhline(threshold, color="black", ls="--", lw=1, label=f"solved below {threshold:g}")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(_plt().NullFormatter())
    ax.set_xticks(sorted(results["length"].unique()))
    ax.set_xticklabels([str(int(v)) for v in sorted(results["length"].unique())])
    if (results[metric].dropna() > 0).all():
        ax.set_yscale("log")
    ax.set(xlabel="sequence length T", ylabel=metric.replace("_", " "), title=f"{metric.replace('_', ' ')} against length")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(models) + (threshold is not None))
    _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------

def _task_info(root: Path) -> tuple[str, str, str, dict]:
    """(task name, monitor, mode, base config dict) of a comparison folder."""
    plan = read_plan(root)
    config = Path(plan.get("train_config", root / "base_config.yaml"))
    base = read_yaml(config) if config.is_file() else {}
    task = str(base.get("task", ""))
    monitor, mode = "loss", "min"
    try:
        cls = get_task_class(task)
        monitor, mode = cls.monitor, cls.monitor_mode
    except (ConfigError, ImportError):   # an unknown or unimportable task still gets a report on its loss
        pass
    return task, monitor, mode, base


def _is_constant(results: pd.DataFrame, column: str, by: Optional[str]) -> bool:
    """Whether ``column`` takes one value (to 1e-9 relative) in all rows, or within each group of ``by``."""
    if len(results) < 2 or not results[column].notna().all():
        return False
    groups = results.groupby(by)[column] if by else [(None, results[column])]
    for _, values in groups:
        v = values.to_numpy(float)
        if not np.allclose(v, v[0], rtol=1e-9, atol=0):
            return False
    return True


def _hardware(root: Path, results: pd.DataFrame) -> str:
    """'cpu, 1 torch thread(s), torch 2.x' from the first run's environment.json ('' when there is none)."""
    for run_dir in results["run_dir"].dropna():
        path = root / str(run_dir) / "environment.json"
        if path.is_file():
            env = json.loads(path.read_text())
            parts = [str(env.get("device", "?"))]
            if env.get("device") == "cpu" and env.get("torch_threads"):
                parts.append(f"{env['torch_threads']} torch thread(s) of {env.get('cpu_count', '?')} cores")
            if env.get("torch"):
                parts.append(f"torch {env['torch']}")
            return ", ".join(parts)
    return ""


#: model-dependent flags that may happen to be equal in every run (every model beat the baselines): never
#: "reference values"
MODEL_FLAGS = ("beats_baselines", "solved")
#: the summary's cost columns and their headings
COST_COLUMNS = {"parameters": "parameters", "train_seconds_per_epoch": "train s / epoch",
                "epochs_to_best": "epochs to best", "infer_ms_per_batch": "inference ms / batch",
                "infer_ms_per_sequence": "inference ms / sequence"}
#: metric names a reference column may end in (``test_naive_mse``: the naive forecast's MSE)
COMMON_METRICS = ("loss", "mse", "mae", "rmse", "mape", "smape", "mase", "accuracy")
#: at most this many metric columns in one summary table (the rest go to a second one), so it fits 1280 px
METRICS_PER_TABLE = 5


def _is_flag(column: str) -> bool:
    return any(column.endswith(f) for f in MODEL_FLAGS)


def _reference_table(results: pd.DataFrame, constant: list[str], model_metrics: list[str], prefix: str,
                     has_lengths: bool) -> tuple[list, list]:
    """The constant (model-independent) metrics as a compact table: one row per reference forecast and one
    column per metric when their names are ``<prefix><reference>_<metric>`` of the models' metrics, else one
    row per column (per length: one row per length)."""
    if has_lengths:
        table = results.groupby("length")[constant].first()
        return ["length"] + constant, [[str(int(L))] + [_fmt(v) for v in table.loc[L]] for L in table.index]
    names = sorted({c[len(prefix):] for c in model_metrics if c.startswith(prefix)} | set(COMMON_METRICS),
                   key=len, reverse=True)
    split = {}
    for column in constant:
        rest = column[len(prefix):] if column.startswith(prefix) else column
        metric = next((m for m in names if rest.endswith("_" + m) and len(rest) > len(m) + 1), None)
        if metric is None:
            split = None
            break
        split[column] = (rest[:-len(metric) - 1], metric)
    if not split:
        return ["metric", "value"], [[c, _fmt(results[c].iloc[0])] for c in constant]
    references = list(dict.fromkeys(ref for ref, _ in split.values()))
    metrics = list(dict.fromkeys(m for _, m in split.values()))
    value = {(ref, m): results[c].iloc[0] for c, (ref, m) in split.items()}
    rows = [[ref] + [_fmt(value[(ref, m)]) if (ref, m) in value else "-" for m in metrics] for ref in references]
    return ["reference"] + [f"{prefix}{m}" for m in metrics], rows


def _task_sections(task_name: str, base: dict, plan: dict, results: pd.DataFrame) -> list[Block]:
    """The task's own report sections (``Task.report_sections``), as blocks; none when the task cannot be
    built from the comparison's config (an unknown task, a missing extra)."""
    if not task_name or not base:
        return []
    try:
        raw = {k: v for k, v in base.items() if k not in ("compare", "tune")}
        task = get_task_class(task_name)(coerce_config(raw, plan.get("overrides") or []))
        sections = task.report_sections(results)
    except (HybridRNNError, ImportError):
        return []
    blocks = []
    for heading, markdown in sections:
        blocks.append(Block("h2", heading))
        blocks.extend(markdown_blocks(markdown))
    return blocks


# ---------------------------------------------------------------------------------------------------------
# the report's sections, each a list of blocks
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Comparison:
    """What the sections of a report read: the results table and the setting of the comparison."""

    root: Path
    results: pd.DataFrame
    task: str
    monitor: str
    mode: str               # "min" or "max": the direction of the task's monitored metric
    base: dict              # the base config of the runs
    plan: dict              # compare.json
    hardware: str           # where the models were timed ('' when no run says)
    split: str              # "test", or "val" for a task without a test split

    @property
    def primary(self) -> str:
        return f"{self.split}_{self.monitor}"

    @property
    def prefix(self) -> str:
        return f"{self.split}_"

    @property
    def files(self) -> Path:
        return self.root / FILES

    @property
    def has_lengths(self) -> bool:
        return bool(self.results["length"].notna().any())

    @property
    def group(self) -> list[str]:
        return ["length", "model"] if self.has_lengths else ["model"]

    def maximise(self, column: str) -> bool:
        """Whether larger values of ``column`` are better (the task's direction for its monitored metric)."""
        if column in (self.primary, f"val_{self.monitor}"):
            return self.mode == "max"
        return higher_is_better(column)

    def best_run(self, runs: pd.DataFrame) -> pd.Series:
        """The row of ``runs`` with the best primary metric."""
        column = runs[self.primary]
        return runs.loc[column.idxmax() if self.mode == "max" else column.idxmin()]


@dataclass(frozen=True)
class _Columns:
    """The results columns the report shows."""

    metrics: list[str]      # the summary's metrics, the primary one first
    costs: list[str]        # the "Size and cost" table's columns
    same: list[str]         # metrics equal to the primary one in every run (named, not shown)
    constant: list[str]     # metrics that do not depend on the model (the reference values)


def _load_results(root: Path) -> pd.DataFrame:
    """``root/results.csv``, checked: it exists, has rows and has the columns every report reads."""
    csv = root / "results.csv"
    if not csv.is_file():
        raise RunDirError(f"{csv} does not exist: run the comparison first")
    results = pd.read_csv(csv)
    if results.empty:
        raise RunDirError(f"{csv} has no rows")
    missing = [c for c in ("model", "seed", "length", "parameters", "run_dir") if c not in results.columns]
    if missing:
        raise RunDirError(f"{csv}: missing columns {missing} (expected {BASE_COLUMNS})")
    return results


def _load_comparison(root: Path) -> _Comparison:
    """The checked results and the setting of the comparison in ``root``."""
    results = _load_results(root)
    task, monitor, mode, base = _task_info(root)
    hardware = _hardware(root, results)
    plan = read_plan(root)
    # the test split, or the validation split for a task without one (a character corpus with a val fraction)
    split = "test" if f"test_{monitor}" in results.columns else "val"
    if f"{split}_{monitor}" not in results.columns:
        raise RunDirError(f"{root / 'results.csv'}: no column test_{monitor} or val_{monitor} for the task's "
                         f"monitored metric {monitor!r}")
    return _Comparison(root, results, task, monitor, mode, base, plan, hardware, split)


def _requested_metrics(c: _Comparison) -> list[str]:
    """The metric columns of the split that ``compare.metrics`` names, or by default all of them but the solved
    flags; a ConfigError for a name the task does not report."""
    results, prefix = c.results, c.prefix
    if not c.plan.get("metrics"):
        return [col for col in results.columns if col.startswith(prefix) and not col.endswith("_solved")
                and col != f"{prefix}solved"]
    missing = [m for m in c.plan["metrics"] if f"{prefix}{m}" not in results.columns]
    if missing:
        raise ConfigError(f"compare.metrics names {missing}, which the task does not report; it reports "
                         f"{sorted(col[len(prefix):] for col in results.columns if col.startswith(prefix))}")
    return [f"{prefix}{m}" for m in c.plan["metrics"]]


def _columns(c: _Comparison) -> _Columns:
    """Which metrics the summary shows (and in which order), which it leaves out, and the cost columns."""
    results, primary = c.results, c.primary
    metrics = _requested_metrics(c)
    # a metric equal to the primary one in every row (the adding problem's MSE is its loss) says nothing new
    same = [col for col in metrics if col != primary and
            np.allclose(results[col].to_numpy(float), results[primary].to_numpy(float), equal_nan=True)]
    metrics = [primary] + [col for col in metrics if col != primary and col not in same]
    # a metric that is the same in every run (of a length) describes the data, not the models: the task's
    # reference baselines (naive forecasts); it goes to a table of its own (a model's flag such as
    # beats_baselines is the models' result even when every model has it)
    constant = [col for col in metrics[1:] if not _is_flag(col)
                and _is_constant(results, col, "length" if c.has_lengths else None)]
    metrics = [col for col in metrics if col not in constant]
    if f"val_{c.monitor}" in results.columns and c.split == "test":
        metrics.insert(1, f"val_{c.monitor}")
    metrics = [col for col in metrics if not _is_flag(col)] + [col for col in metrics if _is_flag(col)]
    metrics = [col for col in metrics if col in results.columns and results[col].notna().any()]
    costs = [col for col in ("parameters", "train_seconds_per_epoch", "epochs_to_best", "infer_ms_per_sequence")
             if col in results.columns and results[col].notna().any()]
    return _Columns(metrics, costs, same, constant)


def _title(c: _Comparison) -> list[Block]:
    """The title and the setup: config, data, training, overrides, seeds and runs."""
    base, plan, results = c.base, c.plan, c.results
    data = base.get("data", {}) if isinstance(base.get("data"), dict) else {}
    train = base.get("train", {}) if isinstance(base.get("train"), dict) else {}
    return [Block("h1", f"Comparison: {c.task or 'task'}"),
            Block("p", f"Config `{plan.get('config', '?')}`; data: "
                       + (", ".join(f"{k}={v}" for k, v in data.items()) or "defaults")
                       + "; training: " + (", ".join(f"{k}={v}" for k, v in train.items()) or "defaults")
                       + (f"; overrides: {', '.join(plan['overrides'])}" if plan.get("overrides") else "")
                       + f". {results['seed'].nunique()} seed(s) per model, {len(results)} runs.")]


def _summary(c: _Comparison, columns: _Columns) -> list[Block]:
    """The "Summary" section: the metric tables, the size and cost table, and how to read them."""
    blocks = [Block("h2", "Summary")]
    if c.split == "val":
        blocks.append(Block("p", "The task has no test split: the summary and the plots use the validation split "
                                 "(which also chose each run's best epoch, so the figures are optimistic)."))
    return blocks + _metric_tables(c, columns.metrics) + _cost_table(c, columns.costs) + [_summary_note(c, columns)]


def _metric_tables(c: _Comparison, metrics: list[str]) -> list[Block]:
    """The metrics (primary first, with the test against the best in the first table only): several narrow
    tables rather than one that needs scrolling at 1280 px."""
    tables = -(-len(metrics) // METRICS_PER_TABLE)
    size = -(-len(metrics) // tables)          # as even as can be: 9 metrics -> 5 + 4, not 4 + 4 + 1
    keys = len(c.group) + 1       # the group columns and "seeds"
    blocks = []
    for start in range(0, len(metrics), size):
        chunk = metrics[start:start + size]
        header, rows = summary_table(c.results, chunk, c.primary, c.group, c.maximise)
        if start:
            header, rows = header[:keys + len(chunk)], [r[:keys + len(chunk)] for r in rows]
        blocks.append(Block("table", (header, rows)))
    return blocks


def _cost_table(c: _Comparison, costs: list[str]) -> list[Block]:
    """The "Size and cost" table (no seeds column, no test): none when the results have no cost column."""
    if not costs:
        return []
    keys = len(c.group) + 1       # the group columns and "seeds"
    header, rows = summary_table(c.results, costs, c.primary, c.group, c.maximise)
    header = header[:len(c.group)] + [COST_COLUMNS.get(col, col) for col in costs]
    rows = [r[:len(c.group)] + r[keys:keys + len(costs)] for r in rows]
    return [Block("h3", "Size and cost"), Block("table", (header, rows))]


def _summary_note(c: _Comparison, columns: _Columns) -> Block:
    """How to read the summary: bold, the test against the best, how inference was timed and where."""
    results, primary, same = c.results, c.primary, columns.same
    paths = sorted(set(results["infer_path"].dropna().astype(str)) - {""}) if "infer_path" in results.columns else []
    return Block("p", f"Mean ± standard deviation over seeds; the best of each column in bold "
                      f"(lowest, except for accuracy-like metrics){' within each length' if c.has_lengths else ''}. "
                      f"'differs from best' compares each model's per-seed `{primary}` with the best model's "
                      f"by Welch's two-sided t-test: 'yes' means p < {SIGNIFICANCE_LEVEL}, a difference "
                      f"larger than the seed spread; 'no' means the seeds cannot tell them apart. "
                      + (f"`{primary}` equals {', '.join(f'`{col}`' for col in same)} in every run. " if same else "")
                      + "Inference time: one forward pass with the loss (no gradient) on one training batch "
                      "of `train.batch_size` sequences, per sequence (divided by the batch size); every "
                      "model was timed at the end of the comparison, after warm-up passes, in interleaved "
                      "rounds of shuffled order on one thread, and the figure is the median of the rounds"
                      + (f"; recurrent layers on their fastest path (`path=auto`): {'; '.join(paths)}"
                         if paths else "") + "."
                      + (f" Timed on {c.hardware}." if c.hardware else ""))


def _metric_against_length(c: _Comparison) -> list[Block]:
    """For a comparison over lengths: the primary metric against length."""
    if not c.has_lengths:
        return []
    plot_metric_vs_length(c.results, c.primary, None, c.files / "metric_vs_length.png")
    return [Block("image", f"{FILES}/metric_vs_length.png", f"{c.primary} against length (mean ± std over seeds)")]


def _learning_curves(c: _Comparison) -> list[Block]:
    """The "Learning curves" section: every run's validation metric per epoch."""
    blocks = [Block("h2", "Learning curves")]
    if plot_learning_curves(c.results, c.root, c.monitor, c.files / "learning_curves.png"):
        blocks.append(Block("image", f"{FILES}/learning_curves.png", f"validation {c.monitor} per epoch, every seed"))
    else:
        blocks.append(Block("p", "No per-epoch validation metrics were found in the runs' metrics.jsonl."))
    return blocks


def _size_and_cost_plots(c: _Comparison) -> list[Block]:
    """The primary metric against parameter count and (where the results have it) against training time."""
    results, primary, files = c.results, c.primary, c.files
    blocks = [Block("h2", "Accuracy against size and cost")]
    plot_metric_against(results, "parameters", "parameters", primary, files / "metric_vs_parameters.png")
    blocks.append(Block("image", f"{FILES}/metric_vs_parameters.png", f"{primary} against parameter count"))
    time_col = "train_seconds"
    if time_col in results.columns and results[time_col].notna().any():
        plot_metric_against(results, time_col, "training seconds", primary, files / "metric_vs_time.png")
        blocks.append(Block("image", f"{FILES}/metric_vs_time.png", f"{primary} against training time"))
    return blocks


def _task_plots(c: _Comparison) -> list[Block]:
    """The task's own plots of the best run (of the longest length when comparing over lengths), then those
    plots that the best run does not make, each from the best run of a model that makes it."""
    results = c.results
    pool = results[results["length"] == results["length"].max()] if c.has_lengths else results
    pool = pool[pool[c.primary].notna()]
    if pool.empty:
        return []
    best = c.best_run(pool)
    blocks, shown = _best_run_plots(c, best)
    extra = _plots_of_other_models(c, pool, best, shown)
    if extra:
        blocks.append(Block("h2", "Plots only some models make (each from its best run)"))
        blocks.extend(extra)
    return blocks


def _run_pngs(c: _Comparison, run: pd.Series) -> list[Path]:
    run_dir = c.root / str(run["run_dir"])
    return sorted(run_dir.glob("*.png")) if run_dir.is_dir() else []


def _copied_image(c: _Comparison, png: Path, name: str, caption: str) -> Block:
    """An image block of ``png`` copied into the report's figures as ``name``."""
    target = c.files / name
    shutil.copyfile(png, target)
    return Block("image", f"{FILES}/{target.name}", caption)


def _best_run_plots(c: _Comparison, best: pd.Series) -> tuple[list[Block], set[str]]:
    """The plots of the best run under a heading (none when it has none), and the names of its plot files."""
    pngs = _run_pngs(c, best)
    blocks = []
    if pngs:
        blocks.append(Block("h2", f"Task plots of the best run: {best['model']}, seed {int(best['seed'])}"
                                  + (f", length {int(best['length'])}" if c.has_lengths else "")))
        blocks += [_copied_image(c, png, f"best_{png.name}", png.stem.replace("_", " ")) for png in pngs]
    return blocks, {png.name for png in pngs}


def _plots_of_other_models(c: _Comparison, pool: pd.DataFrame, best: pd.Series, shown: set[str]) -> list[Block]:
    """Plots the best run does not make (attention maps of attention models): from each such model's best run."""
    blocks = []
    for model in dict.fromkeys(pool["model"]):
        if model == best["model"]:
            continue
        mine = c.best_run(pool[pool["model"] == model])
        for png in _run_pngs(c, mine):
            if png.name not in shown:
                blocks.append(_copied_image(c, png, f"{label_slug(str(model))}_{png.name}",
                                            f"{png.stem.replace('_', ' ')}: {model}, seed {int(mine['seed'])}"))
    return blocks


def _reference_values(c: _Comparison, columns: _Columns) -> list[Block]:
    """The "Reference values" section: the metrics that are the same for every model (none: no section)."""
    constant = columns.constant
    if not constant:
        return []
    model_metrics = [col for col in c.results.columns if col.startswith(c.prefix) and col not in constant]
    return [Block("h2", "Reference values"),
            Block("table", _reference_table(c.results, constant, model_metrics, c.prefix, c.has_lengths)),
            Block("p", "These test metrics are the same in every run (to 1e-9)"
                       + (" of a length" if c.has_lengths else "") + ", so they are left out of the "
                       "summary; for forecasting they are the naive, seasonal-naive and linear reference "
                       "forecasts, which do not depend on the model.")]


def _write_documents(root: Path, blocks: list[Block], task: str) -> tuple[Path, Path]:
    """Render ``blocks`` to ``root/report.md`` and ``root/report.html``; returns their paths."""
    md_path, html_path = root / "report.md", root / "report.html"
    atomic_write_text(md_path, render_markdown(blocks))
    atomic_write_text(html_path, render_html(blocks, root, f"hybridrnn comparison: {task}"))
    return md_path, html_path


def write_report(out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for the comparison in ``out_dir``; returns their paths."""
    comparison = _load_comparison(Path(out_dir))
    comparison.files.mkdir(exist_ok=True)
    blocks = _title(comparison)
    columns = _columns(comparison)      # a ConfigError for a compare.metrics name the task does not report
    blocks += _summary(comparison, columns)
    blocks += _task_sections(comparison.task, comparison.base, comparison.plan, comparison.results)
    blocks += _metric_against_length(comparison)
    blocks += _learning_curves(comparison)
    blocks += _size_and_cost_plots(comparison)
    blocks += _task_plots(comparison)
    blocks += _reference_values(comparison, columns)
    return _write_documents(comparison.root, blocks, comparison.task)
