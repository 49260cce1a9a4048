"""Segment recurrence and parallel multi-step decoding (SegRNN, Lin et al. 2023, arXiv 2308.11200).

Segment recurrence: a window ``x: (batch, L, F)`` is cut into ``n = L / W`` segments of ``W`` steps; each
segment's ``W * F`` values are embedded by one linear layer and a ReLU,

    e_i = ReLU(A vec(x[:, iW:(i+1)W, :]) + a),        e_i in R^E,  i = 0..n-1,

and the recurrent encoder reads the ``n`` embeddings instead of the ``L`` points (4 steps instead of 96 at
``L = 96, W = 24``).

Parallel multi-step forecasting (PMF): the horizon ``H`` is cut into ``m = H / W`` output segments; output
segment ``j`` is decoded by ONE recurrent step from the encoder's final state ``s_n``, its input the learned
position embedding ``p_j`` (concatenated with a learned channel embedding ``c_k`` under channel independence,
plus a linear map of that segment's known-future covariates when there are some):

    h_j = step(s_n, [p_j ; c_k] + B vec(future_j)),      y_j = P Dropout(h_j) + b,     y_j in R^{W x targets}.

The ``m`` steps are independent given ``s_n``, so they run as one batched step over ``batch * m`` rows.
The recurrent variant (RMF, strategy ``recursive`` / ``rmf`` of the forecaster) instead predicts segment ``j``
from the state, embeds it with the encoder's segment embedding and steps the encoder on it.

Pure torch, no I/O.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from hybridrnn.nn.recurrent import GRU, LSTM
from hybridrnn.nn.spec import iter_layers, parse_spec

DECODERS = (None, "shared", "gru", "lstm")


def check_segment(segment: int, lookback: Optional[int], horizon: int) -> None:
    """Raise a ``ValueError`` naming the numbers when the look-back or the horizon is not a multiple of ``segment``."""
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
        raise ValueError(f"segment must be an integer >= 1, got {segment!r}")
    if lookback is None:
        raise ValueError(f"segment {segment} needs the lookback (pass lookback=...)")
    bad = [f"{name} {v}" for name, v in (("lookback", lookback), ("horizon", horizon)) if v % segment]
    if bad:
        raise ValueError(f"segment {segment}: the lookback ({lookback}) and the horizon ({horizon}) must both be "
                         f"multiples of the segment length; {' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} "
                         f"not (choose a segment that divides both, e.g. {_gcd_hint(lookback, horizon)})")


def _gcd_hint(lookback: int, horizon: int) -> str:
    import math
    g = math.gcd(lookback, horizon)
    return f"a divisor of gcd({lookback}, {horizon}) = {g}"


def repeat_state(state: Any, repeats: int) -> Any:
    """Each batch row of a recurrent state repeated ``repeats`` times (row ``b`` -> rows ``b*repeats .. +repeats-1``).
    Every state tensor of the project's contract is ``(layers * directions, batch, hidden)``: batch is dim 1; a
    hybrid's state is a tuple of per-block states, an LSTM's a tuple ``(h, c)``."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.repeat_interleave(repeats, dim=1)
    if isinstance(state, (tuple, list)):
        return type(state)(repeat_state(s, repeats) for s in state)
    raise TypeError(f"unexpected recurrent state element of type {type(state).__name__}")


def is_bidirectional(encoder: nn.Module) -> bool:
    """Whether any block of the encoder is bidirectional (it then has no ``step``)."""
    spec = getattr(encoder, "spec", None)
    if spec is not None:
        return any(layer.bidirectional for layer in iter_layers(parse_spec(spec)))
    return bool(getattr(encoder, "bidirectional", False)) or any(
        backward for _, backward in getattr(encoder, "output_layout", ()))


def last_block_kind(encoder: nn.Module) -> str:
    """``"lstm"`` or ``"gru"``: the cell kind of the encoder's last block in spec order (for a parallel group, the
    last branch); a minGRU / minLSTM block maps to its gated counterpart (a decoder cell needs a recurrence)."""
    spec = getattr(encoder, "spec", None)
    if spec is not None:
        kind = list(iter_layers(parse_spec(spec)))[-1].kind
    else:
        name = type(encoder).__name__.lower()
        kind = "lstm" if "lstm" in name else "gru"
    return "lstm" if kind in ("lstm", "minlstm") else "gru"


def fast_step_ok(layer: Any) -> bool:
    """Whether ``layer`` is a plain one-layer unidirectional GRU / LSTM (layer or cell) whose step is torch's
    equations on ``weight_ih_l0 / weight_hh_l0 / bias_ih_l0 / bias_hh_l0`` (no layer norm, coupled gate, recurrent
    dropout, or GRU reset-before), so that :meth:`ParallelDecoder._fast_step` computes exactly its step."""
    if not isinstance(layer, (GRU, LSTM)):
        return False
    return (layer.num_layers == 1 and not layer.bidirectional and not layer.layer_norm and not layer.coupled
            and not layer.recurrent_dropout and (isinstance(layer, LSTM) or layer.reset_after)
            and hasattr(layer, "weight_ih_l0"))


