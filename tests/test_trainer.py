"""The Trainer on the toy task: repeatability, guards, early stopping, schedules, logged gradient norms."""
from __future__ import annotations

import math

import pytest
import torch

from hybridrnn.config import ConfigError, TrainConfig
from hybridrnn.train import checkpoint as ckpt
from conftest import train
from hybridrnn.api import load_run
from hybridrnn.train.schedule import LRSchedule
from hybridrnn.train.trainer import NonFiniteLossError, Trainer


def toy_config(**train):
    return {"task": "toy", "model": {"encoder": "gru:8"},
            "train": {"epochs": 3, "batch_size": 16, "lr": 0.01, "num_threads": 1, "progress": "none", "plots": False, **train}}


def weights(run_dir, name=ckpt.LAST_WEIGHTS):
    return ckpt.read_safetensors(run_dir / name)[0]


def test_seeded_runs_repeat_bit_for_bit_and_seed_matters(tmp_path, toy_task):
    cfg = toy_config(schedule="cosine", warmup_epochs=1)
    cfg["model"]["dropout"] = 0.2              # dropout draws from the global RNG: must repeat too
    a = weights(train(cfg, out=tmp_path / "a"))
    b = weights(train(cfg, out=tmp_path / "b"))
    c = weights(train({**cfg, "train": {**cfg["train"], "seed": 1}}, out=tmp_path / "c"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path, toy_task):
    cfg = toy_config(epochs=4)
    cfg["data"] = {"nan_at": [3, 2]}
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 3, step 2 .*last good checkpoint \(epoch 2\)"):
        train(cfg, out=tmp_path / "run")
    state = ckpt.recover_checkpoint(tmp_path / "run")
    assert state["epoch"] == 2
    _, _, model = load_run(tmp_path / "run")          # the best weights still load
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_errors_before_training_for_empty_split_big_batch_and_zero_lr(tmp_path, toy_task):
    cfg = toy_config()
    cfg["data"] = {"n_val": 0}
    with pytest.raises(ValueError, match="the 'val' split of task 'toy' is empty"):
        train(cfg, out=tmp_path / "a")
    cfg["data"] = {"n_train": 0}
    with pytest.raises(ValueError, match=r"the 'train' split of task 'toy' is empty \(0 examples\)"):
        train(cfg, out=tmp_path / "a0")
    with pytest.raises(ValueError, match=r"train.batch_size is 200 but the training split has only 96 examples"):
        train(toy_config(batch_size=200), out=tmp_path / "b")
    with pytest.raises(ConfigError, match="train.lr: Input should be greater than 0, got 0"):
        train(toy_config(lr=0), out=tmp_path / "c")
    for d in ("a", "a0", "b"):
        assert not (tmp_path / d / ckpt.STATE).exists() and not (tmp_path / d / ckpt.METRICS).exists()
    assert not (tmp_path / "c").exists()


def test_early_stopping_restores_best_weights(tmp_path, toy_task, monkeypatch):
    val_losses = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    original = toy_task.evaluate

    def scripted(self, model, split):
        metrics = original(self, model, split)
        return {**metrics, "loss": next(val_losses)} if split == "val" else metrics

    monkeypatch.setattr(toy_task, "evaluate", scripted)
    run = train(toy_config(epochs=6, patience=2), out=tmp_path / "run")
    history = ckpt.read_jsonl(run / ckpt.METRICS)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]         # stopped 2 epochs after the best
    state = ckpt.read_json(run / ckpt.STATE)
    assert state["best_epoch"] == 2 and state["stopped_early"] and state["best_metric"] == 2.0
    best, last = weights(run, ckpt.BEST_WEIGHTS), weights(run, ckpt.LAST_WEIGHTS)
    assert not all(torch.equal(best[k], last[k]) for k in best)
    assert ckpt.read_safetensors(run / ckpt.BEST_WEIGHTS)[1]["epoch"] == "2"


def test_logged_grad_norm_is_the_pre_clip_global_norm(tmp_path, toy_task):
    """One full batch per epoch: the logged norm equals a hand computation on the seeded initial model."""
    from hybridrnn.train.seeding import seed_everything
    from hybridrnn.api import coerce_config

    cfg = toy_config(epochs=1, batch_size=96, clip_norm=1e-3)
    run = train(cfg, out=tmp_path / "run")
    logged = ckpt.read_jsonl(run / ckpt.METRICS)[0]["grad_norm"]
    config = coerce_config(cfg)
    task = toy_task(config)
    task.setup()
    seed_everything(0)
    model = task.build_model()
    x, y = task.splits["train"]
    torch.nn.functional.mse_loss(model(x), y).backward()
    expected = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()
    assert logged == pytest.approx(expected, rel=1e-5)
    assert logged > 100 * 1e-3                  # so clipping to 1e-3 really happened after logging


