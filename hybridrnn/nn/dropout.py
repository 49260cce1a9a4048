"""Variational ("locked") dropout: one mask per sequence and feature, shared by every time step
(Gal & Ghahramani 2016; the ``dropouti`` / ``dropouth`` / ``dropout`` of AWD-LSTM, Merity et al. 2018)."""
from __future__ import annotations

from torch import Tensor, nn


def locked_dropout(x: Tensor, p: float, training: bool, time_dim: int = 1) -> Tensor:
    """``x`` times a mask that is constant along ``time_dim``, scaled by ``1 / (1 - p)``; ``x`` itself when not
    ``training`` or ``p == 0``. Batch-first ``x (batch, time, features)`` by default; ``time_dim=0`` for
    ``(time, batch, features)``."""
    if not training or p == 0.0:
        return x
    shape = list(x.shape)
    shape[time_dim] = 1
    return x * (x.new_empty(shape).bernoulli_(1.0 - p) / (1.0 - p))


class LockedDropout(nn.Module):
    """Variational dropout: ``x (batch, time, features)`` times a ``(batch, 1, features)`` mask / (1 - p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return locked_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
