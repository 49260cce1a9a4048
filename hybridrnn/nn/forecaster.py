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
  after the step, ``tanh(W [h; context])`` feeds the output);
- ``parallel`` (PMF, SegRNN's parallel multi-step forecasting; see :mod:`hybridrnn.nn.segment`): the horizon is cut
  into ``m = horizon / W`` output segments (``W = segment``, 1 without segments); each is decoded by ONE recurrent
  step from the encoder's final state, its input a learned position embedding (+ a learned channel embedding under
  channel independence, + a linear map of that segment's known-future covariates), all ``m`` steps in one batched
  call, then ``Linear(hidden (+ context), W * targets)``. The decoder (``decoder``): ``None`` / ``"shared"`` = the
  encoder's own ``step`` with the encoder's weights (SegRNN's design): every block starts from its own final state
  (a hybrid's state is the contract's tuple, one entry per block in spec order, so a stacked ``lstm>gru`` decodes
  through its LSTM block and then its GRU block, a parallel ``(lstm|gru)`` through both branches and the fusion);
  ``"gru"`` / ``"lstm"``: a separate cell of size ``output_size`` started from the encoder summary
  (``final_output``: the last block's output for a stack, the fused output for a parallel group, forward-last /
  backward-first for a bidirectional block) with ``c = 0``; a bidirectional encoder has no ``step``, so its
  default decoder is a separate cell of its last block's kind;
- ``rmf`` (SegRNN's recurrent multi-step forecasting, the ablation of ``parallel``) is ``recursive`` over
  segments: each output segment is predicted from the state, embedded by the segment embedding and fed back.

Options:

- ``instance_norm`` (RevIN-style, without the affine part): ``True`` / ``"standard"``: the first ``norm_channels``
  input channels of each window are normalised by that window's own mean and standard deviation, and the
  predictions de-normalised with the targets' statistics; ``"last"`` (SegRNN): each of those channels has the
  window's last value subtracted (``x - x_L``), and the targets' last values are added back to the forecast.
  On strongly non-stationary series (ETTh1) this matters more than the cell type;
- ``segment`` (SegRNN's segment-wise iteration): the look-back is cut into ``lookback / segment`` segments; each
  segment's ``segment * features`` values go through ``ReLU(Linear(., E))`` (``E = segment_embed``, default the
  first block's hidden size; ``segment_embed=0``: no embedding, the encoder reads the flattened segment) and the
  encoder runs over segments, not points. ``lookback`` and ``horizon`` must be multiples of ``segment``. With
  segments, the ``recursive`` head predicts one segment (``segment * targets`` values) per step, attention keys are
  segment outputs, and attention weights are spread evenly over each segment's steps (still ``(batch, queries,
  lookback)``). ``segment=1, segment_embed=0`` is exactly the point-wise model;
- ``channel_independent``: one shared model applied to each target separately (its own history plus the
  shared covariates), as in PatchTST / DLinear's "individual=False" setting;
- ``linear_skip``: adds a linear map of each (normalised) target history ``Linear(lookback, horizon)``, shared
  across targets, to the output (the network learns the residual of a linear forecast).
- ``outputs_per_target`` (``K``, default 1): the head emits ``K`` values per target and step, and ``y`` is
  ``(batch, horizon, num_targets, K)`` (with ``K == 1`` it stays ``(batch, horizon, num_targets)``): quantile and
  distribution heads (the forecast task turns them into quantiles / a location and a scale). Each of the ``K``
  values is de-normalised by instance norm like a forecast (``* std + mean`` / ``+ last``), so a head that needs a
  scale expresses it as a difference of two outputs. Strategies ``direct`` and ``parallel`` only (the others feed
  their one prediction back), without ``linear_skip``.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from hybridrnn.errors import ConfigError
from hybridrnn.nn import attention as att
from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.nn.segment import (
    DECODERS,
    ParallelDecoder,
    SegmentEmbedding,
    check_segment,
    is_bidirectional,
    last_block_kind,
)
from hybridrnn.nn.spec import iter_layers, parse_spec

STRATEGIES = ("direct", "recursive", "seq2seq", "parallel", "rmf")
INSTANCE_NORMS = (False, True, "standard", "last")
ATTENTIONS = (None, "additive", "dot", "general", "self")


def _make_encoder(encoder: Any, input_size: int, options: dict) -> nn.Module:
    if isinstance(encoder, nn.Module):
        if getattr(encoder, "input_size", input_size) != input_size:
            raise ValueError(f"encoder input_size {encoder.input_size} differs from the forecaster's {input_size}")
        return encoder
    return build_encoder(encoder, input_size, **options)


def _make_attention(kind: Optional[str], query_size: int, key_size: int, heads: int) -> Optional[nn.Module]:
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


def _default_embed(encoder: Any) -> int:
    """The segment embedding size when ``segment_embed`` is None: a ready module's ``input_size``, else the first
    block's hidden size in the spec (``gru:512`` -> 512, as SegRNN's ``d_model``)."""
    if isinstance(encoder, nn.Module):
        return int(encoder.input_size)
    return next(iter_layers(parse_spec(encoder))).hidden


class _Core(nn.Module):
    """The forecaster without normalisation or channel handling (see :class:`Forecaster`)."""

    def __init__(self, input_size: int, num_targets: int, horizon: int, lookback: Optional[int], encoder: Any,
                 future_size: int, strategy: str, attention: Optional[str], attention_heads: int, dropout: float,
                 linear_skip: bool, decoder: Optional[str], encoder_options: dict, segment: Optional[int] = None,
                 segment_embed: Optional[int] = None, channels: int = 0):
        super().__init__()
        strategy = "recursive" if strategy == "rmf" else strategy
        self.num_targets, self.horizon, self.future_size, self.strategy = num_targets, horizon, future_size, strategy
        self.attention_kind = attention
        if strategy == "recursive" and input_size != num_targets + future_size:
            raise ValueError(f"the recursive strategy feeds its predictions back as inputs, so it takes only the "
                             f"targets ({num_targets}) and known-future covariates ({future_size}); got "
                             f"{input_size - num_targets - future_size} past covariate channel(s): use 'direct' or "
                             f"'seq2seq'")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.segment = segment
        self.seg = segment or 1                                  # W: steps per recurrent step (1: point-wise)
        if segment is not None:
            check_segment(segment, lookback, horizon)
            if segment_embed is not None and segment_embed < 0:
                raise ValueError(f"segment_embed must be >= 0 (0: no embedding), got {segment_embed}")
            embed = _default_embed(encoder) if segment_embed is None else (segment_embed or None)
            self.embed = SegmentEmbedding(segment, input_size, embed)
            enc_in = self.embed.output_size
        else:
            if segment_embed:
                raise ValueError("segment_embed needs segment")
            self.embed, enc_in = None, input_size
        self.encoder = _make_encoder(encoder, enc_in, encoder_options)
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
                self.head = nn.Linear(feat, self.seg * num_targets)
        elif strategy == "parallel":
            self.attention = _make_attention(attention, d, d, attention_heads)
            bidirectional = is_bidirectional(self.encoder)
            kind = decoder or (last_block_kind(self.encoder) if bidirectional else "shared")
            if kind == "shared" and bidirectional:
                raise ValueError("decoder 'shared' steps the encoder, and a bidirectional encoder has no step: use "
                                 "decoder 'gru' or 'lstm'")
            self.decoder_kind = kind
            self.pmf = ParallelDecoder(horizon // self.seg, self.seg, num_targets, enc_in, d, channels=channels,
                                       future_size=future_size, kind=None if kind == "shared" else kind,
                                       dropout=dropout, attention_size=d if attention else 0)
        else:
            decoder = decoder or "gru"
            if decoder not in ("gru", "lstm"):
                raise ValueError(f"the seq2seq decoder must be 'gru' or 'lstm', got {decoder!r}")
            from hybridrnn.nn.cells import GRUCell, LSTMCell
            self.decoder_kind = decoder
            self.attention = _make_attention(attention, d, d, attention_heads)
            bahdanau = attention == "additive"
            cell_in = num_targets + future_size + (d if bahdanau else 0)
            self.cell = (GRUCell if decoder == "gru" else LSTMCell)(cell_in, d)
            self.init_state = nn.Linear(d, d)
            self.combine = nn.Linear(2 * d, d) if attention in ("dot", "general") else None
            self.head = nn.Linear(2 * d if bahdanau else d, num_targets)
        if linear_skip and lookback is None:
            raise ConfigError("linear_skip maps the look-back to the horizon, so it needs the lookback")
        self.skip = nn.Linear(lookback, horizon) if linear_skip else None

    def forward(self, past: Tensor, future: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        x = past if self.embed is None else self.embed(past)      # (B, L, F) or segments (B, L/W, E)
        outputs, state = self.encoder(x)                          # (B, n, d)
        summary = self.encoder.final_output(outputs)              # (B, d)
        if self.strategy == "direct":
            y, weights = self._direct(outputs, summary, future)
        elif self.strategy == "recursive":
            y, weights = self._recursive(past, outputs, summary, state, future)
        elif self.strategy == "parallel":
            y, weights = self._parallel(outputs, summary, state, future)
        else:
            y, weights = self._seq2seq(past, outputs, summary, future)
        if weights is not None and self.seg > 1:                  # segment weights -> (B, queries, L), even per step
            weights = weights.repeat_interleave(self.seg, dim=-1) / self.seg
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
        """One segment of ``W`` steps (one step without segments) per recurrent step; each prediction (with its
        steps' known-future covariates) is fed back, through the segment embedding when there is one."""
        preds, maps = [], []
        y_t = summary
        b, w_seg, n_out = summary.shape[0], self.seg, self.horizon // self.seg
        for s in range(n_out):
            feats = [y_t]
            if self.attention is not None:
                context, w = self._attend(y_t, outputs)
                feats.append(context)
                maps.append(w if w.dim() == 2 else w.mean(1))
            pred = self.head(self.dropout(torch.cat(feats, dim=1))).view(b, w_seg, self.num_targets)  # (B, W, T)
            preds.append(pred)
            if s + 1 < n_out:
                seg = pred if not self.future_size else torch.cat(
                    [pred, future[:, s * w_seg:(s + 1) * w_seg]], dim=2)              # (B, W, T+K)
                x_next = seg.reshape(b, -1) if self.embed is None else self.embed(seg)[:, 0]   # (B, W*(T+K)) / (B, E)
                y_t, state = self.encoder.step(x_next, state)
        weights = None
        if maps:
            weights = torch.stack(maps, dim=1).repeat_interleave(w_seg, dim=1)      # (B, H, n)
        return torch.cat(preds, dim=1), weights                                     # (B, H, T)

    def _parallel(self, outputs, summary, state, future):
        attend = None
        if self.attention is not None:
            def attend(query, keys):
                context, w = self._attend(query, keys)
                return context, (w if w.dim() == 2 else w.mean(1))
        y, weights = self.pmf(state, summary, self.encoder.step, future, outputs, attend)   # (B, H, T), (B, m, n)
        if weights is not None:
            weights = weights.repeat_interleave(self.seg, dim=1)                        # (B, H, n)
        return y, weights

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
    strategy: ``direct``, ``recursive``, ``seq2seq``, ``parallel`` (PMF) or ``rmf`` (recursive over segments).
    instance_norm: ``False``, ``True`` / ``"standard"`` (own mean / std) or ``"last"`` (subtract the last value).
    segment: ``W``, the segment length of segment recurrence (None: point-wise); segment_embed: its embedding
    size (None: the first block's hidden size, 0: none). decoder: ``None``, ``"shared"``, ``"gru"``, ``"lstm"``
    (see the module docstring). SegRNN on ETTh1 is ``Forecaster(7, 7, 96, "gru:512", lookback=96, segment=24,
    strategy="parallel", channel_independent=True, instance_norm="last", dropout=0.5)``.
    """

    def __init__(self, input_size: int, num_targets: int, horizon: int, encoder: Any = "lstm:64", *,
                 lookback: Optional[int] = None, future_size: int = 0, strategy: str = "direct",
                 attention: Optional[str] = None, attention_heads: int = 1, dropout: float = 0.0,
                 instance_norm: Union[bool, str] = False, norm_channels: Optional[int] = None,
                 channel_independent: bool = False, linear_skip: bool = False, decoder: Optional[str] = None,
                 segment: Optional[int] = None, segment_embed: Optional[int] = None,
                 encoder_options: Optional[dict] = None, eps: float = 1e-5, outputs_per_target: int = 1):
        super().__init__()
        if not isinstance(outputs_per_target, int) or outputs_per_target < 1:
            raise ValueError(f"outputs_per_target must be an int >= 1, got {outputs_per_target!r}")
        if outputs_per_target > 1 and (strategy not in ("direct", "parallel") or linear_skip):
            raise ValueError(f"outputs_per_target > 1 (a quantile or distribution head) needs strategy 'direct' or "
                             f"'parallel' without linear_skip; got strategy {strategy!r}"
                             + (" with linear_skip" if linear_skip else ""))
        self.outputs_per_target = outputs_per_target
        if instance_norm not in INSTANCE_NORMS:
            raise ValueError(f"unknown instance_norm {instance_norm!r}; expected one of {INSTANCE_NORMS}")
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
        self.instance_norm = "standard" if instance_norm is True else instance_norm
        self.channel_independent, self.eps = channel_independent, eps
        self.norm_channels = num_targets if norm_channels is None else norm_channels
        if not (num_targets <= self.norm_channels <= input_size - future_size):
            raise ValueError(f"norm_channels must lie in {num_targets}..{input_size - future_size}, got {self.norm_channels}")
        core_in = input_size - num_targets + 1 if channel_independent else input_size
        core_targets = (1 if channel_independent else num_targets) * outputs_per_target
        channels = num_targets if channel_independent and num_targets > 1 else 0
        self.core = _Core(core_in, core_targets, horizon, lookback, encoder, future_size, strategy, attention,
                          attention_heads, dropout, linear_skip, decoder, dict(encoder_options or {}), segment,
                          segment_embed, channels)

    def forward(self, past: Tensor, future: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """past ``(B, lookback, input_size)``, future ``(B, horizon, future_size)`` -> ``(y (B, horizon, targets),
        weights (B, queries, lookback) or None)``; with channel independence the weights are averaged over targets.
        With ``outputs_per_target = K > 1``, ``y`` is ``(B, horizon, targets, K)``."""
        if past.dim() != 3 or past.shape[-1] != self.input_size:
            raise ValueError(f"past must be (batch, lookback, {self.input_size}), got {tuple(past.shape)}")
        if self.lookback is not None and past.shape[1] != self.lookback:
            raise ValueError(f"past must have lookback {self.lookback} steps, got {tuple(past.shape)}")
        if self.future_size:
            if future is None or future.shape != (past.shape[0], self.horizon, self.future_size):
                raise ValueError(f"future must be (batch, {self.horizon}, {self.future_size}), got "
                                 f"{None if future is None else tuple(future.shape)}")
        k = self.norm_channels
        if self.instance_norm == "standard":
            mean = past[:, :, :k].mean(dim=1, keepdim=True).detach()                                  # (B, 1, k)
            std = torch.sqrt(past[:, :, :k].var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
            past = torch.cat([(past[:, :, :k] - mean) / std, past[:, :, k:]], dim=2)
        elif self.instance_norm == "last":
            last = past[:, -1:, :k].detach()                                                          # (B, 1, k)
            past = torch.cat([past[:, :, :k] - last, past[:, :, k:]], dim=2)
        if self.channel_independent:
            b, c = past.shape[0], self.num_targets
            shared = past[:, :, c:]
            per = past[:, :, :c].permute(0, 2, 1).reshape(b * c, -1, 1)       # (B*C, L, 1), channel fastest
            x = torch.cat([per, shared.repeat_interleave(c, dim=0)], dim=2)
            fut = future.repeat_interleave(c, dim=0) if self.future_size else None
            y, weights = self.core(x, fut)
            if self.outputs_per_target == 1:
                y = y.view(b, c, self.horizon).permute(0, 2, 1)                   # (B*C, H, 1) -> (B, H, C)
            else:
                y = y.view(b, c, self.horizon, -1).permute(0, 2, 1, 3)            # (B*C, H, K) -> (B, H, C, K)
            if weights is not None:
                weights = weights.view(b, c, *weights.shape[1:]).mean(1)
        else:
            y, weights = self.core(past, future)
            if self.outputs_per_target > 1:
                y = y.view(y.shape[0], self.horizon, self.num_targets, -1)         # (B, H, C*K) -> (B, H, C, K)
        c = self.num_targets
        per = (lambda t: t[:, :, :c]) if y.dim() == 3 else (lambda t: t[:, :, :c, None])   # (B, 1, C[, 1])
        if self.instance_norm == "standard":
            y = y * per(std) + per(mean)
        elif self.instance_norm == "last":
            y = y + per(last)
        return y, weights