def test_schedules():
    def lrs(**kw):
        s = LRSchedule(TrainConfig(lr=1.0, epochs=10, **kw), steps_per_epoch=4)
        return s, [s.lr(e, k) for e in range(10) for k in range(4)]

    _, step = lrs(schedule="step", step_size=3, gamma=0.5)
    assert step[0] == 1.0 and step[3 * 4] == 0.5 and step[6 * 4] == 0.25
    _, cos = lrs(schedule="cosine", min_lr=0.1)
    assert cos[0] == 1.0 and cos[5 * 4] == pytest.approx(0.55) and cos[-1] == pytest.approx(0.1, abs=2e-3)
    assert all(a >= b for a, b in zip(cos, cos[1:]))
    _, warm = lrs(warmup_epochs=2)
    assert warm[0] == pytest.approx(0.01 + 0.99 / 8) and warm[7] == 1.0 and warm[8:] == [1.0] * 32
    plateau, _ = lrs(schedule="plateau", plateau_patience=1, gamma=0.1)
    for metric in [1.0, 0.9, 0.95, 0.95]:
        plateau.end_epoch(metric)
    assert plateau.lr(4, 0) == pytest.approx(0.1)
    restored = LRSchedule(TrainConfig(lr=1.0, schedule="plateau"), 4)
    restored.load_state_dict(plateau.state_dict())
    assert restored.lr(4, 0) == plateau.lr(4, 0)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_other_optimizers_and_bf16_train(tmp_path, toy_task, optimizer, monkeypatch):
    from hybridrnn.train import trainer as trainer_module

    # the bf16 code path runs everywhere; on a CPU without native bf16 only by lifting the guard (it is slow)
    monkeypatch.setattr(trainer_module, "check_bf16", lambda config, device: None)
    run = train(toy_config(optimizer=optimizer, bf16=True, schedule="plateau", epochs=2), out=tmp_path / "run")
    history = ckpt.read_jsonl(run / ckpt.METRICS)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in history)
    assert history[1]["train_loss"] < history[0]["train_loss"] * 1.5


def test_trainer_without_run_dir_keeps_best_in_memory(toy_task):
    from hybridrnn.api import coerce_config

    config = coerce_config(toy_config(epochs=3))
    task = toy_task(config)
    task.setup()
    model = task.build_model()
    result = Trainer(task, model, config.train).fit()
    assert result.epochs_run == 3 and result.best_epoch >= 1
    assert task.evaluate(model.eval(), "val")["loss"] == pytest.approx(result.best_metric, rel=1e-6)


def test_plain_progress_prints_one_line_per_epoch_and_a_summary(tmp_path, toy_task, capsys):
    train(toy_config(epochs=2, progress="plain"), out=tmp_path / "run")
    out = capsys.readouterr().out
    assert out.count("epoch 1/2  train_loss") == 1 and out.count("epoch 2/2  train_loss") == 1
    assert "items/s" in out and "training summary" in out and "best val_loss" in out


