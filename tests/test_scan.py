"""The fused whole-sequence kernels in hybridrnn.nn._scan against the general loops over the cell functions of
hybridrnn.nn.cells (the one source of the equations), and against torch.

Tolerances: float64 results and gradients within 1e-10 of the reference (differences are float rounding,
about 1e-15); float32 within 1e-5 (relative to values of order 1).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from hybridrnn.nn._scan import gru_loop, gru_scan, lstm_loop, lstm_scan
from hybridrnn.nn.cells import GRUParams, LSTMParams


def lstm_fast(xg, h0, c0, w, coupled=False, b=None, ln_hh=None, ln_c=None, ln_ih=None, **kw):
    return lstm_scan(xg, h0, c0, LSTMParams(w, b, ln_hh, ln_c, coupled, ln_ih), **kw)


def lstm_ref(xg, h0, c0, w, coupled=False, b=None, ln_hh=None, ln_c=None, ln_ih=None, **kw):
    return lstm_loop(xg, h0, c0, LSTMParams(w, b, ln_hh, ln_c, coupled, ln_ih), **kw)


def gru_fast(xg, h0, w, b, reset_after=True, ln_hh=None, ln_ih=None, **kw):
    return gru_scan(xg, h0, GRUParams(w, b, ln_hh, reset_after, ln_ih), **kw)


def gru_ref(xg, h0, w, b, reset_after=True, ln_hh=None, ln_ih=None, **kw):
    return gru_loop(xg, h0, GRUParams(w, b, ln_hh, reset_after, ln_ih), **kw)


T, B, H = 6, 3, 4
TOL64 = 1e-10
TOL32 = 1e-5


def _mask(dtype, T=T, lengths=(T, 3, 1)):
    """(T, B, 1): one full sequence, one padded, one of length 1."""
    return (torch.arange(T)[:, None] < torch.tensor(lengths)[None]).to(dtype)[:, :, None]


def _h_mask(dtype, gen, B=B, H=H):
    keep = (torch.rand(B, H, generator=gen) > 0.3).to(dtype)
    return keep / 0.7


def _lstm_inputs(coupled, dtype, seed=0, T=T, B=B, H=H):
    gen = torch.Generator().manual_seed(seed)
    G = 3 if coupled else 4
    xg = torch.randn(T, B, G * H, generator=gen, dtype=dtype).requires_grad_()
    h0 = torch.randn(B, H, generator=gen, dtype=dtype).requires_grad_()
    c0 = torch.randn(B, H, generator=gen, dtype=dtype).requires_grad_()
    w = (0.5 * torch.randn(G * H, H, generator=gen, dtype=dtype)).requires_grad_()
    return xg, h0, c0, w, gen


def _gru_inputs(dtype, seed=0, bias=True, T=T, B=B, H=H):
    gen = torch.Generator().manual_seed(seed)
    xg = torch.randn(T, B, 3 * H, generator=gen, dtype=dtype).requires_grad_()
    h0 = torch.randn(B, H, generator=gen, dtype=dtype).requires_grad_()
    w = (0.5 * torch.randn(3 * H, H, generator=gen, dtype=dtype)).requires_grad_()
    b = torch.randn(3 * H, generator=gen, dtype=dtype).requires_grad_() if bias else None
    return xg, h0, w, b, gen


def _compare(fast, reference, inputs, tol):
    """Outputs and gradients of every input (for random output gradients) agree within tol."""
    out_f, out_r = fast(), reference()
    for a, b in zip(out_f, out_r):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert (a - b).abs().max().item() < tol
    gen = torch.Generator().manual_seed(123)
    grads_out = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in out_r]
    g_f = torch.autograd.grad(out_f, inputs, grads_out)
    g_r = torch.autograd.grad(out_r, inputs, grads_out)
    for a, b in zip(g_f, g_r):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < tol


@pytest.mark.parametrize("coupled,masked,dropped", list(itertools.product([False, True], repeat=3)))
def test_lstm_scan_matches_reference_float64(coupled, masked, dropped):
    xg, h0, c0, w, gen = _lstm_inputs(coupled, torch.float64)
    mask = _mask(torch.float64) if masked else None
    h_mask = _h_mask(torch.float64, gen) if dropped else None
    kw = dict(coupled=coupled, mask=mask, h_mask=h_mask)
    _compare(lambda: lstm_fast(xg, h0, c0, w, **kw), lambda: lstm_ref(xg, h0, c0, w, **kw),
             [xg, h0, c0, w], TOL64)


@pytest.mark.parametrize("reset_after,masked,dropped,bias",
                         list(itertools.product([True, False], repeat=4)))
def test_gru_scan_matches_reference_float64(reset_after, masked, dropped, bias):
    xg, h0, w, b, gen = _gru_inputs(torch.float64, bias=bias)
    mask = _mask(torch.float64) if masked else None
    h_mask = _h_mask(torch.float64, gen) if dropped else None
    kw = dict(reset_after=reset_after, mask=mask, h_mask=h_mask)
    inputs = [xg, h0, w] + ([b] if bias else [])
    _compare(lambda: gru_fast(xg, h0, w, b, **kw), lambda: gru_ref(xg, h0, w, b, **kw),
             inputs, TOL64)


@pytest.mark.parametrize("coupled", [False, True])
def test_lstm_scan_float32(coupled):
    xg, h0, c0, w, gen = _lstm_inputs(coupled, torch.float32)
    kw = dict(coupled=coupled, mask=_mask(torch.float32), h_mask=_h_mask(torch.float32, gen))
    _compare(lambda: lstm_fast(xg, h0, c0, w, **kw), lambda: lstm_ref(xg, h0, c0, w, **kw),
             [xg, h0, c0, w], TOL32)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_scan_float32(reset_after):
    xg, h0, w, b, gen = _gru_inputs(torch.float32)
    kw = dict(reset_after=reset_after, mask=_mask(torch.float32), h_mask=_h_mask(torch.float32, gen))
    _compare(lambda: gru_fast(xg, h0, w, b, **kw), lambda: gru_ref(xg, h0, w, b, **kw),
             [xg, h0, w, b], TOL32)


@pytest.mark.parametrize("masked", [False, True])
def test_inference_path_matches_reference(masked):
    """Under no_grad the loop runs without autograd (reusing buffers); results must not change."""
    mask = _mask(torch.float64) if masked else None
    xg, h0, c0, w, gen = _lstm_inputs(False, torch.float64)
    h_mask = _h_mask(torch.float64, gen)
    with torch.no_grad():
        fast = lstm_fast(xg, h0, c0, w, mask=mask, h_mask=h_mask)
        ref = lstm_ref(xg, h0, c0, w, mask=mask, h_mask=h_mask)
        for a, b in zip(fast, ref):
            assert not a.requires_grad
            assert (a - b).abs().max().item() < TOL64
        for reset_after in (True, False):
            xg, h0, w, b, _ = _gru_inputs(torch.float64)
            fast = gru_fast(xg, h0, w, b, reset_after=reset_after, mask=mask, h_mask=h_mask)
            ref = gru_ref(xg, h0, w, b, reset_after=reset_after, mask=mask, h_mask=h_mask)
            for a, b_ in zip(fast, ref):
                assert (a - b_).abs().max().item() < TOL64


def test_inference_does_not_modify_inputs_and_outputs_do_not_alias():
    xg, h0, c0, w, _ = _lstm_inputs(False, torch.float64)
    saved = [t.detach().clone() for t in (xg, h0, c0, w)]
    with torch.no_grad():
        out, h_t, c_t = lstm_fast(xg, h0, c0, w)
        out_g, h_g = gru_fast(xg[..., :3 * H], h0, w[:3 * H], None)
    for before, after in zip(saved, (xg, h0, c0, w)):
        assert torch.equal(before, after)
    h_t.add_(1.0)
    c_t.add_(1.0)
    h_g.add_(1.0)
    assert not torch.equal(out[-1], h_t) and not torch.equal(out_g[-1], h_g)


def test_lstm_scan_matches_torch_lstm_float64():
    """lstm_scan with torch's weights reproduces torch.nn.LSTM (outputs and weight gradients)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, H, dtype=torch.float64)
    x = torch.randn(T, B, 5, dtype=torch.float64)
    out_t, (h_t, c_t) = lstm(x)
    xg = torch.nn.functional.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
    zeros = x.new_zeros(B, H)
    out, h, c = lstm_fast(xg, zeros, zeros, lstm.weight_hh_l0)
    assert (out - out_t).abs().max().item() < TOL64
    assert (h - h_t[0]).abs().max().item() < TOL64 and (c - c_t[0]).abs().max().item() < TOL64
    g_t = torch.autograd.grad(out_t.sum(), [lstm.weight_hh_l0, lstm.weight_ih_l0])
    g = torch.autograd.grad(out.sum(), [lstm.weight_hh_l0, lstm.weight_ih_l0])
    for a, b in zip(g, g_t):
        assert (a - b).abs().max().item() < TOL64


