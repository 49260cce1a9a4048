"""The long fuzz run: the properties of ``tests/test_fuzz.py`` with many more (and fresh) examples.

Every input must load or raise a ``HybridRNNError``; anything else, or an input that takes longer than
``--hang`` seconds, is a finding. Unlike the test suite, a finding does not stop the run: each is recorded
(exception, message, input, where it was raised) and the run goes on, so one run lists every distinct crash.
Writes ``benchmarks/results/fuzz.md`` (cases per property, how many loaded, the error classes that refused the
rest, the findings deduplicated by exception type and raising line) and prints a summary.

    python benchmarks/fuzz.py [--scale 20] [--seed 0] [--only yaml,csv,...] [--hang 30]
        [--results benchmarks/results/fuzz.md]

``--scale 20`` runs 20 times the test suite's examples per property (about 30 000 cases; some 10 minutes on
one core). ``--seed`` makes a run repeatable (hypothesis draws from it instead of the suite's fixed inputs).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

os.environ.setdefault("HYBRIDRNN_FUZZ_BUDGET_S", "0")   # the suite's time box does not apply here

import test_fuzz as tf  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

#: property group -> (the test function, its fixture argument: the temporary folder, "warm" or none)
PROPERTIES = {
    "yaml": (tf.test_fuzz_yaml_config, "warm"),
    "yaml_mutated": (tf.test_fuzz_yaml_config_mutated, "warm"),
    "csv": (tf.test_fuzz_csv_tables, True),
    "csv_mutated": (tf.test_fuzz_csv_mutated_bytes, True),
    "parquet": (tf.test_fuzz_parquet_tables, True),
    "ts": (tf.test_fuzz_ts_files, True),
    "ts_mutated": (tf.test_fuzz_ts_mutated_bytes, True),
    "ts_tables": (tf.test_fuzz_series_tables_and_sequence_zips, True),
    "text": (tf.test_fuzz_text_readers, True),
    "text_mutated": (tf.test_fuzz_text_readers_mutated, True),
    "glove": (tf.test_fuzz_glove_vectors, True),
    "encoder_json": (tf.test_fuzz_text_encoder_json, True),
    "spec": (tf.test_fuzz_spec_parser, False),
    "spec_mutated": (tf.test_fuzz_spec_parser_mutated, False),
    "spec_build": (tf.test_fuzz_specs_that_parse_build, False),
}


def run(scale: float, seed: int, only: list[str], hang: float) -> tuple[tf.Outcome, dict]:
    outcome = tf.Outcome(collect=True, budget_s=None)
    tf.OUTCOME = outcome           # check() reads the module's OUTCOME
    tf.HANG_S = hang
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            fn, takes_dir = PROPERTIES[name]
            n = max(1, int(tf.FUZZ_EXAMPLES[name] * scale))
            fn._hypothesis_internal_use_settings = settings(
                max_examples=n, deadline=None, database=None, derandomize=False,
                suppress_health_check=list(HealthCheck))
            fn._hypothesis_internal_use_seed = seed
            started = time.perf_counter()
            print(f"{name}: {n} examples ...", flush=True)
            try:
                if takes_dir == "warm":
                    fn(None)
                elif takes_dir:
                    fn(Path(tmp))
                else:
                    fn()
            except Exception as exc:  # noqa: BLE001 - an error of the property itself (not of the loader)
                outcome.findings.append((name, f"property {type(exc).__name__}", str(exc)[:300], "", ""))
            seconds[name] = time.perf_counter() - started
            found = sum(1 for f in outcome.findings if f[0].split(":")[0] == name)
            print(f"  {seconds[name]:.0f} s, findings so far: {found}", flush=True)
    return outcome, seconds


def _site(tb: str) -> str:
    """The innermost 'File ..., line N, in f' of a traceback (which line raised), shortened to the repo."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb)
    if not frames:
        return "?"
    path, line, func = frames[-1]
    path = path.replace(str(REPO) + "/", "")
    path = re.sub(r".*site-packages/", "", path)
    return f"{path}:{line} ({func})"


