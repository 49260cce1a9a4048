"""What a run ran on: versions, threads, device, platform, git commit (written to environment.json)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrnn._version import __version__
from hybridrnn.nn import _compiled
from hybridrnn.nn.minimal import MinGRU, MinLSTM
from hybridrnn.nn.recurrent import GRU, LSTM
from hybridrnn.train import allocator
from hybridrnn.train.trainer import bf16_supported


def git_commit(path: Path | None = None) -> str | None:
    """The git commit of the hybridrnn source tree (with ``-dirty`` if it has changes), or None."""
    where = path or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``, else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def recurrent_paths(model: torch.nn.Module) -> dict[str, str]:
    """``{module name: path}`` for every recurrent layer of ``model``: what ``path="auto"`` chose ("fused" or
    "custom" for LSTM / GRU layers, "loop" or "log_scan" for minGRU / minLSTM)."""
    return {name or "(model)": module.path for name, module in model.named_modules()
            if isinstance(module, (LSTM, GRU, MinGRU, MinLSTM))}


def collect_environment(device: torch.device | str, world_size: int = 1,
                        model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Versions, threads, device, platform, command and git commit of this process; with ``model``, also the
    path each of its recurrent layers runs (``recurrent_paths``) and the state of the compiled kernels
    (``compiled_kernel``: built, disabled, failed with its reason, or not built)."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "hybridrnn": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "world_size": world_size,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "native_bf16": bf16_supported(device),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "git_commit": git_commit(),
    }
    if model is not None:
        env["recurrent_paths"] = recurrent_paths(model)
        if device.type == "cpu" and any(isinstance(m, (LSTM, GRU)) for m in model.modules()):
            _compiled.kernels()                          # load (or build) now: training would on its first batch
        env["compiled_kernel"] = _compiled.status()      # the C++ loops of the custom path (hybridrnn.nn._compiled)
    env["allocator"] = allocator.state()                  # glibc thresholds (hybridrnn.train.allocator)
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