def test_gru_scan_matches_torch_gru_float64():
    torch.manual_seed(0)
    gru = torch.nn.GRU(5, H, dtype=torch.float64)
    x = torch.randn(T, B, 5, dtype=torch.float64)
    out_t, h_t = gru(x)
    xg = torch.nn.functional.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)
    out, h = gru_fast(xg, x.new_zeros(B, H), gru.weight_hh_l0, gru.bias_hh_l0)
    assert (out - out_t).abs().max().item() < TOL64 and (h - h_t[0]).abs().max().item() < TOL64
    params = [gru.weight_hh_l0, gru.bias_hh_l0, gru.weight_ih_l0]
    for a, b in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(out_t.sum(), params)):
        assert (a - b).abs().max().item() < TOL64


SMALL = dict(T=3, B=2, H=2)                           # gradcheck cost grows with the number of inputs


@pytest.mark.parametrize("coupled", [False, True])
def test_lstm_scan_gradcheck(coupled):
    xg, h0, c0, w, gen = _lstm_inputs(coupled, torch.float64, **SMALL)
    mask, h_mask = _mask(torch.float64, T=3, lengths=(3, 2)), _h_mask(torch.float64, gen, B=2, H=2)
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: lstm_fast(a, b, c, d, coupled=coupled, mask=mask, h_mask=h_mask), (xg, h0, c0, w))
    assert torch.autograd.gradcheck(lambda a, b, c, d: lstm_fast(a, b, c, d, coupled=coupled), (xg, h0, c0, w))


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_scan_gradcheck(reset_after):
    xg, h0, w, b, gen = _gru_inputs(torch.float64, **SMALL)
    mask, h_mask = _mask(torch.float64, T=3, lengths=(3, 2)), _h_mask(torch.float64, gen, B=2, H=2)
    assert torch.autograd.gradcheck(
        lambda a, c, d, e: gru_fast(a, c, d, e, reset_after=reset_after, mask=mask, h_mask=h_mask),
        (xg, h0, w, b))
    assert torch.autograd.gradcheck(lambda a, c, d, e: gru_fast(a, c, d, e, reset_after=reset_after),
                                    (xg, h0, w, b))