class SegmentEmbedding(nn.Module):
    """``(batch, L, F) -> (batch, L / W, E)``: ``ReLU(Linear(W * F, E))`` of each segment's flattened values
    (time-major inside the segment), or the flattened segments themselves when ``embed`` is None (``E = W * F``).
    ``unembed`` is the inverse reshape of the flattening: ``(batch, n, W * F) -> (batch, n * W, F)``."""

    def __init__(self, segment: int, features: int, embed: Optional[int]):
        super().__init__()
        self.segment, self.features = segment, features
        self.proj = None if embed is None else nn.Linear(segment * features, embed)
        self.output_size = segment * features if embed is None else embed

    def forward(self, x: Tensor) -> Tensor:
        b, length, f = x.shape
        if length % self.segment or f != self.features:
            raise ValueError(f"SegmentEmbedding: expected (batch, a multiple of {self.segment}, {self.features}), "
                             f"got {tuple(x.shape)}")
        x = x.reshape(b, length // self.segment, self.segment * f)   # (B, n, W*F)
        if self.proj is None:
            return x
        return torch.relu(self.proj(x))                              # (B, n, E)

    def unembed(self, flat: Tensor) -> Tensor:
        b, n, wf = flat.shape
        return flat.reshape(b, n * self.segment, wf // self.segment)  # (B, n*W, F)


class ParallelDecoder(nn.Module):
    """PMF head: all ``m`` output segments decoded by one batched recurrent step (see the module docstring).

    Args:
        segments: ``m``, output segments; segment: ``W``; targets: values per step out.
        input_size: ``E``, the decoder step's input size (the encoder's input size for the shared decoder).
        hidden: ``d``, the size of the step's output (the encoder's ``output_size``).
        channels: number of channels under channel independence (a learned channel embedding of size ``E - E//2``
            beside a position embedding of size ``E//2``, as in SegRNN); 0: position embedding of size ``E``.
        future_size: known-future covariates per step (``Linear(W * future_size, E)`` added to the input), or 0.
        step: None for a separate cell (``kind``), else the shared encoder's ``step(x_t, state) -> (y_t, state)``.
        kind: ``"gru"`` / ``"lstm"`` cell of size ``d`` when ``step`` is None; it starts from the encoder summary
            ``h = final_output`` (``c = 0`` for an LSTM cell).
        attention: None or a module called as ``attend(query (N, d), keys (N, n, d)) -> (context (N, d), weights
            (N, n))``; the head then reads ``[h_j ; context_j]``.
    """

    def __init__(self, segments: int, segment: int, targets: int, input_size: int, hidden: int, *, channels: int = 0,
                 future_size: int = 0, kind: Optional[str] = None, dropout: float = 0.0, attention_size: int = 0):
        super().__init__()
        self.segments, self.segment, self.targets, self.channels = segments, segment, targets, channels
        pos = input_size // 2 if channels else input_size
        self.pos = nn.Parameter(torch.randn(segments, pos))                   # (m, E/2 or E)
        self.chan = nn.Parameter(torch.randn(channels, input_size - pos)) if channels else None   # (C, E - E/2)
        self.future = nn.Linear(segment * future_size, input_size) if future_size else None
        self.kind = kind
        if kind is not None:
            from hybridrnn.nn.cells import GRUCell, LSTMCell
            self.cell = (GRUCell if kind == "gru" else LSTMCell)(input_size, hidden)
        else:
            self.cell = None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden + attention_size, segment * targets)

    def inputs(self, batch: int, future: Optional[Tensor]) -> Tensor:
        """``(batch, m, E)``: each output segment's step input; under channel independence row ``r`` of the batch is
        channel ``r % channels`` (rows are ``(window, channel)`` pairs, channel fastest)."""
        m = self.segments
        x = self.pos.unsqueeze(0).expand(batch, m, -1)                          # (B, m, E/2)
        if self.chan is not None:
            if batch % self.channels:
                raise ValueError(f"batch {batch} is not a multiple of the {self.channels} channels")
            chan = self.chan.repeat(batch // self.channels, 1)                  # (B, E - E/2), channel fastest
            x = torch.cat([x, chan.unsqueeze(1).expand(batch, m, -1)], dim=2)   # (B, m, E)
        if self.future is not None:
            fut = future.reshape(batch, m, -1)                                  # (B, m, W*K)
            x = x + self.future(fut)
        return x

    def _gate_inputs(self, batch: int, future: Optional[Tensor], weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """``W x_{row,j} + b`` for every row and output segment, ``(batch, m, G)``, computed from the ``m``
        position and ``C`` channel embeddings (``W [p; c] = W_p p + W_c c``) instead of ``batch * m`` inputs."""
        e_pos = self.pos.shape[1]
        g = self.pos @ weight[:, :e_pos].t()                                       # (m, G)
        g = g.unsqueeze(0).expand(batch, -1, -1)                                   # (B, m, G)
        if self.chan is not None:
            gc = (self.chan @ weight[:, e_pos:].t()).repeat(batch // self.channels, 1)   # (B, G), channel fastest
            g = g + gc.unsqueeze(1)
        if self.future is not None:
            g = g + self.future(future.reshape(batch, self.segments, -1)) @ weight.t()    # (B, m, G)
        return g if bias is None else g + bias

    def _fast_step(self, layer: nn.Module, batch: int, future: Optional[Tensor], state: Any) -> Tensor:
        """One step of a plain one-layer GRU / LSTM ``layer`` (torch's equations and parameter layout) for all ``m``
        output segments at once, ``(batch, m, d)``: the recurrent matmul runs once per row (the state is the same
        for every output segment) and the input matmul once per position / channel embedding."""
        gi = self._gate_inputs(batch, future, layer.weight_ih_l0, getattr(layer, "bias_ih_l0", None))  # (B, m, G)
        if self.kind is None:
            h = state[0] if isinstance(state, tuple) else state                    # (1, B, d)
            h = h[0]
        else:
            h = state[0] if isinstance(state, tuple) else state                    # (B, d)
        gh = h @ layer.weight_hh_l0.t()                                            # (B, G)
        if getattr(layer, "bias_hh_l0", None) is not None:
            gh = gh + layer.bias_hh_l0
        gh = gh.unsqueeze(1)                                                       # (B, 1, G), broadcast over m
        if isinstance(state, tuple):                                               # LSTM: gates (i, f, g, o)
            c = state[1][0] if self.kind is None else state[1]                     # (B, d)
            i, f, g, o = (gi + gh).chunk(4, dim=2)
            c_new = torch.sigmoid(f) * c.unsqueeze(1) + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c_new)                            # (B, m, d)
        ir, iz, in_ = gi.chunk(3, dim=2)                                           # GRU: gates (r, z, n)
        hr, hz, hn = gh.chunk(3, dim=2)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h.unsqueeze(1)                                    # (B, m, d)

    def _init_state(self, state: Any, summary: Tensor) -> Any:
        if self.cell is None:
            return state
        return summary if self.kind == "gru" else (summary, torch.zeros_like(summary))

    def _step(self, step: Optional[Callable], x: Tensor, state: Any) -> Tensor:
        if self.cell is None:
            return step(x, state)[0]
        if self.kind == "gru":
            return self.cell(x, state)
        return self.cell(x, state)[0]

    def _out(self, h: Tensor, keys: Optional[Tensor], attend: Optional[Callable]) -> tuple[Tensor, Optional[Tensor]]:
        if attend is None:
            return self.head(self.dropout(h)), None
        context, w = attend(h, keys)
        return self.head(self.dropout(torch.cat([h, context], dim=1))), w

    def forward(self, state: Any, summary: Tensor, step: Optional[Callable] = None, future: Optional[Tensor] = None,
                keys: Optional[Tensor] = None, attend: Optional[Callable] = None) -> tuple[Tensor, Optional[Tensor]]:
        """state: the encoder's final state (shared decoder) ; summary ``(B, d)``; future ``(B, H, K)`` or None;
        keys ``(B, n, d)`` encoder outputs for ``attend``. Returns ``y (B, H, targets)`` and attention weights
        ``(B, m, n)`` or None. One recurrent step over ``B * m`` rows."""
        b, m = summary.shape[0], self.segments
        layer = self.cell if self.cell is not None else getattr(step, "__self__", None)
        if fast_step_ok(layer):
            h = self._fast_step(layer, b, future, self._init_state(state, summary)).reshape(b * m, -1)  # (B*m, d)
        else:
            x = self.inputs(b, future).reshape(b * m, -1)              # (B*m, E), segment fastest
            if self.cell is None:
                s0 = repeat_state(state, m)                            # every tensor (layers, B*m, hidden)
            else:
                s0 = self._init_state(None, summary.repeat_interleave(m, dim=0))   # (B*m, d)
            h = self._step(step, x, s0)                                # (B*m, d)
        rep_keys = None if keys is None else keys.repeat_interleave(m, dim=0)   # (B*m, n, d)
        y, w = self._out(h, rep_keys, attend)                          # (B*m, W*T)
        y = y.reshape(b, m * self.segment, self.targets)               # (B, H, T)
        return y, (None if w is None else w.reshape(b, m, -1))         # weights (B, m, n)

    def loop(self, state: Any, summary: Tensor, step: Optional[Callable] = None, future: Optional[Tensor] = None,
             keys: Optional[Tensor] = None, attend: Optional[Callable] = None) -> tuple[Tensor, Optional[Tensor]]:
        """The same as :meth:`forward`, one output segment at a time (reference for tests; slower)."""
        b = summary.shape[0]
        x = self.inputs(b, future)                                     # (B, m, E)
        ys, ws = [], []
        for j in range(self.segments):
            h = self._step(step, x[:, j], self._init_state(state, summary))   # (B, d)
            y, w = self._out(h, keys, attend)                          # (B, W*T)
            ys.append(y.reshape(b, self.segment, self.targets))
            ws.append(w)
        weights = None if ws[0] is None else torch.stack(ws, dim=1)
        return torch.cat(ys, dim=1), weights                           # (B, H, T)
