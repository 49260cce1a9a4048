"""Whole-sequence time loops for the custom path (the hot loop of the library).

The input projection is hoisted out: callers pass ``xg = LN_ih(x @ W_ih^T + b_ih)`` for every step at once
(:func:`hybridrnn.nn.cells.input_projection`), and these functions run only the recurrence. Time-major
layout, one sequence direction.

Two kinds of loop:

- ``lstm_loop`` / ``gru_loop``: the general loops, the cell functions of :mod:`hybridrnn.nn.cells` (the one
  source of the equations) at every step with autograd through Python. Every option; the ground truth.
- ``lstm_scan`` / ``gru_scan``: the fused kernels, the same equations derived by hand, forward and backward,
  for speed. They are tested against the general loops (float64, 1e-10, values and gradients:
  ``tests/test_scan.py``); an option they do not implement falls back to the general loop.

How the fused kernels work (figures in ``benchmarks/results/layers.md``):

- Inference (grad mode off, or no input needs a gradient) runs the time loop under ``no_grad`` with every
  op writing into preallocated buffers (``out=``), about 6-7 small ops per step and no autograd graph.
- Training goes through one ``torch.autograd.Function`` for the whole sequence: the forward loop is the
  same as inference but keeps the gate activations; the backward loop runs in reverse time with 3-5 ops per
  step, because every factor that does not depend on the incoming gradient (``s(1-s)``, ``1-tanh^2``, ...)
  is computed for all steps at once before the loop. ``dW_hh`` (and ``db_hh``) is ONE matmul over all
  steps after the loop, and ``dxg`` is the stacked gate gradients.
- Layer norm (``LSTMParams.ln_hh``/``ln_c``, ``GRUParams.ln_hh``) runs inside the same loops: per step one
  ``native_layer_norm`` of ``W_hh h + b_hh`` (per gate block) and, for the LSTM, one of the cell, keeping the
  normalised values and rstd; backward one ``native_layer_norm_backward`` call per norm and step (on the kept
  normalised values with mean 0 and rstd 1, then times rstd), and the gain / bias / ``b_hh`` gradients summed
  per step while the step's data is in cache (whole-sequence passes over the saved tensors cost more on these
  CPUs than the small per-step ops). The paper-form GRU with layer norm has no fused kernel (general loop).
- Double backward (``create_graph=True``) is supported by recomputing the sequence with the general loop
  (slow, but exact); ``mask``/``h_mask`` that require gradients also go to the general loop.
- bfloat16 (``train.bf16`` on a CPU with native bf16: :func:`bf16_matmuls`): the matmuls listed in
  :data:`BF16_PARTS` run in bf16 (the weight gradient ``dW_hh``); the recurrence stays float32
  (``benchmarks/results/bf16.md``).
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Iterator, Optional

import torch
from torch import Tensor

from hybridrnn.nn import _onednn
from hybridrnn.nn.cells import (LN_EPS, GRUGates, GRUParams, LSTMGates, LSTMParams, gate_layer_norm, gru_step,
                                lstm_step)

# ----------------------------------------------------------------------------------------------------------
# bfloat16 recurrent matmuls (train.bf16 on a CPU with native bf16)
# ----------------------------------------------------------------------------------------------------------

_LOW = threading.local()
# Which of the fused kernels' matmuls run in bf16 under bf16_matmuls: "weight", the one ``dG^T @ H`` over all
# T*B rows that gives ``dW_hh`` (1.8-1.9x faster in bf16 at B32 H128 T200). Also implemented, off because they
# were measured slower on an AVX512-BF16 CPU (benchmarks/results/bf16.md; ``python benchmarks/bf16.py`` measures
# each part on another CPU): "forward", the per-step ``h @ W_hh^T``, and "backward", the per-step ``dG @ W_hh``
# (x0.7-0.87: at batch 32 oneDNN's bf16 product is only ~20% faster than float32, less than the cast of the
# float32 operand and the separate float32 add cost).
BF16_PARTS = frozenset({"weight"})


@contextlib.contextmanager
def bf16_matmuls(enabled: bool = True) -> Iterator[None]:
    """Within the block the fused scans (:func:`lstm_scan`, :func:`gru_scan`) on float32 CPU tensors run the
    recurrent matmuls named in :data:`BF16_PARTS` in bfloat16, everything else in float32.

    ``"weight"``: ``dW_hh = bf16(dG)^T @ bf16(H)``, one matmul over all ``T*B`` rows (``dG (T*B, G*H)`` the
    gradients of the recurrent pre-activations, ``H (T*B, H)`` the states that ``W_hh`` multiplied), float32
    accumulation in oneDNN, the result rounded to bf16 by torch's CPU matmul (no bf16 x bf16 -> float32 matmul
    on CPU) and returned as float32: a relative error of at most 2^-9 per element of the gradient.
    ``"forward"``: per step ``pre_t = xg_t + bf16(h_{t-1}) @ bf16(W_hh)^T``, the sum with ``xg_t`` in float32;
    ``"backward"``: per step ``dh_{t-1} = d_out_t + bf16(dG_t) @ bf16(W_hh)``. ``W_hh`` is cast once per
    sequence. Always float32: the gate maths, the cell state, ``h_t`` (the bf16 copy feeds only the product),
    the master weights, their gradients and the optimizer state. Only on a CPU whose oneDNN runs bf16 natively
    (AVX512-BF16 / AMX): elsewhere bf16 is emulated and slower, and the block changes nothing. The general loops
    (options without a fused kernel) and the paper-form GRU stay float32.
    """
    previous = getattr(_LOW, "on", False)
    _LOW.on = bool(enabled) and _native_bf16()
    try:
        yield
    finally:
        _LOW.on = previous


@functools.lru_cache(maxsize=None)
def _native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _low_dtype(*tensors: Tensor) -> Optional[torch.dtype]:
    """bf16 when :func:`bf16_matmuls` is on and the tensors are float32 on CPU, else None (float32 matmuls)."""
    if getattr(_LOW, "on", False) and all(v.dtype == torch.float32 and v.device.type == "cpu" for v in tensors):
        return torch.bfloat16
    return None


def _low(lp: Optional[torch.dtype], part: str) -> Optional[torch.dtype]:
    """``lp`` if the matmul ``part`` (one of :data:`BF16_PARTS`' names) runs in it, else None."""
    return lp if (lp is not None and part in BF16_PARTS) else None


def _weight_grad(d: Tensor, x: Optional[Tensor], lp: Optional[torch.dtype], d_low: Optional[Tensor] = None,
                 x_low: Optional[Tensor] = None) -> Tensor:
    """``d^T @ x`` summed over all rows, ``d (N, A)``, ``x (N, B)`` -> ``(A, B)`` float32: the weight gradient
    of a whole sequence in one matmul. With ``lp`` (and "weight" in :data:`BF16_PARTS`) on the bf16 copies
    ``d_low`` / ``x_low`` (cast here when not given; ``x`` may then be None when ``x_low`` is given)."""
    lp = _low(lp, "weight")
    if lp is None:
        return _onednn.weight_grad(d, x)          # float32 on the CPU: oneDNN (2.3x MKL's speed on AMD)
    d_low = d.to(lp) if d_low is None else d_low
    x_low = x.to(lp) if x_low is None else x_low
    return (d_low.t() @ x_low).float()


# ----------------------------------------------------------------------------------------------------------
# general loops (autograd through Python over the cell functions): every option, and the ground truth
# ----------------------------------------------------------------------------------------------------------

def lstm_loop(xg: Tensor, h0: Tensor, c0: Tensor, p: LSTMParams, *, mask: Optional[Tensor] = None,
              h_mask: Optional[Tensor] = None,
              gates: Optional[list[LSTMGates]] = None) -> tuple[Tensor, Tensor, Tensor]:
    """The general LSTM time loop: :func:`hybridrnn.nn.cells.lstm_step` at every step, autograd through it.

    Same contract as :func:`lstm_scan`; if ``gates`` is a list, every step's :class:`LSTMGates` is appended.
    """
    def step(xg_t, state):
        h, c, step_gates = lstm_step(xg_t, state[0], state[1], p, h_mask)
        return (h, c), step_gates

    out, (h, c) = _time_loop(step, xg, (h0, c0), mask, gates)
    return out, h, c


def gru_loop(xg: Tensor, h0: Tensor, p: GRUParams, *, mask: Optional[Tensor] = None,
             h_mask: Optional[Tensor] = None, gates: Optional[list[GRUGates]] = None) -> tuple[Tensor, Tensor]:
    """The general GRU time loop: :func:`hybridrnn.nn.cells.gru_step` at every step, autograd through it.

    Same contract as :func:`gru_scan`; if ``gates`` is a list, every step's :class:`GRUGates` is appended.
    """
    def step(xg_t, state):
        h, step_gates = gru_step(xg_t, state[0], p, h_mask)
        return (h,), step_gates

    out, (h,) = _time_loop(step, xg, (h0,), mask, gates)
    return out, h


def _time_loop(step, xg: Tensor, state: tuple, mask: Optional[Tensor], gates: Optional[list]):
    """Run ``step(xg_t, state) -> (new_state, gates_t)`` over ``xg (T, B, G*H)``; ``state[0]`` is ``h``.

    With ``mask (T, B, 1)`` a padded step (0) keeps the old state and outputs 0:
    ``state_t = lerp(state_{t-1}, new_state, m_t)``, ``out_t = h_new * m_t``. Returns ``out (T, B, H)`` and
    the final state tuple.
    """
    outs = []
    for t, xg_t in enumerate(xg.unbind(0)):
        new, step_gates = step(xg_t, state)
        if gates is not None:
            gates.append(step_gates)
        if mask is None:
            state = new
            outs.append(new[0])
        else:
            m = mask[t]
            state = tuple(torch.lerp(old, value, m) for old, value in zip(state, new))
            outs.append(new[0] * m)
    return torch.stack(outs, 0), state


# ----------------------------------------------------------------------------------------------------------
# public entry points
# ----------------------------------------------------------------------------------------------------------

def lstm_scan(xg: Tensor, h0: Tensor, c0: Tensor, p: LSTMParams, *, mask: Optional[Tensor] = None,
              h_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Run an LSTM recurrence over a whole sequence.

    Args:
        xg: ``(T, B, G*H)`` input projection (:func:`hybridrnn.nn.cells.input_projection`); gate order
            torch's ``(i, f, g, o)`` (G=4), or ``(i, g, o)`` when ``p.coupled`` (G=3, forget = 1 - i). Without
            layer norm ``b_hh`` may be folded into it (then ``p.b_hh`` is None).
        h0, c0: ``(B, H)`` initial state.
        p: the recurrent tensors and options (:class:`hybridrnn.nn.cells.LSTMParams`).
        mask: ``(T, B, 1)`` float, 1 at real steps and 0 at padding: a padded step keeps the previous state
            and outputs 0.
        h_mask: ``(B, H)`` variational dropout mask applied to ``h`` before it enters the recurrence (the same
            for every step; already scaled by ``1/(1-p)``).
    Returns:
        ``out (T, B, H)``, ``h_T (B, H)``, ``c_T (B, H)``.

    Gradients flow to ``xg``, ``h0``, ``c0`` and the tensors of ``p`` through a hand-written whole-sequence
    backward (exact up to float rounding). ``mask`` and ``h_mask`` are constants; if either requires grad, or a
    double backward is asked for (``create_graph=True``), the general loop :func:`lstm_loop` is used instead.
    """
    _check_lstm_args(xg, h0, c0, p)
    if p.ln_ih is not None and p.ln_hh is None:      # an input norm alone: applied here, no kernel for it
        xg = gate_layer_norm(xg, p.ln_ih[0], p.ln_ih[1], 3 if p.coupled else 4)
        p = p._replace(ln_ih=None)
    if ((p.ln_hh is None) != (p.ln_c is None) or (mask is not None and mask.requires_grad)
            or (h_mask is not None and h_mask.requires_grad)):
        return lstm_loop(xg, h0, c0, p, mask=mask, h_mask=h_mask)
    w_hh, coupled = p.w_hh, p.coupled
    gain_ih = bias_ih = None
    if p.ln_hh is None:
        b_hh = gain_hh = gain_c = bias_c = None
        if p.b_hh is not None:
            xg = xg + p.b_hh
    else:                                            # the recurrent LN's bias adds to the pre-activation
        b_hh, (gain_hh, bias_hh), (gain_c, bias_c) = p.b_hh, p.ln_hh, p.ln_c
        if p.ln_ih is not None:                      # the input norm runs in the kernel, one step at a time
            gain_ih, bias_ih = p.ln_ih
            if bias_hh is not None:
                bias_ih = bias_ih + bias_hh
        elif bias_hh is not None:                    # (None: the caller folded it into xg)
            xg = xg + bias_hh
    tensors = (xg, h0, c0, w_hh, b_hh, gain_hh, gain_c, bias_c, gain_ih, bias_ih)
    lp = _low_dtype(xg, w_hh)
    if torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in tensors):
        return _LSTMScan.apply(xg, h0, c0, w_hh, coupled, mask, h_mask, b_hh, gain_hh, gain_c, bias_c, gain_ih,
                               bias_ih, lp)
    ln = None if gain_hh is None else (b_hh, gain_hh, gain_c, bias_c, gain_ih, bias_ih)
    with torch.no_grad():
        out, h_t, c_t, _ = _lstm_forward(xg, h0, c0, w_hh, coupled, mask, h_mask, save=False, ln=ln, lp=lp)
    return out, h_t, c_t


def gru_scan(xg: Tensor, h0: Tensor, p: GRUParams, *, mask: Optional[Tensor] = None,
             h_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Run a GRU recurrence over a whole sequence.

    Args:
        xg: ``(T, B, 3H)`` input projection ``LN_ih(x @ W_ih^T + b_ih)``, gate order ``(r, z, n)``.
        h0: ``(B, H)``.
        p: the recurrent tensors and options (:class:`hybridrnn.nn.cells.GRUParams`): ``p.reset_after`` True
            for torch/cuDNN's ``n = tanh(x_n + r * (W_hn h + b_hn))``, False for the original paper's
            ``n = tanh(x_n + W_hn (r * h) + b_hn)``.
        mask, h_mask: as in :func:`lstm_scan`.
    Returns:
        ``out (T, B, H)``, ``h_T (B, H)``. With torch's weight layout the gate ``z`` computed here is torch's,
        which keeps the old state: ``h_t = (1 - z) * n + z * h_{t-1}``. The textbook update gate is
        ``1 - z``, giving the textbook ``h_t = (1 - z_u) * h_{t-1} + z_u * n``.

    Gradients flow to ``xg``, ``h0`` and the tensors of ``p`` as in :func:`lstm_scan` (hand-written backward,
    layer norm included for the torch form; the general loop :func:`gru_loop` for double backward, masks that
    require grad, and the paper form with layer norm).
    """
    _check_gru_args(xg, h0, p)
    if (p.ln_hh is not None and not p.reset_after) or (mask is not None and mask.requires_grad) or (
            h_mask is not None and h_mask.requires_grad):
        return gru_loop(xg, h0, p, mask=mask, h_mask=h_mask)
    if p.ln_ih is not None and p.ln_hh is None:      # an input norm alone: applied here, no kernel for it
        xg = gate_layer_norm(xg, p.ln_ih[0], p.ln_ih[1], 3)
        p = p._replace(ln_ih=None)
    w_hh, b_hh, reset_after = p.w_hh, p.b_hh, p.reset_after
    gain_hh, bias_hh = p.ln_hh if p.ln_hh is not None else (None, None)
    gain_ih, bias_ih = p.ln_ih if p.ln_ih is not None else (None, None)   # in the kernel, step by step
    tensors = (xg, h0, w_hh, b_hh, gain_hh, bias_hh, gain_ih, bias_ih)
    lp = _low_dtype(xg, w_hh) if reset_after else None
    if torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in tensors):
        return _GRUScan.apply(xg, h0, w_hh, b_hh, reset_after, mask, h_mask, gain_hh, bias_hh, gain_ih, bias_ih,
                              lp)
    ln = None if gain_hh is None else (gain_hh, bias_hh, gain_ih, bias_ih)
    with torch.no_grad():
        out, h_t, _ = _gru_forward(xg, h0, w_hh, b_hh, reset_after, mask, h_mask, save=False, ln=ln, lp=lp)
    return out, h_t


def _check_lstm_args(xg: Tensor, h0: Tensor, c0: Tensor, p: LSTMParams) -> None:
    if xg.dim() != 3 or xg.shape[0] == 0:
        raise ValueError(f"lstm_scan: xg must be (T>=1, B, G*H), got shape {tuple(xg.shape)}")
    T, B, GH = xg.shape
    H = h0.shape[-1]
    G = 3 if p.coupled else 4
    w_hh = p.w_hh
    if GH != G * H or tuple(h0.shape) != (B, H) or tuple(c0.shape) != (B, H) or tuple(w_hh.shape) != (GH, H) \
            or (p.b_hh is not None and tuple(p.b_hh.shape) != (GH,)):
        raise ValueError(f"lstm_scan: expected xg (T, B, {G}*H), h0/c0 (B, H), w_hh ({G}*H, H), b_hh ({G}*H,); "
                         f"got xg {tuple(xg.shape)}, h0 {tuple(h0.shape)}, c0 {tuple(c0.shape)}, "
                         f"w_hh {tuple(w_hh.shape)}, b_hh {None if p.b_hh is None else tuple(p.b_hh.shape)}")


def _check_gru_args(xg: Tensor, h0: Tensor, p: GRUParams) -> None:
    if xg.dim() != 3 or xg.shape[0] == 0:
        raise ValueError(f"gru_scan: xg must be (T>=1, B, 3*H), got shape {tuple(xg.shape)}")
    T, B, GH = xg.shape
    H = h0.shape[-1]
    w_hh, b_hh = p.w_hh, p.b_hh
    if (GH != 3 * H or tuple(h0.shape) != (B, H) or tuple(w_hh.shape) != (GH, H)
            or (b_hh is not None and tuple(b_hh.shape) != (GH,))):
        raise ValueError(f"gru_scan: expected xg (T, B, 3*H), h0 (B, H), w_hh (3*H, H), b_hh (3*H,); got xg "
                         f"{tuple(xg.shape)}, h0 {tuple(h0.shape)}, w_hh {tuple(w_hh.shape)}, "
                         f"b_hh {None if b_hh is None else tuple(b_hh.shape)}")


def _prev_states(h0: Tensor, seq: Tensor) -> Tensor:
    """``(T, B, H)``: the state entering each step, ``[h0, seq[0], ..., seq[T-2]]``."""
    return torch.cat([h0.unsqueeze(0), seq[:-1]], 0)


# ----------------------------------------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------------------------------------

_LN_BACKWARD = torch.ops.aten.native_layer_norm_backward.default
_INPUT_GRAD_ONLY = [True, False, False]


def _ln_input_grad(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor]) -> Tensor:
    """Gradient of ``layer_norm(x) * weight`` (over the last axis of ``x``) with respect to ``x``, from the
    forward's mean and rstd: one aten call instead of the six ops of ``rstd (dy - mean(dy) - x^ mean(dy x^))``."""
    return _LN_BACKWARD(grad, x, [x.shape[-1]], mean, rstd, weight, None, _INPUT_GRAD_ONLY)[0]


