"""The ``hybridrnn`` command line (typer). Heavy modules (torch, tasks) are imported inside the commands, so that
``hybridrnn --help`` answers at once (each such import is marked "start-up time").

Errors caused by the user's input (a :class:`~hybridrnn.errors.HybridRNNError`: a bad config, data file, run
directory or spec, a NaN loss, a missing extra; an ``OSError`` on a file: missing, read-only, disk full; a task
feature the task lacks) print one clean paragraph naming the file or key and exit with code 2;
``hybridrnn --debug ...`` shows the traceback instead. Any other exception, a plain ``ValueError`` included, is
a bug and shows its traceback.
"""
from __future__ import annotations

import errno
import json
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

from hybridrnn._io import atomic_write_text
from hybridrnn._version import __version__
from hybridrnn.errors import ConfigError, HybridRNNError

app = typer.Typer(name="hybridrnn", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="LSTM, GRU and hybrid LSTM-GRU networks: train, evaluate, predict, generate, compare, tune.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration files.")
app.add_typer(config_app, name="config")

_state = {"debug": False}

EXIT_USAGE = 2


def _flags_without_a_type() -> None:
    """typer's rich help shows a flag's type (``--json <bool>``) as if the flag took a value: show none."""
    from typer.core import TyperOption

    if getattr(TyperOption.display_type_rich, "_flag_aware", False):
        return
    original = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return original(self, ctx)

    display_type_rich._flag_aware = True
    TyperOption.display_type_rich = display_type_rich


_flags_without_a_type()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hybridrnn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug


def _fail(exc: BaseException) -> None:
    if _state["debug"]:
        raise exc
    typer.echo(f"error: {_message(exc)}", err=True)
    raise typer.Exit(EXIT_USAGE)


#: errno values that only a write raises (read-only file system, disk full, quota, file too large)
_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _written_path(filename) -> str:
    """The file an atomic write was writing: ``DIR/.NAME.tmp-PID`` -> ``DIR/NAME`` (hybridrnn._io.atomic_write)."""
    path = Path(str(filename))
    match = re.fullmatch(r"\.(.+)\.tmp-\d+", path.name)
    return str(path.with_name(match.group(1))) if match else str(path)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        # a failed read or write: name the operation, the path and what went wrong (read-only, disk full, ...)
        path = _written_path(exc.filename)
        operation = getattr(exc, "operation", None)
        if operation is None:
            writing = exc.errno in _WRITE_ERRNOS or path != str(exc.filename)
            operation = "write" if writing else "find" if exc.errno == errno.ENOENT else "open"
        target = f"{path} to {exc.filename2}" if exc.filename2 is not None else path
        return f"cannot {operation} {target}: {exc.strerror}" + ("" if exc.errno is None else f" (errno {exc.errno})")
    return str(exc) or type(exc).__name__


def _run(fn, *args, **kwargs):
    """Call ``fn``; the user's errors become one ``error:`` paragraph and exit code 2 (a traceback with --debug).

    The user's errors: a HybridRNNError (bad config, data, run directory, spec; a missing extra), an OSError
    on a file (missing, read-only, disk full, permission denied), and a task feature the task lacks
    (NotImplementedError). Anything else, a plain ValueError included, is a bug: its traceback is shown."""
    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except ImportError as exc:           # a missing optional extra (tensorboard, optuna, ...)
        if isinstance(exc, HybridRNNError) or "pip install" in str(exc):
            _fail(exc)
        raise
    except (HybridRNNError, OSError, NotImplementedError) as exc:
        _fail(exc)


def _write_table(frame, output: Optional[Path]) -> None:
    """A prediction table as CSV to ``output`` (tab-separated for .tsv), atomically, or to standard output."""
    if output is None:
        sys.stdout.write(frame.to_csv(index=False))
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, frame.to_csv(index=False, sep="\t" if output.suffix.lower() == ".tsv" else ","))
    except OSError as exc:
        exc.operation = "write the predictions to"
        raise
    typer.echo(f"wrote {len(frame)} rows to {output}", err=True)


