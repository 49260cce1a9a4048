"""The comparison harness and its report: CSV columns, report contents, resuming, the statistics."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hybridrnn.experiments.compare import BASE_COLUMNS, ModelEntry, parse_model, parse_models, run_compare
from hybridrnn.experiments.report import higher_is_better, welch_p_value, write_report
from hybridrnn.tasks.long_range_report import longest_solved

MODELS = "lstm:6,(lstm:4|gru:4)[fusion=sum]"


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "task": "long_range",
        "data": {"problem": "adding", "length": 8, "n_train": 48, "n_val": 16, "n_test": 16},
        "model": {"encoder": "lstm:4"},
        "train": {"epochs": 2, "batch_size": 16, "progress": "none", "num_threads": 1},
    }))
    return path


def test_parse_models_with_options():
    entries = parse_models("lstm:64, (lstm:64|gru:64)[fusion=gate,share_input_projection=true], gru:8x2")
    assert [e.encoder for e in entries] == ["lstm:64", "(lstm:64|gru:64)", "gru:8x2"]
    assert dict(entries[1].options) == {"fusion": "gate", "share_input_projection": True}
    assert entries[1].overrides() == ["model.encoder=(lstm:64|gru:64)", "model.fusion=gate",
                                      "model.share_input_projection=true"]
    assert parse_models([{"encoder": "gru:8", "tie_layers": True}])[0] == ModelEntry("gru:8", (("tie_layers", True),))
    with pytest.raises(ValueError, match="twice"):
        parse_models("lstm:8,lstm:8")
    with pytest.raises(ValueError):
        parse_models("lstm:8[fusion]")
    with pytest.raises(ValueError):
        parse_models("lsdm:8")


def test_compare_writes_results_report_and_resumes(tiny_config, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    from hybridrnn.experiments import compare as compare_module

    real_train = compare_module.train_run
    calls = []

    def crashing_train(config=None, out=None, overrides=(), resume=None, **kw):
        calls.append((str(out), resume))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")        # the comparison dies while the third row trains
        return real_train(config, out=out, overrides=overrides, resume=resume, **kw)

    out = tmp_path / "cmp"
    monkeypatch.setattr(compare_module, "train_run", crashing_train)
    with pytest.raises(KeyboardInterrupt):
        run_compare(tiny_config, MODELS, 2, out, progress=lambda *_: None)
    done_first = sorted(p.parent.name for p in out.glob("runs/*/row.json"))
    assert len(done_first) == 2
    assert len(pd.read_csv(out / "results.csv")) == 2              # finished rows are on disk
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/row.json")}

    def counting_train(config=None, out=None, overrides=(), resume=None, **kw):
        calls.append((str(out), resume))
        return real_train(config, out=out, overrides=overrides, resume=resume, **kw)

    calls.clear()
    monkeypatch.setattr(compare_module, "train_run", counting_train)
    run_compare(tiny_config, MODELS, 2, out, progress=lambda *_: None)
    retrained = sorted(c[0].rsplit("/", 1)[-1] for c in calls)
    assert len(retrained) == 2 and not set(retrained) & set(done_first)      # only the unfinished rows trained
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:len(BASE_COLUMNS)]) == BASE_COLUMNS
    for col in ("val_loss", "test_loss", "test_mse", "test_mae", "test_solved"):
        assert col in results.columns
    assert len(results) == 4 and sorted(results["seed"]) == [0, 0, 1, 1]
    assert set(results["model"]) == {"lstm:6", "(lstm:4|gru:4)[fusion=sum]"}
    assert (results["parameters"] > 0).all() and (results["epochs"] == 2).all()
    assert results["epochs_to_best"].between(1, 2).all()
    assert (results["train_seconds_per_epoch"] > 0).all() and (results["infer_ms_per_sequence"] > 0).all()
    # timed together at the end (timings.json), each recurrent layer on the path path="auto" picks on CPU
    assert set(json.loads((out / "timings.json").read_text())) == {p.parent.name for p in out.glob("runs/*/row.json")}
    paths = dict(zip(results["model"], results["infer_path"]))
    assert paths == {"lstm:6": "LSTM fused", "(lstm:4|gru:4)[fusion=sum]": "LSTM fused, GRU custom"}
    # lstm:6 on 2 inputs: 4 gates x (6 x (2 + 6) weights + 2 x 6 biases), then a Linear(6, 1) head
    assert results.loc[results["model"] == "lstm:6", "parameters"].iloc[0] == 4 * (6 * (2 + 6) + 2 * 6) + 6 + 1
    # the fusion option reached the model: a summed pair feeds a 4-wide head, a concatenated one an 8-wide head
    from hybridrnn.tasks.long_range import LongRangeConfig, LongRangeTask

    def size(fusion):
        task = LongRangeTask(LongRangeConfig(data={"problem": "adding", "length": 8},
                                             model={"encoder": "(lstm:4|gru:4)", "fusion": fusion}))
        return sum(p.numel() for p in task.build_model().parameters())

    fused = results.loc[results["model"] == "(lstm:4|gru:4)[fusion=sum]", "parameters"].iloc[0]
    assert fused == size("sum") != size("concat")

    for name in ("report.md", "report.html"):
        text = (out / name).read_text()
        for model in ("lstm:6", "(lstm:4|gru:4)[fusion=sum]"):
            assert model.replace("|", "\\|") in text or model in text
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4          # learning curves, vs parameters, vs time, task plot
    for png in ("learning_curves.png", "metric_vs_parameters.png", "metric_vs_time.png"):
        assert (out / "report_files" / png).stat().st_size > 1000

    # a row whose marker is gone is redone from its checkpoint (resume), the others are left alone
    victim = out / "runs" / done_first[0] / "row.json"
    victim.unlink()
    calls.clear()
    run_compare(tiny_config, MODELS, 2, out, progress=lambda *_: None)
    assert [c[0].rsplit("/", 1)[-1] for c in calls] == [done_first[0]]
    assert calls[0][1] is not None
    assert victim.is_file() and len(pd.read_csv(out / "results.csv")) == 4


def test_compare_over_lengths_and_config_models(tmp_path):
    torch.set_num_threads(1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "task": "long_range",
        "data": {"problem": "copy", "n_train": 32, "n_val": 16, "n_test": 16},
        "train": {"epochs": 1, "batch_size": 16, "progress": "none", "num_threads": 1},
        "compare": {"models": ["gru:4"], "seeds": 1, "lengths": [3, 6]},
    }))
    out = tmp_path / "cmp"
    run_compare(path, out_dir=out, progress=lambda *_: None)
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["length"]) == [3, 6] and set(results["model"]) == {"gru:4"}
    assert all("compare" not in yaml.safe_load(p.read_text()) for p in out.glob("runs/*/config.yaml"))
    md = (out / "report.md").read_text()
    assert "Longest length solved" in md and (out / "report_files" / "metric_vs_length.png").is_file()
    configs = [yaml.safe_load(p.read_text()) for p in out.glob("runs/*/config.yaml")]
    assert sorted(c["data"]["length"] for c in configs) == [3, 6]


def test_longest_solved_table():
    rows = []
    for model, solved_lengths in (("a", {50, 100}), ("b", {50}), ("c", set())):
        for length in (50, 100, 200):
            for seed in range(2):
                ok = length in solved_lengths and not (model == "a" and length == 100 and seed == 1)
                rows.append({"model": model, "length": length, "seed": seed, "test_mse": 0.001 if ok else 0.1})
    header, table = longest_solved(pd.DataFrame(rows), "test_mse", 0.01)
    assert header == ["model", "T=50", "T=100", "T=200", "longest solved"]
    assert table[0] == ["a", "2/2", "1/2", "0/2", "**100**"]       # half of the seeds is enough
    assert table[1][-1] == "**50**" and table[2][-1] == "none"


def test_welch_and_directions():
    assert welch_p_value([1.0], [2.0, 3.0]) is None
    assert welch_p_value([1.0, 1.1, 0.9], [5.0, 5.1, 4.9]) < 0.001
    assert welch_p_value([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]) > 0.3
    assert welch_p_value([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert higher_is_better("test_accuracy") and higher_is_better("val_recall_accuracy")
    assert not higher_is_better("test_loss") and not higher_is_better("test_mae")


def test_report_marks_best_and_spread(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for model, centre in (("good", 0.10), ("close", 0.101), ("bad", 0.5)):
        for seed in range(3):
            rows.append({"model": model, "encoder": model, "options": "{}", "seed": seed, "length": None,
                         "task": "long_range", "parameters": 100, "epochs": 1, "epochs_to_best": 1,
                         "train_seconds": 1.0, "train_seconds_per_epoch": 1.0, "infer_ms_per_batch": 1.0,
                         "infer_ms_per_sequence": 0.1, "run_dir": f"runs/{model}{seed}",
                         "val_loss": centre, "test_loss": centre + rng.normal(0, 0.01)})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "compare.json").write_text(json.dumps({"train_config": str(tmp_path / "none.yaml")}))
    md, _ = write_report(tmp_path)
    summary = md.read_text().split("## Summary")[1].split("\n\n")[1]      # the first table
    lines = {l.split("|")[1].strip(): l for l in summary.splitlines() if l.startswith("| ") and "seeds" not in l}
    assert lines["good"].rstrip(" |").endswith("best") or lines["close"].rstrip(" |").endswith("best")
    assert "yes (p=" in lines["bad"]
    loser = "close" if lines["good"].rstrip(" |").endswith("best") else "good"
    assert "no (p=" in lines[loser]


def test_cli_model_list_keeps_bracketed_options_whole():
    from hybridrnn.cli import _split_list

    text = "lstm:8,(lstm:8|gru:8)[fusion=gate,share_input_projection=true],gru:8x2[tie_layers=true]"
    assert _split_list(text, "--models") == ["lstm:8", "(lstm:8|gru:8)[fusion=gate,share_input_projection=true]",
                                             "gru:8x2[tie_layers=true]"]
    assert [e.label for e in parse_models(_split_list(text, "--models"))] == _split_list(text, "--models")


def _synthetic_results(tmp_path, plan_extra=None):
    rng = np.random.default_rng(1)
    rows = []
    for model, centre in (("a", 0.1), ("b", 0.3)):
        for seed in range(2):
            rows.append({"model": model, "encoder": model, "options": "{}", "seed": seed, "length": None,
                         "task": "forecast", "parameters": 10, "epochs": 1, "epochs_to_best": 1,
                         "train_seconds": 1.0, "train_seconds_per_epoch": 1.0, "infer_ms_per_batch": 1.0,
                         "infer_ms_per_sequence": 0.1, "run_dir": f"runs/{model}{seed}", "val_loss": centre,
                         "test_loss": centre + rng.normal(0, 0.01), "test_mae": centre * 2 + rng.normal(0, 0.01),
                         "test_naive_mse": 0.25})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    plan = {"train_config": str(tmp_path / "none.yaml"), **(plan_extra or {})}
    (tmp_path / "compare.json").write_text(json.dumps(plan))


def test_report_moves_constant_metrics_to_a_reference_table(tmp_path):
    _synthetic_results(tmp_path)
    md = write_report(tmp_path)[0].read_text()
    summary = md.split("## Summary")[1].split("## Learning curves")[0]
    header = next(l for l in summary.splitlines() if l.startswith("| model"))
    assert "test_mae" in header and "test_naive_mse" not in header
    assert md.index("## Reference values") > md.index("metric_vs_parameters.png")   # below the plots
    reference = md.split("## Reference values")[1]
    assert "| naive | 0.2500 |" in reference and "| reference | test_mse |" in reference


def test_report_metrics_selection(tmp_path):
    _synthetic_results(tmp_path, {"metrics": ["loss"]})
    md = write_report(tmp_path)[0].read_text()
    header = next(l for l in md.splitlines() if l.startswith("| model"))
    assert "test_loss" in header and "test_mae" not in header and "Reference values" not in md
    _synthetic_results(tmp_path, {"metrics": ["loss", "smape"]})
    with pytest.raises(ValueError, match=r"\['smape'\].*test_mae|\['smape'\].*'mae'"):
        write_report(tmp_path)


def test_measure_inference_times_one_training_batch(tmp_path):
    from hybridrnn.experiments.compare import measure_inference
    from hybridrnn.tasks.long_range import LongRangeConfig, LongRangeTask

    torch.set_num_threads(1)
    task = LongRangeTask(LongRangeConfig(data={"problem": "adding", "length": 8, "n_train": 40, "n_val": 8,
                                               "n_test": 8}, model={"encoder": "gru:4"}, train={"batch_size": 16}))
    task.setup()
    model = task.build_model().train()
    ms, rows = measure_inference(task, model)
    assert rows == 16 and ms > 0
    assert model.training                           # the model's mode is restored


def test_a_bad_model_fails_before_any_training(tiny_config, tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(ValueError, match=r"cannot run on this task:\n.*\(lstm:4\|gru:4\)\[fusion=bogus\]"):
        run_compare(tiny_config, "lstm:4,(lstm:4|gru:4)[fusion=bogus]", 1, out, progress=lambda *_: None)
    assert not (out / "runs").exists()
    # options the config accepts but the layers refuse (branches of different widths cannot be summed)
    with pytest.raises(ValueError, match=r"cannot run on this task:\n.*fusion=sum.*equal output sizes"):
        run_compare(tiny_config, "lstm:4,(lstm:4|gru:8)[fusion=sum]", 1, out, progress=lambda *_: None)
    assert not (out / "runs").exists()
    dotted = parse_model("gru:8[classifier.pooling=attention,dropout=0.1]")
    assert dotted.overrides() == ["model.encoder=gru:8", "classifier.pooling=attention", "model.dropout=0.1"]


def test_report_of_a_task_without_a_test_split_uses_validation(tmp_path):
    _synthetic_results(tmp_path)
    frame = pd.read_csv(tmp_path / "results.csv")
    frame.drop(columns=[c for c in frame.columns if c.startswith("test_")]).to_csv(tmp_path / "results.csv",
                                                                                   index=False)
    md = write_report(tmp_path)[0].read_text()
    assert "no test split" in md and "differs from best (val_loss)" in md


def test_time_models_warms_up_then_interleaves_shuffled_rounds_on_one_thread():
    """Every model gets its warm-up passes before any is timed; then each round times every model once, in a
    shuffled order; torch runs one thread while timing and gets its setting back."""
    from hybridrnn.experiments import compare as compare_module

    calls = []

    class FakeTask:
        def __init__(self, name):
            self.name = name

        def train_batches(self, epoch, generator):
            return iter([torch.zeros(5, 3)])

        def to_device(self, batch, device):
            return batch

        def training_step(self, model, batch):
            calls.append((self.name, torch.get_num_threads(), model.training))
            return model(batch).sum()

    cases = [(FakeTask(name), torch.nn.Linear(3, 1).train()) for name in "abc"]
    before = torch.get_num_threads()
    results = compare_module.time_models(cases, rounds=6, warmup=2, threads=1)
    assert [rows for _, rows in results] == [5, 5, 5] and all(ms > 0 for ms, _ in results)
    assert [name for name, _, _ in calls[:6]] == ["a", "a", "b", "b", "c", "c"]       # warm-up first
    rounds = [[name for name, _, _ in calls[6 + 3 * r: 9 + 3 * r]] for r in range(6)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds) and len({tuple(r) for r in rounds}) > 1
    assert {threads for _, threads, _ in calls} == {1} and torch.get_num_threads() == before
    assert not any(training for _, _, training in calls) and all(m.training for _, m in cases)
