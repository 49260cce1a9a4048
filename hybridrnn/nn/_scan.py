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
- Double backward (``create_graph=True``) is supported by recomputing the sequence with the general loop
  (slow, but exact); ``mask``/``h_mask`` that require gradients also go to the general loop.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from hybridrnn.nn.cells import GRUGates, GRUParams, LSTMGates, LSTMParams, gru_step, lstm_step


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
    double backward is asked for (``create_graph=True``), or an option has no fused kernel (layer norm), the
    general loop :func:`lstm_loop` is used instead.
    """
    _check_lstm_args(xg, h0, c0, p)
    if (p.ln_hh is not None or p.ln_c is not None or (mask is not None and mask.requires_grad)
            or (h_mask is not None and h_mask.requires_grad)):
        return lstm_loop(xg, h0, c0, p, mask=mask, h_mask=h_mask)
    if p.b_hh is not None:
        xg = xg + p.b_hh
    w_hh, coupled = p.w_hh, p.coupled
    if torch.is_grad_enabled() and (xg.requires_grad or h0.requires_grad or c0.requires_grad
                                    or w_hh.requires_grad):
        return _LSTMScan.apply(xg, h0, c0, w_hh, coupled, mask, h_mask)
    with torch.no_grad():
        out, h_t, c_t, _ = _lstm_forward(xg, h0, c0, w_hh, coupled, mask, h_mask, save=False)
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

    Gradients flow to ``xg``, ``h0`` and the tensors of ``p`` as in :func:`lstm_scan` (hand-written backward;
    the general loop :func:`gru_loop` for double backward, masks that require grad, or layer norm).
    """
    _check_gru_args(xg, h0, p)
    if p.ln_hh is not None or (mask is not None and mask.requires_grad) or (
            h_mask is not None and h_mask.requires_grad):
        return gru_loop(xg, h0, p, mask=mask, h_mask=h_mask)
    w_hh, b_hh, reset_after = p.w_hh, p.b_hh, p.reset_after
    if torch.is_grad_enabled() and (xg.requires_grad or h0.requires_grad or w_hh.requires_grad
                                    or (b_hh is not None and b_hh.requires_grad)):
        return _GRUScan.apply(xg, h0, w_hh, b_hh, reset_after, mask, h_mask)
    with torch.no_grad():
        out, h_t, _ = _gru_forward(xg, h0, w_hh, b_hh, reset_after, mask, h_mask, save=False)
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

def _lstm_forward(xg, h0, c0, w_hh, coupled, mask, h_mask, save):
    """Forward time loop (call under no_grad). Returns ``out, h_T, c_T, saved`` (saved is None unless save)."""
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
        torch.addmm(xgs[t], h_in, w_t, out=pre)
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
        tc = torch.tanh(c_new, out=tcs[t])
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
        saved = (A, TC, C, h_prev_in)
    return out, h_t, c_t, saved


