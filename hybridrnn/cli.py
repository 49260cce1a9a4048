"""The ``hybridrnn`` command line (typer). Heavy modules (torch, tasks) are imported inside the commands.

Errors caused by the user's input (a bad config, a missing file, a corrupt run directory, a NaN loss) print
one clean paragraph and exit with code 2; ``hybridrnn --debug ...`` shows the traceback instead.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, List, Optional

import typer

app = typer.Typer(name="hybridrnn", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="LSTM, GRU and hybrid LSTM-GRU networks: train, evaluate, predict, generate, compare, tune.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration files.")
app.add_typer(config_app, name="config")

_state = {"debug": False}

EXIT_USAGE = 2


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _user_errors() -> tuple[type[BaseException], ...]:
    # NotImplementedError: an optional task feature (predict, export) the task lacks; ImportError: a missing extra
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
                                         NotImplementedError, ImportError]
    if "hybridrnn.train.trainer" in sys.modules:
        errors.append(sys.modules["hybridrnn.train.trainer"].NonFiniteLossError)
    return tuple(errors)


def _fail(exc: BaseException) -> None:
    if _state["debug"]:
        raise exc
    message = str(exc) or type(exc).__name__
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _run(fn, *args, **kwargs):
    """Call ``fn``; user errors become a clean message and exit code 2 (a traceback with --debug)."""
    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except ImportError as exc:           # a missing optional extra (tensorboard, optuna, ...)
        if "pip install" in str(exc) or "extra" in str(exc):
            _fail(exc)
        raise
    except _user_errors() as exc:
        _fail(exc)


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
        _fail(ValueError("give a CONFIG file to train, or --resume RUN to continue a run"))
    if resume is not None and config is not None:
        _fail(ValueError("give either a CONFIG file or --resume RUN, not both (resume uses RUN/config.yaml; "
                         "change values with --set)"))
    if progress is not None and progress not in ("auto", "bar", "plain", "none"):
        _fail(ValueError(f"--progress must be auto, bar, plain or none, got {progress!r}"))

    def go():
        from hybridrnn.train.run import train as train_run

        return train_run(config, out=out, overrides=set_, resume=resume, progress=progress)

    _run(go)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory."),
    split: str = typer.Option("test", "--split", help="train | val | test"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object of metrics (for scripts)."),
    weights: str = typer.Option("best", "--weights", help="best | last"),
) -> None:
    """Metrics of a trained run on a split (best weights by default)."""

    def go():
        from hybridrnn.train.run import evaluate_run, report_run

        if as_json:  # with the task's per-step report (forecast) under "report"
            typer.echo(json.dumps(report_run(run, split, weights=weights)))
            return
        metrics = evaluate_run(run, split, weights=weights)
        from rich.console import Console
        from rich.table import Table

        from hybridrnn.train.run import run_task_class

        rows, other = metrics_by_forecaster(metrics, run_task_class(run).baselines)
        console = Console()
        console.width = max(console.width, 110)   # never cut metric names (pipes default to 80 columns)
        if len(rows) > 1:  # the model and each baseline side by side, one row each
            columns = list(rows["model"])
            table = Table(title=f"{run} ({split})", title_justify="left")
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
            table = Table(title=None if len(rows) > 1 else f"{run} ({split})", title_justify="left")
            table.add_column("metric")
            table.add_column("value", justify="right")
            for key, value in other.items():
                table.add_row(key, f"{value:.6g}")
            console.print(table)

    _run(go)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory."),
    input: Path = typer.Option(..., "--input", help="New inputs: a file (format defined by the task) or a data set name (bundled:NAME, shared:NAME)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Where to write predictions (default: stdout)."),
) -> None:
    """Predict on new inputs with a trained run (delegates to the task)."""

    def go():
        from hybridrnn.train.run import predict_run

        predict_run(run, input, output)

    _run(go)


@app.command()
def generate(
    run: Path = typer.Argument(..., help="Run directory of a language model."),
    prompt: str = typer.Option("", "--prompt", help="Text to continue."),
    tokens: int = typer.Option(200, "--tokens", min=1, help="How many tokens to generate."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="Sampling temperature (0: greedy)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Sample from the k most likely tokens."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for reproducible sampling."),
) -> None:
    """Generate text from a trained language model, streaming one token at a time."""

    def go():
        from hybridrnn.tasks.language_model import generate_cli

        generate_cli(run, prompt, tokens, temperature, top_k, seed)

    _run(go)


def _split_list(text: Optional[str], what: str, cast=str) -> Optional[list]:
    if text is None:
        return None
    items = [s.strip() for s in _split_top_level(text) if s.strip()]
    try:
        return [cast(s) for s in items]
    except ValueError:
        raise ValueError(f"{what}: expected a comma-separated list, got {text!r}") from None


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
        from hybridrnn.experiments.compare import run_compare

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
        from hybridrnn.experiments.tune import run_tune

        run_tune(config, trials, storage, study_name, set_)

    _run(go)


@config_app.command("show")
def config_show(
    config: Path = typer.Argument(..., help="YAML config file."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
) -> None:
    """Print the resolved configuration with every default filled in."""

    def go():
        from hybridrnn.config import config_to_yaml, load_config

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
        from hybridrnn.train.export import export_onnx

        result = export_onnx(run, output, check=check)
        shapes = ", ".join(f"{k} (batch, {', '.join(map(str, v))})" for k, v in result["inputs"].items())
        typer.echo(f"wrote {result['output']}: inputs {shapes}; outputs {', '.join(result['outputs'])}")
        if result["max_abs_difference"] is not None:
            typer.echo(f"onnxruntime vs torch on a batch of 7: max abs difference {result['max_abs_difference']:.2g}")

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

    def go():
        from hybridrnn.experiments.memory import memory_diagnostic, print_memory

        print_memory(memory_diagnostic(run, split, examples, out), out or run)

    _run(go)


@app.command()
def datasets() -> None:
    """List the named datasets (bundled and in the shared data folder)."""

    def go():
        try:
            from hybridrnn.data.registry import list_datasets
        except ImportError:
            raise ValueError("no dataset registry in this installation (hybridrnn.data.registry)") from None
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


def metrics_by_forecaster(metrics: dict[str, float],
                          baselines: Iterable[str]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Split ``evaluate()`` metrics into ``{"model" | baseline: {metric: value}}`` (a baseline's ``naive_mae``
    becomes ``["naive"]["mae"]``; only metrics the model also has) and the remaining keys."""
    names = sorted(baselines, key=len, reverse=True)   # 'seasonal_naive_' before 'naive_'
    rows: dict[str, dict[str, float]] = {"model": {}}
    claimed = {}
    for key in metrics:
        owner = next((b for b in names if key.startswith(b + "_")), None)
        if owner is not None:
            claimed[key] = (owner, key[len(owner) + 1:])
    for key, value in metrics.items():
        if key not in claimed:
            rows["model"][key] = value
    other = {}
    for key, (owner, metric) in claimed.items():
        if metric in rows["model"]:
            rows.setdefault(owner, {})[metric] = metrics[key]
        else:
            other[key] = metrics[key]
    shared = {m for row in list(rows.values())[1:] for m in row}
    if len(rows) > 1:   # model keys no baseline has (loss, best_baseline_mae, ...) go below the table
        for key in [k for k in rows["model"] if k not in shared]:
            other[key] = rows["model"].pop(key)
    return rows, other


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
