"""Weight tying: a language-model output layer tied to its embedding, and a parameter count that counts each
shared tensor once.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from hybridrnn.errors import ConfigError
from hybridrnn.nn import _onednn

__all__ = ["count_parameters", "TiedOutput"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model``, each shared tensor counted once.

    Sharing is detected by identity (one ``Parameter`` registered under several names, as tied weights are)
    and by storage (different tensors viewing the same memory: the elements they cover are counted once).
    ``trainable_only`` counts only parameters with ``requires_grad``.
    """
    seen: set[int] = set()
    by_storage: dict[tuple, list[Tensor]] = {}
    total = 0
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        if p.device.type == "meta" or p.numel() == 0:
            total += p.numel()
            continue
        key = (p.device, p.untyped_storage().data_ptr())
        by_storage.setdefault(key, []).append(p)
    for tensors in by_storage.values():
        if len(tensors) == 1:
            total += tensors[0].numel()
            continue
        # several tensors on one storage: mark the elements each covers and count the union
        first = tensors[0]
        size = first.untyped_storage().nbytes() // first.element_size()
        covered = torch.zeros(size, dtype=torch.bool)
        for t in tensors:
            if t.element_size() != first.element_size():  # views with another dtype: count them apart
                total += t.numel()
                continue
            covered.as_strided(t.shape, t.stride(), t.storage_offset()).fill_(True)
        total += int(covered.sum())
    return total


class TiedOutput(nn.Module):
    """Language-model output layer whose weight *is* the embedding's weight (Press & Wolf 2017;
    Inan et al. 2017): ``logits = h @ E^T + b`` with ``E = embedding.weight (vocab, embedding_dim)``.

    ``h (..., hidden_size)`` -> ``logits (..., vocab)``. The hidden size must equal ``embedding_dim``; with
    ``project=True`` a learned ``Linear(hidden_size, embedding_dim)`` (module ``proj``) maps ``h`` first.

    ``self.weight`` is the same ``Parameter`` object as ``embedding.weight`` (registered under both names), so
    an update to one is an update to the other, ``model.parameters()`` yields it once, and the model's
    ``state_dict`` holds it under both keys (one tensor): save with ``safetensors.torch.save_model`` (which
    writes shared tensors once), not ``save_file``.
    """

    def __init__(self, embedding: nn.Embedding, hidden_size: int, bias: bool = True, project: bool = False):
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise ValueError(f"TiedOutput ties to an nn.Embedding, got {type(embedding).__name__}")
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ConfigError(f"hidden_size must be a positive int, got {hidden_size!r}")
        vocab, dim = embedding.weight.shape
        if hidden_size != dim and not project:
            raise ConfigError(f"cannot tie the output layer to the embedding: hidden_size {hidden_size} != "
                              f"embedding_dim {dim}; make them equal, or pass project=True to map the hidden "
                              f"state to {dim} features with a Linear({hidden_size}, {dim}) first")
        self.vocab_size, self.embedding_dim, self.hidden_size = vocab, dim, hidden_size
        self.proj: Optional[nn.Linear] = nn.Linear(hidden_size, dim) if project else None
        self.weight = embedding.weight  # the same Parameter: tied
        self.bias = nn.Parameter(torch.zeros(vocab, dtype=embedding.weight.dtype,
                                             device=embedding.weight.device)) if bias else None

    def forward(self, h: Tensor) -> Tensor:
        if h.shape[-1] != self.hidden_size:
            raise ValueError(f"TiedOutput expects (..., {self.hidden_size}) hidden states, got {tuple(h.shape)}")
        if self.proj is not None:
            h = self.proj(h)
        return _onednn.linear(h, self.weight, self.bias)      # F.linear, on oneDNN for big CPU float32 products

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, embedding_dim={self.embedding_dim}, vocab_size={self.vocab_size}, "
                f"bias={self.bias is not None}, project={self.proj is not None}")
