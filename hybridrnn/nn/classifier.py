"""SequenceClassifier: token ids or feature vectors -> recurrent encoder -> pooling -> class logits.

Padding never reaches a prediction: ``lengths`` go to the encoder (so padding never enters a state), the last
state is taken at each sequence's last real step, and mean / max / attention pooling are masked.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
from torch import Tensor, nn

from hybridrnn.errors import ConfigError
from hybridrnn.nn.attention import SelfAttentionPooling, lengths_to_mask
from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.nn.weight_drop import weight_dropped_call

POOLINGS = ("last", "mean", "max", "attention", "concat")


class SequenceClassifier(nn.Module):
    """Classify sequences of token ids (``vocab_size`` given) or of feature vectors (``input_size`` given).

    Args:
        num_classes: number of classes ``K``.
        encoder: an encoder spec (``"lstm:64"``, ``"(lstm:64|gru:64)>gru:32"``) built with
            :func:`hybridrnn.nn.hybrid.build_encoder`, or an already built recurrent module.
        vocab_size / embedding_dim / padding_idx: token input; ``padding_idx`` rows embed to zero.
        input_size: feature input (time series), ``x: (batch, time, input_size)``.
        pooling: ``"last"`` (the encoder's ``final_output``), ``"mean"``, ``"max"``, ``"attention"``
            (multi-head :class:`SelfAttentionPooling` with ``attention_heads`` heads) or ``"concat"``
            (ULMFiT's ``[last | max | mean]``, width ``3 * D*H``).
        weight_drop: DropConnect on the encoder's ``W_hh`` in training (:mod:`hybridrnn.nn.weight_drop`).
        dropout: on the embedding and on the pooled vector.
        head_hidden: a hidden layer (ReLU) in the head; ``None`` for a single linear layer.
        encoder_options: keyword options for ``build_encoder`` (dropout, init, fusion, ...).

    ``forward(x, lengths=None, return_attention=False)``: ``x`` ``(batch, time)`` int64 ids or
    ``(batch, time, input_size)`` floats, ``lengths (batch,)`` -> logits ``(batch, K)``; with
    ``return_attention`` also the pooling weights ``(batch, heads, time)`` (``None`` unless attention pooling).
    """

    def __init__(self, num_classes: int, encoder: str | nn.Module, *, vocab_size: Optional[int] = None,
                 embedding_dim: int = 128, padding_idx: int = 0, input_size: Optional[int] = None,
                 pooling: str = "last", attention_heads: int = 1, dropout: float = 0.0,
                 head_hidden: Optional[int] = None, encoder_options: Optional[dict] = None,
                 weight_drop: float = 0.0):
        super().__init__()
        if not 0.0 <= weight_drop < 1.0:
            raise ConfigError(f"weight_drop must be in [0, 1), got {weight_drop}")
        self.weight_drop = float(weight_drop)
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give exactly one of vocab_size (token input) and input_size (feature input)")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes, self.pooling = num_classes, pooling
        if vocab_size is not None:
            self.embedding: Optional[nn.Embedding] = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
            enc_in = embedding_dim
        else:
            self.embedding = None
            enc_in = input_size
        self.input_size = enc_in
        if isinstance(encoder, str):
            encoder = build_encoder(encoder, enc_in, **(encoder_options or {}))
        elif encoder.input_size != enc_in:
            raise ConfigError(f"encoder expects {encoder.input_size} input features, the classifier feeds {enc_in}")
        self.encoder = encoder
        width = encoder.output_size * (3 if pooling == "concat" else 1)
        self.attention = SelfAttentionPooling(width, num_heads=attention_heads) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        if head_hidden:
            self.head = nn.Sequential(nn.Linear(width, head_hidden), nn.ReLU(), nn.Dropout(dropout),
                                      nn.Linear(head_hidden, num_classes))
        else:
            self.head = nn.Linear(width, num_classes)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters in groups from the input to the output, for discriminative learning rates and gradual
        unfreezing (ULMFiT): the embedding (token input), then each layer of the encoder
        (:func:`encoder_layer_groups`), then the pooling attention and the head."""
        groups = [[self.embedding.weight]] if self.embedding is not None else []
        groups += encoder_layer_groups(self.encoder)
        groups.append([p for m in (self.attention, self.head) if m is not None for p in m.parameters()])
        return groups

    def encode(self, x: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Encoder outputs ``(batch, time, width)``, the real-step mask ``(batch, time)`` and the lengths."""
        if self.embedding is not None:
            if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"token input must be (batch, time) integer ids, got {tuple(x.shape)} {x.dtype}")
            x = self.dropout(self.embedding(x))
        elif x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"feature input must be (batch, time, {self.input_size}), got {tuple(x.shape)}")
        outputs, _ = weight_dropped_call(self.encoder, self.weight_drop if self.training else 0.0, x,
                                         lengths=lengths)
        if lengths is None:
            mask = torch.ones(outputs.shape[:2], dtype=torch.bool, device=outputs.device)
        else:
            mask = lengths_to_mask(lengths.to(outputs.device), outputs.shape[1])
        return outputs, mask, lengths

    def pool(self, outputs: Tensor, mask: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """``(batch, time, width)`` -> ``(batch, width)`` and attention weights (or None)."""
        if self.pooling == "last":
            return self.encoder.final_output(outputs, lengths), None
        if self.pooling == "mean":
            return _mean_pool(outputs, mask), None
        if self.pooling == "max":
            return _max_pool(outputs, mask), None
        if self.pooling == "concat":
            last = self.encoder.final_output(outputs, lengths)
            return torch.cat([last, _max_pool(outputs, mask), _mean_pool(outputs, mask)], dim=-1), None
        return self.attention(outputs, mask)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None, return_attention: bool = False):
        outputs, mask, lengths = self.encode(x, lengths)
        pooled, weights = self.pool(outputs, mask, lengths)
        logits = self.head(self.dropout(pooled))
        return (logits, weights) if return_attention else logits


def _mean_pool(outputs: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real steps: ``(batch, time, width)``, mask ``(batch, time)`` -> ``(batch, width)``."""
    m = mask.unsqueeze(-1).to(outputs.dtype)
    return (outputs * m).sum(1) / m.sum(1)


def _max_pool(outputs: Tensor, mask: Tensor) -> Tensor:
    """Maximum over the real steps: ``(batch, time, width)`` -> ``(batch, width)``."""
    return outputs.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


_LAYER = re.compile(r"_l(\d+)(?:_reverse)?$")


def encoder_layer_groups(encoder: nn.Module) -> list[list[nn.Parameter]]:
    """An encoder's parameters grouped by layer, bottom first: one group per stacked block and, inside a
    multi-layer block, per layer (``weight_ih_l1``, ``weight_hh_l1_reverse``, ... go with layer 1); tensors
    without a layer suffix (fusion gates, projections) form a group of their block. Order of first appearance
    in ``named_parameters()``, which follows the data flow."""
    groups: dict[tuple[str, int], list[nn.Parameter]] = {}
    for name, p in encoder.named_parameters():
        prefix, _, leaf = name.rpartition(".")
        match = _LAYER.search(leaf)
        groups.setdefault((prefix, int(match.group(1)) if match else -1), []).append(p)
    return list(groups.values())
