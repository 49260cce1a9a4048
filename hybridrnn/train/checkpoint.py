"""Run-directory I/O: atomic writes, safetensors weights, JSON state. Never pickle.

Files of a run directory (``RUN/``):

- ``config.yaml``          the resolved config (every default filled in)
- ``model.safetensors``    the best weights so far (by the task's monitored validation metric)
- ``last.safetensors``     the weights after the last finished epoch (for ``--resume``)
- ``optimizer.safetensors`` the optimizer's tensors (moments, step counts) after that epoch
- ``state.json``           epoch, best metric, schedule and early-stopping counters, RNG states, and the
                           non-tensor part of the optimizer state
- ``metrics.jsonl``        one JSON object per finished epoch
- ``environment.json``     versions, threads, device, platform, git commit
- ``learning_curve.png``   and the task's own artifacts (JSON) and plots

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``.
A training checkpoint spans three files, so it is committed like a journal: ``last.safetensors.next`` and
``optimizer.safetensors.next`` are written first (each tagged with its epoch), then ``state.json`` (the
commit point), then the two ``.next`` files are renamed over the old ones. :func:`recover_checkpoint` finishes
or discards a half-done commit, so a process killed at any instant leaves a consistent, resumable run.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save

# the writers and readers live in the one low helper (hybridrnn._io); re-exported for the run-directory code
from hybridrnn._io import (atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text,  # noqa: F401
                           json_float, json_text, jsonl_text, read_json, read_jsonl, write_jsonl)
from hybridrnn.errors import RunDirError  # noqa: F401

CONFIG = "config.yaml"
BEST_WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
METRICS = "metrics.jsonl"
ENVIRONMENT = "environment.json"
LEARNING_CURVE = "learning_curve.png"
PENDING = ".next"




def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (nothing else is ever parsed)."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise RunDirError(f"{path} is not a valid safetensors file ({exc}); "
                          "hybridrnn only reads safetensors weights, never pickle") from None
    return tensors, metadata


# ---------------------------------------------------------------------------------------------------------
# model weights


def save_weights(path: str | Path, model: torch.nn.Module, metadata: dict[str, str] | None = None) -> Path:
    """``model.state_dict()`` as safetensors; tensors tied to another (shared storage) are stored once."""
    return atomic_write_bytes(path, weights_bytes(model, metadata))


def weights_bytes(model: torch.nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of ``model.state_dict()`` (a copy: later training does not change it)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in model.state_dict().items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        ptr = t.untyped_storage().data_ptr()
        shared = t.numel() > 0 and ptr in storages
        storages.add(ptr)
        t = t.to("cpu").contiguous()
        tensors[name] = t.clone() if shared or not t.is_contiguous() else t
    meta = dict(metadata or {})
    if aliases:
        meta["aliases"] = json.dumps(aliases)
    return _st_save(tensors, metadata=meta)


def load_weights(path: str | Path, model: torch.nn.Module) -> dict[str, str]:
    """Load ``path`` into ``model`` after checking every name and shape; returns the file's metadata."""
    tensors, metadata = read_safetensors(path)
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise RunDirError(f"{path}: malformed 'aliases' metadata") from None
    for name, target in aliases.items():
        if target in tensors:
            tensors[name] = tensors[target]
    expected = model.state_dict()
    problems = []
    for name in expected:
        if name not in tensors:
            problems.append(f"tensor {name!r} {tuple(expected[name].shape)} is missing from the file")
        elif tuple(tensors[name].shape) != tuple(expected[name].shape):
            problems.append(f"tensor {name!r} has shape {tuple(tensors[name].shape)} in the file but "
                            f"{tuple(expected[name].shape)} in the model")
    problems += [f"tensor {name!r} {tuple(tensors[name].shape)} in the file has no place in the model"
                 for name in tensors if name not in expected]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems) - 6} more)" if len(problems) > 6 else "")
        raise RunDirError(f"{path} does not match the model that the run's config builds: {shown}. "
                          "Was config.yaml edited, or the weights copied from another run?")
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=True)
    return metadata


# ---------------------------------------------------------------------------------------------------------
# optimizer state: tensors to safetensors, the rest to JSON