def test_tensorboard_missing_names_the_extra(tmp_path, toy_task, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'hybridrnn\[tensorboard\]'"):
        train(toy_config(tensorboard=True, epochs=1), out=tmp_path / "run")


def test_tensorboard_logs_losses_metrics_lr_and_grad_norm_per_epoch(tmp_path, toy_task):
    pytest.importorskip("tensorboard", reason="the 'tensorboard' extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(toy_config(tensorboard=True, epochs=2), out=tmp_path / "run")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    history = ckpt.read_jsonl(run / ckpt.METRICS)
    for key in ("train_loss", "val_loss", "val_mae", "lr", "grad_norm", "grad_norm_max", "seconds"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [1, 2], key
        assert [e.value for e in logged] == pytest.approx([r[key] for r in history], rel=1e-6), key


# ---- the command line: train with --set, evaluate --json, user errors --------------------------------------


def cli(*args):
    from typer.testing import CliRunner

    from hybridrnn.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def write_config(tmp_path, cfg):
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_train_with_set_then_evaluate_json(tmp_path, toy_task):
    import json

    from conftest import evaluate_run
    from hybridrnn.api import read_run_config

    path = write_config(tmp_path, toy_config(epochs=2))
    run = tmp_path / "run"
    result = cli("train", path, "--out", run, "--set", "train.lr=0.003", "--progress", "plain")
    assert result.exit_code == 0, result.output
    assert "epoch 2/2  train_loss" in result.stdout and "training summary" in result.stdout
    assert read_run_config(run).train.lr == 0.003
    env = ckpt.read_json(run / ckpt.ENVIRONMENT)                  # what the run ran on
    assert env["torch"] == torch.__version__ and env["torch_threads"] == 1 and env["world_size"] == 1
    assert {"python", "numpy", "device", "processor", "native_bf16", "git_commit", "command"} <= set(env)
    assert [r["lr"] for r in ckpt.read_jsonl(run / ckpt.METRICS)] == [0.003, 0.003]

    result = cli("evaluate", run, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)                      # the whole of stdout is one JSON object
    assert isinstance(metrics, dict) and set(metrics) == {"loss", "mae"}
    assert metrics == evaluate_run(run, "test")
    val = json.loads(cli("evaluate", run, "--json", "--split", "val").stdout)
    assert val["loss"] == pytest.approx(ckpt.read_json(run / ckpt.STATE)["best_metric"], rel=1e-6)


def test_cli_user_errors_exit_2_with_one_clean_message(tmp_path, toy_task):
    cfg = toy_config(epochs=3)
    cfg["data"] = {"nan_at": [2, 1]}
    result = cli("train", write_config(tmp_path, cfg), "--out", tmp_path / "nan")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: training stopped: the loss is nan at epoch 2, step 1 (batch 1 of 6); "
                                    f"the last good checkpoint (epoch 1) is kept in {tmp_path / 'nan'}.")
    assert "Traceback" not in result.output

    result = cli("train", write_config(tmp_path, toy_config(lr=0)), "--out", tmp_path / "zero")
    assert result.exit_code == 2 and "train.lr: Input should be greater than 0, got 0" in result.stderr
    assert not (tmp_path / "zero").exists()                  # refused before anything was written

    result = cli("evaluate", tmp_path / "missing", "--json")
    assert result.exit_code == 2 and result.stderr == f"error: run directory {tmp_path / 'missing'} does not exist\n"
    assert result.stdout == ""


def test_console_shows_loss_monitor_and_a_few_metrics_and_counts_the_rest():
    from hybridrnn.train.progress import shown_metrics

    record = {"epoch": 1, "train_loss": 1.0, "lr": 0.1, "val_mae": 1.0, "val_loss": 2.0, "val_acc": 0.5,
              **{f"val_m{i}": float(i) for i in range(10)}}
    keys, hidden = shown_metrics(record, "loss")
    assert keys == ["val_loss", "val_mae", "val_acc", "val_m0", "val_m1", "val_m2"] and hidden == 7
    keys, hidden = shown_metrics(record, "acc", display=("m3", "nope"))
    assert keys == ["val_acc", "val_loss", "val_m3"] and hidden == 10
    assert shown_metrics({"val_loss": 1.0, "val_mae": 2.0}, "loss") == (["val_loss", "val_mae"], 0)


def test_progress_bar_shows_loss_speed_and_eta_then_the_epoch_line(tmp_path, toy_task):
    import io
    import re

    from rich.console import Console

    from hybridrnn.train.callbacks import ProgressCallback
    from hybridrnn.train.progress import BarProgress

    buf = io.StringIO()
    bar = BarProgress(Console(file=buf, force_terminal=True, width=150))
    bar.REFRESH_SECONDS = 0.0                                   # draw every step
    from hybridrnn.api import coerce_config

    config = coerce_config(toy_config(epochs=2))
    task = toy_task(config)
    task.setup()
    Trainer(task, task.build_model(), config.train, callbacks=[ProgressCallback(bar)]).fit()
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", buf.getvalue())
    assert re.search(r"epoch 2/2 \S+ +6/6 loss [0-9.]+ [0-9,]+ items/s ETA 0:00:00", text)
    assert "epoch 1/2 \u2501" in text and text.count("epoch 1/2  train_loss") == 1


def test_bf16_without_native_support_is_a_clear_error_before_training(tmp_path, toy_task, monkeypatch):
    from hybridrnn.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "bf16_supported", lambda device: False)
    with pytest.raises(ValueError, match=r"train.bf16 is true but this CPU \(it has neither AVX512-BF16 nor AMX\) "
                                         r"has no native bfloat16 arithmetic.*Set train.bf16: false"):
        train(toy_config(bf16=True), out=tmp_path / "run")
    assert not (tmp_path / "run" / ckpt.METRICS).exists()
    monkeypatch.setattr(trainer_module, "bf16_supported", lambda device: True)
    train(toy_config(bf16=True, epochs=1), out=tmp_path / "ok")