# ---------------------------------------------------------------------------------------------------------


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config file (not needed with --resume)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<task>-<timestamp>)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value, e.g. --set train.lr=0.003 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    progress: Optional[str] = typer.Option(None, "--progress", help="auto | bar | plain | none (default: train.progress)."),
) -> None:
    """Train a model; writes weights, metrics, state and plots to the run directory.

    Several processes (DistributedDataParallel; gloo on CPU, NCCL on GPU):
    torchrun --standalone --nproc_per_node=2 -m hybridrnn train CONFIG
    """
    if resume is None and config is None:
        _fail(ConfigError("give a CONFIG file to train, or --resume RUN to continue a run"))
    if resume is not None and config is not None:
        _fail(ConfigError("give either a CONFIG file or --resume RUN, not both (resume uses RUN/config.yaml; "
                         "change values with --set)"))
    if progress is not None and progress not in ("auto", "bar", "plain", "none"):
        _fail(ConfigError(f"--progress must be auto, bar, plain or none, got {progress!r}"))

    def go():
        from hybridrnn.api import train_run  # start-up time

        return train_run(config, out=out, overrides=set_, resume=resume, progress=progress).run_dir

    _run(go)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory."),
    split: str = typer.Option("test", "--split", help="train | val | test (of the configured data)"),
    input: Optional[str] = typer.Option(None, "--input", help="Evaluate on every example of this file (or data set name) instead of a split of the configured data."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object of metrics (for scripts)."),
    weights: str = typer.Option("best", "--weights", help="best | last"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value of the run, e.g. --set data.fill=ffill (repeatable)."),
) -> None:
    """Metrics of a trained run and of its baselines on a split, or on a new file (best weights by default)."""

    def go():
        from hybridrnn.api import load  # start-up time

        loaded = load(run, weights=weights, overrides=set_)
        if as_json:  # with the task's per-step report (forecast) under "report"
            typer.echo(json.dumps(loaded.report(input, split=split)))
            return
        from hybridrnn.api import metrics_table  # start-up time

        rows, other = metrics_table(loaded.metrics(input, split=split), loaded.task.baselines)
        _print_metrics(rows, other, f"{run} ({'input ' + str(input) if input else split})")

    _run(go)


def _print_metrics(rows: dict[str, dict[str, float]], other: dict[str, float], title: str) -> None:
    """The model and each baseline side by side (one row each), then the other metrics."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.width = max(console.width, 110)   # never cut metric names (pipes default to 80 columns)
    if len(rows) > 1:
        columns = list(rows["model"])
        table = Table(title=title, title_justify="left")
        table.add_column("", no_wrap=True)
        for c in columns:
            table.add_column(c, justify="right", no_wrap=True)
        for name, row in rows.items():
            table.add_row(name, *(f"{row[c]:.4g}" if c in row else "-" for c in columns),
                          style="bold" if name == "model" else None)
        console.print(table)
    else:
        other = {**rows["model"], **other}
    if other:
        table = Table(title=None if len(rows) > 1 else title, title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in other.items():
            table.add_row(_metric_label(key, value, rows["model"]), _metric_value(key, value))
        console.print(table)


#: metrics that are yes/no flags (1.0 / 0.0 in the JSON)
_FLAGS = ("beats_baselines", "solved")


def _metric_value(key: str, value: float) -> str:
    if key.endswith(_FLAGS) and value in (0.0, 1.0):
        return "yes" if value else "no"
    return f"{value:.6g}"


def _metric_label(key: str, value: float, model: dict[str, float]) -> str:
    """``loss`` says what it is: the training objective, and which metric it equals (forecasting trains on the
    scaled target, so its loss is ``scaled_mse``, not the MSE in the data's units)."""
    if key != "loss":
        return key
    import math

    same = next((k for k, v in model.items() if k != "loss" and math.isclose(v, value, rel_tol=1e-6)), None)
    return f"loss (training objective{', = ' + same if same else ''})"


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory."),
    input: str = typer.Option(..., "--input", help="New inputs: a file (format defined by the task) or a data set name (bundled:NAME, shared:NAME)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Where to write predictions as CSV (.tsv: tab-separated; default: stdout)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value of the run, e.g. --set data.fill=ffill (repeatable)."),
) -> None:
    """Predict on new inputs with a trained run; needs only the run directory, not the training data."""

    def go():
        from hybridrnn.api import load  # start-up time

        _write_table(load(run, overrides=set_).predict(input), output)

    _run(go)


@app.command()
def generate(
    run: Path = typer.Argument(..., help="Run directory of a language model."),
    prompt: str = typer.Option("", "--prompt", help="Text to continue."),
    tokens: int = typer.Option(200, "--tokens", min=1, help="How many tokens to generate."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="Sampling temperature (0: greedy; default: the run's lm.temperature)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Sample from the k most likely tokens (default: the run's lm.top_k)."),
    seed: int = typer.Option(0, "--seed", help="Seed for reproducible sampling."),
) -> None:
    """Generate text from a trained language model, streaming one token at a time."""

    def go():
        from hybridrnn.api import load  # start-up time

        pieces = load(run).iter_generate(prompt, tokens, temperature=temperature, top_k=top_k, seed=seed)
        sys.stdout.write(prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")

    _run(go)


def _split_list(text: Optional[str], what: str, cast=str) -> Optional[list]:
    if text is None:
        return None
    items = [s.strip() for s in _split_top_level(text) if s.strip()]
    try:
        return [cast(s) for s in items]
    except ValueError:
        raise ConfigError(f"{what}: expected a comma-separated list, got {text!r}") from None


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and brackets (``(lstm:64|gru:64)[fusion=gate,tie_layers=true]``
    stays whole)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


@app.command()
def compare(
    config: Path = typer.Argument(..., help="YAML config of the task to compare models on."),
    models: Optional[str] = typer.Option(None, "--models", help='Comma-separated specs, each optionally with model options in brackets, e.g. "lstm:64,gru:64,lstm:64>gru:64,(lstm:64|gru:64)[fusion=gate]".'),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Seeds per model (default: compare.seeds of the config, else 3)."),
    out: Path = typer.Option(..., "--out", help="Output directory (results.csv, report.md, report.html)."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="Sequence lengths for the long-range suite, e.g. 50,100,200."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
) -> None:
    """Train every model with every seed on one task and write a comparison report."""

    def go():
        from hybridrnn.experiments.compare import run_compare  # start-up time

        run_compare(config, _split_list(models, "--models"), seeds, out, _split_list(lengths, "--lengths", int), set_)

    _run(go)


@app.command()
def tune(
    config: Path = typer.Argument(..., help="YAML config with a search space."),
    trials: int = typer.Option(20, "--trials", min=1, help="Number of trials for this worker."),
    storage: str = typer.Option("sqlite:///study.db", "--storage", help="Optuna storage URL shared by workers."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Study name (default: from the config)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
) -> None:
    """Hyper-parameter search with Optuna (the 'tune' extra)."""

    def go():
        from hybridrnn.experiments.tune import run_tune  # start-up time

        run_tune(config, trials, storage, study_name, set_)

    _run(go)


@config_app.command("show")
def config_show(
    config: Path = typer.Argument(..., help="YAML config file."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
) -> None:
    """Print the resolved configuration with every default filled in."""

    def go():
        from hybridrnn.api import load_config  # start-up time
        from hybridrnn.config import config_to_yaml  # start-up time

        typer.echo(config_to_yaml(load_config(config, set_)), nl=False)

    _run(go)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run directory."),
    output: Path = typer.Option(..., "--output", help="The ONNX file to write."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with torch before keeping it."),
) -> None:
    """Export a trained run's best model to ONNX (batch dimension dynamic; needs the 'onnx' extra)."""

    def go():
        from hybridrnn.api import load  # start-up time

        result = load(run).export(output, check=check)
        shapes = ", ".join(f"{k} (batch, {', '.join(map(str, v))})" for k, v in result["inputs"].items())
        typer.echo(f"wrote {result['output']}: inputs {shapes}; outputs {', '.join(result['outputs'])}")
        if result["max_abs_difference"] is not None:
            typer.echo(f"onnxruntime vs torch on a batch of 7: max abs difference {result['max_abs_difference']:.2g}")

    _run(go)


@app.command()
def backtest(
    run: Path = typer.Argument(..., help="Run directory of a forecaster."),
    input: str = typer.Option(..., "--input", help="The series to backtest on: a file or a data set name (bundled:NAME, shared:NAME)."),
    output: Path = typer.Option(..., "--output", help="The long table (id, cutoff, time, actual, forecasts) as CSV; the summary goes beside it (*.summary.csv)."),
    start: Optional[str] = typer.Option(None, "--start", help="First forecast time (a date, or a row number for a 'steps' series); default: the first time after the training data's validation part."),
    stride: int = typer.Option(1, "--stride", min=1, help="Steps between forecast origins."),
    refit: Optional[int] = typer.Option(None, "--refit", min=1, help="Retrain the model every N origins on the data before the origin (slow, honest); default: reuse the trained model."),
    intervals: Optional[str] = typer.Option(None, "--intervals", help="'conformal': intervals calibrated on the validation windows; 'model': the quantiles of a quantile or distribution head."),
    level: float = typer.Option(0.8, "--level", min=0.01, max=0.99, help="Coverage of the intervals."),
) -> None:
    """Rolling-origin backtest: forecasts from many origins, each from the data before it, with the baselines
    on the same origins."""

    def go():
        from hybridrnn.experiments.backtest import backtest_command  # start-up time

        typer.echo(backtest_command(run, input, output, start=start, stride=stride, refit=refit,
                                    intervals=intervals, level=level))

    _run(go)


@app.command()
def memory(
    run: Path = typer.Argument(..., help="Run directory of a long_range task."),
    split: str = typer.Option("test", "--split", help="train | val | test"),
    examples: int = typer.Option(128, "--examples", min=1, help="How many sequences to measure on."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where memory.json / memory.png go (default: RUN)."),
) -> None:
    """How far back a trained long-range model learns from: the gradient reaching each step, and the
    forget (LSTM) / update (GRU) gate statistics."""
    if split not in ("train", "val", "test"):
        _fail(ConfigError(f"--split must be train, val or test, got {split!r}"))

    def go():
        from hybridrnn.experiments.memory import (  # start-up time
            memory_diagnostic,
            print_memory,
        )

        print_memory(memory_diagnostic(run, split, examples, out), out or run)

    _run(go)


@app.command()
def datasets() -> None:
    """List the named datasets (bundled and in the shared data folder)."""

    def go():
        try:
            from hybridrnn.data.registry import list_datasets
        except ImportError:
            raise HybridRNNError("no dataset registry in this installation (hybridrnn.data.registry)") from None
        from rich.console import Console
        from rich.table import Table

        rows = list(list_datasets())
        console = Console()
        console.width = max(console.width, 140)   # pipes default to 80 columns: keep one line per data set
        table = Table(title="datasets", title_justify="left")
        if rows and isinstance(rows[0], dict):
            columns = list(dict.fromkeys(k for r in rows for k in r))
            for c in columns:
                table.add_column(str(c))
            for r in rows:
                table.add_row(*(str(r.get(c, "")) for c in columns))
        else:
            table.add_column("name")
            for r in rows:
                table.add_row(str(getattr(r, "name", r)))
        console.print(table)

    _run(go)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