def test_only_some_inputs_need_grad():
    """Gradients are right when only the weights (or only the inputs) require grad."""
    xg, h0, c0, w, _ = _lstm_inputs(False, torch.float64)
    xg_c, h0_c, c0_c = xg.detach(), h0.detach(), c0.detach()
    (gw,) = torch.autograd.grad(lstm_fast(xg_c, h0_c, c0_c, w)[0].sum(), [w])
    (gw_ref,) = torch.autograd.grad(lstm_ref(xg_c, h0_c, c0_c, w)[0].sum(), [w])
    assert (gw - gw_ref).abs().max().item() < TOL64
    w_c = w.detach()
    (gx,) = torch.autograd.grad(lstm_fast(xg, h0_c, c0_c, w_c)[1].sum(), [xg])
    (gx_ref,) = torch.autograd.grad(lstm_ref(xg, h0_c, c0_c, w_c)[1].sum(), [xg])
    assert (gx - gx_ref).abs().max().item() < TOL64


def test_double_backward_falls_back_to_reference():
    """create_graph=True differentiates the reference loop: second derivatives match the reference."""
    xg, h0, c0, w, _ = _lstm_inputs(True, torch.float64)
    results = []
    for scan in (lstm_fast, lstm_ref):
        out = scan(xg, h0, c0, w, coupled=True)[0]
        (gx,) = torch.autograd.grad((out ** 2).sum(), [xg], create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), [w, h0]))
    for a, b in zip(*results):
        assert (a - b).abs().max().item() < TOL64
    xg, h0, w, b, _ = _gru_inputs(torch.float64)
    results = []
    for scan in (gru_fast, gru_ref):
        out = scan(xg, h0, w, b, reset_after=False)[0]
        (gw,) = torch.autograd.grad((out ** 2).sum(), [w], create_graph=True)
        results.append(torch.autograd.grad(gw.pow(2).sum(), [xg, b]))
    for a, b_ in zip(*results):
        assert (a - b_).abs().max().item() < TOL64


def test_in_place_change_of_output_is_caught():
    xg, h0, c0, w, _ = _lstm_inputs(False, torch.float64)
    out, _, _ = lstm_fast(xg, h0, c0, w)
    loss = out.sum()
    out.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_bad_shapes_raise_value_error():
    xg, h0, c0, w, _ = _lstm_inputs(False, torch.float64)
    with pytest.raises(ValueError, match="w_hh"):
        lstm_fast(xg, h0, c0, w[:3 * H])
    with pytest.raises(ValueError, match="xg must be"):
        lstm_fast(xg[0], h0, c0, w)
    with pytest.raises(ValueError, match="b_hh"):
        gru_fast(xg[..., :3 * H], h0, w[:3 * H], torch.zeros(H, dtype=torch.float64))


