"""Input validation shared by every recurrent module (LSTM / GRU layers, minGRU / minLSTM, hybrid encoders)."""
from __future__ import annotations

import torch
from torch import Tensor


def input_error(owner: str, what: str, expected: str, got) -> ValueError:
    """``ValueError("{owner}: expected {what} {expected}, got {got}")``: the one shape of these messages."""
    return ValueError(f"{owner}: expected {what} {expected}, got {got}")


def check_lengths(owner: str, lengths, batch: int, time: int) -> tuple[Tensor, bool]:
    """Validated ``lengths`` of a padded batch: ``((batch,) int64, whether every sequence is full)``.

    lengths: a tensor (or anything ``torch.as_tensor`` takes) of ``batch`` integers in ``1..time``; anything
    else is a ``ValueError`` naming ``owner``, what was expected and what came.
    """
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise input_error(owner, "lengths", f"a ({batch},) integer tensor", repr(lengths)) from exc
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise input_error(owner, "lengths", "an integer tensor", f"dtype {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise input_error(owner, "lengths", f"of shape ({batch},) (one per sequence)", f"shape {tuple(lengths.shape)}")
    low, high = (int(v) for v in torch.aminmax(lengths))   # one pass, no boolean mask on the usual path
    if low < 1 or high > time:
        bad = lengths[(lengths < 1) | (lengths > time)].tolist()
        raise input_error(owner, "lengths", f"in 1..{time} (the time axis of x)", f"values {bad}")
    return lengths.long(), low == time