def split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` as (tensors named ``state.<param>.<key>``, JSON-serialisable rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, entry in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = []
    for g in rest["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------------------
# training checkpoints (journaled commit over last.safetensors, optimizer.safetensors and state.json)


def checkpoint_files(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     state: dict[str, Any]) -> dict[str, bytes]:
    """The bytes of each file of a checkpoint, snapshotted now, in the order :func:`write_checkpoint` commits them.

    ``state`` must hold ``"epoch"`` and ``"best_epoch"``; when they are equal the weights are also the new best
    (``model.safetensors``).
    """
    tag = {"epoch": str(state["epoch"])}
    opt_tensors, opt_rest = split_optimizer_state(optimizer)
    weights = weights_bytes(model, tag)
    files = {LAST_WEIGHTS: weights, OPTIMIZER: _st_save(opt_tensors, metadata=tag)}
    if state["best_epoch"] == state["epoch"]:
        files[BEST_WEIGHTS] = weights
    files[STATE] = json_text({**state, "optimizer": opt_rest}).encode("utf-8")
    return files


def write_checkpoint(run_dir: Path, files: dict[str, bytes]) -> None:
    """Commit :func:`checkpoint_files`: each ``NAME.next``, then ``state.json`` (the commit point), then renames."""
    run_dir = Path(run_dir)
    names = [name for name in files if name != STATE]
    for name in names:
        atomic_write_bytes(run_dir / (name + PENDING), files[name])
    atomic_write_bytes(run_dir / STATE, files[STATE])       # the commit point
    for name in names:
        os.replace(run_dir / (name + PENDING), run_dir / name)


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Commit the weights, optimizer and ``state`` after a finished epoch (see :func:`checkpoint_files`)."""
    write_checkpoint(run_dir, checkpoint_files(model, optimizer, state))


class BackgroundWriter:
    """Runs one write job at a time in a thread, so that writing and fsyncing a checkpoint overlaps training.

    ``submit`` first waits for the previous job. A job's exception (any ``BaseException``) is raised in the
    caller at the next ``submit`` or ``wait``. The thread is not a daemon: an exiting interpreter finishes the
    write in flight (a SIGKILL does not, and the journal of :func:`write_checkpoint` covers that).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                job()
            except BaseException as exc:       # re-raised in the training thread
                self._error = exc

        self._thread = threading.Thread(target=run, name="hybridrnn-checkpoint")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _file_epoch(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("epoch")
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files left by a writer that was killed (its PID no longer runs)."""
    removed = []
    for tmp in Path(run_dir).glob(".*.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def recover_checkpoint(run_dir: Path, *, write: bool = True) -> dict[str, Any]:
    """Finish or discard a half-done commit, check the files agree, and return ``state.json``.

    With ``write=False`` nothing is renamed or deleted (for readers other than the one writer of a run).
    """
    run_dir = Path(run_dir)
    if write:
        remove_stale_temporaries(run_dir)
    state = read_json(run_dir / STATE)
    if not isinstance(state, dict) or "epoch" not in state or "best_epoch" not in state:
        raise RunDirError(f"{run_dir / STATE} has no 'epoch' / 'best_epoch': not a hybridrnn training state")
    expected = {LAST_WEIGHTS: str(state["epoch"]), OPTIMIZER: str(state["epoch"])}
    if int(state["best_epoch"]) > 0:
        expected[BEST_WEIGHTS] = str(state["best_epoch"])
    for name, epoch in expected.items():
        pending = run_dir / (name + PENDING)
        if pending.exists() and write:
            if _file_epoch(pending) == epoch:
                os.replace(pending, run_dir / name)      # committed, rename not done yet
            else:
                pending.unlink()                         # never committed
        final = run_dir / name
        read_safetensors(final)                          # clear error when it is not safetensors
        found = _file_epoch(final)
        if found != epoch:
            raise RunDirError(f"{final} holds epoch {found} but {run_dir / STATE} expects epoch {epoch}: "
                              "the checkpoint files do not belong together")
    return state


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                    write: bool = True) -> dict[str, Any]:
    """Recover (``write=True``), then load ``last.safetensors`` and the optimizer state; returns ``state.json``."""
    run_dir = Path(run_dir)
    state = recover_checkpoint(run_dir, write=write)
    load_weights(run_dir / LAST_WEIGHTS, model)
    tensors, _ = read_safetensors(run_dir / OPTIMIZER)
    try:
        optimizer.load_state_dict(join_optimizer_state(tensors, state["optimizer"]))
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise RunDirError(f"{run_dir / OPTIMIZER} does not fit this optimizer ({type(exc).__name__}: {exc}); "
                          "was train.optimizer or the model changed since the run started?") from None
    return state
