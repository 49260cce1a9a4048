"""Attention over encoder outputs: additive (Bahdanau), dot and general (Luong), self-attention pooling.

Every module takes the padding mask and returns its weights. Masking is exact: scores at padding are set to
``-inf`` before the softmax, so the weights are exactly 0 there (and padding content never reaches the
context), and each row sums to 1 over its real steps. A row with no real step is a ``ValueError``.

Shapes: ``keys: (batch, time, key_size)``; ``query: (batch, query_size)`` for one query per sequence or
``(batch, query_time, query_size)`` for several; ``mask: (batch, time)`` bool, True at real steps.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from hybridrnn.errors import ConfigError

__all__ = ["lengths_to_mask", "masked_softmax", "AdditiveAttention", "DotAttention", "GeneralAttention",
           "SelfAttentionPooling"]


def lengths_to_mask(lengths: Tensor, max_len: Optional[int] = None) -> Tensor:
    """``(batch,)`` integer lengths -> ``(batch, max_len)`` bool mask, True at steps ``t < lengths[b]``.

    ``max_len`` defaults to ``lengths.max()``. Lengths must lie in ``0..max_len``.
    """
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor (batch,), got dtype {lengths.dtype} "
                         f"and shape {tuple(lengths.shape)}")
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > max_len):
        raise ValueError(f"lengths must lie in 0..{max_len} (max_len), got min {int(lengths.min())} "
                         f"and max {int(lengths.max())}")
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def _check_mask(mask: Optional[Tensor], batch: int, time: int) -> Optional[Tensor]:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (batch, time) = ({batch}, {time}), True at real steps; "
                         f"got {type(mask).__name__} of dtype {getattr(mask, 'dtype', None)}")
    if tuple(mask.shape) != (batch, time):
        raise ValueError(f"mask must have shape (batch, time) = ({batch}, {time}), got {tuple(mask.shape)}")
    empty = ~mask.any(1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"mask has no real step in batch row(s) {rows}: attention over an empty sequence "
                         f"is undefined")
    return mask


def masked_softmax(scores: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Softmax over the last axis of ``scores (batch, ..., time)`` with ``mask (batch, time)`` (True = keep).

    Masked entries come out exactly 0. The mask must already be checked (no all-False row).
    """
    if mask is not None:
        shape = (mask.shape[0],) + (1,) * (scores.dim() - 2) + (mask.shape[1],)
        scores = scores.masked_fill(~mask.view(shape), float("-inf"))
    return torch.softmax(scores, dim=-1)


def _check_keys(keys: Tensor, key_size: Optional[int]) -> None:
    if not isinstance(keys, Tensor) or keys.dim() != 3:
        raise ValueError(f"keys must be (batch, time, key_size), got shape {tuple(getattr(keys, 'shape', ()))}")
    if key_size is not None and keys.shape[-1] != key_size:
        raise ValueError(f"keys must have key_size {key_size} features, got shape {tuple(keys.shape)}")
    if keys.shape[1] == 0:
        raise ValueError(f"keys have no time steps: shape {tuple(keys.shape)}")


def _check_query(query: Tensor, keys: Tensor, query_size: Optional[int]) -> tuple[Tensor, bool]:
    """Returns the query as ``(batch, query_time, Q)`` and whether it was 2-D."""
    if not isinstance(query, Tensor) or query.dim() not in (2, 3):
        raise ValueError(f"query must be (batch, query_size) or (batch, query_time, query_size), got shape "
                         f"{tuple(getattr(query, 'shape', ()))}")
    if query.shape[0] != keys.shape[0]:
        raise ValueError(f"query batch {query.shape[0]} differs from keys batch {keys.shape[0]} "
                         f"(query {tuple(query.shape)}, keys {tuple(keys.shape)})")
    if query_size is not None and query.shape[-1] != query_size:
        raise ValueError(f"query must have query_size {query_size} features, got shape {tuple(query.shape)}")
    single = query.dim() == 2
    return (query.unsqueeze(1) if single else query), single


