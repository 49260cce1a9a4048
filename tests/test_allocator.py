"""hybridrnn.train.allocator: glibc's thresholds set once per process, reported in the run's environment."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pytest

from hybridrnn.config import TrainConfig
from hybridrnn.train import allocator
from hybridrnn.train.environment import collect_environment


def _glibc() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "gnu_get_libc_version")
    except OSError:
        return False


def test_keep_freed_memory_sets_the_thresholds_once_and_reports_them(monkeypatch):
    monkeypatch.setattr(allocator, "_state", None)
    assert allocator.state().startswith("default")
    calls = []
    original = allocator._apply
    monkeypatch.setattr(allocator, "_apply", lambda: calls.append(1) or original())
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() == first == allocator.state()
    assert len(calls) == 1
    if _glibc():
        assert "mmap threshold 32 MiB" in first and "trim threshold 1024 MiB" in first
    else:
        assert first.startswith("not changed")
    assert collect_environment("cpu")["allocator"] == first


def test_elsewhere_than_linux_nothing_changes(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator._apply().startswith("not changed: darwin")


def test_the_trainer_keeps_freed_memory_by_default():
    assert TrainConfig().keep_freed_memory is True
    with pytest.raises(ValueError):
        TrainConfig(keep_freed_memory="sometimes")
