"""Fuzzing the readers of user input with hypothesis: every input either loads or raises a ``HybridRNNError``.

Covered: the YAML config loader (``parse_yaml`` + ``build_config``), the CSV/Parquet table loader
(``load_table``), the UCR/UEA ``.ts`` reader, the text readers (labelled lines, one text per line, CSV texts,
GloVe vectors, saved text encoders; encodings) and the encoder spec parser (plus ``build_encoder`` on every
small spec that parses). Each is fed generated inputs and mutated valid inputs (bytes inserted, deleted,
repeated, flipped; lines swapped; special characters). No other exception may escape and no input may hang.

Time box: the examples per property are few (``FUZZ_EXAMPLES``, scaled by ``HYBRIDRNN_FUZZ_SCALE``) and the
whole file shares ``FUZZ_BUDGET_S`` seconds (18) among its properties (a property past its share returns at once
from its remaining examples), so the file runs in about 35 s on two busy shared cores (10 s of it importing
every task module for the config property). ``benchmarks/fuzz.py`` runs the same properties with many
more examples and writes ``benchmarks/results/fuzz.md``. Examples are derandomised here (the same inputs
every run, so CI is stable); the benchmark draws fresh ones.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import inspect
import io
import json
import os
import signal
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hybridrnn.errors import HybridRNNError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: examples per property in the test suite (multiplied by $HYBRIDRNN_FUZZ_SCALE, default 1)
SCALE = float(os.environ.get("HYBRIDRNN_FUZZ_SCALE", "1"))
FUZZ_EXAMPLES = {"yaml": 80, "yaml_mutated": 80, "csv": 80, "csv_mutated": 80, "parquet": 25, "ts": 80,
                 "ts_mutated": 60, "ts_tables": 60, "text": 60, "text_mutated": 60, "glove": 40, "encoder_json": 40,
                 "spec": 250, "spec_mutated": 150, "spec_build": 25}
#: seconds of fuzzing in this file (the suite-level time box), shared among the properties by WEIGHTS: a
#: property whose share is spent returns at once from its remaining examples (counted as skipped)
FUZZ_BUDGET_S = float(os.environ.get("HYBRIDRNN_FUZZ_BUDGET_S", "18"))
#: rough seconds each property takes at the suite's example counts on a quiet core (the first YAML example
#: imports every task module)
WEIGHTS = {"yaml": 4, "yaml_mutated": 1.5, "csv": 3, "csv_mutated": 1.5, "parquet": 1.5, "ts": 1,
           "ts_mutated": 0.5, "ts_tables": 1, "text": 1, "text_mutated": 1, "glove": 0.5, "encoder_json": 1, "spec": 1.5,
           "spec_mutated": 1.5, "spec_build": 5}
#: seconds one example may take before it counts as a hang
HANG_S = float(os.environ.get("HYBRIDRNN_FUZZ_HANG_S", "20"))



def examples(name: str) -> int:
    return max(1, int(FUZZ_EXAMPLES[name] * SCALE))


def fuzz_settings(name: str, **kw):
    return settings(max_examples=examples(name), deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), **kw)


# ---------------------------------------------------------------------------------------------------------
# the property: loads, or a HybridRNNError with a message; nothing else, no hang

class Hang(Exception):
    """An example ran longer than HANG_S seconds."""


@dataclass
class Outcome:
    """Counts per property; ``collect`` records crashes (for the benchmark) instead of raising them."""

    collect: bool = False
    cases: Counter = field(default_factory=Counter)       # property -> examples run
    loaded: Counter = field(default_factory=Counter)      # property -> inputs that loaded
    refused: Counter = field(default_factory=Counter)     # (property, error class) -> count
    findings: list = field(default_factory=list)          # (property, exception type, message, input, traceback)
    skipped: Counter = field(default_factory=Counter)     # property -> examples past the time budget
    budget_s: float | None = FUZZ_BUDGET_S
    started: dict = field(default_factory=dict)           # property -> time of its first example


OUTCOME = Outcome()


@contextlib.contextmanager
def _alarm(seconds: float):
    if seconds <= 0 or not hasattr(signal, "SIGALRM") or os.name != "posix":
        yield
        return

    def _raise(signum, frame):
        raise Hang(f"no answer after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def over_budget(prop: str, outcome: Outcome | None = None) -> bool:
    """Whether ``prop`` (``name`` or ``name:part``) has spent its share of the time box."""
    outcome = outcome or OUTCOME
    if outcome.budget_s is None:
        return False
    name = prop.split(":")[0]
    started = outcome.started.setdefault(name, time.monotonic())
    share = outcome.budget_s * WEIGHTS.get(name, 1.0) / sum(WEIGHTS.values())
    return time.monotonic() - started > share


def check(prop: str, fn, shown, outcome: Outcome | None = None):
    """Run ``fn()``: record a load or a HybridRNNError; anything else (or a hang) fails the example, or is
    recorded as a finding when ``outcome.collect``. Returns fn's result (None when it raised)."""
    outcome = outcome or OUTCOME
    if over_budget(prop, outcome):
        outcome.skipped[prop] += 1
        return None
    outcome.cases[prop] += 1
    try:
        with _alarm(HANG_S), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn()
    except HybridRNNError as exc:
        outcome.refused[(prop, type(exc).__name__)] += 1
        assert str(exc).strip(), f"{type(exc).__name__} without a message for {shown!r}"
        return None
    except Exception as exc:  # noqa: BLE001 - the point: anything else is a finding
        if not outcome.collect:
            raise AssertionError(f"{prop}: {type(exc).__name__}: {exc}\ninput: {_short(shown)}") from exc
        outcome.findings.append((prop, f"{type(exc).__module__}.{type(exc).__name__}", str(exc)[:300],
                                 _short(shown), traceback.format_exc(limit=-4)))
        return None
    outcome.loaded[prop] += 1
    return result


