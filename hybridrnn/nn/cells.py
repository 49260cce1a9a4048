"""LSTM and GRU cells: one time step, written from the textbook equations. The one source of the equations.

Weights are named and shaped as in ``torch.nn.LSTMCell`` / ``torch.nn.GRUCell`` and the gate rows are in
torch's order, so weights copy across unchanged:

- LSTM, rows ``(i, f, g, o)`` (G = 4); a coupled LSTM has rows ``(i, g, o)`` (G = 3) and ``f = 1 - i``::

      i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)      input gate
      f = sigmoid(W_if x + b_if + W_hf h + b_hf)      forget gate      (coupled: f = 1 - i)
      g = tanh(W_ig x + b_ig + W_hg h + b_hg)         candidate
      o = sigmoid(W_io x + b_io + W_ho h + b_ho)      output gate
      c' = f * c + i * g
      h' = o * tanh(c')

- GRU, rows ``(r, z, n)`` (G = 3)::

      r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)      reset gate
      z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)      torch's z: the share of the OLD state kept
      n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   reset_after=True  (torch / cuDNN form)
      n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)   reset_after=False (Cho et al. 2014, the paper's form)
      h' = (1 - z) * n + z * h

  The textbook update gate is ``u = 1 - z`` (torch's parameterisation), giving the textbook
  ``h' = (1 - u) * h + u * n``.

Layer normalisation (``layer_norm=True``, after Ba et al. 2016) normalises the input part and the recurrent
part of the gate pre-activations separately, each gate's ``H`` units on their own (its own gain and bias),
and, for the LSTM, the cell state before the output ``tanh``::

      gates = LN_ih(W_ih x + b_ih) + LN_hh(W_hh h + b_hh)        (per gate block of H units)
      h' = o * tanh(LN_c(c'))                                     (LSTM; c' itself is carried un-normalised)

  In the paper-form GRU the recurrent ``n`` part is ``LN_hh,n(W_hn (r * h) + b_hn)``.

Recurrent dropout (``h_mask``): ``h`` is multiplied by a fixed mask where it enters ``W_hh`` (the GRU's carried
``z * h`` uses the unmasked state).

The functions below are the single source of these equations. A step is split into the input projection
``W_ih x + b_ih`` (:func:`input_projection`, hoisted out of the time loop by the layers) and the rest
(:func:`lstm_step` / :func:`gru_step`: the input layer norm, the recurrence), which take the layer's
per-step tensors and options as one :class:`LSTMParams` / :class:`GRUParams` and also return the gate
activations. Their users: the cells below,
the layers' ``step()`` (``hybridrnn.nn.recurrent``), the general time loops ``lstm_loop`` / ``gru_loop`` of
``hybridrnn.nn._scan`` (the layers' path for options the fused scan kernels lack, the scan kernels' test
reference, and the layers' ``gate_trace`` that the memory diagnostic reads). The fused scan kernels in
``_scan.py`` re-derive the same arithmetic by hand for speed and are tested against these functions.
A new cell option goes into the params tuple and the step function here, and into the layers that own the
parameters; the fused kernels may leave it to the general loop.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridrnn.nn import _onednn

LN_EPS = 1e-5
LNParams = tuple[Tensor, Tensor]               # (gain, bias) of a layer norm


class LSTMParams(NamedTuple):
    """The per-step tensors of one LSTM layer and direction (all but ``W_ih``, ``b_ih``), and its options.

    w_hh ``(G*H, H)``; b_hh ``(G*H,)`` or None (no bias, or already folded into the input projection, which
    is only exact without layer norm); ln_hh (gain, bias) each ``(G*H,)``, the bias None when it is folded into
    ln_ih's bias (exact: both add to the same pre-activation); ln_c (gain, bias) each ``(H,)``; ln_ih (gain,
    bias) each ``(G*H,)``: the layer norm of the input projection (None: none, or already applied to ``xg``).
    """
    w_hh: Tensor
    b_hh: Optional[Tensor] = None
    ln_hh: Optional[LNParams] = None
    ln_c: Optional[LNParams] = None
    coupled: bool = False
    ln_ih: Optional[LNParams] = None


class GRUParams(NamedTuple):
    """The per-step tensors of one GRU layer and direction (all but ``W_ih``, ``b_ih``), and its options.

    w_hh ``(3H, H)``; b_hh ``(3H,)`` or None; ln_hh, ln_ih (gain, bias) each ``(3H,)`` (ln_ih as in
    :class:`LSTMParams`).
    """
    w_hh: Tensor
    b_hh: Optional[Tensor] = None
    ln_hh: Optional[LNParams] = None
    reset_after: bool = True
    ln_ih: Optional[LNParams] = None


class LSTMGates(NamedTuple):
    """Gate activations of one LSTM step, each ``(B, H)``: input, forget (``1 - i`` when coupled), candidate,
    output."""
    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


class GRUGates(NamedTuple):
    """Gate activations of one GRU step, each ``(B, H)``: reset, torch's update ``z`` (share of the old state
    kept), candidate."""
    r: Tensor
    z: Tensor
    n: Tensor


def gate_layer_norm(a: Tensor, weight: Tensor, bias: Optional[Tensor], gates: int) -> Tensor:
    """Layer norm of each gate block on its own.

    a: ``(..., gates * H)``; weight, bias: ``(gates * H,)`` (bias None: no bias, e.g. added elsewhere).
    Returns ``(..., gates * H)``.
    """
    shape = a.shape
    hidden = shape[-1] // gates
    normed = F.layer_norm(a.reshape(*shape[:-1], gates, hidden), (hidden,), eps=LN_EPS).reshape(shape)
    return normed * weight if bias is None else torch.addcmul(bias, normed, weight)


def input_projection(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor]) -> Tensor:
    """The input projection ``W_ih x + b_ih``, the part of a step that layers compute for all steps at once (its
    layer norm, if any, is applied by the step function from ``params.ln_ih``).

    x: ``(..., I)`` (one step ``(B, I)`` or a whole sequence ``(T, B, I)``); w_ih ``(G*H, I)``; b_ih
    ``(G*H,)`` or None. Returns ``(..., G*H)``. A whole sequence on the CPU in float32 multiplies on oneDNN
    (:func:`hybridrnn.nn._onednn.linear`: 2.3x MKL's speed on AMD CPUs), anything else with ``F.linear``.
    """
    return _onednn.linear(x, w_ih, b_ih)


def lstm_step(xg: Tensor, h: Tensor, c: Tensor, p: LSTMParams,
              h_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, LSTMGates]:
    """One LSTM step from a precomputed input projection (see the module docstring for the equations).

    xg: ``(B, G*H)`` from :func:`input_projection`; h, c: ``(B, H)``; h_mask: ``(B, H)`` multiplied into ``h``
    before ``W_hh``. Returns ``(h', c', gates)``, ``h'`` and ``c'`` ``(B, H)``.
    """
    if p.ln_ih is not None:
        xg = gate_layer_norm(xg, p.ln_ih[0], p.ln_ih[1], 3 if p.coupled else 4)
    h_in = h if h_mask is None else h * h_mask
    if p.ln_hh is None:
        hg = torch.mm(h_in, p.w_hh.t()) if p.b_hh is None else torch.addmm(p.b_hh, h_in, p.w_hh.t())
        pre = xg + hg
    else:
        hg = F.linear(h_in, p.w_hh, p.b_hh)
        pre = xg + gate_layer_norm(hg, p.ln_hh[0], p.ln_hh[1], 3 if p.coupled else 4)
    if p.coupled:
        i, g, o = pre.chunk(3, 1)
        i = torch.sigmoid(i)
        f = 1.0 - i
    else:
        i, f, g, o = pre.chunk(4, 1)
        i = torch.sigmoid(i)
        f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c_new = f * c + i * g
    c_out = c_new if p.ln_c is None else F.layer_norm(c_new, (c_new.shape[-1],), p.ln_c[0], p.ln_c[1], LN_EPS)
    return o * torch.tanh(c_out), c_new, LSTMGates(i, f, g, o)


def gru_step(xg: Tensor, h: Tensor, p: GRUParams, h_mask: Optional[Tensor] = None) -> tuple[Tensor, GRUGates]:
    """One GRU step from a precomputed input projection (see the module docstring for the equations).

    xg: ``(B, 3H)`` from :func:`input_projection`, gate order ``(r, z, n)``; h: ``(B, H)``; h_mask: ``(B, H)``
    multiplied into ``h`` where it enters a recurrent matmul. Returns ``(h', gates)``, ``h'`` ``(B, H)``.
    """
    hidden = h.shape[-1]
    if p.ln_ih is not None:
        xg = gate_layer_norm(xg, p.ln_ih[0], p.ln_ih[1], 3)
    h_in = h if h_mask is None else h * h_mask
    w_hh, b_hh, ln_hh = p.w_hh, p.b_hh, p.ln_hh
    xr, xz, xn = xg.split(hidden, -1)
    if p.reset_after:
        hg = F.linear(h_in, w_hh, b_hh)
        if ln_hh is not None:
            hg = gate_layer_norm(hg, ln_hh[0], ln_hh[1], 3)
        hr, hz, hn = hg.split(hidden, -1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
    else:
        two = 2 * hidden
        hrz = F.linear(h_in, w_hh[:two], None if b_hh is None else b_hh[:two])
        if ln_hh is not None:
            hrz = gate_layer_norm(hrz, ln_hh[0][:two], ln_hh[1][:two], 2)
        hr, hz = hrz.split(hidden, -1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        hn = F.linear(r * h_in, w_hh[two:], None if b_hh is None else b_hh[two:])
        if ln_hh is not None:
            hn = gate_layer_norm(hn, ln_hh[0][two:], ln_hh[1][two:], 1)
        n = torch.tanh(xn + hn)
    return n + z * (h - n), GRUGates(r, z, n)


class _CellBase(nn.Module):
    mode = ""
    gates = 0

    def __init__(self, input_size: int, hidden_size: int, bias: bool, layer_norm: bool) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"{type(self).__name__}: input_size and hidden_size must be >= 1, "
                             f"got input_size={input_size}, hidden_size={hidden_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.layer_norm = layer_norm
        gh = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gh))
            self.bias_hh = nn.Parameter(torch.empty(gh))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if layer_norm:
            self.ln_ih_weight = nn.Parameter(torch.ones(gh))
            self.ln_ih_bias = nn.Parameter(torch.zeros(gh))
            self.ln_hh_weight = nn.Parameter(torch.ones(gh))
            self.ln_hh_bias = nn.Parameter(torch.zeros(gh))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default: every weight and bias uniform in ``(-1/sqrt(H), 1/sqrt(H))``; LN gain 1, bias 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("ln_"):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    p.uniform_(-bound, bound)

    def _check(self, x: Tensor, state: Optional[Tensor], what: str) -> None:
        name = type(self).__name__
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"{name}: expected x of shape (batch, {self.input_size}), got {tuple(x.shape)}")
        if state is not None and tuple(state.shape) != (x.shape[0], self.hidden_size):
            raise ValueError(f"{name}: expected {what} of shape ({x.shape[0]}, {self.hidden_size}), "
                             f"got {tuple(state.shape)}")

    def _ln(self, side: str) -> Optional[LNParams]:
        return (getattr(self, f"ln_{side}_weight"), getattr(self, f"ln_{side}_bias")) if self.layer_norm else None


class LSTMCell(_CellBase):
    """One LSTM step (see the module docstring for the equations).

    Parameters (torch's names): ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih``, ``bias_hh``
    ``(G*H,)``, rows ``(i, f, g, o)`` (G=4) or ``(i, g, o)`` when ``coupled`` (G=3). With ``layer_norm``:
    ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias`` ``(G*H,)`` and ``ln_c_weight``,
    ``ln_c_bias`` ``(H,)``.

    ``forward(x, state=None) -> (h', c')``: x ``(B, I)``, state ``(h, c)`` each ``(B, H)`` (zeros if None).
    """

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, coupled: bool = False,
                 layer_norm: bool = False) -> None:
        self.coupled = coupled
        self.gates = 3 if coupled else 4
        super().__init__(input_size, hidden_size, bias, layer_norm)
        if layer_norm:
            self.ln_c_weight = nn.Parameter(torch.ones(hidden_size))
            self.ln_c_bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: Tensor, state: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        if state is None:
            self._check(x, None, "h")
            h = c = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            h, c = state
            self._check(x, h, "h")
            self._check(x, c, "c")
        params = LSTMParams(self.weight_hh, self.bias_hh, self._ln("hh"), self._ln("c"), self.coupled, self._ln("ih"))
        h_new, c_new, _ = lstm_step(input_projection(x, self.weight_ih, self.bias_ih), h, c, params)
        return h_new, c_new

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, bias={self.bias}, coupled={self.coupled}, "
                f"layer_norm={self.layer_norm}")


class GRUCell(_CellBase):
    """One GRU step (see the module docstring for the equations).

    Parameters (torch's names): ``weight_ih (3H, I)``, ``weight_hh (3H, H)``, ``bias_ih``, ``bias_hh`` ``(3H,)``,
    rows ``(r, z, n)``. With ``layer_norm``: ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias``
    ``(3H,)``. ``reset_after=True`` is torch's form, ``False`` the original paper's.

    ``forward(x, h=None) -> h'``: x ``(B, I)``, h ``(B, H)`` (zeros if None).
    """

    mode = "GRU"
    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, reset_after: bool = True,
                 layer_norm: bool = False) -> None:
        self.reset_after = reset_after
        super().__init__(input_size, hidden_size, bias, layer_norm)

    def forward(self, x: Tensor, h: Optional[Tensor] = None) -> Tensor:
        self._check(x, h, "h")
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        params = GRUParams(self.weight_hh, self.bias_hh, self._ln("hh"), self.reset_after, self._ln("ih"))
        return gru_step(input_projection(x, self.weight_ih, self.bias_ih), h, params)[0]

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, bias={self.bias}, reset_after={self.reset_after}, "
                f"layer_norm={self.layer_norm}")
