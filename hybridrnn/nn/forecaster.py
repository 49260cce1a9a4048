"""Forecaster: a recurrent encoder (any hybrid spec) and a multi-step head.

Inputs are laid out by the task: ``past: (batch, lookback, input_size)`` whose first ``num_targets`` channels are
the targets (in order), then past covariates, and whose last ``future_size`` channels are the known-future
covariates (calendar features) at the past steps; ``future: (batch, horizon, future_size)`` holds those same
known-future covariates over the horizon (or None when ``future_size == 0``).

``forward(past, future=None) -> (y, weights)``: ``y: (batch, horizon, num_targets)`` and the attention weights
(``(batch, queries, lookback)``, or None without attention) for plotting.

Strategies:

- ``direct``: the encoder summary (``final_output``), optionally with an attention context over the encoder
  outputs queried by that summary, plus the flattened future covariates, mapped by one linear layer to all
  ``horizon * num_targets`` outputs at once;
- ``recursive``: a one-step model rolled out: each prediction (and the next step's known-future covariates) is
  fed back through the encoder's ``step``; trained through the roll-out (no teacher forcing). Past covariates
  have no future values, so this strategy takes targets and known-future covariates only;
- ``seq2seq``: a GRU or LSTM decoder cell started from the encoder summary, fed at each step its previous
  prediction and that step's known-future covariates, with additive attention (Bahdanau: the previous decoder
  state queries the encoder outputs before the step) or dot / general attention (Luong: the new state queries
  after the step, ``tanh(W [h; context])`` feeds the output).

Options:

- ``instance_norm`` (RevIN-style, without the affine part): the first ``norm_channels`` input channels of each
  window are normalised by that window's own mean and standard deviation, and the predictions de-normalised
  with the targets' statistics. On strongly non-stationary series (ETTh1) this matters more than the cell type;
- ``channel_independent``: one shared model applied to each target separately (its own history plus the
  shared covariates), as in PatchTST / DLinear's "individual=False" setting;
- ``linear_skip``: adds a linear map of each (normalised) target history ``Linear(lookback, horizon)``, shared
  across targets, to the output (the network learns the residual of a linear forecast).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

STRATEGIES = ("direct", "recursive", "seq2seq")
ATTENTIONS = (None, "additive", "dot", "general", "self")


def _make_encoder(encoder: Any, input_size: int, options: dict) -> nn.Module:
    if isinstance(encoder, nn.Module):
        if getattr(encoder, "input_size", input_size) != input_size:
            raise ValueError(f"encoder input_size {encoder.input_size} differs from the forecaster's {input_size}")
        return encoder
    from hybridrnn.nn.hybrid import build_encoder
    return build_encoder(encoder, input_size, **options)


def _make_attention(kind: Optional[str], query_size: int, key_size: int, heads: int) -> Optional[nn.Module]:
    from hybridrnn.nn import attention as att
    if kind is None:
        return None
    if kind == "additive":
        return att.AdditiveAttention(query_size, key_size, key_size)
    if kind == "dot":
        if query_size != key_size:
            raise ValueError(f"dot attention needs query size {query_size} == key size {key_size}")
        return att.DotAttention(scaled=True)
    if kind == "general":
        return att.GeneralAttention(query_size, key_size)
    if kind == "self":
        return att.SelfAttentionPooling(key_size, num_heads=heads)
    raise ValueError(f"unknown attention {kind!r}; expected one of {ATTENTIONS}")


class _Core(nn.Module):
    """The forecaster without normalisation or channel handling (see :class:`Forecaster`)."""

    def __init__(self, input_size: int, num_targets: int, horizon: int, lookback: Optional[int], encoder: Any,
                 future_size: int, strategy: str, attention: Optional[str], attention_heads: int, dropout: float,
                 linear_skip: bool, decoder: str, encoder_options: dict):
        super().__init__()
        self.num_targets, self.horizon, self.future_size, self.strategy = num_targets, horizon, future_size, strategy
        self.attention_kind = attention
        if strategy == "recursive" and input_size != num_targets + future_size:
            raise ValueError(f"the recursive strategy feeds its predictions back as inputs, so it takes only the "
                             f"targets ({num_targets}) and known-future covariates ({future_size}); got "
                             f"{input_size - num_targets - future_size} past covariate channel(s): use 'direct' or "
                             f"'seq2seq'")
        self.encoder = _make_encoder(encoder, input_size, encoder_options)
        d = self.encoder.output_size
        self.dropout = nn.Dropout(dropout)
        if strategy == "seq2seq" and attention == "self":
            raise ValueError("seq2seq attention must be 'additive', 'dot' or 'general' (self-attention pooling "
                             "has no query)")
        if strategy in ("direct", "recursive"):
            self.attention = _make_attention(attention, d, d, attention_heads)
            feat = d * (2 if attention else 1)
            if strategy == "direct":
                self.head = nn.Linear(feat + horizon * future_size, horizon * num_targets)
            else:
                self.head = nn.Linear(feat, num_targets)
        else:
            if decoder not in ("gru", "lstm"):
                raise ValueError(f"decoder must be 'gru' or 'lstm', got {decoder!r}")
            from hybridrnn.nn.cells import GRUCell, LSTMCell
            self.decoder_kind = decoder
            self.attention = _make_attention(attention, d, d, attention_heads)
            bahdanau = attention == "additive"
            cell_in = num_targets + future_size + (d if bahdanau else 0)
            self.cell = (GRUCell if decoder == "gru" else LSTMCell)(cell_in, d)
            self.init_state = nn.Linear(d, d)
            self.combine = nn.Linear(2 * d, d) if attention in ("dot", "general") else None
            self.head = nn.Linear(2 * d if bahdanau else d, num_targets)
        self.skip = nn.Linear(lookback, horizon) if linear_skip else None
        if linear_skip and lookback is None:
            raise ValueError("linear_skip needs the lookback")

    def forward(self, past: Tensor, future: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        outputs, state = self.encoder(past)
        summary = self.encoder.final_output(outputs)
        if self.strategy == "direct":
            y, weights = self._direct(outputs, summary, future)
        elif self.strategy == "recursive":
            y, weights = self._recursive(past, outputs, summary, state, future)
        else:
            y, weights = self._seq2seq(past, outputs, summary, future)
        if self.skip is not None:
            y = y + self.skip(past[:, :, :self.num_targets].transpose(1, 2)).transpose(1, 2)
        return y, weights

    def _attend(self, query: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        if self.attention_kind == "self":
            return self.attention(keys)
        return self.attention(query, keys)

    def _direct(self, outputs, summary, future):
        feats, weights = [summary], None
        if self.attention is not None:
            context, weights = self._attend(summary, outputs)
            feats.append(context)
            weights = weights if weights.dim() == 3 else weights.unsqueeze(1)
        if self.future_size:
            feats.append(future.flatten(1))
        y = self.head(self.dropout(torch.cat(feats, dim=1)))
        return y.view(-1, self.horizon, self.num_targets), weights

    def _recursive(self, past, outputs, summary, state, future):
        preds, maps = [], []
        y_t = summary
        for h in range(self.horizon):
            feats = [y_t]
            if self.attention is not None:
                context, w = self._attend(y_t, outputs)
                feats.append(context)
                maps.append(w if w.dim() == 2 else w.mean(1))
            pred = self.head(self.dropout(torch.cat(feats, dim=1)))
            preds.append(pred)
            if h + 1 < self.horizon:
                x_next = pred if not self.future_size else torch.cat([pred, future[:, h]], dim=1)
                y_t, state = self.encoder.step(x_next, state)
        weights = torch.stack(maps, dim=1) if maps else None
        return torch.stack(preds, dim=1), weights

    def _seq2seq(self, past, outputs, summary, future):
        h = torch.tanh(self.init_state(summary))
        c = torch.zeros_like(h) if self.decoder_kind == "lstm" else None
        prev = past[:, -1, :self.num_targets]
        preds, maps = [], []
        for step in range(self.horizon):
            inputs = [prev] + ([future[:, step]] if self.future_size else [])
            if self.attention_kind == "additive":
                context, w = self.attention(h, outputs)
                inputs.append(context)
            x = torch.cat(inputs, dim=1)
            if c is None:
                h = self.cell(x, h)
            else:
                h, c = self.cell(x, (h, c))
            if self.attention_kind == "additive":
                out = torch.cat([h, context], dim=1)
            elif self.attention is not None:
                context, w = self.attention(h, outputs)
                out = torch.tanh(self.combine(torch.cat([h, context], dim=1)))
            else:
                out, w = h, None
            if w is not None:
                maps.append(w)
            prev = self.head(self.dropout(out))
            preds.append(prev)
        weights = torch.stack(maps, dim=1) if maps else None
        return torch.stack(preds, dim=1), weights


class Forecaster(nn.Module):
    """Multi-step forecaster. See the module docstring for the layout of ``past`` / ``future`` and the options.

    encoder: a spec for :func:`hybridrnn.nn.hybrid.build_encoder` (``"lstm:64"``, ``"(lstm:64|gru:64)"``...)
    or a ready recurrent module with the project's contract. ``encoder_options`` go to ``build_encoder``.
    """

    def __init__(self, input_size: int, num_targets: int, horizon: int, encoder: Any = "lstm:64", *,
                 lookback: Optional[int] = None, future_size: int = 0, strategy: str = "direct",
                 attention: Optional[str] = None, attention_heads: int = 1, dropout: float = 0.0,
                 instance_norm: bool = False, norm_channels: Optional[int] = None,
                 channel_independent: bool = False, linear_skip: bool = False, decoder: str = "gru",
                 encoder_options: Optional[dict] = None, eps: float = 1e-5):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; expected one of {ATTENTIONS}")
        if not (1 <= num_targets <= input_size - future_size):
            raise ValueError(f"need 1 <= num_targets ({num_targets}) <= input_size - future_size "
                             f"({input_size} - {future_size})")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.input_size, self.num_targets, self.horizon, self.lookback = input_size, num_targets, horizon, lookback
        self.future_size, self.strategy = future_size, strategy
        self.instance_norm, self.channel_independent, self.eps = instance_norm, channel_independent, eps
        self.norm_channels = num_targets if norm_channels is None else norm_channels
        if not (num_targets <= self.norm_channels <= input_size - future_size):
            raise ValueError(f"norm_channels must lie in {num_targets}..{input_size - future_size}, got {self.norm_channels}")
        core_in = input_size - num_targets + 1 if channel_independent else input_size
        core_targets = 1 if channel_independent else num_targets
        self.core = _Core(core_in, core_targets, horizon, lookback, encoder, future_size, strategy, attention,
                          attention_heads, dropout, linear_skip, decoder, dict(encoder_options or {}))

    def forward(self, past: Tensor, future: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """past ``(B, lookback, input_size)``, future ``(B, horizon, future_size)`` -> ``(y (B, horizon, targets),
        weights (B, queries, lookback) or None)``; with channel independence the weights are averaged over targets."""
        if past.dim() != 3 or past.shape[-1] != self.input_size:
            raise ValueError(f"past must be (batch, lookback, {self.input_size}), got {tuple(past.shape)}")
        if self.lookback is not None and past.shape[1] != self.lookback:
            raise ValueError(f"past must have lookback {self.lookback} steps, got {tuple(past.shape)}")
        if self.future_size:
            if future is None or future.shape != (past.shape[0], self.horizon, self.future_size):
                raise ValueError(f"future must be (batch, {self.horizon}, {self.future_size}), got "
                                 f"{None if future is None else tuple(future.shape)}")
        if self.instance_norm:
            k = self.norm_channels
            mean = past[:, :, :k].mean(dim=1, keepdim=True).detach()
            std = torch.sqrt(past[:, :, :k].var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
            past = torch.cat([(past[:, :, :k] - mean) / std, past[:, :, k:]], dim=2)
        if self.channel_independent:
            b, c = past.shape[0], self.num_targets
            shared = past[:, :, c:]
            per = past[:, :, :c].permute(0, 2, 1).reshape(b * c, -1, 1)
            x = torch.cat([per, shared.repeat_interleave(c, dim=0)], dim=2)
            fut = future.repeat_interleave(c, dim=0) if self.future_size else None
            y, weights = self.core(x, fut)
            y = y.view(b, c, self.horizon).permute(0, 2, 1)
            if weights is not None:
                weights = weights.view(b, c, *weights.shape[1:]).mean(1)
        else:
            y, weights = self.core(past, future)
        if self.instance_norm:
            c = self.num_targets
            y = y * std[:, :, :c] + mean[:, :, :c]
        return y, weights