# --------------------------------------------------------------------------- layer norm in the fused kernels
def _ln_params(gen, dtype, rows, hidden=H, with_c=True, bias=True):
    """(b_hh, ln_hh, ln_c) with gains near 1 and random biases, all requiring grad."""
    def leaf(*shape, centre=0.0):
        return (centre + 0.5 * torch.randn(*shape, generator=gen, dtype=dtype)).requires_grad_()
    b = leaf(rows) if bias else None
    ln_hh = (leaf(rows, centre=1.0), leaf(rows))
    ln_c = (leaf(hidden, centre=1.0), leaf(hidden)) if with_c else None
    return b, ln_hh, ln_c


def _leaves(*items):
    return [t for item in items for t in (item if isinstance(item, tuple) else (item,)) if t is not None]


@pytest.mark.parametrize("coupled,masked,dropped,bias", list(itertools.product([False, True], repeat=4)))
def test_lstm_layer_norm_scan_matches_reference_float64(coupled, masked, dropped, bias):
    xg, h0, c0, w, gen = _lstm_inputs(coupled, torch.float64)
    b, ln_hh, ln_c = _ln_params(gen, torch.float64, w.shape[0], bias=bias)
    mask = _mask(torch.float64) if masked else None
    h_mask = _h_mask(torch.float64, gen) if dropped else None
    kw = dict(coupled=coupled, b=b, ln_hh=ln_hh, ln_c=ln_c, mask=mask, h_mask=h_mask)
    assert "LSTMScan" in type(lstm_fast(xg, h0, c0, w, **kw)[0].grad_fn).__name__   # the fused kernel, not the loop
    _compare(lambda: lstm_fast(xg, h0, c0, w, **kw), lambda: lstm_ref(xg, h0, c0, w, **kw),
             _leaves(xg, h0, c0, w, b, ln_hh, ln_c), TOL64)
    with torch.no_grad():                            # the inference loop (no saved buffers)
        for a, r in zip(lstm_fast(xg, h0, c0, w, **kw), lstm_ref(xg, h0, c0, w, **kw)):
            assert (a - r).abs().max().item() < TOL64


def test_lstm_layer_norm_scan_gradcheck():
    xg, h0, c0, w, gen = _lstm_inputs(False, torch.float64, **SMALL)
    b, ln_hh, ln_c = _ln_params(gen, torch.float64, w.shape[0], hidden=2)
    mask = _mask(torch.float64, T=3, lengths=(3, 2))

    def fn(xg, h0, c0, w, b, g_hh, b_ln, g_c, b_c):
        return lstm_fast(xg, h0, c0, w, b=b, ln_hh=(g_hh, b_ln), ln_c=(g_c, b_c), mask=mask)

    assert torch.autograd.gradcheck(fn, (xg, h0, c0, w, b, *ln_hh, *ln_c))


def test_lstm_layer_norm_double_backward_falls_back_to_reference():
    xg, h0, c0, w, gen = _lstm_inputs(False, torch.float64)
    b, ln_hh, ln_c = _ln_params(gen, torch.float64, w.shape[0])
    results = []
    for scan in (lstm_fast, lstm_ref):
        out = scan(xg, h0, c0, w, b=b, ln_hh=ln_hh, ln_c=ln_c)[0]
        (gx,) = torch.autograd.grad((out ** 2).sum(), [xg], create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), [w, ln_hh[0], ln_c[0]]))
    for a, b_ in zip(*results):
        assert (a - b_).abs().max().item() < TOL64


@pytest.mark.parametrize("masked,dropped,bias", list(itertools.product([False, True], repeat=3)))
def test_gru_layer_norm_scan_matches_reference_float64(masked, dropped, bias):
    xg, h0, w, _, gen = _gru_inputs(torch.float64)
    b, ln_hh, _ = _ln_params(gen, torch.float64, w.shape[0], with_c=False, bias=bias)
    mask = _mask(torch.float64) if masked else None
    h_mask = _h_mask(torch.float64, gen) if dropped else None
    kw = dict(ln_hh=ln_hh, mask=mask, h_mask=h_mask)
    assert "GRUScan" in type(gru_fast(xg, h0, w, b, **kw)[0].grad_fn).__name__   # the fused kernel, not the loop
    _compare(lambda: gru_fast(xg, h0, w, b, **kw), lambda: gru_ref(xg, h0, w, b, **kw),
             _leaves(xg, h0, w, b, ln_hh), TOL64)
    with torch.no_grad():
        for a, r in zip(gru_fast(xg, h0, w, b, **kw), gru_ref(xg, h0, w, b, **kw)):
            assert (a - r).abs().max().item() < TOL64