def _lstm_forward(xg, h0, c0, w_hh, coupled, mask, h_mask, save, ln=None, lp=None):
    """Forward time loop (call under no_grad). Returns ``out, h_T, c_T, saved`` (saved is None unless save).

    ``lp``: None, or bf16 for the per-step ``h @ W_hh^T`` in bf16 (:func:`bf16_matmuls`); the bf16 copies of
    the multiplied states are kept (save) for the weight gradient.

    The equations of :func:`hybridrnn.nn.cells.lstm_step` written into preallocated buffers. ``ln``: None, or
    ``(b_hh, gain_hh, gain_c, bias_c, gain_ih, bias_ih)`` for layer norm: ``pre = xg' + gain_hh * norm(W_hh h +
    b_hh)``, ``h = o * tanh(LN_c(c))``, with ``xg' = gain_ih * norm(xg) + bias_ih`` (bias_ih holding the
    recurrent norm's bias), or, when ``gain_ih`` is None, ``xg`` itself (normalised by the caller). One loop serves every variant (mask,
    h_mask, layer norm, save) so that the arithmetic is written once; hence its length.
    """
    T, B, GH = xg.shape
    H = h0.shape[1]
    G = GH // H
    g_idx = 1 if coupled else 2                      # position of the tanh gate g
    opts = dict(dtype=xg.dtype, device=xg.device)
    w_t = w_hh.t()
    xgs = xg.unbind(0)
    out = torch.empty(T, B, H, **opts)
    outs = out.unbind(0)
    pre = torch.empty(B, GH, **opts)                 # gate pre-activations of the current step
    pre_g = pre[:, g_idx * H:(g_idx + 1) * H]
    if save:                                         # keep what backward needs, one slot per step
        A = torch.empty(T, B, G, H, **opts)
        TC = torch.empty(T, B, H, **opts)
        C = torch.empty(T + 1, B, H, **opts)         # carried cell state, C[0] = c0
        C[0].copy_(c0)
        acts = A.view(T, B, GH).unbind(0)
        gate = [A[:, :, k].unbind(0) for k in range(G)]
        tcs = TC.unbind(0)
        cs = C.unbind(0)
        HC = torch.empty(T + 1, B, H, **opts) if mask is not None else None
        HIN = torch.empty(T, B, H, **opts) if h_mask is not None else None
    else:
        a = torch.empty(B, G, H, **opts)
        acts = [a.view(B, GH)] * T
        gate = [[a[:, k]] * T for k in range(G)]
        tcs = [torch.empty(B, H, **opts)] * T
        cs = [c0] + [c0.clone()] * T                 # updated in place after the first step
        HC = torch.empty(1, B, H, **opts) if mask is not None else None
        HIN = torch.empty(B, H, **opts) if h_mask is not None else None
    if ln is not None:
        b_hh, gain_hh, gain_c, bias_c, gain_ih, bias_ih = ln
        a_buf = torch.empty(B, GH, **opts)           # W_hh h + b_hh, before its layer norm
        c_buf = torch.empty(B, H, **opts)            # LN_c(c), the input of the output tanh
        steps = ([], [], [], [], [], [])             # per step (save): normalised a, its rstd; of c; of xg
    lp = _low(lp, "forward")
    HB = None
    if lp is not None:                               # bf16 h_in (kept for dW_hh when save), W_hh^T, product
        w_lp, mm_buf = w_t.to(lp), torch.empty(B, GH, dtype=lp, device=xg.device)
        HB = torch.empty(T if save else 1, B, H, dtype=lp, device=xg.device)
        hbs = HB.unbind(0) if save else [HB[0]] * T
    if mask is not None:
        ms = mask.unbind(0)
        hn = torch.empty(B, H, **opts)
        cn = torch.empty(B, H, **opts)
        if save:
            HC[0].copy_(h0)
            hcs = HC.unbind(0)
        else:
            hcs = [h0] + [HC[0]] * T                 # updated in place after the first step
    if coupled:
        gi, gg, go = gate
    else:
        gi, gf, gg, go = gate

    h, c = h0, c0
    for t in range(T):
        if h_mask is not None:
            h_in = torch.mul(h, h_mask, out=HIN[t] if save else HIN)
        else:
            h_in = h
        if lp is not None:                           # bf16 product, float32 sum
            rec = torch.mm(hbs[t].copy_(h_in), w_lp, out=mm_buf)
        if ln is None:
            if lp is None:
                torch.addmm(xgs[t], h_in, w_t, out=pre)
            else:
                torch.add(xgs[t], rec, out=pre)
        else:
            if lp is None:
                a_t = torch.mm(h_in, w_t, out=a_buf) if b_hh is None else torch.addmm(b_hh, h_in, w_t, out=a_buf)
            else:
                a_t = a_buf.copy_(rec) if b_hh is None else torch.add(b_hh, rec, out=a_buf)
            normed, _, rstd = torch.native_layer_norm(a_t.view(B, G, H), (H,), None, None, LN_EPS)
            if gain_ih is None:
                torch.addcmul(xgs[t], normed.view(B, GH), gain_hh, out=pre)
            else:
                normed_x, _, rstd_x = torch.native_layer_norm(xgs[t].view(B, G, H), (H,), None, None, LN_EPS)
                torch.addcmul(bias_ih, normed_x.view(B, GH), gain_ih, out=pre).addcmul_(normed.view(B, GH),
                                                                                         gain_hh)
                if save:
                    steps[4].append(normed_x)
                    steps[5].append(rstd_x)
        a_t = acts[t]
        torch.sigmoid(pre, out=a_t)
        g_t = gg[t]
        torch.tanh(pre_g, out=g_t)
        c_new = cs[t + 1] if mask is None else cn
        if coupled:
            torch.lerp(c, g_t, gi[t], out=c_new)     # f*c + i*g with f = 1 - i
        else:
            torch.mul(gf[t], c, out=c_new)
            c_new.addcmul_(gi[t], g_t)
        if ln is None:
            tc = torch.tanh(c_new, out=tcs[t])
        else:
            normed_c, _, rstd_c = torch.native_layer_norm(c_new, (H,), None, None, LN_EPS)
            tc = torch.tanh(torch.addcmul(bias_c, normed_c, gain_c, out=c_buf), out=tcs[t])
            if save:
                for store, value in zip(steps, (normed, rstd, normed_c, rstd_c)):
                    store.append(value)
        if mask is None:
            h = torch.mul(go[t], tc, out=outs[t])
            c = c_new
        else:
            m = ms[t]
            torch.mul(go[t], tc, out=hn)
            torch.mul(hn, m, out=outs[t])
            h = torch.lerp(h, hn, m, out=hcs[t + 1])
            c = torch.lerp(c, cn, m, out=cs[t + 1])
    h_t = h.clone()
    c_t = c.clone() if (save or c is c0) else c
    saved = None
    if save:
        if HIN is not None:
            h_prev_in = HIN
        elif mask is not None:
            h_prev_in = HC[:-1]
        else:
            h_prev_in = None                         # built in backward from h0 and out
        saved = (A, TC, C, h_prev_in, None if ln is None else steps, HB)
    return out, h_t, c_t, saved


