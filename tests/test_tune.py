"""Hyper-parameter search: the search space, a 2-trial study on SQLite, pruning after an epoch report."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from hybridrnn.experiments.tune import _FirstChoice, check_space, sample_overrides

SPACE = {
    "train.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
    "hidden": {"choices": [3, 5]},
    "cell": {"choices": ["lstm", "gru"]},
    "model.encoder": "{cell}:{hidden}",
}


def test_space_validation_names_the_entry():
    check_space(SPACE)
    with pytest.raises(ValueError, match="tune.space.model.encoder.*width"):
        check_space({"model.encoder": "{cell}:{width}", "cell": {"choices": ["lstm"]}})
    with pytest.raises(ValueError, match="tune.space.train.lr.*low < high"):
        check_space({"train.lr": {"low": 0.1, "high": 0.01}})
    with pytest.raises(ValueError, match="log range needs low > 0"):
        check_space({"train.lr": {"low": 0.0, "high": 0.01, "log": True}})
    with pytest.raises(ValueError, match="tune.space.model.dropout"):
        check_space({"model.dropout": 0.3})
    with pytest.raises(ValueError, match="non-empty"):
        check_space({})


def test_sample_overrides_fills_templates():
    overrides, values = sample_overrides(SPACE, _FirstChoice())
    assert overrides == ["train.lr=0.001", "model.encoder=lstm:3"]
    assert values["model.encoder"] == "lstm:3" and values["hidden"] == 3


@pytest.fixture
def tune_config(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({
        "task": "long_range",
        "data": {"problem": "adding", "length": 6, "n_train": 32, "n_val": 16, "n_test": 16},
        "train": {"epochs": 2, "batch_size": 16, "progress": "none", "num_threads": 1},
        "tune": {"space": SPACE, "pruner": {"n_startup_trials": 5}},
    }))
    return path


def test_two_trials_on_sqlite_and_a_second_worker(tune_config, tmp_path):
    optuna = pytest.importorskip("optuna")
    from hybridrnn.experiments.tune import run_tune

    torch.set_num_threads(1)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "study"
    study = run_tune(tune_config, 2, storage, study_name="s", out_dir=out, progress=lambda *_: None)
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "val_loss" and best["direction"] == "minimize"
    assert best["best_value"] == min(t.value for t in study.trials)
    assert any(o.startswith("model.encoder=") for o in best["overrides"])
    for t in study.trials:      # each trial's run holds the sampled encoder and one metrics line per epoch
        run = out / f"trial-{t.number}"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["encoder"] == f"{t.params['cell']}:{t.params['hidden']}"
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # a second worker with the same storage and name adds to the same study
    again = run_tune(tune_config, 1, storage, study_name="s", out_dir=out, progress=lambda *_: None)
    assert len(again.trials) == 3 and (out / "trial-2").is_dir()


def test_a_pruned_trial_stops_after_its_first_epoch(tune_config, tmp_path):
    optuna = pytest.importorskip("optuna")
    from hybridrnn.experiments.tune import train_trial

    torch.set_num_threads(1)

    class PruneAtOnce:
        def __init__(self):
            self.reports = []
            self.study = optuna.create_study(direction="minimize")

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return True

    trial = PruneAtOnce()
    with pytest.raises(optuna.TrialPruned):
        train_trial(tune_config, ["model.encoder=gru:3"], tmp_path / "run", trial, "loss")
    assert [step for step, _ in trial.reports] == [1]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_missing_tune_section_is_an_error(tmp_path):
    pytest.importorskip("optuna")
    from hybridrnn.experiments.tune import run_tune

    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump({"task": "long_range"}))
    with pytest.raises(ValueError, match="no 'tune:' section"):
        run_tune(path, 1, None, out_dir=tmp_path / "o")


def test_two_worker_processes_share_one_study(tune_config, tmp_path):
    """Two `hybridrnn tune` processes started together on one SQLite storage: one study, no trial twice."""
    optuna = pytest.importorskip("optuna")
    import os
    import re
    import subprocess
    import sys

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hybridrnn", "tune", str(tune_config), "--trials", "2",
               "--storage", storage, "--study-name", "shared"]
    workers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    logs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    runs = tmp_path / "runs" / "tune-shared"
    assert sorted(p.name for p in runs.glob("trial-*")) == [f"trial-{n}" for n in numbers]
    # each worker ran two trials of its own
    started = [sorted(int(n) for n in re.findall(r"^trial (\d+):", log, flags=re.M)) for log in logs]
    assert sorted(started[0] + started[1]) == numbers and all(len(s) == 2 for s in started)


def test_study_creation_retries_the_storage_race(monkeypatch):
    """Workers started together race to create the tables; the loser gets a SQLAlchemy error and retries."""
    optuna = pytest.importorskip("optuna")
    import sqlalchemy.exc

    from hybridrnn.experiments import tune as tune_module

    calls = []
    real = optuna.create_study

    def flaky(**kwargs):
        calls.append(kwargs["study_name"])
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return real(**{**kwargs, "storage": None})

    monkeypatch.setattr(optuna, "create_study", flaky)
    monkeypatch.setattr("time.sleep", lambda s: None)
    study = tune_module._create_or_load_study(optuna, "s", "sqlite:///unused.db", "minimize", None)
    assert calls == ["s", "s"] and study.direction == optuna.study.StudyDirection.MINIMIZE

    def broken(**kwargs):
        raise ValueError("not a storage race")

    monkeypatch.setattr(optuna, "create_study", broken)
    with pytest.raises(ValueError, match="not a storage race"):      # other errors are not retried
        tune_module._create_or_load_study(optuna, "s", "sqlite:///unused.db", "minimize", None)
