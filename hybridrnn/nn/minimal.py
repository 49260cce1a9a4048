"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201): recurrences whose gates
read only the input, so the whole sequence is one linear recurrence that can run as a parallel scan.

Equations (per layer and direction; ``W x_t + b`` is one ``Linear`` of the layer's input, rows per gate):

- minGRU, rows ``(z, h)``::

      z_t  = sigmoid(W_z x_t + b_z)
      h~_t = g(W_h x_t + b_h)
      h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t

- minLSTM, rows ``(f, i, h)``::

      f_t = sigmoid(W_f x_t + b_f),   i_t = sigmoid(W_i x_t + b_i)
      f'_t = f_t / (f_t + i_t),       i'_t = i_t / (f_t + i_t)
      h~_t = g(W_h x_t + b_h)
      h_t  = f'_t * h_{t-1} + i'_t * h~_t

with the paper's positivity map ``g(v) = v + 0.5 if v >= 0 else sigmoid(v)`` (Appendix B.3: it keeps ``h~ > 0``
so that the scan can run in log space; the sequential form uses the same ``g``, so both compute one function).
Both are ``h_t = a_t * h_{t-1} + b_t`` with ``a_t in (0, 1)``, ``b_t > 0`` and ``a_t, b_t`` functions of
``x_t`` alone. Their logarithms, without cancellation (``logsigmoid(v) = log sigmoid(v) = -log(1 + e^-v)``)::

      minGRU:  log a = logsigmoid(-k),    log b = logsigmoid(k) + log g(v_h),    k = W_z x + b_z
      minLSTM: log a = logsigmoid(-d),    log b = logsigmoid(d) + log g(v_h),
               d = logsigmoid(W_i x + b_i) - logsigmoid(W_f x + b_f)       (= log i - log f)

Two implementations of the recurrence over the sequence (``path``), one function:

- ``"log_scan"``: Heinsen's parallel scan in log space (Heinsen 2023, arXiv 2311.06281), every step at once::

      a*_t = sum_{k<=t} log a_k                                       (cumsum over time)
      h_t  = exp(a*_t + logcumsumexp_{k<=t}(log b_k - a*_k)) + exp(a*_t) * h_0

  The ``h_0`` term is added outside the logarithm, so an initial state of any sign (or zero) works and no
  ``log h_0`` is ever taken. ``chunk=C`` (default 256; None: one block) runs the scan in blocks of ``C`` steps
  and carries the state from block to block (``T / C`` small sequential steps): ``a*`` then never sums more
  than ``C`` terms, which keeps the float32 cancellation between ``a*_t`` and the ``logcumsumexp`` (both grow
  like ``t``) bounded at long ``T`` (measured at T=4000: largest error 3.8e-5 with blocks of 256 against
  5.9e-4 in one block; the sequential form: 1.3e-6).