def _short(value, n: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


def rarely(draw, k: int = 6) -> bool:
    """True about once in ``k + 1`` draws (hypothesis leans towards the first entry of sampled_from)."""
    return draw(st.sampled_from([False] * k + [True]))


# ---------------------------------------------------------------------------------------------------------
# mutations of valid inputs (bytes)

SPECIAL_BYTES = [b",", b"\n", b"\r\n", b'"', b"'", b":", b"#", b"@", b"?", b"nan", b"inf", b"-inf", b"1e999",
                 b"\x00", b"\xff", b"\xfe\xff", b"\xef\xbb\xbf", b"\xc3", b"\t", b" ", b"{", b"[", b"]", b"}",
                 b"&a", b"*a", b"!!", b"- ", b"NA", b"", b"9" * 30, b"\\", b"|", b">", b"(", b")", b"x"]


@st.composite
def mutated(draw, base: bytes, max_mutations: int = 4) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(0 if rarely(draw, 8) else 1, max_mutations))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "flip", "repeat", "truncate", "swap_lines",
                                   "dup_line"]))
        n = len(data)
        i = draw(st.integers(0, max(0, n)))
        if op == "insert":
            chunk = draw(st.one_of(st.sampled_from(SPECIAL_BYTES), st.binary(max_size=8)))
            data[i:i] = chunk
        elif op == "delete" and n:
            data[i:i + draw(st.integers(1, 16))] = b""
        elif op == "replace" and n:
            data[min(i, n - 1):min(i, n - 1) + 1] = draw(st.sampled_from(SPECIAL_BYTES))
        elif op == "flip" and n:
            j = min(i, n - 1)
            data[j] ^= 1 << draw(st.integers(0, 7))
        elif op == "repeat" and n:
            chunk = bytes(data[i:i + draw(st.integers(1, 40))])
            data[i:i] = chunk * draw(st.integers(1, 5))
        elif op == "truncate":
            del data[i:]
        elif op in ("swap_lines", "dup_line"):
            lines = bytes(data).split(b"\n")
            if len(lines) > 1:
                a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
                if op == "swap_lines":
                    lines[a], lines[b] = lines[b], lines[a]
                else:
                    lines.insert(b, lines[a])
                data = bytearray(b"\n".join(lines))
    return bytes(data)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------------------
# YAML configs

def _build_config():
    try:
        from hybridrnn.api.registry import build_config
    except ImportError:  # before the move to hybridrnn.api
        from hybridrnn.config import build_config
    return build_config


CONFIG_FILES = sorted(p for p in (REPO / "configs").rglob("*.yaml"))
KEYS = ["task", "data", "model", "train", "window", "path", "encoder", "epochs", "lr", "batch_size", "target",
        "time_column", "split", "scaler", "attention", "dropout", "compare", "tune", "fill", "frequency",
        "lookback", "horizon", "seed", "device", "<<", "classifier", "format", "tokenizer", "covariates"]
TASKS = ["forecast", "classify", "language_model", "long_range", "nope", "", "Forecast"]

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["lstm:8", "(lstm:8|>gru:8", "lstm:0", "auto", "bundled:seattle_weather",
                                           "2020-13-45", "nan", ".inf", "~", "0x1F", "1_000", "yes", "no"]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)),
    max_leaves=25)


RISKY_YAML_SCALARS = ["2020-13-45", "2020-02-30 25:61:00", "!!int 0x", "!!int 0b2", "!!float x", "!!binary xx=",
                      "!!timestamp 2020-99-99", "!!python/object:os.system x", "!!python/name:os.system",
                      "!!set {a}", "!!omap [x]", "!!pairs [a]", "!!str", "!!null x", "!!bool maybe", "&a [*a]",
                      "*undefined", "1" + "0" * 5000, ".inf", "-.inf", ".nan", "1e999", "0o999", "0x_", "+.5e3",
                      "'unterminated", '"\\x"', '"\\ud800"', "~", "[1, {a: [2, {b: 3}]}]", "{? [a]: 1}"]


