"""Progress lines for the benchmark scripts that drive ``hybridrnn compare``."""
from __future__ import annotations

import time


class CompareProgress:
    """``progress=`` callback of ``run_compare``: prints each message with the seconds since creation, and keeps
    the rows a rerun found finished (``skipped``), so a script can tell a resumed run from a fresh one."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.skipped: list[str] = []

    def __call__(self, message: str) -> None:
        if message.endswith("done before, skipped"):
            self.skipped.append(message)
        print(f"[{self.seconds():6.0f} s] {message}", flush=True)

    def seconds(self) -> float:
        return time.perf_counter() - self.started
