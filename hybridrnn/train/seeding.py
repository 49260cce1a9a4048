"""Seeds and random-number-generator states, saved as JSON (no pickle) so a resumed run repeats bit for bit."""
from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch

from hybridrnn.errors import RunDirError


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling generator of one epoch: a pure function of (seed, epoch), identical on every process."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _words_b64(words) -> str:
    return base64.b64encode(np.asarray(words, dtype="<u4").tobytes()).decode("ascii")


def _b64_words(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<u4").astype(np.uint32)


def get_rng_states() -> dict[str, Any]:
    """The global RNG states as JSON-serialisable values (the state words base64-encoded)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    # the 624-word Mersenne Twister states as base64 of their uint32 bytes: a JSON list of 1,250 integers
    # took ~10 ms to encode at every epoch's checkpoint
    states: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": {"kind": np_state[0], "keys_b64": _words_b64(np_state[1]), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state_b64": _words_b64(py_state[1]), "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_states` returned; a ValueError if a state is malformed."""
    try:
        torch.set_rng_state(_unb64(states["torch"]))
        n = states["numpy"]
        keys = _b64_words(n["keys_b64"]) if "keys_b64" in n else np.asarray(n["keys"], dtype=np.uint32)
        np.random.set_state((n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
        p = states["python"]
        words = _b64_words(p["state_b64"]).tolist() if "state_b64" in p else p["state"]   # lists: older runs
        random.setstate((int(p["version"]), tuple(int(v) for v in words), p["gauss_next"]))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_unb64(s) for s in states["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise RunDirError(f"malformed RNG state in state.json ({type(exc).__name__}: {exc})") from None
