"""The one low helper for writing files: atomic writes, strict JSON, figures.

Every file hybridrnn writes goes through :func:`atomic_write`: a temporary file in the target's folder,
fsync, then ``os.replace``, so a reader (or a process killed mid-write) sees the old file or the new one,
never a torn one. Files get the usual permissions (``0666 & ~umask``).
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from hybridrnn.errors import RunDirError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path in ``path``'s folder, fsync it, then ``os.replace`` it to ``path``.

    An ``OSError`` on the temporary file is raised with ``path`` as its file name (what the user can act on)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:   # name the file being written, not its temporary twin (read-only, disk full, ...)
        if exc.filename is not None and Path(exc.filename) == tmp:
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_safe(obj: Any) -> Any:
    """Non-finite floats as the strings "nan" / "inf" / "-inf" (strict JSON); tuples as lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """Strict JSON (non-finite floats as strings, see :func:`json_safe`), indented, with a final newline."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj))


def json_float(value: Any) -> float:
    """Inverse of the non-finite encoding of :func:`atomic_write_json`."""
    return float(value)


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a missing or malformed file is a :class:`RunDirError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} is not a valid JSON file ({type(exc).__name__}: {exc})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file ([] when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} is not a valid JSON-lines file ({type(exc).__name__}: {exc})") from None


def jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records)


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    return atomic_write_text(path, jsonl_text(records))


def save_figure(fig, path: str | Path, *, dpi: int = 110, tight: bool = True) -> Path:
    """Write a matplotlib figure as PNG atomically (creating the folder) and close it."""
    import matplotlib.pyplot as plt   # start-up time: matplotlib loads only when a figure is saved

    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    finally:
        plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buf.getvalue())


def new_figure(*args, **kwargs):
    """``plt.subplots(*args, **kwargs)`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib   # start-up time, as in save_figure

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)