class _Attention(nn.Module):
    """Shared forward: score, masked softmax, weighted sum of the keys."""

    query_size: Optional[int] = None
    key_size: Optional[int] = None

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:  # (B, Tq, Q), (B, T, K) -> (B, Tq, T)
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``query (B, Q)`` or ``(B, Tq, Q)``, ``keys (B, T, K)``, ``mask (B, T)`` bool (True = real step).

        Returns ``(context, weights)``: ``context (B, K)`` / ``(B, Tq, K)`` the weighted sum of the keys,
        ``weights (B, T)`` / ``(B, Tq, T)``.
        """
        _check_keys(keys, self.key_size)
        q, single = _check_query(query, keys, self.query_size)
        mask = _check_mask(mask, keys.shape[0], keys.shape[1])
        weights = masked_softmax(self.scores(q, keys), mask)
        context = torch.bmm(weights, keys)
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights


class AdditiveAttention(_Attention):
    """Bahdanau et al. (2015): ``score(q, k_t) = v . tanh(W_q q + W_k k_t + b)``.

    Parameters: ``W_q`` ``(attn_size, query_size)`` (module ``query_proj``, no bias), ``W_k`` ``(attn_size,
    key_size)`` with the bias ``b`` (module ``key_proj``), ``v`` ``(attn_size,)`` (module ``score``, no bias).
    """

    def __init__(self, query_size: int, key_size: int, attn_size: int):
        super().__init__()
        for name, value in (("query_size", query_size), ("key_size", key_size), ("attn_size", attn_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        self.query_size, self.key_size, self.attn_size = query_size, key_size, attn_size
        self.query_proj = nn.Linear(query_size, attn_size, bias=False)
        self.key_proj = nn.Linear(key_size, attn_size, bias=True)
        self.score = nn.Linear(attn_size, 1, bias=False)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        # (B, Tq, 1, A) + (B, 1, T, A) -> (B, Tq, T, A) -> (B, Tq, T)
        hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + self.key_proj(keys).unsqueeze(1))
        return self.score(hidden).squeeze(-1)


class DotAttention(_Attention):
    """Luong et al. (2015) dot score: ``score(q, k_t) = q . k_t`` (``query_size == key_size``), divided by
    ``sqrt(key_size)`` when ``scaled`` (Vaswani et al. 2017). No parameters."""

    def __init__(self, scaled: bool = False):
        super().__init__()
        self.scaled = scaled

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        if query.shape[-1] != keys.shape[-1]:
            raise ValueError(f"dot attention needs query_size == key_size, got query {tuple(query.shape)} "
                             f"and keys {tuple(keys.shape)}; use GeneralAttention or AdditiveAttention")
        s = torch.bmm(query, keys.transpose(1, 2))
        return s / math.sqrt(keys.shape[-1]) if self.scaled else s

    def extra_repr(self) -> str:
        return f"scaled={self.scaled}"


class GeneralAttention(_Attention):
    """Luong et al. (2015) general score: ``score(q, k_t) = q . (W k_t)``, ``W`` ``(query_size, key_size)``
    (module ``key_proj``, no bias)."""

    def __init__(self, query_size: int, key_size: int):
        super().__init__()
        for name, value in (("query_size", query_size), ("key_size", key_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        self.query_size, self.key_size = query_size, key_size
        self.key_proj = nn.Linear(key_size, query_size, bias=False)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, self.key_proj(keys).transpose(1, 2))


class SelfAttentionPooling(nn.Module):
    """Multi-head self-attention pooling of a sequence into one vector (Lin et al. 2017, "A structured
    self-attentive sentence embedding").

    ``A = softmax_t(W_2 tanh(W_1 h_t))``: ``W_1`` ``(attn_size, input_size)`` (module ``proj``, no bias),
    ``W_2`` ``(num_heads, attn_size)`` (module ``heads``, no bias); ``A`` is ``(batch, num_heads, time)`` and
    each head pools ``m_r = sum_t A[r, t] h_t``. With one head the pooled vector is ``m_1``. With several they
    are combined back to ``input_size``: ``combine="linear"`` (default) concatenates the heads and applies a
    learned ``Linear(num_heads * input_size, input_size)`` (module ``out``); ``combine="mean"`` averages them
    (no parameters). ``attn_size`` defaults to ``input_size``. :meth:`penalty` gives Lin et al.'s
    ``||A A^T - I||_F^2`` that keeps the heads apart.
    """

    def __init__(self, input_size: int, num_heads: int = 1, attn_size: Optional[int] = None,
                 combine: str = "linear"):
        super().__init__()
        attn_size = input_size if attn_size is None else attn_size
        for name, value in (("input_size", input_size), ("num_heads", num_heads), ("attn_size", attn_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if combine not in ("linear", "mean"):
            raise ConfigError(f"combine must be 'linear' or 'mean', got {combine!r}")
        self.input_size, self.num_heads, self.attn_size, self.combine = input_size, num_heads, attn_size, combine
        self.output_size = input_size
        self.proj = nn.Linear(input_size, attn_size, bias=False)
        self.heads = nn.Linear(attn_size, num_heads, bias=False)
        self.out = nn.Linear(num_heads * input_size, input_size) if num_heads > 1 and combine == "linear" else None

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``x (B, T, input_size)``, ``mask (B, T)`` bool -> ``(pooled (B, input_size), weights (B, heads, T))``."""
        _check_keys(x, self.input_size)
        mask = _check_mask(mask, x.shape[0], x.shape[1])
        scores = self.heads(torch.tanh(self.proj(x))).transpose(1, 2)  # (B, heads, T)
        weights = masked_softmax(scores, mask)
        pooled = torch.bmm(weights, x)  # (B, heads, D)
        if self.num_heads == 1:
            return pooled.squeeze(1), weights
        if self.out is not None:
            return self.out(pooled.flatten(1)), weights
        return pooled.mean(1), weights

    @staticmethod
    def penalty(weights: Tensor) -> Tensor:
        """Lin et al.'s redundancy penalty ``mean_b ||A_b A_b^T - I||_F^2`` for ``weights (B, heads, T)``."""
        gram = torch.bmm(weights, weights.transpose(1, 2))
        eye = torch.eye(weights.shape[1], dtype=weights.dtype, device=weights.device)
        return ((gram - eye) ** 2).sum((1, 2)).mean()

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, num_heads={self.num_heads}, attn_size={self.attn_size}, "
                f"combine={self.combine!r}")