def test_gru_layer_norm_scan_gradcheck_and_paper_form_fallback():
    xg, h0, w, _, gen = _gru_inputs(torch.float64, **SMALL)
    b, ln_hh, _ = _ln_params(gen, torch.float64, w.shape[0], hidden=2, with_c=False)
    mask = _mask(torch.float64, T=3, lengths=(3, 2))
    assert torch.autograd.gradcheck(lambda *a: gru_fast(*a[:4], ln_hh=a[4:], mask=mask), (xg, h0, w, b, *ln_hh))
    out = gru_fast(xg, h0, w, b, reset_after=False, ln_hh=ln_hh)[0]  # no fused kernel: the general loop
    assert "GRUScan" not in type(out.grad_fn).__name__
    results = []
    for scan in (gru_fast, gru_ref):
        out = scan(xg, h0, w, b, ln_hh=ln_hh)[0]
        (gw,) = torch.autograd.grad((out ** 2).sum(), [w], create_graph=True)
        results.append(torch.autograd.grad(gw.pow(2).sum(), [xg, ln_hh[0]]))
    for a, b_ in zip(*results):
        assert (a - b_).abs().max().item() < TOL64


@pytest.mark.parametrize("coupled,masked,dropped", list(itertools.product([False, True], repeat=3)))
def test_lstm_input_norm_in_the_kernel_matches_reference_float64(coupled, masked, dropped):
    """ln_ih given: the raw projection is normalised inside the fused kernel, step by step (gains and gradients
    of every tensor at 1e-10, a folded recurrent-norm bias (None) included)."""
    xg, h0, c0, w, gen = _lstm_inputs(coupled, torch.float64)
    b, ln_hh, ln_c = _ln_params(gen, torch.float64, w.shape[0])
    _, ln_ih, _ = _ln_params(gen, torch.float64, w.shape[0], with_c=False, bias=False)
    mask = _mask(torch.float64) if masked else None
    h_mask = _h_mask(torch.float64, gen) if dropped else None
    for hh in (ln_hh, (ln_hh[0], None)):
        kw = dict(coupled=coupled, b=b, ln_hh=hh, ln_c=ln_c, ln_ih=ln_ih, mask=mask, h_mask=h_mask)
        assert "LSTMScan" in type(lstm_fast(xg, h0, c0, w, **kw)[0].grad_fn).__name__
        _compare(lambda kw=kw: lstm_fast(xg, h0, c0, w, **kw), lambda kw=kw: lstm_ref(xg, h0, c0, w, **kw),
                 _leaves(xg, h0, c0, w, b, hh, ln_c, ln_ih), TOL64)
        with torch.no_grad():
            for a, r in zip(lstm_fast(xg, h0, c0, w, **kw), lstm_ref(xg, h0, c0, w, **kw)):
                assert (a - r).abs().max().item() < TOL64


@pytest.mark.parametrize("masked,dropped", list(itertools.product([False, True], repeat=2)))
def test_gru_input_norm_in_the_kernel_matches_reference_float64(masked, dropped):
    xg, h0, w, _, gen = _gru_inputs(torch.float64)
    b, ln_hh, _ = _ln_params(gen, torch.float64, w.shape[0], with_c=False)
    _, ln_ih, _ = _ln_params(gen, torch.float64, w.shape[0], with_c=False, bias=False)
    mask = _mask(torch.float64) if masked else None
    h_mask = _h_mask(torch.float64, gen) if dropped else None
    kw = dict(ln_hh=ln_hh, ln_ih=ln_ih, mask=mask, h_mask=h_mask)
    assert "GRUScan" in type(gru_fast(xg, h0, w, b, **kw)[0].grad_fn).__name__
    _compare(lambda: gru_fast(xg, h0, w, b, **kw), lambda: gru_ref(xg, h0, w, b, **kw),
             _leaves(xg, h0, w, b, ln_hh, ln_ih), TOL64)
    with torch.no_grad():
        for a, r in zip(gru_fast(xg, h0, w, b, **kw), gru_ref(xg, h0, w, b, **kw)):
            assert (a - r).abs().max().item() < TOL64