def _lstm_gate_factors(A: Tensor, TC: Tensor, c_prev: Tensor, coupled: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The factors of the gate gradients that do not depend on the incoming gradient, for all steps at once.

    A ``(T, B, G, H)`` gate activations, TC ``(T, B, H)`` = ``tanh`` of the (normalised) cell, c_prev the cell
    entering each step. Returns ``K (T, B, G, H)`` (d pre = [dc, .., dc, dh] * K), ``Kc`` (d of the tanh's input
    = dh * Kc) and the forget gate ``f (T, B, H)``.
    """
    G = A.shape[2]
    if coupled:
        i, g, o = A.unbind(2)
        f = 1.0 - i
    else:
        i, f, g, o = A.unbind(2)
    # written as a - a*b (addcmul) to keep the number of whole-sequence passes low
    K = torch.empty_like(A)
    gi = g * i
    if coupled:
        u = gi - c_prev * i                          # i * (g - c_prev)
        torch.addcmul(u, u, i, value=-1.0, out=K[:, :, 0])       # (g - c_prev) * i(1-i)
        torch.addcmul(i, gi, g, value=-1.0, out=K[:, :, 1])      # i * (1 - g^2)
    else:
        torch.addcmul(gi, gi, i, value=-1.0, out=K[:, :, 0])     # g * i(1-i)
        u = c_prev * f
        torch.addcmul(u, u, f, value=-1.0, out=K[:, :, 1])       # c_prev * f(1-f)
        torch.addcmul(i, gi, g, value=-1.0, out=K[:, :, 2])      # i * (1 - g^2)
    u = o * TC
    torch.addcmul(u, u, o, value=-1.0, out=K[:, :, G - 1])       # tanh(c) * o(1-o)
    Kc = torch.addcmul(o, u, TC, value=-1.0)         # o * (1 - tanh(c)^2)
    return K, Kc, f


def _lstm_backward_loop(d_out, d_hT, d_cT, K, Kc, f, w, mask, h_mask, ln, lp=None):
    """Reverse time loop of the LSTM backward (call under no_grad). One loop serves every variant (masks, layer
    norm), so that the arithmetic is written once and each step's tensors stay hot; hence its length.

    ``ln``: None, or ``(xhats, rstds, gain_hh, xcs, rstd_cs, gain_c, xxs, rstd_xs, gain_ih)``: the forward's
    per-step normalised recurrent part ``(B, G, H)``, cell ``(B, H)`` and input part (empty lists and None
    without the in-kernel input norm), with their rstd. Returns ``dX`` (gradient of xg: the gate pre-activations'
    ``dG (T, B, G, H)``, or through the input norm), ``dA`` (gradient of ``W_hh h + b_hh``: ``dG`` itself without
    layer norm, else ``(T, B, G*H)``), ``sums`` (layer norm: the per-row sums, each ``(B, ...)``, of the
    gradients of ``b_hh``, ``gain_hh``, ``gain_c``, ``bias_c``, ``gain_ih``, ``bias_ih``, accumulated in the
    loop while the step's data is in cache; else None),
    ``d_h0``, ``d_c0``, ``dA_low`` (with ``lp`` for "backward": the bf16 copy of ``dA`` that the per-step
    ``dA_t @ W_hh`` multiplied, for the weight gradient; else None). With ``mask`` the carried state is
    ``lerp(old, new, m)`` and the output ``h_new * m``; without, the loop saves three ops a step. Its length:
    the buffers of every variant are set up here, so that the per-step arithmetic (``gate_grads``) is written
    once.
    """
    T, B, G, H = K.shape
    opts = dict(dtype=K.dtype, device=K.device)
    fs, kcs = f.unbind(0), Kc.unbind(0)
    k_cell = K[:, :, :G - 1].unbind(0)               # gates driven by dc: (i, f, g) or (i, g)
    k_out = K[:, :, G - 1].unbind(0)                 # gate driven by dh: o
    dG = torch.empty(T, B, G, H, **opts)
    dGs = dG.view(T, B, G * H).unbind(0)
    dg_cell = dG[:, :, :G - 1].unbind(0)
    dg_out = dG[:, :, G - 1].unbind(0)
    d_outs = d_out.unbind(0)
    dcb = torch.empty(B, 1, H, **opts)               # dc, shaped to broadcast over the cell gates
    dc = dcb.view(B, H)
    dh = torch.empty(B, H, **opts)
    tmp = torch.empty(B, H, **opts)
    dX, dA, recs, sums = dG, dG, dGs, None           # recs: gradient of W_hh h + b_hh at each step
    if ln is not None:
        xhats, rstds, gain_hh, xcs, rstd_cs, gain_c, xxs, rstd_xs, gain_ih = ln
        dA = torch.empty(T, B, G * H, **opts)
        recs, rec_blocks = dA.unbind(0), dA.view(T, B, G, H).unbind(0)
        sums = tuple(torch.zeros(B, G, H, **opts) for _ in range(2)) + tuple(torch.zeros(B, H, **opts)
                                                                             for _ in range(2))
        if gain_ih is not None:
            dX = torch.empty(T, B, G, H, **opts)
            dx_blocks = dX.unbind(0)
            gain_ig = gain_ih.view(G, H)
            sums += (torch.zeros(B, G, H, **opts), torch.zeros(B, G, H, **opts))
            sum_gain_ih, sum_bias_ih = sums[4:]
        sum_b, sum_gain_hh, sum_gain_c, sum_bias_c = sums[:4]
        dch = torch.empty(B, H, **opts)
        u = torch.empty(B, G, H, **opts)
        gain_gh = gain_hh.view(G, H)
        zero_g, one_g = torch.zeros(B, G, 1, **opts), torch.ones(B, G, 1, **opts)
        zero_c, one_c = torch.zeros(B, 1, **opts), torch.ones(B, 1, **opts)
    lp = _low(lp, "backward")
    dA_low = None
    if lp is not None:                               # bf16 copies of dA (kept for dW_hh) and W_hh, product
        dA_low = torch.empty(T, B, G * H, dtype=lp, device=K.device)
        w_lp, mm_buf, lows = w.to(lp), torch.empty(B, H, dtype=lp, device=K.device), dA_low.unbind(0)

    def low_mm(t):                                   # bf16(dA_t) @ bf16(W_hh), float32 accumulation, bf16
        return torch.mm(lows[t].copy_(recs[t]), w_lp, out=mm_buf)

    def gate_grads(t):                               # from dh and the carried dc: dc_new, dG[t], recs[t]
        if ln is None:
            dc.addcmul_(dh, kcs[t])
        else:
            torch.mul(dh, kcs[t], out=dch)           # gradient of LN_c(c_new)
            sum_gain_c.addcmul_(dch, xcs[t])
            sum_bias_c.add_(dch)
            dc.addcmul_(_ln_input_grad(dch, xcs[t], zero_c, one_c, gain_c), rstd_cs[t])
        torch.mul(dcb, k_cell[t], out=dg_cell[t])
        torch.mul(dh, k_out[t], out=dg_out[t])
        if ln is not None:
            torch.mul(dG[t], gain_gh, out=u)
            sum_gain_hh.addcmul_(dG[t], xhats[t])
            torch.mul(_ln_input_grad(u, xhats[t], zero_g, one_g, None), rstds[t], out=rec_blocks[t])
            sum_b.add_(rec_blocks[t])
            if gain_ih is not None:
                torch.mul(dG[t], gain_ig, out=u)
                sum_gain_ih.addcmul_(dG[t], xxs[t])
                sum_bias_ih.add_(dG[t])
                torch.mul(_ln_input_grad(u, xxs[t], zero_g, one_g, None), rstd_xs[t], out=dx_blocks[t])

    if mask is None:
        dc.copy_(d_cT)
        torch.add(d_outs[T - 1], d_hT, out=dh)
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                if lp is not None:
                    if h_mask is None:
                        torch.add(d_outs[t], low_mm(t + 1), out=dh)
                    else:
                        torch.addcmul(d_outs[t], low_mm(t + 1), h_mask, out=dh)
                elif h_mask is None:
                    torch.addmm(d_outs[t], recs[t + 1], w, out=dh)
                else:
                    torch.mm(recs[t + 1], w, out=tmp)
                    torch.addcmul(d_outs[t], tmp, h_mask, out=dh)
                dc.mul_(fs[t + 1])
            gate_grads(t)
        d_h0 = recs[0] @ w if lp is None else low_mm(0).float()
        if h_mask is not None:
            d_h0.mul_(h_mask)
        d_c0 = dc * fs[0]
    else:
        ms, m1s = mask.unbind(0), (1.0 - mask).unbind(0)
        gh = d_hT.clone()                            # gradient of the carried h_t
        gc = d_cT.clone()                            # gradient of the carried c_t
        for t in range(T - 1, -1, -1):
            m = ms[t]
            torch.add(d_outs[t], gh, out=dh)
            dh.mul_(m)                               # gradient of h_new
            torch.mul(gc, m, out=dc)
            gate_grads(t)
            gc.mul_(m1s[t]).addcmul_(dc, fs[t])
            gh.mul_(m1s[t])
            if lp is not None:
                if h_mask is None:
                    gh.add_(low_mm(t))
                else:
                    gh.addcmul_(low_mm(t), h_mask)
            elif h_mask is None:
                gh.addmm_(recs[t], w)
            else:
                torch.mm(recs[t], w, out=tmp)
                gh.addcmul_(tmp, h_mask)
        d_h0, d_c0 = gh, gc
    return dX, dA, sums, d_h0, d_c0, dA_low


class _LSTMScan(torch.autograd.Function):
    """The whole-sequence LSTM with its hand-written backward. Inputs: ``xg, h0, c0, w_hh, coupled, mask, h_mask``
    and, for layer norm, ``b_hh, gain_hh, gain_c, bias_c, gain_ih, bias_ih`` (else None; see
    :func:`_lstm_forward`), and ``lp`` (None, or bf16 for the recurrent matmuls: :func:`bf16_matmuls`)."""

    @staticmethod
    def forward(ctx, xg, h0, c0, w_hh, coupled, mask, h_mask, b_hh, gain_hh, gain_c, bias_c, gain_ih, bias_ih,
                lp=None):
        ln = None if gain_hh is None else (b_hh, gain_hh, gain_c, bias_c, gain_ih, bias_ih)
        with torch.no_grad():
            out, h_t, c_t, (A, TC, C, h_prev_in, ln_saved, HB) = _lstm_forward(xg, h0, c0, w_hh, coupled, mask,
                                                                               h_mask, save=True, ln=ln, lp=lp)
        empty = out.new_empty(0)
        ctx.lp, ctx.h_low = lp, HB                   # HB: our own bf16 copy of the multiplied states, or None
        ctx.coupled = coupled
        ctx.has = (mask is not None, h_mask is not None, h_prev_in is not None, ln is not None, b_hh is not None)
        ctx.ln_steps = ln_saved                      # per-step tensors of our own, never seen by the caller
        opt = (h_prev_in, mask, h_mask, b_hh, gain_hh, gain_c, bias_c, gain_ih, bias_ih)
        ctx.save_for_backward(xg, h0, c0, w_hh, A, TC, C, out, *(empty if v is None else v for v in opt))
        ctx.has_ln_ih = gain_ih is not None
        return out, h_t, c_t

    @staticmethod
    def backward(ctx, d_out, d_hT, d_cT):
        (xg, h0, c0, w_hh, A, TC, C, out, h_prev_in, mask, h_mask, b_hh, gain_hh, gain_c, bias_c, gain_ih,
         bias_ih) = ctx.saved_tensors
        has_mask, has_h_mask, has_h_prev_in, has_ln, has_b = ctx.has
        mask = mask if has_mask else None
        h_mask = h_mask if has_h_mask else None
        b_hh = b_hh if has_b else None
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():                  # create_graph=True: differentiate the general loop
            grads = _double_backward(
                lambda x_, h_, c_, w_, b_, gh_, gc_, bc_, gi_, bi_: lstm_loop(
                    x_, h_, c_, LSTMParams(w_, b_, None if gh_ is None else (gh_, torch.zeros_like(gh_)),
                                           None if gc_ is None else (gc_, bc_), ctx.coupled,
                                           None if gi_ is None else (gi_, bi_)),
                    mask=mask, h_mask=h_mask),
                (xg, h0, c0, w_hh, b_hh, *((gain_hh, gain_c, bias_c) if has_ln else (None,) * 3),
                 *((gain_ih, bias_ih) if ctx.has_ln_ih else (None, None))),
                (d_out, d_hT, d_cT), needs[:4] + needs[7:])
            return grads[:4] + (None, None, None) + grads[4:] + (None,)
        T, B, H = out.shape
        G = A.shape[2]
        K, Kc, f = _lstm_gate_factors(A, TC, C[:-1], ctx.coupled)
        ln = None
        if has_ln:
            xhats, rstds, xcs, rstd_cs, xxs, rstd_xs = ctx.ln_steps
            ln = (xhats, rstds, gain_hh, xcs, rstd_cs, gain_c, xxs, rstd_xs, gain_ih if ctx.has_ln_ih else None)
        dX, dA, sums, d_h0, d_c0, dA_low = _lstm_backward_loop(d_out, d_hT, d_cT, K, Kc, f, w_hh, mask, h_mask,
                                                               ln, ctx.lp)
        d_w = None
        if needs[3]:
            h_low = None if ctx.h_low is None else ctx.h_low.view(T * B, H)
            rows = None
            if h_low is None or _low(ctx.lp, "weight") is None:
                rows = (h_prev_in if has_h_prev_in else _prev_states(h0, out)).reshape(T * B, H)
            d_w = _weight_grad(dA.reshape(T * B, G * H), rows, ctx.lp,
                               None if dA_low is None else dA_low.view(T * B, G * H), h_low)
        ln_grads = (None,) * 6
        if has_ln:          # b_hh, gain_hh, gain_c, bias_c (, gain_ih, bias_ih): sums over the batch rows
            ln_grads = tuple(v.sum(0).reshape(-1) if (need and (k > 0 or has_b)) else None
                             for k, (v, need) in enumerate(zip(sums, needs[7:13])))
            ln_grads += (None,) * (6 - len(ln_grads))
        return (dX.view(T, B, G * H) if needs[0] else None, d_h0 if needs[1] else None,
                d_c0 if needs[2] else None, d_w, None, None, None) + ln_grads + (None,)


# ----------------------------------------------------------------------------------------------------------
# GRU
# ----------------------------------------------------------------------------------------------------------

def _gru_forward(xg, h0, w_hh, b_hh, reset_after, mask, h_mask, save, ln=None, lp=None):
    """Forward time loop (call under no_grad). Returns ``out, h_T, saved`` (saved is None unless save).

    ``lp`` (torch form only): None, or bf16 for the per-step ``h @ W_hh^T`` in bf16 (:func:`bf16_matmuls`);
    the bf16 copies of the multiplied states are kept (save) for the weight gradient.

    The equations of :func:`hybridrnn.nn.cells.gru_step` written into preallocated buffers. ``ln``: None, or
    ``(gain_hh, bias_hh, gain_ih, bias_ih)`` for layer norm of ``W_hh h + b_hh`` per gate block (torch form,
    ``reset_after``, only) and, unless ``gain_ih`` is None (xg normalised by the caller), of ``xg``. One loop serves every variant, so that the arithmetic is written once; hence its length.
    """
    T, B, GH = xg.shape
    H = h0.shape[1]
    opts = dict(dtype=xg.dtype, device=xg.device)
    w_t = w_hh.t()
    out = torch.empty(T, B, H, **opts)
    outs = out.unbind(0)
    xg_rz = xg[:, :, :2 * H].unbind(0)
    if reset_after:
        xg_n = xg[:, :, 2 * H:].unbind(0)
    else:
        xn = xg[:, :, 2 * H:]
        xg_n = (xn if b_hh is None else xn + b_hh[2 * H:]).unbind(0)
        w_rz_t, w_n_t = w_t[:, :2 * H], w_t[:, 2 * H:]
        b_rz = None if b_hh is None else b_hh[:2 * H]
    n_slots = T if save else 1
    RZ = torch.empty(n_slots, B, 2, H, **opts)      # r, z after the sigmoid
    N = torch.empty(n_slots, B, H, **opts)          # candidate n after the tanh
    rzs = [s.view(B, 2 * H) for s in RZ.unbind(0)]
    rs = RZ[:, :, 0].unbind(0)
    zs = RZ[:, :, 1].unbind(0)
    ns = N.unbind(0)
    if reset_after:
        HG = torch.empty(n_slots, B, 3 * H, **opts)  # W_hh h + b_hh (after its layer norm, if any)
        hgs = HG.unbind(0)
        hg_rz = HG[:, :, :2 * H].unbind(0)
        hg_n = HG[:, :, 2 * H:].unbind(0)
    else:
        hrz = torch.empty(B, 2 * H, **opts)
        RH = torch.empty(n_slots, B, H, **opts)     # r * h_in, the input of W_hn
        rhs = RH.unbind(0)
    if ln is not None:
        gain_hh, bias_hh, gain_ih, bias_ih = ln
        a_buf = torch.empty(B, 3 * H, **opts)        # W_hh h + b_hh before its layer norm
        x_buf = torch.empty(B, 3 * H, **opts)        # LN_ih(xg) of the current step
        steps = ([], [], [], [])                     # per step (save): a normalised, its rstd; xg the same
    HIN = torch.empty(n_slots, B, H, **opts) if h_mask is not None else None
    hins = HIN.unbind(0) if HIN is not None else None
    lp = _low(lp, "forward") if reset_after else None
    HB = None
    if lp is not None:                               # bf16 h_in (kept for dW_hh when save), W_hh^T, product
        w_lp, mm_buf = w_t.to(lp), torch.empty(B, 3 * H, dtype=lp, device=xg.device)
        HB = torch.empty(n_slots, B, H, dtype=lp, device=xg.device)
        hbs = HB.unbind(0)
    if mask is not None:
        ms = mask.unbind(0)
        hn = torch.empty(B, H, **opts)
        HC = torch.empty(T + 1 if save else 1, B, H, **opts)
        HC[0].copy_(h0)
        hcs = HC.unbind(0) if save else [h0] + [HC[0]] * T

    h = h0
    for t in range(T):
        s = t if save else 0
        h_in = h if h_mask is None else torch.mul(h, h_mask, out=hins[s])
        rz = rzs[s]
        if reset_after:
            target = hgs[s] if ln is None else a_buf
            if lp is not None:                       # bf16 product, float32 sum
                rec = torch.mm(hbs[s].copy_(h_in), w_lp, out=mm_buf)
                if b_hh is None:
                    target.copy_(rec)
                else:
                    torch.add(b_hh, rec, out=target)
            elif b_hh is None:
                torch.mm(h_in, w_t, out=target)
            else:
                torch.addmm(b_hh, h_in, w_t, out=target)
            if ln is not None:
                normed, _, rstd = torch.native_layer_norm(target.view(B, 3, H), (H,), None, None, LN_EPS)
                torch.addcmul(bias_hh, normed.view(B, 3 * H), gain_hh, out=hgs[s])
                if save:
                    steps[0].append(normed)
                    steps[1].append(rstd)
            x_rz, x_n = xg_rz[t], xg_n[t]
            if ln is not None and gain_ih is not None:
                normed_x, _, rstd_x = torch.native_layer_norm(xg[t].view(B, 3, H), (H,), None, None, LN_EPS)
                torch.addcmul(bias_ih, normed_x.view(B, 3 * H), gain_ih, out=x_buf)
                x_rz, x_n = x_buf[:, :2 * H], x_buf[:, 2 * H:]
                if save:
                    steps[2].append(normed_x)
                    steps[3].append(rstd_x)
            torch.add(x_rz, hg_rz[s], out=rz)
            rz.sigmoid_()
            n = torch.addcmul(x_n, rs[s], hg_n[s], out=ns[s])
        else:
            if b_rz is None:
                torch.mm(h_in, w_rz_t, out=hrz)
            else:
                torch.addmm(b_rz, h_in, w_rz_t, out=hrz)
            torch.add(xg_rz[t], hrz, out=rz)
            rz.sigmoid_()
            rh = torch.mul(rs[s], h_in, out=rhs[s])
            n = torch.addmm(xg_n[t], rh, w_n_t, out=ns[s])
        n.tanh_()
        if mask is None:
            h = torch.lerp(n, h, zs[s], out=outs[t])  # n + z * (h - n)
        else:
            m = ms[t]
            torch.lerp(n, h, zs[s], out=hn)
            torch.mul(hn, m, out=outs[t])
            h = torch.lerp(h, hn, m, out=hcs[t + 1])
    h_t = h.clone()
    saved = None
    if save:
        h_prev = HC[:-1] if mask is not None else None
        saved = (RZ, N, HG if reset_after else RH, h_prev, HIN, None if ln is None else steps, HB)
    return out, h_t, saved


class _GRUScan(torch.autograd.Function):
    """The whole-sequence GRU with its hand-written backward. Inputs: ``xg, h0, w_hh, b_hh, reset_after, mask,
    h_mask`` and, for layer norm (torch form only), ``gain_hh, bias_hh, gain_ih, bias_ih`` (else None; see
    :func:`_gru_forward`), and ``lp`` (None, or bf16 for the recurrent matmuls: :func:`bf16_matmuls`)."""

    @staticmethod
    def forward(ctx, xg, h0, w_hh, b_hh, reset_after, mask, h_mask, gain_hh, bias_hh, gain_ih, bias_ih, lp=None):
        ln = None if gain_hh is None else (gain_hh, bias_hh, gain_ih, bias_ih)
        with torch.no_grad():
            out, h_t, (RZ, N, aux, h_prev, HIN, ln_saved, HB) = _gru_forward(
                xg, h0, w_hh, b_hh, reset_after, mask, h_mask, save=True, ln=ln, lp=lp)
        empty = out.new_empty(0)
        ctx.lp, ctx.h_low = lp, HB                   # HB: our own bf16 copy of the multiplied states, or None
        ctx.reset_after = reset_after
        ctx.has = (b_hh is not None, mask is not None, h_mask is not None, h_prev is not None, ln is not None)
        ctx.ln_steps = ln_saved                      # per-step tensors of our own, never seen by the caller
        ctx.has_ln_ih = gain_ih is not None
        opt = (b_hh, h_prev, HIN, mask, h_mask, gain_hh, bias_hh, gain_ih, bias_ih)
        ctx.save_for_backward(xg, h0, w_hh, RZ, N, aux, out, *(empty if v is None else v for v in opt))
        return out, h_t

    @staticmethod
    def backward(ctx, d_out, d_hT):
        (xg, h0, w_hh, RZ, N, aux, out, b_hh, h_prev, HIN, mask, h_mask, gain_hh, bias_hh, gain_ih,
         bias_ih) = ctx.saved_tensors
        has_b, has_mask, has_h_mask, has_h_prev, has_ln = ctx.has
        b_hh = b_hh if has_b else None
        mask = mask if has_mask else None
        h_mask = h_mask if has_h_mask else None
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():                  # create_graph=True: differentiate the general loop
            grads = _double_backward(
                lambda x_, h_, w_, b_, g_, bl_, gi_, bi_: gru_loop(
                    x_, h_, GRUParams(w_, b_, None if g_ is None else (g_, bl_), ctx.reset_after,
                                      None if gi_ is None else (gi_, bi_)), mask=mask, h_mask=h_mask),
                (xg, h0, w_hh, b_hh, *((gain_hh, bias_hh) if has_ln else (None, None)),
                 *((gain_ih, bias_ih) if ctx.has_ln_ih else (None, None))), (d_out, d_hT), needs[:4] + needs[7:])
            return grads[:4] + (None, None, None) + grads[4:] + (None,)
        if not has_h_prev:
            h_prev = _prev_states(h0, out)           # carried state entering each step
        h_in_prev = HIN if has_h_mask else h_prev     # what W_hh multiplied
        ln = None
        if has_ln:
            xhats, rstds, xxs, rstd_xs = ctx.ln_steps
            ln = (xhats, rstds, gain_hh, xxs, rstd_xs, gain_ih if ctx.has_ln_ih else None)
        if ctx.reset_after:
            d_xg, d_h0, d_w, d_b, *ln_grads = _gru_backward_reset_after(
                d_out, d_hT, RZ, N, aux, h_prev, h_in_prev, w_hh, mask, h_mask, ln, needs, ctx.lp, ctx.h_low)
        else:
            d_xg, d_h0, d_w, d_b, *ln_grads = _gru_backward_paper(d_out, d_hT, RZ, N, aux, h_prev, h_in_prev, w_hh,
                                                                  mask, h_mask, ln, needs)
        return (d_xg if needs[0] else None, d_h0 if needs[1] else None, d_w, d_b if has_b else None,
                None, None, None, *ln_grads, None)


def _gru_factors(RZ: Tensor, N: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``r, z`` and the factors of the gate gradients that do not depend on the incoming gradient ``g`` (of
    ``h_new``), for all steps at once: ``d n_pre = g * k_n``, ``d z_pre = g * k_z``."""
    r, z = RZ.unbind(2)
    z1 = 1.0 - z
    u = z1 * N
    k_n = torch.addcmul(z1, u, N, value=-1.0)        # (1-z)(1-n^2)
    u = (h_prev - N) * z
    k_z = torch.addcmul(u, u, z, value=-1.0)         # (h_prev - n) z(1-z)
    return r, z, k_n, k_z


def _gru_backward_reset_after(d_out, d_hT, RZ, N, HG, h_prev, h_in_prev, w, mask, h_mask, ln, needs, lp=None,
                              h_low=None):
    """Backward of the torch-form GRU: ``n = tanh(x_n + r * hg_n)``, ``hg = [LN](W_hh h_in + b_hh)``. One loop
    serves every variant (masks, layer norm), so that the arithmetic is written once; hence its length.

    The gradient of ``hg`` is ``dHG = g * [k_r, k_z, k_hn]``; ``dxg = [dHG_r, dHG_z, g * k_n]``. ``ln``: None or
    ``(xhats, rstds, gain_hh, xxs, rstd_xs, gain_ih)`` (the forward's per-step normalised ``W_hh h + b_hh`` and
    xg, with their rstd; gain_ih None when xg came normalised); then the recurrent gradient (and that of xg)
    goes through its layer norm, and the gradients of the norms' gains and biases and of ``b_hh`` are summed in
    the loop while the step's data is in cache. ``lp``: None or bf16 (:func:`bf16_matmuls`) for the per-step
    ``dA_t @ W_hh`` and ``dW_hh``, ``h_low`` the forward's bf16 copy of ``h_in_prev`` (or None). Returns
    ``d_xg, d_h0, d_w, d_b, d_gain_hh, d_bias_hh,
    d_gain_ih, d_bias_ih`` (None where not needed). Its length: the buffers of every variant are set up here,
    so that the per-step arithmetic (``rec_grad``) is written once.
    """
    T, B, H = N.shape
    opts = dict(dtype=N.dtype, device=N.device)
    r, z, k_n, k_z = _gru_factors(RZ, N, h_prev)
    K = torch.empty(T, B, 3, H, **opts)
    k_hn = torch.mul(k_n, r, out=K[:, :, 2])
    u = k_hn * HG[:, :, 2 * H:]
    torch.addcmul(u, u, r, value=-1.0, out=K[:, :, 0])           # k_n * hg_n * r(1-r)
    K[:, :, 1].copy_(k_z)
    ks, zs, d_outs = K.unbind(0), z.unbind(0), d_out.unbind(0)
    GB = torch.empty(T, B, 1, H, **opts)              # g for every step (gradient of h_new)
    gbs = GB.unbind(0)
    g_steps = GB[:, :, 0].unbind(0)
    dHG = torch.empty(T, B, 3, H, **opts)
    dhgs = dHG.unbind(0)
    d_rec = dHG                                       # gradient of W_hh h_in + b_hh
    recs = dHG.view(T, B, 3 * H).unbind(0)            # ... at each step
    gain_ih = None
    if ln is not None:
        xhats, rstds, gain_hh, xxs, rstd_xs, gain_ih = ln
        d_rec = torch.empty(T, B, 3, H, **opts)
        recs, rec_blocks = d_rec.view(T, B, 3 * H).unbind(0), d_rec.unbind(0)
        sum_b, sum_gain, sum_bias, sum_gain_ih, sum_bias_ih = (torch.zeros(B, 3, H, **opts) for _ in range(5))
        u3 = torch.empty(B, 3, H, **opts)
        gain3 = gain_hh.view(3, H)
        zero, one = torch.zeros(B, 3, 1, **opts), torch.ones(B, 3, 1, **opts)
        if gain_ih is not None:                       # xg's gradient per step, through its norm
            dX = torch.empty(T, B, 3, H, **opts)
            dx_blocks, k_ns = dX.unbind(0), k_n.unbind(0)
            dxn = torch.empty(B, 3, H, **opts)        # gradient of LN_ih(xg) at the step
            gain3_ih = gain_ih.view(3, H)

    def rec_grad(t):
        torch.mul(gbs[t], ks[t], out=dhgs[t])
        if ln is not None:
            torch.mul(dhgs[t], gain3, out=u3)
            sum_gain.addcmul_(dhgs[t], xhats[t])
            sum_bias.add_(dhgs[t])
            torch.mul(_ln_input_grad(u3, xhats[t], zero, one, None), rstds[t], out=rec_blocks[t])
            sum_b.add_(rec_blocks[t])
        if gain_ih is not None:
            dxn[:, :2].copy_(dhgs[t][:, :2])
            torch.mul(g_steps[t], k_ns[t], out=dxn[:, 2])
            torch.mul(dxn, gain3_ih, out=u3)
            sum_gain_ih.addcmul_(dxn, xxs[t])
            sum_bias_ih.add_(dxn)
            torch.mul(_ln_input_grad(u3, xxs[t], zero, one, None), rstd_xs[t], out=dx_blocks[t])

    tmp = torch.empty(B, H, **opts)
    gh = torch.empty(B, H, **opts)                    # scratch (recurrent gradient before h_mask)
    lp_step = _low(lp, "backward")
    d_rec_low = None
    if lp_step is not None:                           # bf16 copies of d_rec (kept for dW_hh) and W_hh, product
        d_rec_low = torch.empty(T, B, 3 * H, dtype=lp_step, device=N.device)
        w_lp, mm_buf, lows = w.to(lp_step), torch.empty(B, H, dtype=lp_step, device=N.device), d_rec_low.unbind(0)

    def low_mm(t):                                    # bf16(d_rec_t) @ bf16(W_hh), float32 accumulation, bf16
        return torch.mm(lows[t].copy_(recs[t]), w_lp, out=mm_buf)

    if mask is None:
        torch.add(d_outs[T - 1], d_hT, out=g_steps[T - 1])
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                torch.addcmul(d_outs[t], g_steps[t + 1], zs[t + 1], out=tmp)
                if lp_step is not None:
                    if h_mask is None:
                        torch.add(tmp, low_mm(t + 1), out=g_steps[t])
                    else:
                        torch.addcmul(tmp, low_mm(t + 1), h_mask, out=g_steps[t])
                elif h_mask is None:
                    torch.addmm(tmp, recs[t + 1], w, out=g_steps[t])
                else:
                    torch.mm(recs[t + 1], w, out=gh)
                    torch.addcmul(tmp, gh, h_mask, out=g_steps[t])
            rec_grad(t)
        d_h0 = g_steps[0] * zs[0]
        if lp_step is not None:
            if h_mask is None:
                d_h0.add_(low_mm(0))
            else:
                d_h0.addcmul_(low_mm(0), h_mask)
        elif h_mask is None:
            d_h0.addmm_(recs[0], w)
        else:
            d_h0.addcmul_(recs[0] @ w, h_mask)
    else:
        def add_h_in_grad(t, gh):
            if lp_step is not None:
                if h_mask is None:
                    gh.add_(low_mm(t))
                else:
                    gh.addcmul_(low_mm(t), h_mask)
            elif h_mask is None:
                gh.addmm_(recs[t], w)
            else:
                torch.mm(recs[t], w, out=tmp)
                gh.addcmul_(tmp, h_mask)

        d_h0 = _gru_masked_backward_loop(d_outs, d_hT, g_steps, zs, mask, rec_grad, add_h_in_grad)
    if gain_ih is None:
        dX = torch.empty(T, B, 3, H, **opts)
        dX[:, :, :2].copy_(dHG[:, :, :2])
        torch.mul(GB[:, :, 0], k_n, out=dX[:, :, 2])
    d_rec = d_rec.view(T * B, 3 * H)
    d_w = None
    if needs[2]:
        d_w = _weight_grad(d_rec, h_in_prev.reshape(T * B, H), lp,
                           None if d_rec_low is None else d_rec_low.view(T * B, 3 * H),
                           None if h_low is None else h_low.view(T * B, H))
    ln_grads = (None,) * 4
    if ln is None:
        d_b = d_rec.sum(0) if needs[3] else None
    else:
        d_b, *ln_grads = (v.sum(0).view(3 * H) if (need and (k < 3 or gain_ih is not None)) else None
                          for k, (v, need) in enumerate(((sum_b, needs[3]), (sum_gain, needs[7]), (sum_bias, needs[8]),
                                                         (sum_gain_ih, needs[9]), (sum_bias_ih, needs[10]))))
    return (dX.view(T, B, 3 * H), d_h0, d_w, d_b, *ln_grads)


def _gru_masked_backward_loop(d_outs, d_hT, g_steps, zs, mask, step_grads, add_h_in_grad):
    """The reverse loop over padded sequences, both GRU forms: the carried ``h_t = lerp(h_{t-1}, h_new, m)``.

    Writes ``g`` (the gradient of ``h_new``) into ``g_steps[t]``, calls ``step_grads(t)`` (the gate gradients
    of step t from it) and ``add_h_in_grad(t, gh)`` (adds the gradient that reaches ``h_{t-1}`` through the
    recurrent matmuls to ``gh``). Returns the gradient of ``h0``.
    """
    ms, m1s = mask.unbind(0), (1.0 - mask).unbind(0)
    gh = d_hT.clone()                                # gradient of the carried h_t
    for t in range(len(g_steps) - 1, -1, -1):
        g = g_steps[t]
        torch.add(d_outs[t], gh, out=g)
        g.mul_(ms[t])
        step_grads(t)
        gh.mul_(m1s[t]).addcmul_(g, zs[t])
        add_h_in_grad(t, gh)
    return gh


def _gru_backward_paper(d_out, d_hT, RZ, N, RH, h_prev, h_in_prev, w, mask, h_mask, ln, needs):
    """Backward of the paper-form GRU: ``n = tanh(x_n + W_hn (r * h_in) + b_hn)`` (no layer norm here: that
    variant runs the general loop). Same returns as :func:`_gru_backward_reset_after`."""
    T, B, H = N.shape
    opts = dict(dtype=N.dtype, device=N.device)
    r, z, k_n, k_z = _gru_factors(RZ, N, h_prev)
    zs, rs, d_outs = z.unbind(0), r.unbind(0), d_out.unbind(0)
    GB = torch.empty(T, B, 1, H, **opts)              # g for every step (gradient of h_new)
    gbs = GB.unbind(0)
    g_steps = GB[:, :, 0].unbind(0)
    dXG = torch.empty(T, B, 3, H, **opts)             # gradient of xg (gate pre-activations)
    dxg_flat = dXG.view(T, B, 3 * H)
    tmp = torch.empty(B, H, **opts)
    w_rz, w_n = w[:2 * H], w[2 * H:]
    K_zn = torch.stack([k_z, k_n], 2)                # (T, B, 2, H): d[z_pre, n_pre] = g * K_zn
    k_r = (h_in_prev * (r * (1.0 - r))).unbind(0)   # d r_pre = d(r h_in) * k_r
    kzns = K_zn.unbind(0)
    dzn = dXG[:, :, 1:].unbind(0)
    dr = dXG[:, :, 0].unbind(0)
    dn = dXG[:, :, 2].unbind(0)
    drz = dxg_flat[:, :, :2 * H].unbind(0)
    drh = torch.empty(B, H, **opts)                  # gradient of r * h_in

    def step_grads(t):
        torch.mul(gbs[t], kzns[t], out=dzn[t])
        torch.mm(dn[t], w_n, out=drh)
        torch.mul(drh, k_r[t], out=dr[t])

    def h_in_grad(t, out_):                          # gradient of h_in at step t, written to out_
        torch.mul(drh, rs[t], out=out_)
        out_.addmm_(drz[t], w_rz)
        if h_mask is not None:
            out_.mul_(h_mask)

    if mask is None:
        torch.add(d_outs[T - 1], d_hT, out=g_steps[T - 1])
        for t in range(T - 1, -1, -1):
            step_grads(t)
            if t > 0:
                g = g_steps[t - 1]
                torch.addcmul(d_outs[t - 1], g_steps[t], zs[t], out=g)
                if h_mask is None:
                    g.addcmul_(drh, rs[t]).addmm_(drz[t], w_rz)
                else:
                    h_in_grad(t, tmp)
                    g.add_(tmp)
        h_in_grad(0, tmp)
        d_h0 = tmp.addcmul_(g_steps[0], zs[0])
    else:
        def add_h_in_grad(t, gh):
            h_in_grad(t, tmp)
            gh.add_(tmp)

        d_h0 = _gru_masked_backward_loop(d_outs, d_hT, g_steps, zs, mask, step_grads, add_h_in_grad)
    d_w = d_b = None
    if needs[2]:
        d_w = torch.empty_like(w)
        torch.mm(dxg_flat[:, :, :2 * H].reshape(T * B, 2 * H).t(), h_in_prev.reshape(T * B, H), out=d_w[:2 * H])
        torch.mm(dxg_flat[:, :, 2 * H:].reshape(T * B, H).t(), RH.reshape(T * B, H), out=d_w[2 * H:])
    if needs[3]:
        d_b = dxg_flat.sum((0, 1))
    return dxg_flat, d_h0, d_w, d_b, None, None, None, None


def _double_backward(reference, inputs, grad_outputs, needs):
    """Gradients of ``reference(*inputs)`` with a graph (used when backward runs with create_graph=True)."""
    wanted = [x for x, need in zip(inputs, needs) if need and x is not None]
    outputs = reference(*inputs)
    grads = iter(torch.autograd.grad(outputs, wanted, grad_outputs, create_graph=True, allow_unused=True))
    return tuple(next(grads) if (need and x is not None) else None for x, need in zip(inputs, needs))
