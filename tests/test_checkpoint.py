"""Run directories: resume after SIGKILL, atomic commits, safe loading, config/weights mismatch."""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from hybridrnn.config import ConfigError
from hybridrnn.train import checkpoint as ckpt
from conftest import train
from hybridrnn.api import load_run

EPOCHS = 5


def toy_config(**data):
    return {"task": "toy", "model": {"encoder": "gru:8"}, "data": data,
            "train": {"epochs": EPOCHS, "batch_size": 16, "lr": 0.01, "num_threads": 1, "progress": "none", "plots": False,
                      "schedule": "cosine", "seed": 3}}


def tensors(path):
    return ckpt.read_safetensors(path)[0]


def assert_same_weights(a, b):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The toy config trained for EPOCHS epochs in one go."""
    from hybridrnn.api import registry

    registry.TASKS["toy"] = "toy_task:ToyTask"
    try:
        return train(toy_config(), out=tmp_path_factory.mktemp("ref") / "run")
    finally:
        registry.TASKS.pop("toy", None)


def test_resume_after_sigkill_gives_identical_weights(tmp_path, toy_task, toy_env, reference_run):
    cfg = toy_config(sleep_per_step=0.02)        # ~0.12 s per epoch: time to kill it between epochs 2 and 5
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "hybridrnn", "train", str(config_path), "--out", str(run)],
                            env=toy_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    killed_after = None
    while time.time() < deadline and proc.poll() is None:
        if (run / ckpt.STATE).exists():
            try:
                killed_after = ckpt.read_json(run / ckpt.STATE)["epoch"]
            except ckpt.RunDirError:
                killed_after = None          # state.json cannot be half-written (atomic), but be safe
            if killed_after is not None and killed_after >= 2:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    state = ckpt.recover_checkpoint(run)
    assert 2 <= state["epoch"] < EPOCHS
    train(None, resume=run)
    assert ckpt.read_json(run / ckpt.STATE)["epoch"] == EPOCHS
    assert_same_weights(run / ckpt.LAST_WEIGHTS, reference_run / ckpt.LAST_WEIGHTS)
    assert_same_weights(run / ckpt.BEST_WEIGHTS, reference_run / ckpt.BEST_WEIGHTS)
    ours = [{k: v for k, v in r.items() if k not in ("seconds", "items_per_second")} for r in ckpt.read_jsonl(run / ckpt.METRICS)]
    ref = [{k: v for k, v in r.items() if k not in ("seconds", "items_per_second")} for r in ckpt.read_jsonl(reference_run / ckpt.METRICS)]
    assert ours == ref


class Crash(BaseException):
    """Stands in for the process dying (not an Exception, so nothing catches it)."""


def test_crash_at_every_write_of_a_checkpoint_leaves_a_loadable_resumable_run(tmp_path, toy_task, monkeypatch, reference_run):
    # count the os.replace calls that one epoch's save makes (epoch 3 of EPOCHS)
    calls = []
    real_replace = os.replace

    def counting(src, dst):
        calls.append(os.fspath(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", counting)
    train(toy_config(), out=tmp_path / "count")
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    per_epoch = [i for i, d in enumerate(calls) if d.endswith(ckpt.STATE)]
    start, stop = per_epoch[1] + 4, per_epoch[2] + 4          # the calls after epoch 2's commit up to epoch 3's
    assert stop - start >= 6

    for crash_at in range(start, stop):
        run = tmp_path / f"crash{crash_at}"
        n = {"i": 0}

        def crashing(src, dst):
            n["i"] += 1
            if n["i"] - 1 == crash_at:
                raise Crash(dst)
            return real_replace(src, dst)

        monkeypatch.setattr(ckpt.os, "replace", crashing)
        with pytest.raises(Crash):
            train(toy_config(), out=run)
        monkeypatch.setattr(ckpt.os, "replace", real_replace)
        state = ckpt.recover_checkpoint(run)
        assert state["epoch"] in (2, 3), crash_at
        load_run(run)                                           # loadable at once
        train(None, resume=run)
        assert_same_weights(run / ckpt.LAST_WEIGHTS, reference_run / ckpt.LAST_WEIGHTS)
        assert_same_weights(run / ckpt.BEST_WEIGHTS, reference_run / ckpt.BEST_WEIGHTS)
        assert not list(run.glob("*.next")) and not list(run.glob(".*.tmp-*"))


# Run in a subprocess: train the toy config and SIGKILL the process itself in the middle of epoch 3's
# checkpoint, either half-way through writing FILE's temporary copy ("partial") or right before FILE's rename
# ("rename"). No finally block, no atexit: the run directory is left exactly as a real kill would leave it.
DIE_DURING_SAVE = """
import json, os, signal, sys
from hybridrnn import _io
from conftest import train
mode, target, out = sys.argv[1], sys.argv[2], sys.argv[3]
seen = {"n": 0}
real_write, real_replace = _io.atomic_write, os.replace

def third(name):
    if os.path.basename(os.fspath(name)) == target:
        seen["n"] += 1
        return seen["n"] == 3

def partial(path, write):
    if third(path):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        write(tmp)
        tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(path, write)