class _LSTMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, h0, c0, w_hh, coupled, mask, h_mask):
        with torch.no_grad():
            out, h_t, c_t, (A, TC, C, h_prev_in) = _lstm_forward(xg, h0, c0, w_hh, coupled, mask, h_mask,
                                                                 save=True)
        ctx.coupled = coupled
        ctx.has_mask, ctx.has_h_mask = mask is not None, h_mask is not None
        ctx.has_h_prev_in = h_prev_in is not None
        ctx.save_for_backward(xg, h0, c0, w_hh, A, TC, C, out,
                              h_prev_in if h_prev_in is not None else out.new_empty(0),
                              mask if mask is not None else out.new_empty(0),
                              h_mask if h_mask is not None else out.new_empty(0))
        return out, h_t, c_t

    @staticmethod
    def backward(ctx, d_out, d_hT, d_cT):
        xg, h0, c0, w_hh, A, TC, C, out, h_prev_in, mask, h_mask = ctx.saved_tensors
        mask = mask if ctx.has_mask else None
        h_mask = h_mask if ctx.has_h_mask else None
        if torch.is_grad_enabled():                  # create_graph=True: differentiate the reference loop
            return _double_backward(
                lambda a, b, c, d: lstm_loop(a, b, c, LSTMParams(d, coupled=ctx.coupled), mask=mask,
                                             h_mask=h_mask),
                (xg, h0, c0, w_hh), (d_out, d_hT, d_cT), ctx.needs_input_grad[:4]) + (None, None, None)
        T, B, H = out.shape
        G = A.shape[2]
        opts = dict(dtype=out.dtype, device=out.device)
        coupled = ctx.coupled
        # factors of the gate gradients that do not depend on the incoming gradient, all steps at once
        c_prev = C[:-1]
        if coupled:
            i, g, o = A.unbind(2)
            f = 1.0 - i
        else:
            i, f, g, o = A.unbind(2)
        # written as a - a*b (addcmul) to keep the number of whole-sequence passes low
        K = torch.empty(T, B, G, H, **opts)
        gi = g * i
        if coupled:
            u = gi - c_prev * i                      # i * (g - c_prev)
            torch.addcmul(u, u, i, value=-1.0, out=K[:, :, 0])       # (g - c_prev) * i(1-i)
            torch.addcmul(i, gi, g, value=-1.0, out=K[:, :, 1])      # i * (1 - g^2)
        else:
            torch.addcmul(gi, gi, i, value=-1.0, out=K[:, :, 0])     # g * i(1-i)
            u = c_prev * f
            torch.addcmul(u, u, f, value=-1.0, out=K[:, :, 1])       # c_prev * f(1-f)
            torch.addcmul(i, gi, g, value=-1.0, out=K[:, :, 2])      # i * (1 - g^2)
        u = o * TC
        torch.addcmul(u, u, o, value=-1.0, out=K[:, :, G - 1])       # tanh(c) * o(1-o)
        Kc = torch.addcmul(o, u, TC, value=-1.0)     # o * (1 - tanh(c)^2): dc_new += dh_new * Kc
        fs = f.unbind(0)
        kcs = Kc.unbind(0)
        k_cell = K[:, :, :G - 1].unbind(0)           # gates driven by dc: (i, f, g) or (i, g)
        k_out = K[:, :, G - 1].unbind(0)             # gate driven by dh: o
        dG = torch.empty(T, B, G, H, **opts)
        dGs = dG.view(T, B, G * H).unbind(0)
        dg_cell = dG[:, :, :G - 1].unbind(0)
        dg_out = dG[:, :, G - 1].unbind(0)
        d_outs = d_out.unbind(0)
        w = w_hh
        dcb = torch.empty(B, 1, H, **opts)           # dc, shaped to broadcast over the cell gates
        dc = dcb.view(B, H)
        dh = torch.empty(B, H, **opts)
        if mask is None:
            tmp = torch.empty(B, H, **opts) if h_mask is not None else None
            dc.copy_(d_cT)
            torch.add(d_outs[T - 1], d_hT, out=dh)
            for t in range(T - 1, -1, -1):
                if t < T - 1:
                    if h_mask is None:
                        torch.addmm(d_outs[t], dGs[t + 1], w, out=dh)
                    else:
                        torch.mm(dGs[t + 1], w, out=tmp)
                        torch.addcmul(d_outs[t], tmp, h_mask, out=dh)
                    dc.mul_(fs[t + 1])
                dc.addcmul_(dh, kcs[t])
                torch.mul(dcb, k_cell[t], out=dg_cell[t])
                torch.mul(dh, k_out[t], out=dg_out[t])
            d_h0 = dGs[0] @ w
            if h_mask is not None:
                d_h0.mul_(h_mask)
            d_c0 = dc * fs[0]
        else:
            # padded steps: carried h_t = lerp(h_{t-1}, h_new, m), c likewise, output h_new * m
            ms = mask.unbind(0)
            m1s = (1.0 - mask).unbind(0)
            gh = d_hT.clone()                        # gradient of the carried h_t
            gc = d_cT.clone()
            tmp = torch.empty(B, H, **opts)
            for t in range(T - 1, -1, -1):
                m = ms[t]
                torch.add(d_outs[t], gh, out=dh)
                dh.mul_(m)                           # gradient of h_new
                torch.mul(gc, m, out=dc)
                dc.addcmul_(dh, kcs[t])              # gradient of c_new
                torch.mul(dcb, k_cell[t], out=dg_cell[t])
                torch.mul(dh, k_out[t], out=dg_out[t])
                gc.mul_(m1s[t]).addcmul_(dc, fs[t])
                gh.mul_(m1s[t])
                if h_mask is None:
                    gh.addmm_(dGs[t], w)
                else:
                    torch.mm(dGs[t], w, out=tmp)
                    gh.addcmul_(tmp, h_mask)
            d_h0, d_c0 = gh, gc
        d_xg = d_w = None
        dG_flat = dG.view(T * B, G * H)
        if ctx.needs_input_grad[3]:
            if ctx.has_h_prev_in:
                d_w = dG_flat.t() @ h_prev_in.reshape(T * B, H)
            else:
                d_w = dG_flat.t() @ _prev_states(h0, out).view(T * B, H)
        if ctx.needs_input_grad[0]:
            d_xg = dG.view(T, B, G * H)
        return (d_xg, d_h0 if ctx.needs_input_grad[1] else None, d_c0 if ctx.needs_input_grad[2] else None,
                d_w, None, None, None)