@st.composite
def yaml_documents(draw) -> str:
    import yaml

    kind = draw(st.sampled_from(["perturbed", "perturbed", "mapping", "tagged", "deep", "aliases", "raw"]))
    if kind == "perturbed":   # a real config with one value replaced, one key renamed or one section dropped
        data = yaml.safe_load(draw(st.sampled_from(_config_bases())))
        path, node = [], data
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node, key=str)))
            path.append(key)
            node = node[key]
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if path:
            op = draw(st.sampled_from(["value", "value", "rename", "drop"]))
            if op == "value":
                parent[path[-1]] = draw(yaml_values)
            elif op == "rename":
                parent[draw(st.sampled_from(KEYS)) + draw(st.sampled_from(["", "s", "_"]))] = parent.pop(path[-1])
            else:
                del parent[path[-1]]
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if kind == "mapping":
        data = draw(st.dictionaries(st.sampled_from(KEYS), yaml_values, max_size=6))
        if draw(st.booleans()):
            data["task"] = draw(st.sampled_from(TASKS))
        return yaml.safe_dump(data, default_flow_style=draw(st.booleans()), allow_unicode=True)
    if kind == "tagged":   # scalars whose tag constructor fails, Python tags, odd literals, written by hand
        value = draw(st.sampled_from(RISKY_YAML_SCALARS))
        key = draw(st.sampled_from(["lr", "epochs", "encoder", "seed", "x"]))
        return f"task: {draw(st.sampled_from(TASKS[:2]))}\ntrain:\n  {key}: {value}\n"
    if kind == "deep":
        depth = draw(st.sampled_from([1, 10, 49, 51, 100, 300, 500, 1000, 5000]))
        if draw(st.booleans()):
            return "a: " + "[" * depth + "]" * depth + "\n"
        return "task: forecast\n" + "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "1\n"
    if kind == "aliases":
        width, levels = draw(st.integers(1, 12)), draw(st.integers(1, 8))
        lines = ["l0: &l0 [" + ",".join(["x"] * width) + "]"]
        for i in range(1, levels):
            lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]")
        return "\n".join(lines) + "\n"
    return draw(st.text(alphabet=st.sampled_from(list(":-[]{},&*!|>#'\"\n ?%@`\t") + list("abcx01")),
                        max_size=80))


def yaml_property(text: str, outcome: Outcome | None = None, prop: str = "yaml") -> None:
    from hybridrnn.config import parse_yaml

    def run():
        data = parse_yaml(text, "<fuzz>")
        assert isinstance(data, dict)
        return _build_config()(data, "<fuzz>", text=text)

    check(prop, run, text, outcome)


@pytest.fixture(scope="module")
def warm_config():
    """Import every task's config class before the YAML properties' time starts to count."""
    build = _build_config()
    for task in TASKS:
        with contextlib.suppress(HybridRNNError):
            build({"task": task}, "<warm-up>")


@fuzz_settings("yaml")
@given(yaml_documents())
def test_fuzz_yaml_config(warm_config, text):
    yaml_property(text)


@functools.lru_cache(maxsize=1)
def _config_bases() -> tuple[bytes, ...]:
    return tuple(p.read_bytes() for p in CONFIG_FILES) or (b"task: forecast\n",)


@fuzz_settings("yaml_mutated")
@given(st.data())
def test_fuzz_yaml_config_mutated(warm_config, data):
    base = data.draw(st.sampled_from(_config_bases()))
    raw = data.draw(mutated(base))
    yaml_property(raw.decode("utf-8", errors="replace"), prop="yaml_mutated")


