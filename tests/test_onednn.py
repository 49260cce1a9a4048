"""hybridrnn.nn._onednn: the custom path's whole-sequence float32 products on oneDNN, against torch's ops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hybridrnn.nn import _onednn
from hybridrnn.nn.cells import input_projection


def _inputs(rows_t=40, batch=8, features=6, out=12, dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(rows_t, batch, features, dtype=dtype).transpose(0, 1).requires_grad_()   # a strided view
    w = torch.randn(out, features, dtype=dtype, requires_grad=True)
    b = torch.randn(out, dtype=dtype, requires_grad=True)
    return x, w, b


def _values_and_grads(fn, x, w, b):
    y = fn(x, w, b)
    weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    return (y, *torch.autograd.grad((y * weight).sum(), [x, w, b]))


@pytest.mark.skipif(not _onednn.available(), reason="this torch build has no oneDNN linear op")
def test_linear_matches_f_linear_with_gradients(monkeypatch):
    x, w, b = _inputs()
    assert _onednn.applies(x, w, 320)
    calls = []
    original = _onednn._product
    monkeypatch.setattr(_onednn, "_product", lambda *a: calls.append(1) or original(*a))
    ours = _values_and_grads(input_projection, x, w, b)
    assert len(calls) == 3                          # forward, input gradient, weight gradient
    ref = _values_and_grads(F.linear, x, w, b)
    for a, r in zip(ours, ref):
        assert a.shape == r.shape
        assert (a - r).abs().max() <= 1e-5 * r.abs().max()


def test_what_stays_on_torch_ops(monkeypatch):
    """float64, small products, autocast, traced calls and a build without the op use F.linear exactly."""
    x, w, b = _inputs(dtype=torch.float64)
    assert not _onednn.applies(x, w, 320)
    assert all(torch.equal(a, r) for a, r in zip(_values_and_grads(input_projection, x, w, b),
                                                  _values_and_grads(F.linear, x, w, b)))
    x32, w32, b32 = _inputs(rows_t=4)
    assert not _onednn.applies(x32, w32, 32)        # below MIN_ROWS
    x32, w32, b32 = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _onednn.applies(x32, w32, 320)
    monkeypatch.setattr(_onednn, "available", lambda: False)
    assert not _onednn.applies(x32, w32, 320)
    assert torch.equal(input_projection(x32, w32, b32), F.linear(x32, w32, b32))


@pytest.mark.skipif(not _onednn.available(), reason="this torch build has no oneDNN linear op")
def test_weight_grad_and_double_backward():
    torch.manual_seed(1)
    d, x = torch.randn(300, 16), torch.randn(300, 5)
    for a, b in ((d, x), (x, d)):                   # either operand the larger
        assert (_onednn.weight_grad(a, b) - a.t() @ b).abs().max() < 1e-4
        assert _onednn.weight_grad(a, b).is_contiguous()
    x, w, b = _inputs()
    y = input_projection(x, w, b)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), [x], create_graph=True)
    (gw,) = torch.autograd.grad(gx.sum(), [w])
    y_ref = F.linear(x, w, b)
    (gx_ref,) = torch.autograd.grad(y_ref.pow(2).sum(), [x], create_graph=True)
    (gw_ref,) = torch.autograd.grad(gx_ref.sum(), [w])
    assert (gw - gw_ref).abs().max() <= 1e-4 * gw_ref.abs().max()


def test_linear_module_is_an_nn_linear_with_the_same_state():
    torch.manual_seed(2)
    ours = _onednn.Linear(6, 300)
    ref = torch.nn.Linear(6, 300)
    ref.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.Linear) and repr(ours) == repr(ref)
    x = torch.randn(50, 7, 6)
    assert (ours(x) - ref(x)).abs().max() < 1e-5
