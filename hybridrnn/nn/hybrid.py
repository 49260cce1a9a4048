"""Hybrid recurrent encoders built from a spec: stacks, parallel branches, fusion, weight sharing.

``build_encoder("(lstm:64|gru:64)>gru:32", input_size=8)`` returns a module with the forward contract of
docs/CONTRACTS.md: ``forward(x, state=None, lengths=None) -> (outputs, state)``, ``input_size``,
``output_size``, ``output_layout``, ``final_output(outputs, lengths)``, ``step(x_t, state)``.

- A single-layer spec (``lstm:64``, ``bigru:32x2``) gives the plain :class:`~hybridrnn.nn.recurrent.LSTM` /
  :class:`~hybridrnn.nn.recurrent.GRU` layer; ``mingru:64`` / ``minlstm:64`` (``bi...`` for bidirectional) give
  :class:`~hybridrnn.nn.minimal.MinGRU` / :class:`~hybridrnn.nn.minimal.MinLSTM`, which take ``dropout``,
  ``locked_dropout``, ``init`` and ``chrono_tmax`` and nothing of the LSTM/GRU cell options (see
  :func:`build_encoder`).
- ``a>b`` gives a :class:`StackedEncoder`: blocks in sequence, dropout between blocks (training only),
  ``lengths`` passed to every block.
- ``a|b`` gives a :class:`ParallelEncoder`: every branch reads the same input; outputs fused by ``fusion``:

  * ``"concat"``: concatenated along features (``output_size`` = sum of the branches');
  * ``"sum"``: added feature by feature; the branches must have the same ``output_layout`` (sizes and
    directions), otherwise ``ValueError``;
  * ``"gate"``: a learned gate per time step and feature. Two branches:
    ``g = sigmoid(W [a; b] + w0)``, ``y = g * a + (1 - g) * b``; ``K > 2`` branches:
    ``(g_1..g_K) = softmax_k(W_k [y_1; ...; y_K] + w0_k)``, ``y = sum_k g_k * y_k``. The branches must have the
    same directions (all forward, or all ``[forward | backward]``); where segment sizes differ, each branch
    segment smaller than the largest is mapped to the largest size by its own ``Linear`` (so forward and
    backward features never mix and :meth:`final_output` stays meaningful).

State: a flat tuple with one entry per recurrent block (LSTM/GRU layer) in spec order (left to right, depth
first), each entry that layer's own state (``(h, c)`` for an LSTM, ``h`` for a GRU). ``None`` (or ``None``
entries) means zeros.

Weight sharing (options of :func:`build_encoder`):

- ``coupled=True``: LSTM blocks use the coupled input-forget gate ``f = 1 - i`` (3 gate blocks, not 4):
  saves ``H * (I + H + 2)`` per LSTM layer and direction.
- ``tie_layers=True``: recurrent weights are tied across the blocks of a stack that have the same kind, size
  and directions (and inside a multi-layer block, via the layer's own ``tie_layers``). Within such a group,
  every layer uses the group's first layer's recurrent tensors (``weight_hh``, ``bias_hh``, layer-norm gains of
  the recurrent part); the group's first layer keeps its own input tensors (``weight_ih``, ``bias_ih``,
  ``ln_ih_*``), and the later layers whose input width is the same share one set (the first such layer's).
  So ``lstm:64>lstm:64>lstm:64`` and ``lstm:64>lstm:64x2`` tie exactly as ``lstm:64x3`` does. A tied tensor
  is one ``Parameter`` object registered in several blocks (``parameters()`` yields it once; the
  ``state_dict`` lists it under each name: save with ``safetensors.torch.save_model``, which writes it once).
  Tied blocks run on the custom path (as tied layers do): ``path="fused"`` with ``tie_layers`` is a
  ``ValueError``.
- ``share_input_projection=True`` (or an int ``P``): every :class:`ParallelEncoder` projects its input once with
  one ``Linear(I, P)`` (with bias) and feeds that ``P``-wide projection to every branch, in place of the input
  itself. What is shared: the map from the ``I`` input features; each branch keeps its own ``W_ih``, now
  ``(G_k H_k, P)`` instead of ``(G_k H_k, I)``. Saving: ``(sum_k G_k H_k) * (I - P) - P * (I + 1)`` with
  ``G = 4`` (LSTM; 3 coupled) or ``3`` (GRU) and ``H_k`` times directions per branch's first layer: positive
  only when the input is wider than ``P`` (word embeddings, many features). ``True`` uses
  ``P = min(I, smallest first-layer hidden size of the branches)``.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hybridrnn.errors import ConfigError
from hybridrnn.nn.checks import check_lengths, input_error
from hybridrnn.nn.dropout import locked_dropout as _locked_dropout
from hybridrnn.nn.minimal import MinGRU, MinLSTM
from hybridrnn.nn.recurrent import GRU, LSTM
from hybridrnn.nn.spec import (
    Layer,
    Parallel,
    SpecNode,
    Stack,
    format_spec,
    iter_layers,
    parse_spec,
)

__all__ = ["build_encoder", "StackedEncoder", "ParallelEncoder", "GateFusion", "FUSIONS", "final_output_by_layout",
           "merge_layout"]

FUSIONS = ("concat", "sum", "gate")
#: spec kinds of the minimal cells (:mod:`hybridrnn.nn.minimal`) -> their layer class
MIN_KINDS = {"mingru": MinGRU, "minlstm": MinLSTM}
Layout = tuple[tuple[int, bool], ...]
_RECURRENT_ROLES = ("weight_hh", "bias_hh", "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias")
_INPUT_ROLES = ("weight_ih", "bias_ih", "ln_ih_weight", "ln_ih_bias")


# --------------------------------------------------------------------------------------------------- helpers
def merge_layout(layout: Sequence[tuple[int, bool]]) -> Layout:
    """Join neighbouring segments of the same direction: ``((4, False), (4, False))`` -> ``((8, False),)``."""
    out: list[tuple[int, bool]] = []
    for size, backward in layout:
        if out and out[-1][1] == backward:
            out[-1] = (out[-1][0] + size, backward)
        else:
            out.append((size, backward))
    return tuple(out)


def _layout_text(layout: Layout) -> str:
    return "(" + ", ".join(f"{s} {'backward' if b else 'forward'}" for s, b in layout) + ")"


def _num_blocks(module: nn.Module) -> int:
    return getattr(module, "num_blocks", 1)


_fail = input_error    # the one message shape of recurrent input errors (hybridrnn.nn.checks)


def _check_x(owner: str, x: Tensor, input_size: int) -> None:
    if not isinstance(x, Tensor):
        raise _fail(owner, "x", "a tensor", type(x).__name__)
    if x.dim() != 3 or x.shape[2] != input_size:
        raise _fail(owner, "x", f"of shape (batch, time, {input_size})", f"shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise _fail(owner, "x", "at least one sequence and one time step", f"shape {tuple(x.shape)}")


def _check_lengths(owner: str, lengths, batch: int, time: int) -> Tensor:
    return check_lengths(owner, lengths, batch, time)[0]


def _split_state(owner: str, state, children: Sequence[nn.Module]) -> list:
    """The flat state tuple -> one entry per child (a child encoder gets its own tuple slice)."""
    counts = [_num_blocks(c) for c in children]
    total = sum(counts)
    if state is None:
        return [None] * len(children)
    if not isinstance(state, (tuple, list)) or len(state) != total:
        got = f"a {type(state).__name__} of length {len(state)}" if isinstance(state, (tuple, list)) \
            else type(state).__name__
        raise _fail(owner, "state", f"a tuple of {total} per-block states (spec order) or None", got)
    parts, start = [], 0
    for child, n in zip(children, counts):
        piece = state[start:start + n]
        start += n
        if hasattr(child, "num_blocks"):
            parts.append(None if all(p is None for p in piece) else tuple(piece))
        else:
            parts.append(piece[0])
    return parts


def _join_state(states: Sequence, children: Sequence[nn.Module]) -> tuple:
    flat: list = []
    for s, child in zip(states, children):
        flat.extend(s if hasattr(child, "num_blocks") else (s,))
    return tuple(flat)


def final_output_by_layout(outputs: Tensor, layout: Layout, lengths: Optional[Tensor] = None,
                           owner: str = "encoder") -> Tensor:
    """``(B, T, F)`` -> ``(B, F)``: each forward segment of ``layout`` at the last real step of its sequence,
    each backward segment at step 0."""
    size = sum(s for s, _ in layout)
    if not isinstance(outputs, Tensor) or outputs.dim() != 3 or outputs.shape[2] != size:
        raise _fail(owner, "outputs", f"of shape (batch, time, {size})",
                    f"shape {tuple(getattr(outputs, 'shape', ()))}")
    batch, time = outputs.shape[0], outputs.shape[1]
    if lengths is None:
        last = outputs[:, -1]
    else:
        lengths = _check_lengths(owner, lengths, batch, time).to(outputs.device)
        last = outputs[torch.arange(batch, device=outputs.device), lengths - 1]
    pieces, start = [], 0
    for seg, backward in layout:
        pieces.append((outputs[:, 0] if backward else last)[:, start:start + seg])
        start += seg
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)


# --------------------------------------------------------------------------------------------------- fusion
class _SegmentProjection(nn.Module):
    """Maps features laid out as ``layout_in`` to ``layout_out`` (same directions), one ``Linear`` per segment
    whose size changes: ``(..., sum in) -> (..., sum out)``."""

    def __init__(self, layout_in: Layout, layout_out: Layout):
        super().__init__()
        self.sizes_in = [s for s, _ in layout_in]
        self.maps = nn.ModuleList(nn.Linear(a, b) if a != b else nn.Identity()
                                  for (a, _), (b, _) in zip(layout_in, layout_out))

    def forward(self, y: Tensor) -> Tensor:
        parts = [m(p) for m, p in zip(self.maps, y.split(self.sizes_in, -1))]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


class GateFusion(nn.Module):
    """Learned gate mixing ``K`` same-sized inputs per position and feature.

    ``K = 2``: ``g = sigmoid(W [a; b] + w0)``, ``y = g * a + (1 - g) * b`` (``W`` ``(S, 2S)``).
    ``K > 2``: ``g = softmax over k of (W [y_1; ...; y_K] + w0)`` reshaped ``(K, S)``, ``y = sum_k g_k y_k``
    (``W`` ``(K*S, K*S)``). Inputs ``(..., S)`` each; output ``(..., S)``. Module ``gate`` holds ``W, w0``.
    """

    def __init__(self, num_inputs: int, size: int):
        super().__init__()
        if num_inputs < 2:
            raise ConfigError(f"GateFusion needs at least 2 inputs, got {num_inputs}")
        self.num_inputs, self.size = num_inputs, size
        self.gate = nn.Linear(num_inputs * size, size if num_inputs == 2 else num_inputs * size)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        if len(inputs) != self.num_inputs:
            raise ValueError(f"GateFusion: expected {self.num_inputs} inputs, got {len(inputs)}")
        logits = self.gate(torch.cat(list(inputs), -1))
        if self.num_inputs == 2:
            g = torch.sigmoid(logits)
            return g * inputs[0] + (1.0 - g) * inputs[1]
        g = torch.softmax(logits.unflatten(-1, (self.num_inputs, self.size)), dim=-2)  # (..., K, S)
        return (g * torch.stack(list(inputs), -2)).sum(-2)

    def weights(self, inputs: Sequence[Tensor]) -> Tensor:
        """The gate values ``(..., K, S)`` (for inspection; ``K = 2`` gives ``(g, 1 - g)``)."""
        logits = self.gate(torch.cat(list(inputs), -1))
        if self.num_inputs == 2:
            g = torch.sigmoid(logits)
            return torch.stack([g, 1.0 - g], -2)
        return torch.softmax(logits.unflatten(-1, (self.num_inputs, self.size)), dim=-2)


# --------------------------------------------------------------------------------------------------- encoders
class _EncoderBase(nn.Module):
    input_size: int
    output_size: int
    output_layout: Layout
    num_blocks: int
    bidirectional: bool

    def final_output(self, outputs: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """Summary of each sequence ``(B, output_size)``: forward features at the last real step, backward
        features at step 0 (see ``output_layout``). outputs ``(B, T, output_size)``, lengths ``(B,)`` or None."""
        return final_output_by_layout(outputs, self.output_layout, lengths, type(self).__name__)

    def _check_step(self, x_t: Tensor) -> None:
        name = type(self).__name__
        if self.bidirectional:
            raise ValueError(f"{name}.step: a bidirectional block needs the whole sequence; expected a "
                             f"unidirectional encoder, got spec {getattr(self, 'spec', '?')!r} (use forward)")
        if not isinstance(x_t, Tensor) or x_t.dim() != 2 or x_t.shape[1] != self.input_size:
            got = f"shape {tuple(x_t.shape)}" if isinstance(x_t, Tensor) else type(x_t).__name__
            raise _fail(name, "x_t", f"of shape (batch, {self.input_size})", got)

    def extra_repr(self) -> str:
        spec = getattr(self, "spec", None)
        return f"spec={spec!r}, input_size={self.input_size}, output_size={self.output_size}" if spec else \
            f"input_size={self.input_size}, output_size={self.output_size}"


class StackedEncoder(_EncoderBase):
    """Blocks run in sequence: ``x -> block_1 -> dropout -> block_2 -> ... -> outputs``.

    ``blocks``: recurrent modules with the common contract, ``blocks[i].input_size ==
    blocks[i-1].output_size``. ``dropout``: on each block's outputs except the last's, in training;
    ``locked_dropout=True`` makes it variational (one mask per sequence and feature, shared by every step).
    ``output_layout`` is the last block's; state: flat tuple over the recurrent layers (spec order).
    """

    def __init__(self, blocks: Sequence[nn.Module], dropout: float = 0.0, spec: Optional[str] = None,
                 locked_dropout: bool = False):
        super().__init__()
        if len(blocks) < 2:
            raise ConfigError(f"StackedEncoder needs at least 2 blocks, got {len(blocks)}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"StackedEncoder: dropout must be in [0, 1), got {dropout!r}")
        for i in range(1, len(blocks)):
            if blocks[i].input_size != blocks[i - 1].output_size:
                raise ConfigError(f"StackedEncoder: block {i} expects {blocks[i].input_size} input features but "
                                  f"block {i - 1} outputs {blocks[i - 1].output_size}")
        self.blocks = nn.ModuleList(blocks)
        self.dropout = float(dropout)
        self.locked_dropout = bool(locked_dropout)
        self.spec = spec
        self.input_size = blocks[0].input_size
        self.output_size = blocks[-1].output_size
        self.output_layout = merge_layout(blocks[-1].output_layout)
        self.num_blocks = sum(_num_blocks(b) for b in blocks)
        self.bidirectional = any(getattr(b, "bidirectional", False) for b in blocks)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.dropout:
            text += f", dropout={self.dropout}" + (", locked_dropout=True" if self.locked_dropout else "")
        return text

    def forward(self, x: Tensor, state=None, lengths: Optional[Tensor] = None):
        """x ``(B, T, input_size)`` -> ``(outputs (B, T, output_size), state tuple)``."""
        name = type(self).__name__
        _check_x(name, x, self.input_size)
        if lengths is not None:
            lengths = _check_lengths(name, lengths, x.shape[0], x.shape[1])
        states = _split_state(name, state, self.blocks)
        out, new_states = x, []
        for i, (block, s) in enumerate(zip(self.blocks, states)):
            out, s = block(out, s, lengths)
            new_states.append(s)
            if self.dropout > 0 and self.training and i < len(self.blocks) - 1:
                out = (_locked_dropout(out, self.dropout, True) if self.locked_dropout
                       else F.dropout(out, self.dropout, True))
        return out, _join_state(new_states, self.blocks)

    def step(self, x_t: Tensor, state=None):
        """One step: x_t ``(B, input_size)`` -> ``(y_t (B, output_size), state tuple)``; unidirectional only."""
        self._check_step(x_t)
        if self.training and self.locked_dropout and self.dropout > 0:
            raise ValueError(f"{type(self).__name__}.step: locked_dropout needs one mask per whole sequence; call "
                             f"forward on the sequence in training, or step() in eval mode")
        states = _split_state(type(self).__name__, state, self.blocks)
        y, new_states = x_t, []
        for i, (block, s) in enumerate(zip(self.blocks, states)):
            y, s = block.step(y, s)
            new_states.append(s)
            if self.dropout > 0 and self.training and i < len(self.blocks) - 1:
                y = F.dropout(y, self.dropout, True)
        return y, _join_state(new_states, self.blocks)


class ParallelEncoder(_EncoderBase):
    """Branches on the same input, outputs fused (see the module docstring for ``fusion``).

    ``branches``: recurrent modules with the common contract. ``input_projection``: optional ``Linear(I, P)``
    applied once to the input, whose output every branch reads (then each branch's ``input_size`` is ``P``).
    State: flat tuple over the recurrent layers of every branch, in branch order.
    """

    def __init__(self, branches: Sequence[nn.Module], fusion: str = "concat",
                 input_projection: Optional[nn.Linear] = None, spec: Optional[str] = None):
        super().__init__()
        if len(branches) < 2:
            raise ConfigError(f"ParallelEncoder needs at least 2 branches, got {len(branches)}")
        if fusion not in FUSIONS:
            raise ConfigError(f"ParallelEncoder: fusion must be one of {FUSIONS}, got {fusion!r}")
        width = input_projection.out_features if input_projection is not None else branches[0].input_size
        for i, b in enumerate(branches):
            if b.input_size != width:
                raise ConfigError(f"ParallelEncoder: every branch must read {width} features; branch {i} expects "
                                  f"{b.input_size}")
        self.input_projection = input_projection
        self.branches = nn.ModuleList(branches)
        self.fusion = fusion
        self.spec = spec
        self.input_size = input_projection.in_features if input_projection is not None else width
        self.num_blocks = sum(_num_blocks(b) for b in branches)
        self.bidirectional = any(getattr(b, "bidirectional", False) for b in branches)
        layouts = [merge_layout(b.output_layout) for b in branches]
        names = [getattr(b, "spec", None) or _describe(b) for b in branches]
        self.projections = None
        self.gate = None
        if fusion == "concat":
            self.output_layout = merge_layout([seg for lay in layouts for seg in lay])
        elif fusion == "sum":
            if any(lay != layouts[0] for lay in layouts):
                shown = "; ".join(f"{n} -> {_layout_text(l)}" for n, l in zip(names, layouts))
                raise ConfigError(f"ParallelEncoder: fusion='sum' adds the branches feature by feature, so they need "
                                  f"equal output sizes and directions; got {shown}. Use fusion='concat' or 'gate'")
            self.output_layout = layouts[0]
        else:  # gate
            directions = [tuple(b for _, b in lay) for lay in layouts]
            if any(d != directions[0] for d in directions):
                shown = "; ".join(f"{n} -> {_layout_text(l)}" for n, l in zip(names, layouts))
                raise ConfigError(f"ParallelEncoder: fusion='gate' mixes the branches feature by feature, so they "
                                  f"need the same directions (all unidirectional or all bidirectional); got {shown}. "
                                  f"Use fusion='concat'")
            target = tuple((max(lay[j][0] for lay in layouts), directions[0][j]) for j in range(len(directions[0])))
            if any(lay != target for lay in layouts):
                self.projections = nn.ModuleList(_SegmentProjection(lay, target) if lay != target else nn.Identity()
                                                 for lay in layouts)
            self.output_layout = target
            self.gate = GateFusion(len(branches), sum(s for s, _ in target))
        self.output_size = sum(s for s, _ in self.output_layout)

    def _fuse(self, ys: list[Tensor]) -> Tensor:
        if self.fusion == "concat":
            return torch.cat(ys, -1)
        if self.fusion == "sum":
            return torch.stack(ys, 0).sum(0)
        if self.projections is not None:
            ys = [p(y) for p, y in zip(self.projections, ys)]
        return self.gate(ys)

    def forward(self, x: Tensor, state=None, lengths: Optional[Tensor] = None):
        """x ``(B, T, input_size)`` -> ``(outputs (B, T, output_size), state tuple)``."""
        name = type(self).__name__
        _check_x(name, x, self.input_size)
        if lengths is not None:
            lengths = _check_lengths(name, lengths, x.shape[0], x.shape[1])
        states = _split_state(name, state, self.branches)
        inp = self.input_projection(x) if self.input_projection is not None else x
        ys, new_states = [], []
        for branch, s in zip(self.branches, states):
            y, s = branch(inp, s, lengths)
            ys.append(y)
            new_states.append(s)
        out = self._fuse(ys)
        if self.fusion == "gate" and lengths is not None and int(lengths.min()) < x.shape[1]:
            # projection biases would make padding non-zero; padding outputs are exactly 0 by contract
            real = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)
            out = out * real.unsqueeze(2).to(out.dtype)
        return out, _join_state(new_states, self.branches)

    def step(self, x_t: Tensor, state=None):
        """One step: x_t ``(B, input_size)`` -> ``(y_t (B, output_size), state tuple)``; unidirectional only."""
        self._check_step(x_t)
        states = _split_state(type(self).__name__, state, self.branches)
        inp = self.input_projection(x_t) if self.input_projection is not None else x_t
        ys, new_states = [], []
        for branch, s in zip(self.branches, states):
            y, s = branch.step(inp, s)
            ys.append(y)
            new_states.append(s)
        return self._fuse(ys), _join_state(new_states, self.branches)


def _describe(module: nn.Module) -> str:
    mode = getattr(module, "mode", None)
    if mode in ("LSTM", "GRU"):
        bi = "bi" if module.bidirectional else ""
        layers = f"x{module.num_layers}" if module.num_layers > 1 else ""
        return f"{bi}{mode.lower()}:{module.hidden_size}{layers}"
    return type(module).__name__


# --------------------------------------------------------------------------------------------------- builder
def _tie_stack_blocks(items: Sequence[SpecNode], modules: Sequence[nn.Module]) -> None:
    """Tie the recurrent (and equal-width input) tensors of the stack's Layer blocks of the same kind, size and
    directions (see the module docstring)."""
    groups: dict[tuple, list[nn.Module]] = {}
    for node, module in zip(items, modules):
        if isinstance(node, Layer) and node.kind not in MIN_KINDS:
            groups.setdefault((node.kind, node.hidden, node.bidirectional), []).append(module)
    for members in groups.values():
        if len(members) < 2:
            continue
        owner = members[0]
        input_owner: dict[tuple[int, int], tuple[nn.Module, int]] = {}  # (width, direction) -> (module, layer)
        units = [(m, layer) for m in members for layer in range(m.num_layers)]
        for k, (module, layer) in enumerate(units):
            width = module.input_size if layer == 0 else module.output_size
            for d in range(module.num_directions):
                names = module._names[layer][d]
                if module is not owner:
                    src = owner._names[0][d]
                    for role in _RECURRENT_ROLES:
                        if role in names:
                            setattr(module, names[role], owner._parameters[src[role]])
                if k == 0:
                    continue  # the group's first layer keeps its input tensors, as layer 0 of a tied layer does
                key = (width, d)
                if key not in input_owner:
                    input_owner[key] = (module, layer)
                    continue
                src_module, src_layer = input_owner[key]
                src = src_module._names[src_layer][d]
                for role in _INPUT_ROLES:
                    if role in names:
                        setattr(module, names[role], src_module._parameters[src[role]])


def build_encoder(spec: Union[str, SpecNode], input_size: int, *, dropout: float = 0.0,
                  recurrent_dropout: float = 0.0, layer_norm: bool = False, coupled: bool = False,
                  reset_after: bool = True, init: str = "torch", forget_bias: Optional[float] = None,
                  chrono_tmax: Optional[float] = None, fusion: str = "concat",
                  share_input_projection: Union[bool, int] = False, tie_layers: bool = False,
                  path: str = "auto", locked_dropout: bool = False) -> nn.Module:
    """Build the recurrent encoder a spec describes (grammar: :mod:`hybridrnn.nn.spec`).

    Args:
        spec: e.g. ``"lstm:64"``, ``"bilstm:64>gru:32"``, ``"(lstm:64|gru:64)>gru:32"``, or a parsed AST.
        input_size: features of ``x (batch, time, input_size)``.
        dropout: between stacked blocks and between the layers of a multi-layer block (training only); none on
            a one-layer spec (no warning: task models pass the same value for their own dropout before a head).
        locked_dropout: make that dropout variational, one mask per sequence and feature shared by every time
            step (AWD-LSTM's ``dropouth``); a multi-layer block then runs on the custom path.
        recurrent_dropout, layer_norm, init, chrono_tmax, path: passed to every LSTM/GRU layer (``init`` and
            ``chrono_tmax`` to the minGRU/minLSTM blocks too).
        coupled, forget_bias: passed to LSTM layers (coupled input-forget gate; forget-gate bias).
        reset_after: passed to GRU layers (``False``: the paper's form, custom path).
        fusion: ``"concat"``, ``"sum"`` or ``"gate"`` for every parallel group.
        share_input_projection: ``True`` or a size ``P``: each parallel group projects its input once
            (``Linear(I, P)``) and feeds it to every branch.
        tie_layers: tie recurrent weights across same-kind, same-size stacked blocks and inside ``lstm:64xN``.

    An option with nothing to act on in the spec (``forget_bias`` or ``coupled`` without an LSTM block, ``fusion``
    or ``share_input_projection`` without a parallel group, ``tie_layers`` with nothing to tie) gives a
    ``UserWarning`` naming it, not an error: one config often serves several specs. The same holds for the
    ``mingru`` / ``minlstm`` blocks: ``layer_norm``, ``recurrent_dropout``, ``reset_after=False`` and a ``path``
    other than ``"auto"`` are LSTM/GRU options; set on a spec with minimal blocks, they give a ``UserWarning``
    saying that those blocks ignore them (the LSTM/GRU blocks of the spec still get them); ``coupled`` and
    ``forget_bias`` warn, as before, only when the spec has no LSTM block (a ``minlstm`` is not one).
    Minimal blocks are never tied (``tie_layers`` ties LSTM/GRU recurrent matrices; they have none).

    Returns: a plain ``LSTM``/``GRU`` for a one-layer spec, else a :class:`StackedEncoder` or
    :class:`ParallelEncoder`, each with ``input_size``, ``output_size``, ``output_layout``, ``final_output``,
    ``step`` and an attribute ``spec`` (the canonical spec text).
    """
    ast = parse_spec(spec)
    _check_options(input_size, fusion, dropout, share_input_projection, tie_layers, path)
    _warn_idle_options(ast, forget_bias=forget_bias, coupled=coupled, share_input_projection=share_input_projection,
                       fusion=fusion, tie_layers=tie_layers, locked_dropout=locked_dropout, dropout=dropout)
    _warn_min_options(ast, layer_norm=layer_norm, recurrent_dropout=recurrent_dropout, reset_after=reset_after,
                      path=path)
    tied_blocks = _tied_layer_ids(ast) if tie_layers else set()

    def layer_module(node: Layer, width: int) -> nn.Module:
        if node.kind in MIN_KINDS:
            return MIN_KINDS[node.kind](width, node.hidden, node.layers, bidirectional=node.bidirectional,
                                        dropout=dropout if node.layers > 1 else 0.0,
                                        locked_dropout=locked_dropout and node.layers > 1, init=init,
                                        chrono_tmax=chrono_tmax)
        common = dict(bidirectional=node.bidirectional, dropout=dropout if node.layers > 1 else 0.0,
                      layer_norm=layer_norm, recurrent_dropout=recurrent_dropout, init=init,
                      chrono_tmax=chrono_tmax, tie_layers=tie_layers and node.layers > 1,
                      locked_dropout=locked_dropout and node.layers > 1,
                      path="custom" if id(node) in tied_blocks and path == "auto" else path)
        if node.kind == "lstm":
            return LSTM(width, node.hidden, node.layers, coupled=coupled, forget_bias=forget_bias, **common)
        return GRU(width, node.hidden, node.layers, reset_after=reset_after, **common)

    def build(node: SpecNode, width: int) -> nn.Module:
        if isinstance(node, Layer):
            return layer_module(node, width)
        if isinstance(node, Stack):
            modules = []
            for item in node.items:
                modules.append(build(item, width))
                width = modules[-1].output_size
            if tie_layers:
                _tie_stack_blocks(node.items, modules)
            return StackedEncoder(modules, dropout=dropout, spec=format_spec(node), locked_dropout=locked_dropout)
        projection = None
        if share_input_projection is not False:
            size = share_input_projection if not isinstance(share_input_projection, bool) else \
                min(width, min(_first_hidden(b) for b in node.branches))
            projection = nn.Linear(width, size)
            width = size
        branches = [build(b, width) for b in node.branches]
        return ParallelEncoder(branches, fusion=fusion, input_projection=projection, spec=format_spec(node))

    return build(ast, input_size)


def _check_options(input_size: Any, fusion: str, dropout: float, share_input_projection: Union[bool, int],
                   tie_layers: bool, path: str) -> None:
    """``build_encoder``'s option values that no spec can use: a ``ValueError`` naming the option."""
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1:
        raise ConfigError(f"build_encoder: input_size must be an integer >= 1, got {input_size!r}")
    if fusion not in FUSIONS:
        raise ConfigError(f"build_encoder: fusion must be one of {FUSIONS}, got {fusion!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"build_encoder: dropout must be in [0, 1), got {dropout!r}")
    if share_input_projection is not False and not isinstance(share_input_projection, bool) and (
            not isinstance(share_input_projection, int) or share_input_projection < 1):
        raise ConfigError(f"build_encoder: share_input_projection must be True/False or a size >= 1, "
                          f"got {share_input_projection!r}")
    if tie_layers and path == "fused":
        raise ConfigError("build_encoder: tie_layers ties tensors across layers, which needs the custom path; "
                          "got path='fused' (use 'auto' or 'custom')")


def _warn_idle_options(ast: SpecNode, *, forget_bias: Optional[float], coupled: bool,
                       share_input_projection: Union[bool, int], fusion: str, tie_layers: bool,
                       locked_dropout: bool, dropout: float) -> None:
    """Options with nothing to act on in this spec are not errors (one config often serves several specs in a
    comparison), but they are never dropped silently: each gets a ``UserWarning`` naming the option and the spec."""
    spec_text = format_spec(ast)
    has_lstm, has_parallel = any(l.kind == "lstm" for l in iter_layers(ast)), _has(ast, Parallel)
    idle = []
    if forget_bias is not None and not has_lstm:
        idle.append(f"forget_bias={forget_bias} applies to LSTM blocks, and spec {spec_text!r} has none")
    if coupled and not has_lstm:
        idle.append(f"coupled=True applies to LSTM blocks, and spec {spec_text!r} has none")
    if share_input_projection is not False and not has_parallel:
        idle.append(f"share_input_projection={share_input_projection} applies to parallel groups ('a|b'), and "
                    f"spec {spec_text!r} has none")
    if fusion != "concat" and not has_parallel:
        idle.append(f"fusion={fusion!r} applies to parallel groups ('a|b'), and spec {spec_text!r} has none")
    if tie_layers and not (_tied_layer_ids(ast) or any(l.layers > 1 and l.kind not in MIN_KINDS
                                                        for l in iter_layers(ast))):
        idle.append(f"tie_layers=True ties stacked blocks of the same kind and size ('lstm:64>lstm:64') or the "
                    f"layers of a multi-layer block ('lstm:64x2'), and spec {spec_text!r} has neither")
    if locked_dropout and not dropout:
        idle.append("locked_dropout=True makes dropout variational, and dropout is 0")
    for message in idle:
        warnings.warn(f"build_encoder: {message}; the option has no effect", stacklevel=3)


def _warn_min_options(ast: SpecNode, *, layer_norm: bool, recurrent_dropout: float, reset_after: bool,
                      path: str) -> None:
    """LSTM/GRU cell options set on a spec with ``mingru`` / ``minlstm`` blocks: a ``UserWarning`` naming each
    option that those blocks ignore (other blocks of the spec still use it). ``coupled`` and ``forget_bias``
    are left to :func:`_warn_idle_options` (they warn when the spec has no LSTM block): their defaults serve
    every spec with one."""
    minimal = sorted({l.kind for l in iter_layers(ast) if l.kind in MIN_KINDS})
    if not minimal:
        return
    ignored = [text for text, on in (
        ("layer_norm=True", layer_norm), (f"recurrent_dropout={recurrent_dropout}", recurrent_dropout > 0),
        ("reset_after=False", not reset_after), (f"path={path!r}", path != "auto")) if on]
    if ignored:
        warnings.warn(f"build_encoder: {', '.join(ignored)} {'is an option' if len(ignored) == 1 else 'are options'}"
                      f" of LSTM/GRU blocks; the {'/'.join(minimal)} blocks of spec {format_spec(ast)!r} ignore "
                      f"{'it' if len(ignored) == 1 else 'them'} (a minimal block has no recurrent matrix, no "
                      f"layer norm and picks its own path)", stacklevel=3)


def _has(node: SpecNode, cls: type) -> bool:
    if isinstance(node, cls):
        return True
    if isinstance(node, Layer):
        return False
    return any(_has(c, cls) for c in (node.items if isinstance(node, Stack) else node.branches))


def _first_hidden(node: SpecNode) -> int:
    while not isinstance(node, Layer):
        node = node.items[0] if isinstance(node, Stack) else min(node.branches, key=_first_hidden)
    return node.hidden


def _tied_layer_ids(ast: SpecNode) -> set[int]:
    """ids of the Layer nodes that tie_layers ties to another block of their stack."""
    out: set[int] = set()

    def walk(node: SpecNode) -> None:
        if isinstance(node, Stack):
            groups: dict[tuple, list[Layer]] = {}
            for item in node.items:
                if isinstance(item, Layer) and item.kind not in MIN_KINDS:
                    groups.setdefault((item.kind, item.hidden, item.bidirectional), []).append(item)
                else:
                    walk(item)
            out.update(id(l) for g in groups.values() if len(g) > 1 for l in g)
        elif isinstance(node, Parallel):
            for b in node.branches:
                walk(b)

    walk(ast)
    return out