def test_yaml_nested_500_levels_is_a_config_error():
    from hybridrnn.config import parse_yaml
    from hybridrnn.errors import ConfigError

    for text in ("a: " + "[" * 500 + "]" * 500, "".join("  " * i + "k:\n" for i in range(500)) + "  " * 500 + "1"):
        with pytest.raises(ConfigError, match="nest"):
            parse_yaml(text)
    with pytest.raises(ConfigError, match="refers to itself"):
        parse_yaml("a: &x [*x]")
    with pytest.raises(ConfigError, match="more than 100,000 values"):
        parse_yaml("l0: &l0 [" + ",".join(["x"] * 20) + "]\n"
                   + "".join(f"l{i}: &l{i} [" + ",".join([f'*l{i - 1}'] * 20) + "]\n" for i in range(1, 6)))
    with pytest.raises(ConfigError, match="key 'lr' twice"):
        parse_yaml("train:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError, match="month must be in 1..12"):
        parse_yaml("a: 2020-13-45")
    with pytest.raises(ConfigError, match="a value cannot be read .KeyError 'maybe'"):   # found by benchmarks/fuzz.py
        parse_yaml("train:\n  x: !!bool maybe\n")
    assert parse_yaml("b: &b {x: 1}\nc:\n  <<: *b\n  x: 2\n")["c"] == {"x": 2}   # merge keys still work


# ---------------------------------------------------------------------------------------------------------
# CSV / Parquet tables

FREQS = [None, None, "D", "h", "steps", "B", "MS", "2D", "bogus", "15min"]
CELL_GARBAGE = ["", "nan", "NaN", "inf", "-inf", "1e999", "-1e999", "abc", "1,5", "True", "0x10", " 3 ", "1_0",
                "NA", "\u00e9", "2020-02-30", "9" * 40, '"q"', "1e-400"]


@st.composite
def csv_tables(draw):
    """(csv bytes, load_table kwargs, number of data rows): mostly sound tables with a few faults."""
    import pandas as pd

    n = draw(st.integers(0, 30)) if rarely(draw, 3) else draw(st.integers(3, 30))
    freq = draw(st.sampled_from(["D", "h", "B", "MS", "15min", "W-SUN"]))
    start = "2020-01-01" if not rarely(draw) else draw(st.sampled_from(
        ["2019-12-31 23:00", "1677-09-22", "2262-04-01", "2020-03-29 01:00", "2020-01-01 00:00+01:00"]))
    try:
        times = [str(t) for t in pd.date_range(start, periods=n, freq=freq)]
    except Exception:  # noqa: BLE001 - out of pandas' range: plain strings instead
        times = [f"{start}+{i}" for i in range(n)]
    y = [repr(draw(st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False))) for _ in range(n)]
    x = [str(draw(st.integers(-5, 5))) for _ in range(n)]
    cat = [draw(st.sampled_from(["a", "b", "c"])) for _ in range(n)]
    rows = [list(r) for r in zip(times, y, x, cat)]
    if rows and rarely(draw, 1):   # corrupt a few cells
        for _ in range(draw(st.integers(1, 3))):
            i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, 3))
            rows[i][j] = draw(st.sampled_from(CELL_GARBAGE + ["2020-01-01 00:00+01:00", "2020-01-01 00:00+02:00"]))
    if rows and rarely(draw, 3):   # one non-finite target value and no other fault: must never load
        rows[draw(st.integers(0, n - 1))][1] = draw(st.sampled_from(["inf", "-inf", "1e999", "-Infinity"]))
    if rows and rarely(draw):   # swap or repeat a row
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        if draw(st.booleans()):
            rows[i], rows[j] = rows[j], rows[i]
        else:
            rows.insert(j, list(rows[i]))
            n += 1
    header = ["t", "y", "x", "cat"] if not rarely(draw) else draw(st.sampled_from(
        [["t", "y", "y", "cat"], ["t", "y", "x"], ["t", "y", "x", "cat", "extra"], ["", "y", "x", "cat"]]))
    sep = "\n" if draw(st.booleans()) else "\r\n"
    text = sep.join([",".join(header)] + [",".join(r) for r in rows]) + (sep if draw(st.booleans()) else "")
    kwargs = dict(time_column="t" if not rarely(draw) else draw(st.sampled_from([None, "missing", ["y", "x"]])),
                  numeric=["y", "x"] if not rarely(draw) else draw(st.sampled_from([["y"], [], ["cat"]])),
                  categorical=["cat"] if not rarely(draw) else draw(st.sampled_from([[], ["x"]])),
                  frequency=None if not rarely(draw, 2) else draw(st.sampled_from(FREQS)),
                  fill=None if not rarely(draw, 3) else draw(st.sampled_from(["ffill", "interpolate", "zero"])))
    if kwargs["time_column"] is None and kwargs["frequency"] is None:
        kwargs["frequency"] = "steps"
    if rarely(draw, 4):
        kwargs["where"] = {"cat": draw(st.sampled_from(["a", "z"]))}
    if rarely(draw, 4):
        kwargs["start"] = draw(st.sampled_from(["2020-01-02", "2030-01-01", "not a date", None]))
        kwargs["end"] = draw(st.sampled_from(["2020-01-05", None, "2019-01-01"]))
    if rarely(draw, 3):
        kwargs["rows"] = slice(draw(st.integers(-12, 5)), draw(st.sampled_from([None, -1, 3, 40])))
    return text.encode("utf-8"), kwargs, n


def table_property(path, kwargs: dict, outcome: Outcome | None = None, prop: str = "csv",
                   data_rows: int | None = None) -> None:
    import numpy as np

    from hybridrnn.data.timeseries import load_table

    if "rows" in kwargs and "rows" not in inspect.signature(load_table).parameters:   # an older commit
        kwargs = {k: v for k, v in kwargs.items() if k != "rows"}

    def run():
        table = load_table(path, **kwargs)
        # nothing silently dropped, filled or left non-finite
        assert len(table) > 0
        assert np.isfinite(table.numeric.to_numpy()).all()
        assert (np.diff(table.rows) > 0).all()
        if table.times is not None:
            assert table.times.is_monotonic_increasing and table.times.is_unique
        if kwargs.get("fill") is None:
            assert not table.filled
        plain = not any(kwargs.get(k) for k in ("where", "start", "end", "rows"))
        if plain and data_rows is not None:
            assert len(table) == data_rows, f"{data_rows} data rows but {len(table)} loaded"
        return table

    check(prop, run, (path.read_bytes() if isinstance(path, Path) and path.is_file() else path, kwargs), outcome)


