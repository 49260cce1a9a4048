"""Two-process DistributedDataParallel (torchrun, gloo on CPU) against a single-process run."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hybridrnn.train import checkpoint as ckpt
from hybridrnn.train.run import train

# 50 training examples, global batch 15: batches of 15, 15, 15, 5, so the shards are 8/7 and then 3/2 (unequal)
CONFIG = {"task": "toy", "model": {"encoder": "gru:8"}, "data": {"n_train": 50},
          "train": {"epochs": 3, "batch_size": 15, "lr": 0.01, "num_threads": 1, "progress": "plain", "plots": False}}
# float32 gradients summed in another order (per shard, then all-reduced) drift by a few ulps per step
TOLERANCE = 1e-5


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if not exe.exists():
        found = shutil.which("torchrun")
        if found is None:
            pytest.skip("torchrun not found")
        exe = Path(found)
    return [str(exe)]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, toy_task, toy_env):
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    run2 = tmp_path / "ddp"
    proc = subprocess.run(torchrun() + ["--nproc_per_node=2", "--master_port=0", "-m", "hybridrnn", "train",
                                        str(config_path), "--out", str(run2)],
                          env=toy_env, capture_output=True, text=True, timeout=240)
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