def rename(src, dst):
    if third(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

if mode == "partial":
    _io.atomic_write = partial
else:
    _io.os.replace = rename
train(json.loads(sys.argv[4]), out=out)
"""


@pytest.mark.parametrize("mode, target, epoch_after", [
    ("partial", ckpt.LAST_WEIGHTS + ckpt.PENDING, 2),      # killed while writing the new weights
    ("partial", ckpt.STATE, 2),                            # killed while writing the commit record
    ("rename", ckpt.OPTIMIZER, 3),                         # killed after the commit, before the renames
])
def test_sigkill_during_a_save_leaves_a_loadable_resumable_run(tmp_path, toy_task, toy_env, reference_run,
                                                               mode, target, epoch_after):
    import json

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", DIE_DURING_SAVE, mode, target, str(run), json.dumps(toy_config())],
                          env=toy_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    leftovers = list(run.glob(".*.tmp-*")) + list(run.glob("*" + ckpt.PENDING))
    assert leftovers                                      # the kill really hit a save in progress
    load_run(run)                                         # loadable as it is, before any recovery
    assert ckpt.recover_checkpoint(run)["epoch"] == epoch_after
    assert not list(run.glob(".*.tmp-*")) and not list(run.glob("*" + ckpt.PENDING))
    train(None, resume=run)
    assert_same_weights(run / ckpt.LAST_WEIGHTS, reference_run / ckpt.LAST_WEIGHTS)
    assert_same_weights(run / ckpt.BEST_WEIGHTS, reference_run / ckpt.BEST_WEIGHTS)


class Payload:
    """Unpickling this creates ``path``: proof that code from the file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("name", [ckpt.CONFIG, ckpt.BEST_WEIGHTS, ckpt.LAST_WEIGHTS, ckpt.OPTIMIZER, ckpt.STATE,
                                  ckpt.METRICS, "toy_scaler.json"])
def test_pickle_payload_in_any_file_executes_nothing(tmp_path, toy_task, reference_run, name, kind):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    marker = tmp_path / "executed"
    if kind == "pickle":
        (run / name).write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"x": Payload(marker)}, run / name)
    assert not marker.exists()
    with pytest.raises((ConfigError, ckpt.RunDirError)) as info:
        if name in (ckpt.CONFIG, ckpt.BEST_WEIGHTS, "toy_scaler.json"):    # what evaluate / predict read
            load_run(run)
        else:
            train(None, resume=run, overrides=[f"train.epochs={EPOCHS + 1}"])
    assert name in str(info.value)
    assert not marker.exists()


def test_yaml_python_tag_in_run_config_executes_nothing(tmp_path, toy_task, reference_run):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    marker = tmp_path / "executed"
    text = (run / ckpt.CONFIG).read_text()
    (run / ckpt.CONFIG).write_text(text.replace("task: toy", f"task: !!python/object/apply:os.system ['touch {marker}']"))
    with pytest.raises(ConfigError, match="Python object tags are never loaded"):
        load_run(run)
    assert not marker.exists()


def test_config_that_does_not_match_weights_names_the_tensor(tmp_path, toy_task, reference_run):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    text = (run / ckpt.CONFIG).read_text()
    (run / ckpt.CONFIG).write_text(text.replace("encoder: gru:8", "encoder: gru:16"))
    with pytest.raises(ckpt.RunDirError, match=r"tensor 'rnn.weight_ih_l0' has shape \(24, 3\) in the file but "
                                               r"\(48, 3\) in the model"):
        load_run(run)
    (run / ckpt.CONFIG).write_text(text.replace("encoder: gru:8", "encoder: lstm:8"))
    with pytest.raises(ckpt.RunDirError, match=r"'rnn.weight_ih_l0' has shape \(24, 3\) in the file but \(32, 3\)"):
        load_run(run)


def test_optimizer_state_round_trips_without_pickle(toy_task):
    model = torch.nn.GRU(3, 4)
    for opt in (torch.optim.Adam(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)):
        model(torch.randn(2, 5, 3))[0].sum().backward()
        opt.step()
        tensors, rest = ckpt.split_optimizer_state(opt)
        import json

        rest = json.loads(json.dumps(rest))                   # what state.json stores
        again = type(opt)(model.parameters(), lr=1.0)
        again.load_state_dict(ckpt.join_optimizer_state(tensors, rest))
        a, b = opt.state_dict(), again.state_dict()
        assert a["param_groups"] == b["param_groups"]
        for idx in a["state"]:
            for key, value in a["state"][idx].items():
                assert torch.equal(value, b["state"][idx][key])


def test_tied_weights_are_stored_once_and_reload(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

    model = Tied()
    ckpt.save_weights(tmp_path / "w.safetensors", model)
    assert set(tensors(tmp_path / "w.safetensors")) == {"emb.weight"}
    again = Tied()
    ckpt.load_weights(tmp_path / "w.safetensors", again)
    assert torch.equal(again.out.weight, model.emb.weight) and again.out.weight is again.emb.weight


def test_rng_states_round_trip_through_json_in_both_formats():
    import base64
    import json
    import random

    import numpy as np

    from hybridrnn.train.seeding import get_rng_states, seed_everything, set_rng_states

    def draws():
        return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()

    seed_everything(5)
    draws()
    saved = json.loads(json.dumps(get_rng_states()))          # what state.json holds
    first = draws()
    set_rng_states(saved)
    assert draws() == first
    py, npk = saved["python"], saved["numpy"]                  # runs written before: the words as JSON lists
    older = {"torch": saved["torch"],
             "numpy": {**{k: v for k, v in npk.items() if k != "keys_b64"},
                       "keys": np.frombuffer(base64.b64decode(npk["keys_b64"]), "<u4").tolist()},
             "python": {"version": py["version"], "gauss_next": py["gauss_next"],
                        "state": np.frombuffer(base64.b64decode(py["state_b64"]), "<u4").tolist()}}
    set_rng_states(older)
    assert draws() == first
