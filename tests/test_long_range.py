"""The long-range suite: generators' known properties, the task's metrics, and one learning check."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import hybridrnn
from conftest import train
from hybridrnn.errors import DataError, RunDirError
from hybridrnn.tasks.long_range import (COPY_CLASSES, LongRangeConfig, LongRangeTask, adding_problem,
                                        copy_baseline_loss, copy_memory, sequential_digits)


def make_task(**data) -> LongRangeTask:
    task = LongRangeTask(LongRangeConfig(data=data, train={"batch_size": 16}))
    task.setup()
    return task


# ---- adding ------------------------------------------------------------------------------------------------

def test_adding_target_is_sum_of_the_two_marked_values():
    x, y = adding_problem(500, 30, np.random.default_rng(1))
    assert x.shape == (500, 30, 2) and y.shape == (500,)
    markers = x[..., 1]
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers.sum(1) == 2).all()                               # exactly two markers
    assert (markers[:, :15].sum(1) == 1).all() and (markers[:, 15:].sum(1) == 1).all()   # one per half
    np.testing.assert_allclose(y, (x[..., 0] * markers).sum(1), rtol=0, atol=1e-6)
    assert (x[..., 0] >= 0).all() and (x[..., 0] < 1).all()


def test_adding_always_one_baseline_is_one_sixth():
    # Var(U1 + U2) = 2/12; with 40000 samples the standard error of the MSE is about 0.0008
    _, y = adding_problem(40000, 8, np.random.default_rng(2))
    assert abs(float(np.mean((y - 1.0) ** 2)) - 1 / 6) < 0.004


def test_adding_rejects_too_short():
    with pytest.raises(ValueError, match="length"):
        adding_problem(4, 1, np.random.default_rng(0))


# ---- copy memory --------------------------------------------------------------------------------------------

def test_copy_layout():
    T = 7
    x, y = copy_memory(300, T, np.random.default_rng(3))
    assert x.shape == y.shape == (300, T + 20)
    assert ((x[:, :10] >= 1) & (x[:, :10] <= 8)).all()
    assert (x[:, 10:T + 9] == 0).all() and (x[:, T + 9] == 9).all() and (x[:, T + 10:] == 0).all()
    assert (y[:, :T + 10] == 0).all()
    np.testing.assert_array_equal(y[:, -10:], x[:, :10])


def test_copy_memoryless_baseline_from_the_data():
    """A predictor that sees only the position: the per-position empirical distribution of the targets."""
    T, n = 25, 8000
    _, y = copy_memory(n, T, np.random.default_rng(4))
    loss = 0.0
    for t in range(y.shape[1]):
        p = np.bincount(y[:, t], minlength=COPY_CLASSES) / n
        loss += -np.mean(np.log(p[y[:, t]]))
    loss /= y.shape[1]
    expected = 10 * math.log(8) / (T + 20)
    assert copy_baseline_loss(T) == pytest.approx(expected, rel=1e-12)
    # plug-in entropy of 8 symbols from 8000 draws is low by about 7/16000 per recall step
    assert loss == pytest.approx(expected, rel=0.005)


class MemorylessCopyModel(nn.Module):
    """Logits of the memoryless strategy: blank for the first T+10 steps, uniform over 1..8 afterwards."""

    def __init__(self, T: int):
        super().__init__()
        self.T = T
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.full((x.shape[0], x.shape[1], COPY_CLASSES), -30.0)
        logits[:, :self.T + 10, 0] = 30.0
        logits[:, self.T + 10:, 1:] = 0.0
        return logits + self.dummy * 0


def test_copy_evaluate_memoryless_model_scores_the_baseline():
    task = make_task(problem="copy", length=15, n_train=16, n_val=400, n_test=16)
    metrics = task.evaluate(MemorylessCopyModel(15), "val")
    assert metrics["loss"] == pytest.approx(copy_baseline_loss(15), rel=1e-4)
    assert metrics["baseline_ratio"] == pytest.approx(1.0, rel=1e-4)
    assert metrics["solved"] == 0.0
    assert 0.05 < metrics["recall_accuracy"] < 0.2        # argmax of uniform logits: symbol 1, right 1/8 of the time


# ---- digits and the task ----------------------------------------------------------------------------------

def test_digits_pixel_by_pixel_splits():
    splits = sequential_digits(0, {"n_train": 1000, "n_val": 397, "n_test": 400})
    assert splits["train"][0].shape == (1000, 64, 1) and splits["test"][1].shape == (400,)
    x_all = np.concatenate([splits[s][0].reshape(len(splits[s][0]), -1) for s in splits])
    assert len(np.unique(x_all, axis=0)) >= 1790       # disjoint splits (load_digits has a few duplicate images)
    assert x_all.min() >= 0 and x_all.max() <= 1
    assert set(np.unique(splits["train"][1])) == set(range(10))


def test_digits_config_errors():
    with pytest.raises(ValueError, match="64"):
        LongRangeConfig(data={"problem": "digits", "length": 100})
    with pytest.raises(ValueError, match="1797"):
        LongRangeConfig(data={"problem": "digits", "n_train": 1500, "n_val": 200, "n_test": 200})


def test_test_split_does_not_depend_on_train_size():
    a = make_task(problem="adding", length=12, n_train=50, n_val=20, n_test=30)
    b = make_task(problem="adding", length=12, n_train=90, n_val=20, n_test=30)
    torch.testing.assert_close(a.examples("test")[0], b.examples("test")[0], rtol=0, atol=0)
    c = make_task(problem="adding", length=12, n_train=50, n_val=20, n_test=30, seed=1)
    assert not torch.equal(a.examples("test")[0], c.examples("test")[0])


def test_model_shapes_per_problem():
    for problem, length, out_shape in (("adding", 9, (4, 1)), ("copy", 5, (4, 25, COPY_CLASSES)),
                                       ("digits", None, (4, 10))):
        task = LongRangeTask(LongRangeConfig(data={"problem": problem, "length": length, "n_train": 8,
                                                   "n_val": 4, "n_test": 4},
                                             model={"encoder": "(lstm:6|gru:6)>gru:5"}))
        task.setup()
        model = task.build_model()
        x, y = next(task.train_batches(0, torch.Generator().manual_seed(0)))
        assert model(x[:4]).shape == out_shape
        loss, n = task.training_step(model, (x, y))
        assert loss.dim() == 0 and torch.isfinite(loss) and n == len(x)


def test_gru_spec_with_default_forget_bias_builds():
    task = LongRangeTask(LongRangeConfig(data={"problem": "adding", "length": 5, "n_train": 8, "n_val": 4,
                                               "n_test": 4}, model={"encoder": "gru:4"}))
    task.setup()
    assert task.build_model() is not None


def test_run_loads_from_its_artifacts_and_regenerates_its_data(tmp_path):
    """A loaded run builds its model from long_range.json and the config alone; evaluating regenerates the
    data from data.seed (the same test split, so the same metrics); a run directory whose long_range.json
    disagrees with its config is a RunDirError; the task takes no data."""
    cfg = {"task": "long_range", "data": {"problem": "copy", "length": 4, "n_train": 32, "n_val": 16, "n_test": 16},
           "model": {"encoder": "gru:6"}, "train": {"epochs": 1, "batch_size": 16, "progress": "none"}}
    run_dir = train(cfg, out=tmp_path / "run")
    saved = json.loads((run_dir / "long_range.json").read_text())
    assert saved == {"problem": "copy", "length": 4, "input_size": 10, "output_size": COPY_CLASSES}
    run = hybridrnn.load(run_dir)
    assert run.task.splits == {}                         # loading generated nothing
    first = run.metrics(split="test")
    assert hybridrnn.load(run_dir).metrics(split="test") == first
    run.task.setup(whole=True)
    assert sorted(run.task.splits) == ["test"] and run.task.num_examples("test") == 16
    with pytest.raises(DataError, match="generates its data"):
        run.task.setup(tmp_path / "x.csv")
    saved["length"] = 5
    (run_dir / "long_range.json").write_text(json.dumps(saved))
    with pytest.raises(RunDirError, match="long_range.json"):
        hybridrnn.load(run_dir)


def test_report_section_longest_length_solved():
    """The comparison report's long-range section: per model, seeds solving each length (adding: test MSE below
    0.01) and the longest length solved by at least half of the seeds; none for problems without a threshold."""
    import pandas as pd

    results = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 4, "length": [10, 10, 20, 20] * 2, "seed": [0, 1] * 4,
                            "test_mse": [0.001, 0.02, 0.5, 0.4, 0.002, 0.003, 0.009, 0.2]})
    [(heading, md)] = make_task(problem="adding", length=5, n_train=4, n_val=4, n_test=4).report_sections(results)
    assert heading == "Longest length solved"
    lines = md.splitlines()
    assert lines[0] == "| model | T=10 | T=20 | longest solved |"
    assert lines[2] == "| a | 1/2 | 0/2 | **10** |" and lines[3] == "| b | 2/2 | 1/2 | **20** |"
    assert "test MSE < 0.01" in md
    digits = LongRangeTask(LongRangeConfig(data={"problem": "digits"}))
    assert digits.report_sections(results) == []
    assert make_task(problem="adding", length=5, n_train=4, n_val=4, n_test=4).report_sections(
        results.assign(length=float("nan"))) == []


@pytest.mark.slow
def test_gru_learns_short_adding_problem(tmp_path):
    """A GRU beats the always-1 baseline (MSE 0.167) by a wide margin on T=10 in a few epochs."""
    from conftest import evaluate_run

    torch.set_num_threads(1)
    run = train({"task": "long_range",
                 "data": {"problem": "adding", "length": 10, "n_train": 1000, "n_val": 200, "n_test": 200},
                 "model": {"encoder": "gru:16"},
                 "train": {"epochs": 5, "batch_size": 32, "lr": 0.01, "progress": "none"}},
                out=tmp_path / "run")
    metrics = evaluate_run(run, "test")
    assert metrics["mse"] < 0.05, metrics