# ----------------------------------------------------------------------------------------------------------
# GRU
# ----------------------------------------------------------------------------------------------------------

def _gru_forward(xg, h0, w_hh, b_hh, reset_after, mask, h_mask, save):
    """Forward time loop (call under no_grad). Returns ``out, h_T, saved`` (saved is None unless save)."""
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
        HG = torch.empty(n_slots, B, 3 * H, **opts)  # W_hh h + b_hh
        hgs = HG.unbind(0)
        hg_rz = HG[:, :, :2 * H].unbind(0)
        hg_n = HG[:, :, 2 * H:].unbind(0)
    else:
        hrz = torch.empty(B, 2 * H, **opts)
        RH = torch.empty(n_slots, B, H, **opts)     # r * h_in, the input of W_hn
        rhs = RH.unbind(0)
    HIN = torch.empty(n_slots, B, H, **opts) if h_mask is not None else None
    hins = HIN.unbind(0) if HIN is not None else None
    if mask is not None:
        ms = mask.unbind(0)
        hn = torch.empty(B, H, **opts)
        HC = torch.empty(T + 1 if save else 1, B, H, **opts)
        HC[0].copy_(h0)
        hcs = HC.unbind(0) if save else [h0] + [HC[0]] * T

    def slot(t):
        return t if save else 0

    h = h0
    for t in range(T):
        s = slot(t)
        h_in = h if h_mask is None else torch.mul(h, h_mask, out=hins[s])
        rz = rzs[s]
        if reset_after:
            if b_hh is None:
                torch.mm(h_in, w_t, out=hgs[s])
            else:
                torch.addmm(b_hh, h_in, w_t, out=hgs[s])
            torch.add(xg_rz[t], hg_rz[s], out=rz)
            rz.sigmoid_()
            n = torch.addcmul(xg_n[t], rs[s], hg_n[s], out=ns[s])
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
        saved = (RZ, N, HG if reset_after else RH, h_prev, HIN)
    return out, h_t, saved


