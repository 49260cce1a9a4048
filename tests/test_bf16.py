"""bf16 training (``train.bf16: true``): the scans' bf16 matmuls, the fused path under autocast, a tiny training.

On a CPU without native bf16 (oneDNN's AVX512-BF16 / AMX) :func:`bf16_matmuls` changes nothing; the tests that
need the bf16 kernels are skipped there, the others check exactly that.
"""
from __future__ import annotations

import pytest
import torch

from hybridrnn.nn import GRU, LSTM, _scan
from hybridrnn.nn._scan import _native_bf16, bf16_matmuls, gru_scan, lstm_scan
from hybridrnn.nn.cells import GRUParams, LSTMParams

NATIVE = _native_bf16()
needs_native = pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
ALL_PARTS = frozenset({"forward", "backward", "weight"})
T, B, H = 12, 3, 8
# bf16 keeps 8 significant bits: a product rounded once is within 2^-9 relative; over a short sequence the
# outputs and gradients stay within 2e-2 of float32 (relative to their norm), measured 1e-3 - 3e-3 at T=200
BF16_RTOL = 2e-2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _scan_case(cell: str, masked: bool, dropped: bool):
    g = torch.Generator().manual_seed(5)
    G = 4 if cell == "lstm" else 3
    xg = torch.randn(T, B, G * H, generator=g, requires_grad=True)
    h0 = torch.randn(B, H, generator=g, requires_grad=True)
    c0 = torch.randn(B, H, generator=g, requires_grad=True)
    w = (torch.randn(G * H, H, generator=g) / H ** 0.5).requires_grad_()
    b = torch.randn(G * H, generator=g, requires_grad=True)
    kw = {}
    if masked:
        kw["mask"] = (torch.rand(T, B, 1, generator=g) > 0.2).float()
    if dropped:
        kw["h_mask"] = torch.rand(B, H, generator=g) + 0.5
    d_out = torch.randn(T, B, H, generator=g)
    if cell == "lstm":
        leaves = (xg, h0, c0, w)
        fn = lambda: lstm_scan(xg, h0, c0, LSTMParams(w), **kw)  # noqa: E731
    else:
        leaves = (xg, h0, w, b)
        fn = lambda: gru_scan(xg, h0, GRUParams(w, b), **kw)  # noqa: E731

    def run(on: bool, parts=_scan.BF16_PARTS):
        for v in leaves:
            v.grad = None
        old = _scan.BF16_PARTS
        _scan.BF16_PARTS = parts
        try:
            with bf16_matmuls(on):
                out, *state = fn()
        finally:
            _scan.BF16_PARTS = old
        ((out * d_out).sum() + sum(s.sum() for s in state)).backward()
        return [out.detach(), *(s.detach() for s in state)], [v.grad.clone() for v in leaves]

    return run


@needs_native
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("masked,dropped", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("parts", [frozenset({"weight"}), ALL_PARTS], ids=["default", "all"])
def test_bf16_scan_values_and_gradients_within_bf16_tolerance(cell, masked, dropped, parts):
    """The scans with bf16 matmuls (the shipped part, and every part) against float32: outputs, final states
    and gradients of every input within bf16 rounding, and float32 throughout."""
    run = _scan_case(cell, masked, dropped)
    ref_out, ref_grads = run(False)
    out, grads = run(True, parts)
    assert all(v.dtype == torch.float32 for v in out + grads)
    for a, b in zip(out + grads, ref_out + ref_grads):
        assert _rel(a, b) < BF16_RTOL
    if parts == ALL_PARTS:          # the bf16 products do change the numbers (the block is not a no-op)
        assert not torch.equal(out[0], ref_out[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_float32_outside_the_block_and_float64_inside_are_unchanged(cell):
    """Without bf16_matmuls (or with it off) the scans are bit-identical; float64 tensors ignore it."""
    run = _scan_case(cell, True, True)
    ref_out, ref_grads = run(False)
    out, grads = run(False, ALL_PARTS)
    assert all(torch.equal(a, b) for a, b in zip(out + grads, ref_out + ref_grads))
    g = torch.Generator().manual_seed(1)
    xg, h0 = torch.randn(T, B, 3 * H, generator=g, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    w = torch.randn(3 * H, H, generator=g, dtype=torch.float64)
    with bf16_matmuls():
        inside = gru_scan(xg, h0, GRUParams(w, None))[0]
    assert torch.equal(inside, gru_scan(xg, h0, GRUParams(w, None))[0])


def test_bf16_matmuls_is_off_without_native_bf16(monkeypatch):
    """On a CPU without native bf16 the block changes nothing (bf16 would be emulated, and slower)."""
    monkeypatch.setattr(_scan, "_native_bf16", lambda: False)
    x = torch.zeros(2, 2)
    with bf16_matmuls():
        assert _scan._low_dtype(x) is None
    assert _scan._low_dtype(x) is None


def test_fused_path_under_autocast_runs_float32_and_keeps_a_float32_cell():
    """Under CPU bf16 autocast the fused (oneDNN) path runs in float32: oneDNN's bf16 LSTM rounds the cell state
    to bf16 at every step, so a cell adding tanh(0.1) per step would stop at 32 instead of reaching 200."""
    m = LSTM(1, 4, path="fused")
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.bias_ih_l0[:8] = 20.0                  # input and forget gates open
        m.bias_ih_l0[8:12] = 0.1003              # g = tanh(0.1003) ~ 0.1
        m.bias_ih_l0[12:] = 20.0
    x = torch.zeros(1, 2000, 1)
    with torch.no_grad():
        ref_out, (ref_h, ref_c) = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, (h, c) = m(x)
    assert out.dtype == c.dtype == torch.float32
    assert torch.equal(out, ref_out) and torch.equal(c, ref_c)
    assert c.min() > 199.0


@pytest.mark.parametrize("cls,path", [(LSTM, "fused"), (LSTM, "custom"), (GRU, "custom"), (GRU, "fused")])
def test_bf16_training_loss_close_to_float32(cls, path):
    """A tiny regression trained as the Trainer does with train.bf16 (autocast around forward and loss, backward
    and Adam outside) ends within 5% of the float32 run's loss, from the same start; weights, gradients and
    optimizer state stay float32."""
    def fit(bf16: bool) -> tuple[float, float, torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        rnn, head = cls(4, 16, path=path), torch.nn.Linear(16, 1)
        model = torch.nn.ModuleList([rnn, head])
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 20, 4, generator=g)
        y = x[:, :, 0].cumsum(1)[:, -1:] / 5 + 0.1 * torch.randn(64, 1, generator=g)
        losses = []
        for _ in range(40):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out, _ = rnn(x)
                loss = torch.nn.functional.mse_loss(head(out[:, -1]).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses[0], losses[-1], model, opt

    first32, last32, _, _ = fit(False)
    first16, last16, model, opt = fit(True)
    assert last32 < 0.5 * first32 and last16 < 0.5 * first16
    assert abs(last16 - last32) <= 0.05 * last32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if v.is_floating_point())