def report(outcome: tf.Outcome, seconds: dict, scale: float, seed: int, hang: float, brief: bool = False) -> str:
    groups = defaultdict(lambda: {"cases": 0, "loaded": 0, "refused": Counter()})
    for prop, n in outcome.cases.items():
        groups[prop]["cases"] += n
    for prop, n in outcome.loaded.items():
        groups[prop]["loaded"] += n
    for (prop, cls), n in outcome.refused.items():
        groups[prop]["refused"][cls] += n
    crashes = defaultdict(list)
    for prop, kind, message, shown, tb in outcome.findings:
        crashes[(prop, kind, _site(tb))].append((message, shown))
    total = sum(g["cases"] for g in groups.values())
    lines = [
        "# Fuzzing the readers of user input",
        "",
        f"`python benchmarks/fuzz.py --scale {scale:g} --seed {seed}`: the properties of `tests/test_fuzz.py` with "
        f"{scale:g} times its examples, fresh inputs (seed {seed}), a hang limit of {hang:g} s per input. "
        f"Python {platform.python_version()}, {platform.machine()}; "
        f"{sum(seconds.values()):.0f} s in all.",
        "",
        "The property: every input loads, or raises a `HybridRNNError` (ConfigError, DataError, RunDirError, "
        "SpecError) with a message; any other exception, or an input that does not return within the hang limit, "
        "is a finding. Loaded inputs are also checked (finite numbers, nothing dropped, labels among the classes, "
        "a spec that round-trips through `format_spec`, a small spec that builds and runs).",
        "",
        f"**{total:,} cases, {len(crashes)} distinct finding(s).**",
        "",
        "| property | cases | loaded | refused (by class) | findings | seconds |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for prop in sorted(groups):
        g = groups[prop]
        refused = ", ".join(f"{cls} {n}" for cls, n in g["refused"].most_common())
        found = sum(len(v) for (p, _, _), v in crashes.items() if p == prop)
        secs = seconds.get(prop.split(":")[0])
        shown_secs = f"{secs:.0f}" if secs is not None and ":" not in prop else ""
        lines.append(f"| {prop} | {g['cases']:,} | {g['loaded']:,} | {refused or '-'} | {found} | {shown_secs} |")
    lines += ["", "## Findings", ""]
    if not crashes:
        lines.append("None: every input loaded or was refused with a `HybridRNNError`.")
    for (prop, kind, site), items in sorted(crashes.items()):
        message, shown = items[0]
        lines.append(f"- **{prop}**: `{kind}` raised at `{site}` ({len(items)} input(s)): "
                     f"{message.splitlines()[0][:120 if brief else 200] if message else ''}")
        if not brief:
            lines.append(f"  - e.g. input `{shown[:300]}`")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(PROPERTIES))
    parser.add_argument("--hang", type=float, default=30.0)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "fuzz.md"))
    parser.add_argument("--brief", action="store_true", help="list findings without an example input")
    parser.add_argument("--append", metavar="TITLE", help="append this run to --results under a '## TITLE' "
                        "section (e.g. the same fuzzers on an older commit) instead of replacing the file")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(PROPERTIES))
    if unknown:
        parser.error(f"unknown properties {unknown}; known: {', '.join(PROPERTIES)}")
    outcome, seconds = run(args.scale, args.seed, only, args.hang)
    text = report(outcome, seconds, args.scale, args.seed, args.hang, brief=args.brief)
    if args.append:
        body = text.split("\n", 2)[2].replace("\n## Findings", "\n### Findings")
        previous = Path(args.results).read_text(encoding="utf-8") if Path(args.results).exists() else ""
        text = previous.rstrip("\n") + f"\n\n## {args.append}\n\n" + body
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.results).with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.results)
    print(text)
    return 1 if outcome.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
