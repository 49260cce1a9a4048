"""Keep freed memory in the process heap (glibc ``mallopt``), so that a training step does not fault in fresh pages.

A training step on the CPU allocates and frees the same large buffers every step: the recurrent layers' saved
activations and gradients, ``(T, B, G*H)`` float32 each (13 MB at B32 H128 T200), and oneDNN's workspaces.
glibc serves such blocks with ``mmap`` and returns them to the kernel on ``free``, so every step faults in and
zeroes every page again: on this project's machines (2-core AMD EPYC VMs) a perf profile put about a third of a
training step in the kernel's page-fault path. With the mmap threshold at glibc's 64-bit maximum (32 MiB) and
the trim threshold at 1 GiB the freed blocks stay in the heap and the next step reuses them. Measured
(``python benchmarks/allocator.py``, B32 H128 T200 training steps, one thread, three processes each): the
layer-norm LSTM 55-65 -> 39-40 ms, the custom LSTM 30-42 -> 30 ms, the custom GRU 23-39 -> 23-24 ms,
``torch.nn.LSTM`` 44-50 -> 44-45 ms: faster where the default allocator was slow, and the same from one process
to the next. The cost: the heap keeps up to the run's peak of freed memory instead of giving it back to the
system. PyTorch's CPU tuning guide gets the same effect by preloading jemalloc or tcmalloc; this needs no extra
library.

The Trainer's pipeline calls :func:`keep_freed_memory` on the CPU unless ``train.keep_freed_memory: false``;
call it yourself in a notebook. It changes the whole process, once; elsewhere than Linux with glibc it does
nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from typing import Optional

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024      # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1024 * 1024 * 1024

_lock = threading.Lock()
_state: Optional[str] = None


def keep_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds (see the module docstring), once per process. Returns what was done,
    one line (also :func:`state`)."""
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def state() -> str:
    """What :func:`keep_freed_memory` did in this process, or that the allocator is glibc's default."""
    return _state or "default (keep_freed_memory not called)"


def _apply() -> str:
    if not sys.platform.startswith("linux"):
        return f"not changed: {sys.platform} is not Linux with glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
        version.restype = ctypes.c_char_p
        glibc = version().decode()
        ok = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError) as exc:
        return f"not changed: no glibc mallopt ({exc})"
    if not ok:
        return f"not changed: glibc {glibc} refused mallopt"
    return f"glibc {glibc} mallopt: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