@fuzz_settings("csv")
@given(csv_tables(), st.sampled_from([".csv", ".csv", ".txt", ".csv.gz"]))
def test_fuzz_csv_tables(tmp_dir, table, suffix):
    raw, kwargs, n = table
    data = gzip.compress(raw, mtime=0) if suffix.endswith(".gz") else raw
    table_property(_write(tmp_dir, "table" + suffix, data), kwargs, data_rows=n)


_CSV_BASE = (b"t,y,x,cat\n2020-01-01,1.5,1,a\n2020-01-02,2.5,2,b\n2020-01-03,-0.5,3,a\n2020-01-04,4,4,c\n"
             b"2020-01-05,5e3,5,b\n")


@fuzz_settings("csv_mutated")
@given(st.data(), st.sampled_from([".csv", ".csv", ".csv", ".csv.gz", ".csv.gz!", ".parquet"]),
       st.sampled_from([None, "D", "steps"]), st.sampled_from([True, True, False]))
def test_fuzz_csv_mutated_bytes(tmp_dir, data, suffix, frequency, header):
    base = _CSV_BASE if header else _CSV_BASE.split(b"\n", 1)[1]   # no header line: every line is data
    raw = data.draw(mutated(base, 3))
    if suffix == ".csv.gz":
        raw = gzip.compress(raw, mtime=0)
    elif suffix == ".csv.gz!":   # mutated gzip bytes
        raw, suffix = gzip.compress(raw, mtime=0)[: max(1, len(raw) // 3)] + raw[:5], ".csv.gz"
    kwargs = dict(time_column="t" if header else "0", numeric=["y", "x"] if header else ["1"],
                  categorical=["cat"] if header else [], frequency=frequency, header=header)
    table_property(_write(tmp_dir, "mutated" + suffix, raw), kwargs, prop="csv_mutated")


@fuzz_settings("parquet")
@given(csv_tables(), st.integers(0, 6), st.booleans())
def test_fuzz_parquet_tables(tmp_dir, table, cut, from_frame):
    pytest.importorskip("pyarrow")
    import pandas as pd

    raw, kwargs, n = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, index_col=False)
    except Exception:  # noqa: BLE001 - a duplicate or broken header, a long row: not a parquet case
        return
    if from_frame:   # a DataFrame source goes through the same checks
        table_property(frame, kwargs, prop="parquet", data_rows=n)
        return
    buf = io.BytesIO()
    try:
        frame.to_parquet(buf)
    except Exception:  # noqa: BLE001 - pyarrow refuses e.g. duplicate names
        return
    data = buf.getvalue()
    if cut:   # a damaged file
        data = data[: len(data) * cut // 7] + data[len(data) * cut // 7 + 3:]
    table_property(_write(tmp_dir, "table.parquet", data), kwargs, prop="parquet", data_rows=None if cut else n)


# ---------------------------------------------------------------------------------------------------------
# UCR/UEA .ts files

@st.composite
def ts_files(draw) -> bytes:
    dims = draw(st.integers(1, 3))
    classes = draw(st.lists(st.sampled_from(["a", "b", "1", "2", "class_3"]), min_size=1, max_size=3, unique=True))
    lines = ["# a comment", "@problemName fuzz"]
    if rarely(draw, 3):
        lines.append(f"@timeStamps {draw(st.sampled_from(['false', 'true']))}")
    if draw(st.booleans()):
        lines.append(f"@dimensions {dims if not rarely(draw) else draw(st.sampled_from([str(dims + 1), 'two', '']))}")
    lines.append(f"@univariate {'true' if dims == 1 else 'false'}")
    if draw(st.booleans()):
        declared = classes if not rarely(draw) else classes[:1]
        lines.append("@classLabel true " + " ".join(declared))
    if not rarely(draw, 12):
        lines.append("@data")
    for _ in range(draw(st.integers(1, 6))):
        length = draw(st.integers(1, 6)) if draw(st.booleans()) else 3
        chans = []
        for _c in range(dims if not rarely(draw, 12) else dims + 1):
            vals = [repr(draw(st.floats(-1e6, 1e6, allow_nan=False))) for _ in range(length)]
            if rarely(draw, 12):
                vals[draw(st.integers(0, len(vals) - 1))] = draw(st.sampled_from(
                    ["?", "NaN", "inf", "-inf", "1e39", "", "x", "1e999", " 2 ", "1_0", "\u0663"]))
            chans.append(",".join(vals))
        label = draw(st.sampled_from(classes)) if not rarely(draw, 12) else draw(st.sampled_from(["", "zz", " "]))
        lines.append(":".join(chans) + ":" + label)
    return "\n".join(lines).encode("utf-8")


def ts_property(path: Path, outcome: Outcome | None = None, prop: str = "ts") -> None:
    import numpy as np

    from hybridrnn.data.uea import read_ts

    def run():
        data = read_ts(path)
        assert len(data) > 0
        assert all(s.dtype == np.float32 and s.ndim == 2 and np.isfinite(s).all() for s in data.series)
        assert len({s.shape[1] for s in data.series}) == 1
        assert set(data.labels) <= set(data.class_names)
        return data

    check(prop, run, path.read_bytes(), outcome)


@fuzz_settings("ts")
@given(ts_files())
def test_fuzz_ts_files(tmp_dir, raw):
    ts_property(_write(tmp_dir, "fuzz.ts", raw))


_TS_BASE = (b"#comment\n@problemName toy\n@timeStamps false\n@univariate false\n@dimensions 2\n"
            b"@classLabel true a b\n@data\n1.0,2.0,3.0:4,5,6:a\n0.5,0.25,1:1,1,1:b\n1,2:3,4:a\n")


@fuzz_settings("ts_mutated")
@given(mutated(_TS_BASE, 5))
def test_fuzz_ts_mutated_bytes(tmp_dir, raw):
    ts_property(_write(tmp_dir, "mutated.ts", raw), prop="ts_mutated")


_LONG_BASE = b"series,t,a,b,label\ns1,1,1.0,2.0,x\ns1,0,0.5,1.5,x\ns2,0,3.0,4.0,y\ns2,1,3.5,4.5,y\n"
_SEQ_BASES = {"seq_1.csv": b"#a,b\n1,2\n3,4\n", "seq_2.csv": b"#a,b\n5,6\n", "target.csv": b"#id,label\n1,1\n2,-1\n"}


def series_files_property(kind: str, path: Path, outcome: Outcome | None = None, prop: str = "ts_tables") -> None:
    """The other classification readers: a long-format CSV, and one CSV per sequence in a zip."""
    import numpy as np

    from hybridrnn.data.uea import read_sequence_files, read_series_table

    def run():
        if kind == "long":
            data = read_series_table(path, "series", "label", time_column="t")
        else:
            data = read_sequence_files(path, "seq_{id}.csv", "target.csv")
        assert len(data) > 0 and all(np.isfinite(s).all() and s.shape[0] > 0 for s in data.series)
        assert set(data.labels) <= set(data.class_names)

    check(f"{prop}:{kind}", run, path.read_bytes(), outcome)


@fuzz_settings("ts_tables")
@given(st.data(), st.sampled_from(["long", "zip", "zip_cut"]))
def test_fuzz_series_tables_and_sequence_zips(tmp_dir, data, kind):
    import zipfile

    if kind == "long":
        series_files_property("long", _write(tmp_dir, "long.csv", data.draw(mutated(_LONG_BASE, 3))))
        return
    path = tmp_dir / "seq.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in _SEQ_BASES.items():
            archive.writestr(name, data.draw(mutated(content, 2)) if rarely(data.draw, 1) else content)
    if kind == "zip_cut":
        raw = path.read_bytes()
        cut = data.draw(st.integers(0, len(raw) - 1))
        path.write_bytes(raw[:cut] + data.draw(st.binary(max_size=4)) + raw[cut + 1:])
    series_files_property("zip", path)


# ---------------------------------------------------------------------------------------------------------
# text readers

ENCODINGS = ["utf-8", "utf-8", "latin-1", "cp1252", "utf-16", "ascii", "nope", "rot13", "utf-8-sig"]
_TEXT_BASE = "pos a fine film ! \u00e9l\u00e8ve\nneg it is bad .\r\n3 what is it ?\n".encode("utf-8")
_TEXT_CSV_BASE = b'text,label\n"a fine, film",pos\nbad film,neg\n"multi\nline",pos\n'


def text_property(path: Path, encoding: str, outcome: Outcome | None = None, prop: str = "text") -> None:
    from hybridrnn.data import text as tx

    def lines():
        texts, labels = tx.read_labelled_lines(path, encoding=encoding)
        assert len(texts) == len(labels) > 0 and all(t.strip() for t in texts) and all(labels)

    def one_per_line():
        texts = tx.read_text_lines(path, encoding=encoding)
        assert texts and all(texts)

    def table():
        texts, labels = tx.read_text_table(path, "text", "label", encoding=encoding)
        assert len(texts) == len(labels) > 0

    def whole():
        assert isinstance(tx.read_text_file(path, encoding), str)

    shown = (path.read_bytes(), encoding)
    for name, fn, reader in (("lines", lines, "read_labelled_lines"), ("one_per_line", one_per_line, "read_text_lines"),
                             ("table", table, "read_text_table"), ("whole", whole, "read_text_file")):
        if hasattr(tx, reader):   # (benchmarks/fuzz.py also runs on older commits that lack some readers)
            check(f"{prop}:{name}", fn, shown, outcome)


@fuzz_settings("text")
@given(st.one_of(st.binary(max_size=200), st.text(max_size=120).map(lambda s: s.encode("utf-8")),
                 st.lists(st.tuples(st.sampled_from(["pos", "neg", "", " ", "1"]), st.text(max_size=20)),
                          max_size=6).map(lambda rows: "\n".join(f"{a} {b}" for a, b in rows).encode("utf-8")),
                 st.lists(st.tuples(st.text(max_size=20), st.sampled_from(["pos", "neg", "", "1"])), max_size=6).map(
                     lambda rows: ("text,label\n" + "".join(
                         '"' + a.replace('"', '""') + '",' + b + "\n" for a, b in rows)).encode("utf-8"))),
       st.sampled_from(ENCODINGS), st.sampled_from([".txt", ".csv", ".gz"]))
def test_fuzz_text_readers(tmp_dir, raw, encoding, suffix):
    if suffix == ".gz" and raw[:1] != b"\x1f":
        raw = gzip.compress(raw, mtime=0)
    text_property(_write(tmp_dir, "texts" + suffix, raw), encoding)


@fuzz_settings("text_mutated")
@given(st.sampled_from([_TEXT_BASE, _TEXT_CSV_BASE, "\u00e9t\u00e9 ok\n".encode("latin-1")]).flatmap(
    lambda base: mutated(base, 5)), st.sampled_from(ENCODINGS))
def test_fuzz_text_readers_mutated(tmp_dir, raw, encoding):
    text_property(_write(tmp_dir, "mutated.txt", raw), encoding, prop="text_mutated")


_GLOVE_BASE = b"the 0.1 0.2 0.3\nfilm -1 0 1e-3\nFine 1 2 3\n"


def glove_property(path: Path, outcome: Outcome | None = None, prop: str = "glove") -> None:
    import numpy as np

    from hybridrnn.data.text import Vocabulary, load_glove

    vocab = Vocabulary(["<pad>", "<unk>", "the", "film", "fine", "x"])

    def run():
        weights, coverage = load_glove(path, vocab)
        assert weights.shape[0] == len(vocab) and np.isfinite(weights.numpy()).all()

    check(prop, run, path.read_bytes(), outcome)


@fuzz_settings("glove")
@given(mutated(_GLOVE_BASE, 5))
def test_fuzz_glove_vectors(tmp_dir, raw):
    glove_property(_write(tmp_dir, "glove.txt", raw))


def encoder_json_property(path: Path, outcome: Outcome | None = None, prop: str = "encoder_json") -> None:
    from hybridrnn.data.text import load_text_encoder

    def run():
        enc = load_text_encoder(path)
        assert enc.vocab_size >= 2
        enc.decode(enc.encode("a fine film"))

    check(prop, run, path.read_bytes(), outcome)


def _encoder_bases() -> list[bytes]:
    from hybridrnn.data.text import build_text_encoder

    out = []
    for kind in ("char", "word", "subword"):
        enc = build_text_encoder(kind, ["a fine film", "a bad film", "fine fine"], min_freq=1,
                                 subword_vocab_size=60)
        if kind == "subword":
            out.append(enc.tokenizer.to_str().encode("utf-8"))
        else:
            out.append(json.dumps({"kind": enc.kind, **enc.tokenizer.options(), "min_freq": 1,
                                   **enc.vocabulary.to_dict()}).encode("utf-8"))
    return out


@fuzz_settings("encoder_json")
@given(st.data())
def test_fuzz_text_encoder_json(tmp_dir, data):
    bases = _encoder_bases_cached()
    raw = data.draw(st.one_of(st.sampled_from(bases[:2]).flatmap(lambda b: mutated(b, 4)),
                              st.sampled_from(bases[2:]).flatmap(lambda b: mutated(b, 2)),
                              st.sampled_from([b"[]", b"{}", b'{"kind": "char"}', b'{"kind": "word", "tokens": [1]}',
                                               b'{"kind": "char", "tokens": ["<pad>", "<unk>", "a", "a"]}',
                                               b'{"model": {}}', b'{"kind": "char", "tokens": ["<pad>", "<unk>"], '
                                               b'"min_freq": "x"}', b"[" * 5000])))
    encoder_json_property(_write(tmp_dir, "text_encoder.json", raw))


_ENCODER_BASES: list[bytes] = []


def _encoder_bases_cached() -> list[bytes]:
    if not _ENCODER_BASES:
        _ENCODER_BASES.extend(_encoder_bases())
    return _ENCODER_BASES


# ---------------------------------------------------------------------------------------------------------
# encoder specs

SPEC_TOKENS = ["lstm", "gru", "bilstm", "bigru", "LSTM", "rnn", ":", "x", "X", "0", "1", "8", "64", "99999999999",
               "(", ")", "|", ">", " ", "\t", "\n", "2.5", "-", "\u0663", "\u00b2", "lstn", ""]


@st.composite
def spec_asts(draw, depth: int = 3, max_units: int = 8, max_layers: int = 3):
    from hybridrnn.nn.spec import Layer, Parallel, Stack

    if depth <= 0 or draw(st.integers(0, 2)) == 0:
        return Layer(draw(st.sampled_from(["lstm", "gru"])), draw(st.integers(1, max_units)),
                     draw(st.integers(1, max_layers)), draw(st.booleans()))
    children = draw(st.lists(spec_asts(depth - 1, max_units, max_layers), min_size=2, max_size=3))
    if draw(st.booleans()):
        flat = []
        for c in children:
            flat.extend(c.items if isinstance(c, Stack) else [c])
        return Stack(tuple(flat))
    return Parallel(tuple(children))


spec_texts = st.one_of(
    st.lists(st.sampled_from(SPEC_TOKENS), max_size=14).map("".join),
    st.text(max_size=30),
    st.sampled_from([1, 31, 32, 33, 200, 1000, 5000]).map(lambda d: "(" * d + "lstm:8" + ")" * d),
    st.sampled_from(["lstm:99999999999", "gru:16384", "bilstm:16384", "lstm:16385", "gru:8x65", "lstm:1x64",
                     "(lstm:8|>gru:8", "lstm:0", "lstm:8|", "((lstm:8)", "lstm:\u0663", "lstm:8x\u00b2"]),
    st.integers(1, 400).map(lambda n: ">".join(["gru:2"] * n)),
)


def spec_property(text: str, outcome: Outcome | None = None, prop: str = "spec") -> None:
    from hybridrnn.nn.spec import format_spec, parse_spec

    def run():
        ast = parse_spec(text)
        assert parse_spec(format_spec(ast)) == ast
        return ast

    check(prop, run, text, outcome)


@fuzz_settings("spec")
@given(spec_texts)
def test_fuzz_spec_parser(text):
    spec_property(text)


@fuzz_settings("spec_mutated")
@given(spec_asts(depth=3, max_units=10**6, max_layers=100).flatmap(
    lambda ast: mutated(__import__("hybridrnn.nn.spec", fromlist=["format_spec"]).format_spec(ast).encode(), 3)))
def test_fuzz_spec_parser_mutated(raw):
    spec_property(raw.decode("utf-8", errors="replace"), prop="spec_mutated")


def spec_build_property(ast, options: dict, outcome: Outcome | None = None, prop: str = "spec_build") -> None:
    """A spec that parses builds (or is refused with a ValueError naming the value) and runs one batch."""
    import torch

    from hybridrnn.nn.hybrid import build_encoder
    from hybridrnn.nn.spec import format_spec, parse_spec

    text = format_spec(ast)

    def run():
        assert parse_spec(text) == ast
        try:
            enc = build_encoder(text, 3, **options)
        except HybridRNNError:
            raise
        except ValueError as exc:   # allowed: an option that does not fit the spec, named in the message
            assert str(exc).strip()
            return None
        out = enc(torch.randn(2, 4, 3))
        out = out[0] if isinstance(out, tuple) else out
        assert out.shape[:2] == (2, 4) and torch.isfinite(out).all()
        return enc

    check(prop, run, (text, options), outcome)


spec_build_options = st.fixed_dictionaries({}, optional={
    "fusion": st.sampled_from(["concat", "sum", "gate"]), "dropout": st.sampled_from([0.0, 0.3]),
    "layer_norm": st.booleans(), "share_input_projection": st.sampled_from([False, True, 4]),
    "tie_layers": st.booleans(), "path": st.sampled_from(["auto", "fused", "custom"]),
    "locked_dropout": st.booleans(), "coupled": st.booleans()})


@fuzz_settings("spec_build")
@given(spec_asts(depth=2, max_units=6, max_layers=2), spec_build_options)
def test_fuzz_specs_that_parse_build(ast, options):
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        spec_build_property(ast, options)


def test_fuzz_file_stays_in_its_time_box():
    """Runs last in this file: every property ran examples and none found a crash. ``pytest -s`` prints the
    counts. (The time box itself is enforced by skipping examples past the budget, not asserted here: tests
    never assert wall-clock times, which swing several-fold on a shared machine.)"""
    ran = Counter()
    for prop, n in OUTCOME.cases.items():
        ran[prop.split(":")[0]] += n
    print("\nfuzz cases run:", dict(ran), "loaded:", sum(OUTCOME.loaded.values()),
          "refused:", sum(OUTCOME.refused.values()), "skipped (time box):", sum(OUTCOME.skipped.values()))
    assert not OUTCOME.findings
    if len(ran) == len(FUZZ_EXAMPLES):   # the whole file ran (not a -k selection)
        assert all(n > 0 for n in ran.values()), ran