class _GRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, h0, w_hh, b_hh, reset_after, mask, h_mask):
        with torch.no_grad():
            out, h_t, (RZ, N, aux, h_prev, HIN) = _gru_forward(xg, h0, w_hh, b_hh, reset_after, mask, h_mask,
                                                               save=True)
        empty = out.new_empty(0)
        ctx.reset_after = reset_after
        ctx.has = (b_hh is not None, mask is not None, h_mask is not None, h_prev is not None)
        ctx.save_for_backward(xg, h0, w_hh, b_hh if b_hh is not None else empty, RZ, N, aux, out,
                              h_prev if h_prev is not None else empty, HIN if HIN is not None else empty,
                              mask if mask is not None else empty, h_mask if h_mask is not None else empty)
        return out, h_t

    @staticmethod
    def backward(ctx, d_out, d_hT):
        xg, h0, w_hh, b_hh, RZ, N, aux, out, h_prev, HIN, mask, h_mask = ctx.saved_tensors
        has_b, has_mask, has_h_mask, has_h_prev = ctx.has
        b_hh = b_hh if has_b else None
        mask = mask if has_mask else None
        h_mask = h_mask if has_h_mask else None
        reset_after = ctx.reset_after
        if torch.is_grad_enabled():                  # create_graph=True: differentiate the reference loop
            grads = _double_backward(
                lambda a, b, c, d: gru_loop(a, b, GRUParams(c, d, reset_after=reset_after), mask=mask,
                                            h_mask=h_mask),
                (xg, h0, w_hh, b_hh), (d_out, d_hT), ctx.needs_input_grad[:4])
            return grads + (None, None, None)
        T, B, H = out.shape
        opts = dict(dtype=out.dtype, device=out.device)
        if not has_h_prev:
            h_prev = _prev_states(h0, out)           # carried state entering each step
        h_in_prev = HIN if has_h_mask else h_prev     # what W_hh multiplied
        r, z = RZ.unbind(2)
        n = N
        # factors of the gate gradients that do not depend on the incoming gradient, all steps at once
        z1 = 1.0 - z
        u = z1 * n
        k_n = torch.addcmul(z1, u, n, value=-1.0)    # (1-z)(1-n^2): d n_pre = g * k_n (g: grad of h_new)
        u = (h_prev - n) * z
        k_z = torch.addcmul(u, u, z, value=-1.0)     # (h_prev - n) z(1-z): d z_pre = g * k_z
        zs = z.unbind(0)
        rs = r.unbind(0)
        d_outs = d_out.unbind(0)
        GB = torch.empty(T, B, 1, H, **opts)          # g for every step (gradient of h_new)
        gbs = GB.unbind(0)
        g_steps = GB[:, :, 0].unbind(0)
        dXG = torch.empty(T, B, 3, H, **opts)         # gradient of xg (gate pre-activations)
        dxg_flat = dXG.view(T, B, 3 * H)
        w = w_hh
        tmp = torch.empty(B, H, **opts)
        if reset_after:
            # the recurrent gate gradient dHG = g * [k_r, k_z, k_hn]; dxg = [dHG_r, dHG_z, g * k_n]
            K = torch.empty(T, B, 3, H, **opts)
            k_hn = torch.mul(k_n, r, out=K[:, :, 2])
            u = k_hn * aux[:, :, 2 * H:]
            torch.addcmul(u, u, r, value=-1.0, out=K[:, :, 0])       # k_n * hg_n * r(1-r)
            K[:, :, 1].copy_(k_z)
            ks = K.unbind(0)
            dHG = torch.empty(T, B, 3, H, **opts)
            dhgs = dHG.unbind(0)
            dhg_flat = dHG.view(T, B, 3 * H).unbind(0)
            gh = torch.empty(B, H, **opts)            # gradient of the carried h_t
            if mask is None:
                torch.add(d_outs[T - 1], d_hT, out=g_steps[T - 1])
                for t in range(T - 1, -1, -1):
                    if t < T - 1:
                        torch.addcmul(d_outs[t], g_steps[t + 1], zs[t + 1], out=tmp)
                        if h_mask is None:
                            torch.addmm(tmp, dhg_flat[t + 1], w, out=g_steps[t])
                        else:
                            torch.mm(dhg_flat[t + 1], w, out=gh)
                            torch.addcmul(tmp, gh, h_mask, out=g_steps[t])
                    torch.mul(gbs[t], ks[t], out=dhgs[t])
                d_h0 = g_steps[0] * zs[0]
                if h_mask is None:
                    d_h0.addmm_(dhg_flat[0], w)
                else:
                    d_h0.addcmul_(dhg_flat[0] @ w, h_mask)
            else:
                ms = mask.unbind(0)
                m1s = (1.0 - mask).unbind(0)
                gh.copy_(d_hT)
                for t in range(T - 1, -1, -1):
                    g = g_steps[t]
                    torch.add(d_outs[t], gh, out=g)
                    g.mul_(ms[t])
                    torch.mul(gbs[t], ks[t], out=dhgs[t])
                    gh.mul_(m1s[t]).addcmul_(g, zs[t])
                    if h_mask is None:
                        gh.addmm_(dhg_flat[t], w)
                    else:
                        torch.mm(dhg_flat[t], w, out=tmp)
                        gh.addcmul_(tmp, h_mask)
                d_h0 = gh
            dXG[:, :, :2].copy_(dHG[:, :, :2])
            torch.mul(GB[:, :, 0], k_n, out=dXG[:, :, 2])
            d_rec = dHG.view(T * B, 3 * H)           # gradient of W_hh h + b_hh
            d_w = d_rec.t() @ h_in_prev.reshape(T * B, H) if ctx.needs_input_grad[2] else None
            d_b = d_rec.sum(0) if (has_b and ctx.needs_input_grad[3]) else None
        else:
            # paper form: n = tanh(x_n + W_hn (r * h_in) + b_hn)
            RH = aux
            w_rz, w_n = w[:2 * H], w[2 * H:]
            K_zn = torch.stack([k_z, k_n], 2)        # (T, B, 2, H): d[z_pre, n_pre] = g * K_zn
            k_r = (h_in_prev * (r * (1.0 - r))).unbind(0)   # d r_pre = d(r h_in) * k_r
            kzns = K_zn.unbind(0)
            dzn = dXG[:, :, 1:].unbind(0)
            dr = dXG[:, :, 0].unbind(0)
            dn = dXG[:, :, 2].unbind(0)
            drz = dXG.view(T, B, 3 * H)[:, :, :2 * H].unbind(0)
            drh = torch.empty(B, H, **opts)          # gradient of r * h_in
            gh = torch.empty(B, H, **opts)

            def step_grads(t):
                torch.mul(gbs[t], kzns[t], out=dzn[t])
                torch.mm(dn[t], w_n, out=drh)
                torch.mul(drh, k_r[t], out=dr[t])

            def h_in_grad(t, out_):                  # gradient of h_in at step t, written to out_
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
                ms = mask.unbind(0)
                m1s = (1.0 - mask).unbind(0)
                gh.copy_(d_hT)
                for t in range(T - 1, -1, -1):
                    g = g_steps[t]
                    torch.add(d_outs[t], gh, out=g)
                    g.mul_(ms[t])
                    step_grads(t)
                    gh.mul_(m1s[t]).addcmul_(g, zs[t])
                    h_in_grad(t, tmp)
                    gh.add_(tmp)
                d_h0 = gh
            d_w = d_b = None
            if ctx.needs_input_grad[2]:
                d_w = torch.empty_like(w)
                d_rz_flat = dxg_flat[:, :, :2 * H].reshape(T * B, 2 * H)
                d_n_flat = dxg_flat[:, :, 2 * H:].reshape(T * B, H)
                torch.mm(d_rz_flat.t(), h_in_prev.reshape(T * B, H), out=d_w[:2 * H])
                torch.mm(d_n_flat.t(), RH.reshape(T * B, H), out=d_w[2 * H:])
            if has_b and ctx.needs_input_grad[3]:
                d_b = dxg_flat.sum((0, 1))
        return (dxg_flat if ctx.needs_input_grad[0] else None, d_h0 if ctx.needs_input_grad[1] else None,
                d_w, d_b, None, None, None)


def _double_backward(reference, inputs, grad_outputs, needs):
    """Gradients of ``reference(*inputs)`` with a graph (used when backward runs with create_graph=True)."""
    wanted = [x for x, need in zip(inputs, needs) if need and x is not None]
    outputs = reference(*inputs)
    grads = iter(torch.autograd.grad(outputs, wanted, grad_outputs, create_graph=True, allow_unused=True))
    return tuple(next(grads) if (need and x is not None) else None for x, need in zip(inputs, needs))
