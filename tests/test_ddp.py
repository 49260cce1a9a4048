"""Two-process DistributedDataParallel (torchrun, gloo on CPU) against a single-process run."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hybridrnn.train import checkpoint as ckpt
from conftest import train

# 50 training examples, global batch 15: batches of 15, 15, 15, 5, so the shards are 8/7 and then 3/2 (unequal)
CONFIG = {"task": "toy", "model": {"encoder": "gru:8"}, "data": {"n_train": 50},
          "train": {"epochs": 3, "batch_size": 15, "lr": 0.01, "num_threads": 1, "progress": "plain", "plots": False}}
# float32 gradients summed in another order (per shard, then all-reduced) drift by a few ulps per step
TOLERANCE = 1e-5
# the whole two-process run takes ~10 s here; past this the process group is killed and the test fails
TIMEOUT_S = 90


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if not exe.exists():
        found = shutil.which("torchrun")
        if found is None:
            pytest.skip("torchrun not found")
        exe = Path(found)
    return [str(exe)]


def run_torchrun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` in its own process group, killed whole on timeout.

    ``--standalone`` picks a free local port for the rendezvous itself (``--master_port=0`` never rendezvouses
    with torch 2.13). ``subprocess.run(timeout=...)`` alone is not enough: it kills torchrun but then waits for
    the workers, which still hold the output pipes.
    """
    cmd = torchrun() + ["--standalone", "--nproc_per_node=2"] + args
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s: {' '.join(cmd)}\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, toy_task, toy_env):
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    run2 = tmp_path / "ddp"
    proc = run_torchrun(["-m", "hybridrnn", "train", str(config_path), "--out", str(run2)], toy_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("epoch 3/3") == 1                  # only rank 0 reports
    run1 = train(CONFIG, out=tmp_path / "single", progress="none")
    one, two = ckpt.read_safetensors(run1 / ckpt.LAST_WEIGHTS)[0], ckpt.read_safetensors(run2 / ckpt.LAST_WEIGHTS)[0]
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=TOLERANCE)
    m1, m2 = ckpt.read_jsonl(run1 / ckpt.METRICS), ckpt.read_jsonl(run2 / ckpt.METRICS)
    for a, b in zip(m1, m2):                                     # the global loss is averaged over all 50 items
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert ckpt.read_json(run2 / ckpt.ENVIRONMENT)["world_size"] == 2
    assert ckpt.read_json(run2 / ckpt.STATE)["world_size"] == 2
    assert not list(run2.glob(".*tmp*")) and not list(run2.glob("*.next"))