- ``"loop"``: the sequential form ``h_t = a_t h_{t-1} + b_t`` in linear space, one fused multiply-add per step;
  the gates and the loop are one autograd node with a hand-written backward (:class:`_MinLoop`: the reverse
  recurrence ``r_t = dL/dh_t + a_{t+1} r_{t+1}``, then ``dL/db_t = r_t``, ``dL/da_t = r_t h_{t-1}``,
  ``dL/dh_0 = a_1 r_1`` and the gates' derivatives elementwise). On one CPU thread the parallel scan buys
  nothing and its ``logcumsumexp`` costs several transcendental functions per element, so this is the faster
  path there (``benchmarks/results/minimal.md``).
- ``"auto"`` (default): ``"loop"`` on CPU, ``"log_scan"`` on other devices (a GPU runs the scan in parallel).

:meth:`step` is the sequential form of one step (for streaming and generation).

Shapes follow docs/CONTRACTS.md: ``x (B, T, input_size)``, ``lengths (B,)`` in ``1..T`` (padding never reaches a
state; outputs are 0 there), outputs ``(B, T, D * H)`` (``[forward | backward]``), state ``h (num_layers * D, B,
H)`` with row ``layer * D + direction``; with ``lengths`` the final state of a sequence is its last real step
(step 0 for the backward direction). Padding: the gate inputs of padded steps are set to 0 (so that any value
there stays finite), the scan runs over all ``T`` steps (it is causal: a real step never reads a later padded
one; the backward direction first reverses each sequence within its length), the final state is read at each
sequence's last real step and the outputs are zeroed at padding. Parameters per layer ``l`` (suffix ``_l{l}``, ``_l{l}_reverse``):
``weight_ih (G*H, I_l)``, ``bias_ih (G*H,)``, ``G = 2`` (minGRU) or ``3`` (minLSTM), ``I_0 = input_size``,
``I_l = D * H``. There is no recurrent weight.

Pure torch, no I/O.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridrnn.nn import _onednn
from hybridrnn.nn.checks import check_lengths, input_error
from hybridrnn.nn.dropout import locked_dropout as _locked_dropout

__all__ = ["MinGRU", "MinLSTM", "g", "log_g", "log_space_scan", "linear_scan", "PATHS", "INITS"]

PATHS = ("auto", "log_scan", "loop")
INITS = ("torch", "xavier_orthogonal", "chrono")


# --------------------------------------------------------------------------------------------------- functions
def g(v: Tensor) -> Tensor:
    """The paper's positivity map: ``v + 0.5`` where ``v >= 0``, ``sigmoid(v)`` elsewhere (continuous, > 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: Tensor) -> Tensor:
    """``log g(v)`` without forming ``g``: ``log(relu(v) + 0.5)`` where ``v >= 0``, ``logsigmoid(v)`` elsewhere."""
    return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), F.logsigmoid(v))


def log_space_scan(log_a: Tensor, log_b: Tensor, h0: Tensor, chunk: Optional[int] = None) -> Tensor:
    """``h_t = a_t h_{t-1} + b_t`` for every ``t`` at once, in log space (Heinsen's scan; module docstring).

    ``log_a``, ``log_b``: ``(T, B, H)``; ``h0``: ``(B, H)``, any sign. Returns ``h (T, B, H)``. ``chunk``: block
    length ``C`` (None: the whole sequence is one block).
    """
    time = log_a.shape[0]
    if chunk is None or chunk >= time:
        a_star = log_a.cumsum(0)                                             # (T, B, H)
        return torch.exp(a_star + torch.logcumsumexp(log_b - a_star, 0)) + torch.exp(a_star) * h0
    n = -(-time // chunk)
    pad = n * chunk - time
    if pad:  # steps past T: a = 1, b = 1 (finite), their outputs are cut off below
        log_a = F.pad(log_a, (0, 0, 0, 0, 0, pad))
        log_b = F.pad(log_b, (0, 0, 0, 0, 0, pad))
    la = log_a.reshape(n, chunk, *log_a.shape[1:])                          # (n, C, B, H)
    lb = log_b.reshape(n, chunk, *log_b.shape[1:])                          # (n, C, B, H)
    a_star = la.cumsum(1)                                                   # within each block
    from_zero = torch.exp(a_star + torch.logcumsumexp(lb - a_star, 1))     # (n, C, B, H): block from h = 0
    decay = torch.exp(a_star)                                               # (n, C, B, H): prod of a in block
    carries, h = [], h0
    for k in range(n):  # the state entering each block
        carries.append(h)
        h = torch.addcmul(from_zero[k, -1], decay[k, -1], h)
    carry = torch.stack(carries, 0).unsqueeze(1)                            # (n, 1, B, H)
    out = torch.addcmul(from_zero, decay, carry)                            # (n, C, B, H)
    return out.reshape(n * chunk, *out.shape[2:])[:time]                    # (T, B, H)


def _forward_loop(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """``h_t = a_t h_{t-1} + b_t``, one fused multiply-add per step into one buffer: ``(T, B, H)``."""
    out = torch.empty_like(b)                                               # (T, B, H)
    h = h0
    for a_t, b_t, o_t in zip(a.unbind(0), b.unbind(0), out.unbind(0)):
        h = torch.addcmul(b_t, a_t, h, out=o_t)
    return out


def _reverse_loop(a: Tensor, grad: Tensor) -> Tensor:
    """``r_t = grad_t + a_{t+1} r_{t+1}`` (``dL/dh_t`` through every later step): ``(T, B, H)``."""
    r = grad.contiguous().clone()                                           # (T, B, H)
    steps, a_steps = r.unbind(0), a.unbind(0)
    for t in range(len(steps) - 2, -1, -1):
        steps[t].addcmul_(a_steps[t + 1], steps[t + 1])
    return r


def _previous(out: Tensor, h0: Tensor) -> Tensor:
    """``h_{t-1}`` for every ``t``: ``(T, B, H)`` from ``out (T, B, H)`` and ``h0 (B, H)``."""
    prev = torch.empty_like(out)
    prev[0] = h0
    prev[1:] = out[:-1]
    return prev


class _LinearScan(torch.autograd.Function):
    """``h_t = a_t h_{t-1} + b_t`` step by step, with the reverse recurrence as the backward."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        out = _forward_loop(a, b, h0)
        ctx.save_for_backward(a, h0, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        a, h0, out = ctx.saved_tensors
        r = _reverse_loop(a, grad)
        return r * _previous(out, h0), r, a[0] * r[0]


def linear_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """``h_t = a_t h_{t-1} + b_t`` sequentially: ``a``, ``b`` ``(T, B, H)``, ``h0 (B, H)`` -> ``h (T, B, H)``."""
    return _LinearScan.apply(a, b, h0)


def _share(kind: str, xg: Tensor) -> tuple[Tensor, Tensor]:
    """Both cells are ``h = (1 - u) h_prev + u g(v)``: ``u`` (minGRU ``z``; minLSTM ``i/(f+i)``) and the candidate
    pre-activation ``v`` from ``xg (T, B, G*H)``, each ``(T, B, H)``."""
    if kind == "mingru":
        k, v = xg.chunk(2, -1)
        return torch.sigmoid(k), v
    pf, pi, v = xg.chunk(3, -1)
    return torch.sigmoid(F.logsigmoid(pi) - F.logsigmoid(pf)), v    # sigmoid(log i - log f) = i / (f + i)


class _MinLoop(torch.autograd.Function):
    """The ``"loop"`` path of a whole layer and direction, gates included, with a hand-written backward:
    ``xg (T, B, G*H)``, ``h0 (B, H)`` -> ``h (T, B, H)``.

    With ``r_t = dL/dh_t`` through every later step (:func:`_reverse_loop`) and ``h = (1 - u) h_prev + u g(v)``:
    ``dL/dv = r u g'(v)`` (``g' = 1`` for ``v >= 0``, ``g(1 - g)`` below), ``dL/dlogit(u) = r (g(v) - h_prev)
    u (1 - u)``; minGRU's logit is ``W_z x + b_z``; minLSTM's is ``logsigmoid(p_i) - logsigmoid(p_f)``, so
    ``dL/dp_f = -dL/dlogit sigmoid(-p_f)`` and ``dL/dp_i = dL/dlogit sigmoid(-p_i)``. ``dL/dh_0 = (1 - u_1) r_1``.
    """

    @staticmethod
    def forward(ctx, xg: Tensor, h0: Tensor, kind: str) -> Tensor:
        u, v = _share(kind, xg)                                            # (T, B, H) each
        gv = g(v)
        a = 1.0 - u
        out = _forward_loop(a, u * gv, h0)                                  # (T, B, H)
        ctx.kind = kind
        ctx.save_for_backward(xg, h0, u, gv, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        xg, h0, u, gv, out = ctx.saved_tensors
        hidden = u.shape[-1]
        a = 1.0 - u
        r = _reverse_loop(a, grad)                                          # (T, B, H)
        dlogit = _previous(out, h0).neg_().add_(gv).mul_(r).mul_(u).mul_(a)  # r (g(v) - h_prev) u (1 - u)
        v = xg[..., -hidden:]
        dv = torch.where(v >= 0, r, r * gv * (1.0 - gv)).mul_(u)            # r u g'(v)
        dxg = torch.empty_like(xg)                                          # (T, B, G*H)
        if ctx.kind == "mingru":
            dxg[..., :hidden] = dlogit
        else:
            dxg[..., :hidden] = -dlogit * torch.sigmoid(-xg[..., :hidden])
            dxg[..., hidden:2 * hidden] = dlogit * torch.sigmoid(-xg[..., hidden:2 * hidden])
        dxg[..., -hidden:] = dv
        return dxg, a[0] * r[0], None


# --------------------------------------------------------------------------------------------------- layers
class _MinRecurrent(nn.Module):
    """Shared machinery of :class:`MinGRU` and :class:`MinLSTM` (see the module docstring)."""

    kind = ""      # spec kind: "mingru" / "minlstm"
    gates = 0      # row blocks of weight_ih

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 bidirectional: bool = False, dropout: float = 0.0, locked_dropout: bool = False,
                 init: str = "torch", chrono_tmax: Optional[float] = None, path: str = "auto",
                 chunk: Optional[int] = 256) -> None:
        super().__init__()
        name = type(self).__name__
        for label, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: {label} must be an integer >= 1, got {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout!r}")
        if path not in PATHS:
            raise ValueError(f"{name}: path must be one of {PATHS}, got {path!r}")
        if init not in INITS:
            raise ValueError(f"{name}: init must be one of {INITS}, got {init!r}")
        if init == "chrono" and (chrono_tmax is None or not chrono_tmax > 2):
            raise ValueError(f"{name}: init 'chrono' needs chrono_tmax > 2 (the longest dependency to remember, "
                             f"in steps), got {chrono_tmax!r}")
        if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
            raise ValueError(f"{name}: chunk must be None or an integer >= 1, got {chunk!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.bidirectional = bias, bidirectional
        self.dropout, self.locked_dropout = float(dropout), bool(locked_dropout)
        self.init, self.chrono_tmax, self.chunk = init, chrono_tmax, chunk
        self._path_request = path
        self.path = self._choose_path("cpu")
        self.num_directions = 2 if bidirectional else 1
        self.output_size = self.num_directions * hidden_size
        self.output_layout = ((hidden_size, False), (hidden_size, True)) if bidirectional else ((hidden_size, False),)
        self._names: list[list[tuple[str, Optional[str]]]] = []  # [layer][direction] -> (weight, bias) names
        for layer in range(num_layers):
            width = input_size if layer == 0 else self.output_size
            per_dir = []
            for d in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                self.register_parameter("weight_ih" + sfx, nn.Parameter(torch.empty(self.gates * hidden_size, width)))
                if bias:
                    self.register_parameter("bias_ih" + sfx, nn.Parameter(torch.empty(self.gates * hidden_size)))
                per_dir.append(("weight_ih" + sfx, "bias_ih" + sfx if bias else None))
            self._names.append(per_dir)
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        """``"torch"``: ``nn.Linear``'s default (uniform in ``+-1/sqrt(I_l)``); ``"xavier_orthogonal"``: each
        gate's block Xavier-uniform, biases 0 (there is no recurrent matrix to make orthogonal); ``"chrono"``:
        as ``"xavier_orthogonal"`` with Tallec & Ollivier's gate biases, ``log u``, ``u ~ U[1, chrono_tmax - 1]``
        per unit, set so that the share of the old state kept starts near ``1 - 1/u`` (minGRU ``b_z = -log u``;
        minLSTM ``b_f = log u``, ``b_i = -log u``)."""
        hidden = self.hidden_size
        with torch.no_grad():
            for per_dir in self._names:
                for w_name, b_name in per_dir:
                    w, b = self._parameters[w_name], self._parameters[b_name] if b_name else None
                    if self.init == "torch":
                        bound = 1.0 / math.sqrt(w.shape[1])
                        w.uniform_(-bound, bound)
                        if b is not None:
                            b.uniform_(-bound, bound)
                        continue
                    for k in range(self.gates):
                        nn.init.xavier_uniform_(w[k * hidden:(k + 1) * hidden])
                    if b is not None:
                        b.zero_()
                        if self.init == "chrono":
                            log_u = torch.empty(hidden, dtype=b.dtype, device=b.device).uniform_(
                                1.0, float(self.chrono_tmax) - 1.0).log_()
                            self._chrono_bias(b, log_u)

    def _chrono_bias(self, b: Tensor, log_u: Tensor) -> None:
        raise NotImplementedError

    def _choose_path(self, device_type: str) -> str:
        if self._path_request != "auto":
            return self._path_request
        return "loop" if device_type == "cpu" else "log_scan"

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.path = self._choose_path(self._parameters[self._names[0][0][0]].device.type)  # auto follows device
        return out

    @property
    def spec(self) -> str:
        """The spec text of this block, e.g. ``"mingru:64"``, ``"biminlstm:32x2"``."""
        return ("bi" if self.bidirectional else "") + f"{self.kind}:{self.hidden_size}" + \
            (f"x{self.num_layers}" if self.num_layers > 1 else "")

    # ----------------------------------------------------------------------------------------- the cell
    def coefficients(self, xg: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of ``h = a h_prev + b`` from the projected input ``xg (..., G*H)``, in linear space (each
        ``(..., H)``); :meth:`step` and the ``"loop"`` path use them."""
        raise NotImplementedError

    def log_coefficients(self, xg: Tensor) -> tuple[Tensor, Tensor]:
        """``(log a, log b)`` from ``xg (..., G*H)``, each ``(..., H)``, by the logsigmoid forms (no cancellation)."""
        raise NotImplementedError

    def _scan(self, xg: Tensor, h0: Tensor) -> Tensor:
        """One layer and direction over the sequence: ``xg (T, B, G*H)``, ``h0 (B, H)`` -> ``h (T, B, H)``."""
        if self.path == "log_scan":
            log_a, log_b = self.log_coefficients(xg)
            return log_space_scan(log_a, log_b, h0, self.chunk)
        return _MinLoop.apply(xg, h0, self.kind)

    # ----------------------------------------------------------------------------------------- validation
    def _fail(self, what: str, expected: str, got) -> ValueError:
        return input_error(type(self).__name__, what, expected, got)

    def _check_x(self, x) -> None:
        if not isinstance(x, Tensor):
            raise self._fail("x", "a tensor", type(x).__name__)
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise self._fail("x", f"of shape (batch, time, {self.input_size})", f"shape {tuple(x.shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise self._fail("x", "at least one sequence and one time step", f"shape {tuple(x.shape)}")

    def _check_lengths(self, lengths, batch: int, time: int) -> tuple[Tensor, bool]:
        """Validated lengths ``(B,)`` int64 and whether every sequence is full."""
        return check_lengths(type(self).__name__, lengths, batch, time)

    def _check_state(self, state, batch: int, rows: int) -> None:
        expected = (rows, batch, self.hidden_size)
        if not isinstance(state, Tensor):
            raise self._fail("state", f"a tensor of shape {expected}", type(state).__name__)
        if tuple(state.shape) != expected:
            raise self._fail("state", f"of shape {expected} (layers*directions, batch, hidden)",
                             f"shape {tuple(state.shape)}")

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, state: Optional[Tensor] = None, lengths: Optional[Tensor] = None):
        """x ``(B, T, input_size)``, state ``h (num_layers * D, B, H)`` or None (zeros), lengths ``(B,)`` or None.

        Returns ``(outputs (B, T, D * H), h (num_layers * D, B, H))``.
        """
        self._check_x(x)
        batch, time = x.shape[0], x.shape[1]
        rows = self.num_layers * self.num_directions
        if state is None:
            state = x.new_zeros(rows, batch, self.hidden_size)
        else:
            self._check_state(state, batch, rows)
        real = None
        if lengths is not None:
            lengths, full = self._check_lengths(lengths, batch, time)
            if not full:
                lengths = lengths.to(x.device)
                real = torch.arange(time, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)   # (T, B)
        layer_in = x.transpose(0, 1)                                                              # (T, B, F)
        finals = []
        for layer in range(self.num_layers):
            outs = [self._direction(layer_in, state, layer, d, real, lengths, finals)
                    for d in range(self.num_directions)]
            layer_in = outs[0] if len(outs) == 1 else torch.cat(outs, 2)                          # (T, B, D*H)
            if real is not None:  # outputs are exactly 0 at padding
                layer_in = layer_in.masked_fill(~real.unsqueeze(2), 0.0)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = (_locked_dropout(layer_in, self.dropout, True, time_dim=0) if self.locked_dropout
                            else F.dropout(layer_in, self.dropout, True))
        return layer_in.transpose(0, 1), torch.stack(finals, 0)                                   # (B, T, D*H)

    def _direction(self, layer_in: Tensor, state: Tensor, layer: int, d: int, real: Optional[Tensor],
                   lengths: Optional[Tensor], finals: list) -> Tensor:
        """One layer and direction: ``layer_in (T, B, F)`` -> ``h (T, B, H)`` in the input's time order; appends
        the final state ``(B, H)`` to ``finals``."""
        w_name, b_name = self._names[layer][d]
        weight, bias = self._parameters[w_name], self._parameters[b_name] if b_name else None
        time, batch = layer_in.shape[0], layer_in.shape[1]
        h0 = state[layer * self.num_directions + d]                                               # (B, H)
        xg = _onednn.linear(layer_in, weight, bias).to(h0.dtype)                                  # (T, B, G*H)
        rev_index = batch_index = None
        if real is not None:
            xg = xg.masked_fill(~real.unsqueeze(2), 0.0)  # padding: finite, and never read by a real step
            if d == 1:  # reverse each sequence within its own length; padding stays at the end
                steps = torch.arange(time, device=xg.device).unsqueeze(1)                        # (T, 1)
                rev_index = torch.where(real, lengths.unsqueeze(0) - 1 - steps, steps)            # (T, B)
                batch_index = torch.arange(batch, device=xg.device).unsqueeze(0)                 # (1, B)
        if d == 1:
            xg = xg.flip(0) if rev_index is None else xg[rev_index, batch_index]
        h = self._scan(xg, h0)                                                                    # (T, B, H)
        if lengths is None or real is None:
            finals.append(h[-1])
        else:  # the last real step (causal: later padding never reached it)
            finals.append(h[lengths - 1, torch.arange(batch, device=h.device)])
        if d == 1:
            h = h.flip(0) if rev_index is None else h[rev_index, batch_index]
        return h

    def final_output(self, outputs: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``(B, T, output_size) -> (B, output_size)``: forward features at the last real step, backward features
        at step 0."""
        if not isinstance(outputs, Tensor) or outputs.dim() != 3 or outputs.shape[2] != self.output_size:
            raise self._fail("outputs", f"of shape (batch, time, {self.output_size})",
                             f"shape {tuple(getattr(outputs, 'shape', ()))}")
        batch, time = outputs.shape[0], outputs.shape[1]
        if lengths is None:
            last = outputs[:, -1]                                                                 # (B, D*H)
        else:
            lengths, _ = self._check_lengths(lengths, batch, time)
            last = outputs[torch.arange(batch, device=outputs.device), lengths.to(outputs.device) - 1]
        if not self.bidirectional:
            return last
        return torch.cat([last[:, :self.hidden_size], outputs[:, 0, self.hidden_size:]], 1)      # (B, 2H)

    def step(self, x_t: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """One time step of a unidirectional layer, the sequential form: x_t ``(B, input_size)``, state
        ``h (num_layers, B, H)`` or None. Returns ``(y_t (B, H), h (num_layers, B, H))``."""
        if self.bidirectional:
            raise ValueError(f"{type(self).__name__}.step: a bidirectional layer needs the whole sequence; expected "
                             f"bidirectional=False, got bidirectional=True (use forward)")
        if self.training and self.locked_dropout and self.dropout > 0 and self.num_layers > 1:
            raise ValueError(f"{type(self).__name__}.step: locked_dropout needs one mask per whole sequence; call "
                             f"forward on the sequence in training, or step() in eval mode")
        if not isinstance(x_t, Tensor) or x_t.dim() != 2 or x_t.shape[1] != self.input_size:
            got = f"shape {tuple(x_t.shape)}" if isinstance(x_t, Tensor) else type(x_t).__name__
            raise self._fail("x_t", f"of shape (batch, {self.input_size})", got)
        if state is None:
            state = x_t.new_zeros(self.num_layers, x_t.shape[0], self.hidden_size)
        else:
            self._check_state(state, x_t.shape[0], self.num_layers)
        inp, hs = x_t, []
        for layer in range(self.num_layers):
            w_name, b_name = self._names[layer][0]
            xg = F.linear(inp, self._parameters[w_name], self._parameters[b_name] if b_name else None)  # (B, G*H)
            a, b = self.coefficients(xg.to(state.dtype))
            h = torch.addcmul(b, a, state[layer])                                                 # (B, H)
            hs.append(h)
            inp = h
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                inp = F.dropout(inp, self.dropout, True)
        return h, torch.stack(hs, 0)

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if not self.bias:
            parts.append("bias=False")
        if self.bidirectional:
            parts.append("bidirectional=True")
        if self.dropout:
            parts.append(f"dropout={self.dropout}" + (", locked_dropout=True" if self.locked_dropout else ""))
        if self.init != "torch":
            parts.append(f"init={self.init!r}")
        if self.path == "log_scan" and self.chunk != 256:
            parts.append(f"chunk={self.chunk}")
        parts.append(f"path={self.path!r}" + (" (auto)" if self._path_request == "auto" else ""))
        return ", ".join(parts)


class MinGRU(_MinRecurrent):
    """minGRU layer (module docstring): ``z = sigmoid(W_z x + b_z)``, ``h = (1 - z) h_prev + z g(W_h x + b_h)``.

    ``MinGRU(input_size, hidden_size, num_layers=1, *, bias=True, bidirectional=False, dropout=0.0,
    locked_dropout=False, init="torch", chrono_tmax=None, path="auto", chunk=256)``; ``weight_ih_l{l}``
    ``(2H, I_l)`` rows ``(z, h)``. ``dropout`` acts between layers (training only); ``locked_dropout`` makes it
    one mask per sequence and feature.
    """

    kind = "mingru"
    gates = 2

    def _chrono_bias(self, b: Tensor, log_u: Tensor) -> None:
        b[:self.hidden_size] = -log_u        # z ~ 1/u: the old state kept at about 1 - 1/u

    def coefficients(self, xg: Tensor) -> tuple[Tensor, Tensor]:
        k, v = xg.chunk(2, -1)                                   # (..., H) each
        return torch.sigmoid(-k), torch.sigmoid(k) * g(v)      # 1 - z as sigmoid(-k): no cancellation

    def log_coefficients(self, xg: Tensor) -> tuple[Tensor, Tensor]:
        k, v = xg.chunk(2, -1)                                   # (..., H) each
        return F.logsigmoid(-k), F.logsigmoid(k) + log_g(v)


class MinLSTM(_MinRecurrent):
    """minLSTM layer (module docstring): ``f, i = sigmoid(W_f x + b_f), sigmoid(W_i x + b_i)``,
    ``h = f/(f+i) h_prev + i/(f+i) g(W_h x + b_h)``.

    Arguments as :class:`MinGRU`; ``weight_ih_l{l}`` ``(3H, I_l)`` rows ``(f, i, h)``.
    """

    kind = "minlstm"
    gates = 3

    def _chrono_bias(self, b: Tensor, log_u: Tensor) -> None:
        hidden = self.hidden_size
        b[:hidden] = log_u                   # f/(f+i) starts near 1 - 1/u
        b[hidden:2 * hidden] = -log_u

    def coefficients(self, xg: Tensor) -> tuple[Tensor, Tensor]:
        # f/(f+i) = sigmoid(log f - log i): the same number, and no 0/0 where both gates underflow
        pf, pi, v = xg.chunk(3, -1)                              # (..., H) each
        diff = F.logsigmoid(pi) - F.logsigmoid(pf)               # log i - log f
        return torch.sigmoid(-diff), torch.sigmoid(diff) * g(v)

    def log_coefficients(self, xg: Tensor) -> tuple[Tensor, Tensor]:
        pf, pi, v = xg.chunk(3, -1)                              # (..., H) each
        diff = F.logsigmoid(pi) - F.logsigmoid(pf)               # log i - log f
        return F.logsigmoid(-diff), F.logsigmoid(diff) + log_g(v)
