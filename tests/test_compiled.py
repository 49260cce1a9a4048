"""The compiled small-batch kernels (hybridrnn.nn._compiled): parity with torch and the pure-torch path in
float64 (values and gradients), where they are used and where the layers fall back, and the fallback itself
(HYBRIDRNN_NO_COMPILE=1, a failed build)."""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from torch import nn

from hybridrnn.nn import _compiled
from hybridrnn.nn._scan import gru_loop, lstm_loop
from hybridrnn.nn.cells import GRUParams, LSTMParams
from hybridrnn.nn.recurrent import GRU, LSTM

F64 = torch.float64


@pytest.fixture(scope="module")
def kernels():
    """The built extension; a skip only where there is no C++ compiler, a failure for any other build error."""
    if _compiled.disabled():
        pytest.skip("HYBRIDRNN_NO_COMPILE is set")
    module = _compiled.kernels()
    if module is None:
        if shutil.which("c++") is None and shutil.which("g++") is None:
            pytest.skip(f"no C++ compiler: {_compiled.build_error()}")
        pytest.fail(f"the compiled kernel did not build: {_compiled.build_error()}")
    return module


def _count_calls(monkeypatch, name: str) -> list:
    calls = []
    original = getattr(_compiled, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_compiled, name, wrapper)
    return calls


def _max_diff(a, b) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b))


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("layers,bias,bidirectional", [(1, True, False), (2, False, True), (3, True, False)])
def test_sequence_matches_torch_float64(kernels, monkeypatch, cls, layers, bias, bidirectional):
    torch.manual_seed(0)
    ours = cls(3, 5, layers, bias=bias, bidirectional=bidirectional, path="custom").to(F64)
    ref = ours.to_torch()
    calls = _count_calls(monkeypatch, "lstm_sequence" if cls is LSTM else "gru_sequence")
    x = torch.randn(2, 7, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(layers * (2 if bidirectional else 1), 2, 5, dtype=F64, requires_grad=True)
    state = (h0, torch.randn_like(h0).requires_grad_()) if cls is LSTM else h0
    out, last = ours(x, state)
    out_ref, last_ref = ref(x, state)
    flat = (out, *last) if cls is LSTM else (out, last)
    flat_ref = (out_ref, *last_ref) if cls is LSTM else (out_ref, last_ref)
    assert calls and _max_diff(flat, flat_ref) < 1e-10
    weights = [torch.randn_like(t) for t in flat]
    wrt = [x, *(state if cls is LSTM else (state,))]
    grads = torch.autograd.grad(flat, wrt + list(ours.parameters()), weights)
    grads_ref = torch.autograd.grad(flat_ref, wrt + list(ref.parameters()), weights)
    assert _max_diff(grads, grads_ref) < 1e-10


def test_gradcheck_lstm_sequence(kernels):
    torch.manual_seed(1)
    xg = torch.randn(4, 2, 12, dtype=F64, requires_grad=True)
    h0, c0 = (torch.randn(2, 3, dtype=F64, requires_grad=True) for _ in range(2))
    w = (0.5 * torch.randn(12, 3, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(_compiled.lstm_sequence, (xg, h0, c0, w))


def test_gradcheck_gru_sequence(kernels):
    torch.manual_seed(2)
    xg = torch.randn(4, 2, 9, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    w = (0.5 * torch.randn(9, 3, dtype=F64)).requires_grad_()
    b = torch.randn(9, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(_compiled.gru_sequence, (xg, h0, w, b))
    assert torch.autograd.gradcheck(lambda *a: _compiled.gru_sequence(*a, None), (xg, h0, w))


def test_double_backward_matches_the_general_loop(kernels):
    torch.manual_seed(3)
    xg = torch.randn(5, 2, 12, dtype=F64, requires_grad=True)
    h0, c0 = torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64)
    w = (0.5 * torch.randn(12, 3, dtype=F64)).requires_grad_()
    grads = []
    for run in (lambda: _compiled.lstm_sequence(xg, h0, c0, w)[0], lambda: lstm_loop(xg, h0, c0, LSTMParams(w))[0]):
        (gx,) = torch.autograd.grad(run().pow(2).sum(), [xg], create_graph=True)
        grads.append(torch.autograd.grad(gx.pow(2).sum(), [w])[0])
    assert (grads[0] - grads[1]).abs().max() < 1e-10
    xg3 = torch.randn(5, 2, 9, dtype=F64, requires_grad=True)
    w3, b3 = (0.5 * torch.randn(9, 3, dtype=F64)).requires_grad_(), torch.randn(9, dtype=F64)
    grads = []
    for run in (lambda: _compiled.gru_sequence(xg3, h0, w3, b3)[0], lambda: gru_loop(xg3, h0, GRUParams(w3, b3))[0]):
        (gx,) = torch.autograd.grad(run().pow(2).sum(), [xg3], create_graph=True)
        grads.append(torch.autograd.grad(gx.pow(2).sum(), [w3])[0])
    assert (grads[0] - grads[1]).abs().max() < 1e-10


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("layers,bias", [(1, True), (2, False), (3, True)])
def test_step_matches_torch_float64(kernels, monkeypatch, cls, layers, bias):
    torch.manual_seed(4)
    ours = cls(4, 6, layers, bias=bias).to(F64).eval()
    ref = ours.to_torch()
    calls = _count_calls(monkeypatch, "kernels")
    x = torch.randn(3, 5, 4, dtype=F64)
    with torch.no_grad():
        out_ref, last_ref = ref(x)
        state = None
        for t in range(5):
            y, state = ours.step(x[:, t], state)
            assert (y - out_ref[:, t]).abs().max() < 1e-10
    assert calls
    flat = state if cls is LSTM else (state,)
    flat_ref = last_ref if cls is LSTM else (last_ref,)
    assert _max_diff(flat, flat_ref) < 1e-10


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_float32_close_to_torch(kernels, cls):
    torch.manual_seed(5)
    ours = cls(8, 16, 2, path="custom")
    ref = ours.to_torch()
    x = torch.randn(1, 50, 8, requires_grad=True)
    out, _ = ours(x)
    out_ref, _ = ref(x)
    assert (out - out_ref).abs().max() < 1e-5
    g = torch.autograd.grad(out.sum(), [x, *ours.parameters()])
    g_ref = torch.autograd.grad(out_ref.sum(), [x, *ref.parameters()])
    assert _max_diff(g, g_ref) < 1e-4
    ours.eval()
    with torch.no_grad():
        y, _ = ours.step(x[:, 0].detach())
    assert (y - out_ref[:, 0]).abs().max() < 1e-5


@pytest.mark.parametrize("cls,options", [
    (GRU, {"reset_after": False}),
    (GRU, {"layer_norm": True})])
def test_options_the_kernels_lack_fall_back(kernels, monkeypatch, cls, options):
    layer = cls(3, 4, **options).to(F64)
    seq_calls = _count_calls(monkeypatch, "lstm_sequence" if cls is LSTM else "gru_sequence")
    layer(torch.randn(2, 5, 3, dtype=F64))[0].sum().backward()
    layer.eval()
    with torch.no_grad():
        layer.step(torch.randn(2, 3, dtype=F64))
    assert not seq_calls
    assert "compiled=" not in repr(layer)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_lengths_and_large_batches_fall_back(kernels, monkeypatch, cls):
    """Padding masks always take the scan; batches above MAX_BATCH only with more intra-op threads than were
    measured (batch_limit)."""
    layer = cls(3, 4, path="custom").to(F64)
    calls = _count_calls(monkeypatch, "lstm_sequence" if cls is LSTM else "gru_sequence")
    layer(torch.randn(2, 5, 3, dtype=F64), lengths=torch.tensor([5, 3]))
    assert not calls
    monkeypatch.setattr(_compiled, "MEASURED_THREADS", 0)         # as if torch had more threads than measured
    assert _compiled.batch_limit() == _compiled.MAX_BATCH
    layer(torch.randn(_compiled.MAX_BATCH + 1, 5, 3, dtype=F64))
    assert not calls
    layer(torch.randn(_compiled.MAX_BATCH, 5, 3, dtype=F64))
    assert len(calls) == 1
    monkeypatch.setattr(_compiled, "MEASURED_THREADS", torch.get_num_threads())
    assert _compiled.batch_limit() is None
    layer(torch.randn(4 * _compiled.MAX_BATCH, 5, 3, dtype=F64))
    assert len(calls) == 2
    assert "compiled='step(), sequences'" in repr(layer)


def _ln_params(B, H, has_b, in_norm, dtype=F64):
    torch.manual_seed(11)

    def make(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    p = LSTMParams(make(4 * H, H), make(4 * H) if has_b else None, (make(4 * H), None), (make(H), make(H)), False,
                   (make(4 * H), make(4 * H)) if in_norm else None)
    return p, (make(6, B, 4 * H), make(B, H), make(B, H))


def _ln_tensors(p, inputs):
    return [v for v in (*inputs, p.w_hh, p.b_hh, p.ln_hh[0], *p.ln_c, *(p.ln_ih or ())) if v is not None]


@pytest.mark.parametrize("gemm", [False, True])
@pytest.mark.parametrize("has_b,in_norm", [(True, True), (False, True), (True, False), (False, False)])
def test_layer_norm_lstm_sequence_matches_the_general_loop_float64(kernels, monkeypatch, has_b, in_norm, gemm):
    """The compiled layer-norm LSTM (with and without the recurrent bias and the in-kernel input norm) against the
    autograd loop of cells.lstm_step, values and every gradient to 1e-10; ``gemm``: the products through torch's
    sgemm (two threads, from batch 1), else the kernel's own loops; batch 17 runs the row blocks and remainders."""
    if gemm:
        previous_rows, previous_threads = kernels.gemm_rows(), torch.get_num_threads()
        kernels.set_gemm_rows(1)
        torch.set_num_threads(2)
    try:
        for B in (1, 17):
            p, (xg, h0, c0) = _ln_params(B, 5, has_b, in_norm)
            assert _compiled.ln_sequence_ok(p)
            tensors = _ln_tensors(p, (xg, h0, c0))
            weight = torch.linspace(-1, 1, 6 * B * 5, dtype=F64).view(6, B, 5)
            results = []
            for run in (_compiled.lstm_ln_sequence, lstm_loop):
                out, h_t, c_t = run(xg, h0, c0, p)
                loss = (out * weight).sum() + h_t.pow(2).sum() + (0.3 * c_t).sum()
                results.append((out, h_t, c_t, *torch.autograd.grad(loss, tensors)))
            assert _max_diff(results[0], results[1]) < 1e-10
            with torch.no_grad():
                assert _max_diff(_compiled.lstm_ln_sequence(xg, h0, c0, p), results[1][:3]) < 1e-10
    finally:
        if gemm:
            kernels.set_gemm_rows(previous_rows)
            torch.set_num_threads(previous_threads)


def test_layer_norm_lstm_gradcheck_and_double_backward(kernels):
    p, (xg, h0, c0) = _ln_params(2, 3, True, True)

    def run(x, w, gain):
        return _compiled.lstm_ln_sequence(x, h0, c0, p._replace(w_hh=w, ln_hh=(gain, None)))[0]

    inputs = (xg.detach()[:3].requires_grad_(), p.w_hh, p.ln_hh[0])
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


def test_layer_norm_lstm_layer_runs_the_compiled_loop_with_the_fallback_results(kernels, monkeypatch):
    """A 2-layer bidirectional LSTM(layer_norm=True) runs one compiled call per layer and direction at a batch above
    MAX_BATCH, with the values and gradients of the pure-torch scan (float64, 1e-10); padding masks and recurrent
    dropout take the scan."""
    torch.manual_seed(12)
    layer = LSTM(3, 5, 2, bidirectional=True, layer_norm=True).to(F64)
    assert "compiled='sequences'" in repr(layer)
    calls = _count_calls(monkeypatch, "lstm_ln_sequence")
    x = torch.randn(_compiled.MAX_BATCH + 3, 4, 3, dtype=F64, requires_grad=True)
    results = []
    for env in ("0", "1"):
        monkeypatch.setenv(_compiled.ENV_DISABLE, env)
        out, (h, c) = layer(x)
        results.append((out, h, c, *torch.autograd.grad(out.pow(2).sum() + c.sum(), [x, *layer.parameters()])))
    assert len(calls) == 4
    assert _max_diff(results[0], results[1]) < 1e-10
    monkeypatch.setenv(_compiled.ENV_DISABLE, "0")
    calls.clear()
    layer(x, lengths=torch.tensor([4, 2] + [3] * (x.shape[0] - 2)))
    dropped = LSTM(3, 5, layer_norm=True, recurrent_dropout=0.2).to(F64)
    dropped(x)
    assert not calls


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_step_with_a_graph_falls_back_and_keeps_gradients(kernels, monkeypatch, cls):
    layer = cls(3, 4).to(F64)
    monkeypatch.setattr(_compiled, "kernels", lambda: pytest.fail("compiled step() cannot record a graph"))
    y, _ = layer.step(torch.randn(2, 3, dtype=F64))
    y.sum().backward()
    assert layer.weight_hh_l0.grad is not None


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_no_compile_env_gives_the_fallback_with_the_same_results(kernels, monkeypatch, cls):
    torch.manual_seed(6)
    layer = cls(3, 5, 2, path="custom").to(F64)
    x = torch.randn(2, 6, 3, dtype=F64, requires_grad=True)
    results = []
    for env in ("0", "1"):
        monkeypatch.setenv(_compiled.ENV_DISABLE, env)
        seq_calls = _count_calls(monkeypatch, "lstm_sequence" if cls is LSTM else "gru_sequence")
        out, _ = layer(x)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, *layer.parameters()])
        with torch.no_grad():
            y, _ = layer.step(x[:, 0])
        assert bool(seq_calls) == (env == "0")
        assert ("compiled=" in repr(layer)) == (env == "0")
        results.append((out, *grads, y))
    assert _compiled.kernels() is None
    assert _max_diff(results[0], results[1]) < 1e-10


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    bad = tmp_path / "bad.cpp"
    bad.write_text("#error deliberately broken\n")
    for name, value in (("SOURCE", bad), ("_tried", False), ("_module", None), ("_error", None)):
        monkeypatch.setattr(_compiled, name, value)
    monkeypatch.setenv("HYBRIDRNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(_compiled.ENV_DISABLE, raising=False)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert _compiled.kernels() is None
    assert _compiled.build_error()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _compiled.kernels() is None          # no second warning, no second build
        layer = LSTM(3, 4).eval()
        with torch.no_grad():
            y, _ = layer.step(torch.randn(1, 3))
        out, _ = LSTM(3, 4, path="custom")(torch.randn(1, 4, 3))
    assert y.shape == (1, 4) and out.shape == (1, 4, 4)


def test_build_key_follows_the_source(monkeypatch, tmp_path):
    key = _compiled.build_key()
    other = tmp_path / "other.cpp"
    other.write_bytes(_compiled.SOURCE.read_bytes() + b"\n// changed\n")
    monkeypatch.setattr(_compiled, "SOURCE", other)
    assert _compiled.build_key() != key


def test_layers_match_nn_modules_built_from_torch(kernels):
    """from_torch + the compiled path against torch.nn.LSTM / GRU at batch 1 (the case the kernels are for)."""
    torch.manual_seed(7)
    for torch_cls, cls in ((nn.LSTM, LSTM), (nn.GRU, GRU)):
        ref = torch_cls(4, 8, 2, batch_first=True).to(F64)
        ours = cls.from_torch(ref, path="custom")
        x = torch.randn(1, 20, 4, dtype=F64)
        assert (ours(x)[0] - ref(x)[0]).abs().max() < 1e-10


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_traced_calls_run_the_pure_torch_path(kernels, monkeypatch, cls):
    layer = cls(3, 4, path="custom").to(F64).eval()
    x = torch.randn(1, 5, 3, dtype=F64)
    monkeypatch.setattr(_compiled, "kernels", lambda: pytest.fail("the kernels cannot read traced tensors"))
    with torch.no_grad():
        traced = torch.jit.trace(layer, (x,), check_trace=False, strict=False)
    monkeypatch.undo()
    with torch.no_grad():
        assert (traced(x)[0] - layer(x)[0]).abs().max() < 1e-12


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-10), (torch.float32, 2e-5)])
def test_blocked_products_at_wider_sizes(kernels, cls, dtype, tol):
    """Hidden 70 and batch 5: the kernels' 64-column blocks, row blocks and remainders all run."""
    torch.manual_seed(8)
    ours = cls(70, 70, path="custom").to(dtype)
    ref = ours.to_torch()
    x = torch.randn(5, 4, 70, dtype=dtype, requires_grad=True)
    out, _ = ours(x)
    out_ref, _ = ref(x)
    assert (out - out_ref).abs().max() < tol
    g = torch.autograd.grad(out.pow(2).sum(), [x, *ours.parameters()])
    g_ref = torch.autograd.grad(out_ref.pow(2).sum(), [x, *ref.parameters()])
    assert _max_diff(g, g_ref) < 10 * tol
    ours.eval()
    with torch.no_grad():
        y, _ = ours.step(x[:, 0])
    assert (y - out_ref[:, 0]).abs().max() < tol


def test_auto_lstm_runs_the_compiled_loop_where_the_rule_says(kernels, monkeypatch):
    """path="auto" keeps oneDNN for an LSTM but runs the forwards auto_compiled_lstm names on the compiled loop,
    with the same values and gradients as oneDNN (float64); padding and other forwards stay on oneDNN."""
    from hybridrnn.nn.recurrent import auto_compiled_lstm

    assert [auto_compiled_lstm(b, h, grad) for b, h, grad in (
        (1, 64, True), (32, 64, True), (1, 128, True), (8, 128, True), (64, 128, True), (32, 256, True),
        (1, 64, False), (2, 64, False), (1, 128, False))] == [True, True, False, True, True, False, True, False, False]
    torch.manual_seed(7)
    layer = LSTM(3, 5, 2).to(F64)
    assert layer.path == "fused"
    reference = layer.to_torch()
    calls = _count_calls(monkeypatch, "lstm_sequence")
    x = torch.randn(9, 6, 3, dtype=F64, requires_grad=True)
    out, (h, c) = layer(x)
    assert len(calls) == 2                                   # one per layer
    ref, (rh, rc) = reference(x)
    assert _max_diff((out, h, c), (ref, rh, rc)) < 1e-10
    grads = torch.autograd.grad(out.pow(2).sum(), [x, *layer.parameters()])
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), [x, *reference.parameters()])
    assert _max_diff(grads, ref_grads) < 1e-10
    calls.clear()
    layer(torch.randn(2, 6, 3, dtype=F64), lengths=torch.tensor([6, 4]))
    assert not calls
    with torch.no_grad():
        layer(torch.randn(2, 6, 3, dtype=F64))               # inference above batch 1: oneDNN
        assert not calls
        layer(torch.randn(1, 6, 3, dtype=F64))
        assert calls
    assert "custom where auto_compiled_lstm says" in repr(layer)
    assert [layer.runs_path(b, grad) for b, grad in ((9, True), (1, False), (2, False))] == ["custom", "custom",
                                                                                              "fused"]
    monkeypatch.setattr(_compiled, "MEASURED_THREADS", 0)    # more threads than measured: batch_limit() applies
    assert layer.runs_path(_compiled.MAX_BATCH + 1, True) == "fused"
    calls.clear()
    fused = LSTM(3, 5, path="fused").to(F64)                # asked for by name: never switched
    fused(torch.randn(1, 6, 3, dtype=F64))
    assert not calls


def test_environment_records_the_paths_and_the_kernel_state(kernels, monkeypatch):
    from hybridrnn.train.environment import collect_environment

    model = nn.Sequential(LSTM(3, 4), GRU(4, 4))
    env = collect_environment("cpu", model=model)
    assert env["recurrent_paths"] == {"0": "fused", "1": "custom"}
    assert env["compiled_kernel"] == "built"
    monkeypatch.setenv(_compiled.ENV_DISABLE, "1")
    assert collect_environment("cpu", model=model)["compiled_kernel"] == "disabled (HYBRIDRNN_NO_COMPILE)"


@pytest.mark.parametrize("cls,options", [(LSTM, {}), (GRU, {}), (LSTM, {"layer_norm": True})])
def test_bf16_matmuls_round_only_the_recurrent_weight_gradient(kernels, monkeypatch, cls, options):
    """Inside bf16_matmuls (train.bf16) the compiled loop still runs, computes dW_hh in bf16 (within bf16
    rounding of the float32 gradient, and not equal to it) and leaves every other value and gradient float32."""
    from hybridrnn.nn import _scan

    if not _scan._native_bf16():
        pytest.skip("no native bf16 on this CPU: bf16_matmuls changes nothing")
    torch.manual_seed(13)
    layer = cls(6, 32, path="custom", **options)
    calls = _count_calls(monkeypatch, "lstm_ln_sequence" if options else
                         ("lstm_sequence" if cls is LSTM else "gru_sequence"))
    x = torch.randn(4, 9, 6, requires_grad=True)
    results = []
    for low in (False, True):
        with _scan.bf16_matmuls(low):
            out, _ = layer(x)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, *layer.parameters()])
        results.append((out, dict(zip(["x"] + [n for n, _ in layer.named_parameters()], grads))))
    assert len(calls) == 2
    (out32, g32), (out16, g16) = results
    assert torch.equal(out32, out16)
    for name in g32:
        if name.startswith("weight_hh"):
            assert not torch.equal(g32[name], g16[name])
            assert (g16[name] - g32[name]).abs().max() <= 2 ** -8 * g32[name].abs().max()
        else:
            assert torch.equal(g32[name], g16[name]), name


def test_auto_lstm_rule_follows_hidden_size_and_bf16_training(kernels, monkeypatch):
    """At hidden 256 an auto LSTM keeps oneDNN; under CPU bf16 autocast a training batch of any size runs the
    compiled loop (oneDNN's bf16 LSTM would round the cell state), inference stays."""
    from hybridrnn.nn import _scan

    wide = LSTM(3, 256)
    assert wide.runs_path(32, grad=True) == "fused" and wide.runs_path(1, grad=False) == "fused"
    assert wide.runs_path(32, grad=True, bf16=True) == "custom"
    assert wide.runs_path(32, grad=False, bf16=True) == "fused"
    if not _scan._native_bf16():
        return
    calls = _count_calls(monkeypatch, "lstm_sequence")
    x = torch.randn(32, 5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = wide(x)
    out.float().sum().backward()
    assert len(calls) == 1 and wide.weight_hh_l0.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        wide(x)
    assert len(calls) == 1


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_recurrent_dropout_runs_the_compiled_loop_with_the_fallback_results(kernels, monkeypatch, cls):
    """Variational recurrent dropout (one mask per sequence, multiplied into h where it enters W_hh) in the
    compiled loop: values and every gradient equal the pure-torch scan's with the same mask (float64, 1e-10),
    through the kernel's own weight gradient and through the oneDNN one."""
    layer = cls(3, 5, 2, recurrent_dropout=0.4, path="custom").to(F64)
    calls = _count_calls(monkeypatch, "lstm_sequence" if cls is LSTM else "gru_sequence")
    x = torch.randn(_compiled.MAX_BATCH + 2, 6, 3, dtype=F64, requires_grad=True)
    results = []
    for env in ("0", "1"):
        monkeypatch.setenv(_compiled.ENV_DISABLE, env)
        torch.manual_seed(21)                       # the same masks on both paths
        out, _ = layer(x)
        results.append((out, *torch.autograd.grad(out.pow(2).sum(), [x, *layer.parameters()])))
    assert len(calls) == 2                          # one per layer, compiled run only
    assert _max_diff(results[0], results[1]) < 1e-10
    assert not torch.equal(results[0][0], layer.eval()(x)[0])    # the mask did act in training
    layer.train()
    monkeypatch.setenv(_compiled.ENV_DISABLE, "0")
    x32 = x.detach().float()
    layer32 = layer.float()
    outs = []
    for mode in (2, 0):                             # oneDNN weight gradient, then the kernel's at::mm
        monkeypatch.setattr(_compiled, "_weight_mode", lambda xg, w, m=mode: m)
        torch.manual_seed(22)
        out, _ = layer32(x32)
        outs.append(torch.autograd.grad(out.pow(2).sum(), [layer32.weight_hh_l0])[0])
    assert (outs[0] - outs[1]).abs().max() < 1e-4 * outs[1].abs().max()


def test_coupled_lstm_runs_the_compiled_loop_with_the_fallback_results(kernels, monkeypatch):
    """The coupled-gate LSTM (f = 1 - i) in the compiled loop, with and without recurrent dropout: values and
    every gradient equal the pure-torch scan's (float64, 1e-10); a double backward matches too."""
    layer = LSTM(3, 5, 2, coupled=True, bidirectional=True, recurrent_dropout=0.3).to(F64)
    assert "compiled='sequences'" in repr(layer)
    calls = _count_calls(monkeypatch, "lstm_sequence")
    x = torch.randn(_compiled.MAX_BATCH + 1, 6, 3, dtype=F64, requires_grad=True)
    for train in (True, False):
        layer.train(train)
        results = []
        for env in ("0", "1"):
            monkeypatch.setenv(_compiled.ENV_DISABLE, env)
            torch.manual_seed(23)
            out, (h, c) = layer(x)
            results.append((out, h, c, *torch.autograd.grad(out.pow(2).sum() + c.sum(), [x, *layer.parameters()])))
        assert _max_diff(results[0], results[1]) < 1e-10
    assert len(calls) == 8                          # 2 layers x 2 directions x (train, eval), compiled runs only
    monkeypatch.setenv(_compiled.ENV_DISABLE, "0")
    xg = torch.randn(4, 2, 9, dtype=F64, requires_grad=True)
    w = torch.randn(9, 3, dtype=F64, requires_grad=True)
    h0, c0 = torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64)
    assert torch.autograd.gradgradcheck(lambda a, b: _compiled.lstm_sequence(a, h0, c0, b, coupled=True)[0], (xg, w))


def test_a_mask_of_the_wrong_shape_is_a_clear_error(kernels):
    xg, h0 = torch.randn(3, 2, 20, dtype=F64), torch.zeros(2, 5, dtype=F64)
    with pytest.raises(RuntimeError, match=r"h_mask must be like h0 \[2, 5\], got \[2, 4\]"):
        _compiled.lstm_sequence(xg, h0, h0, torch.randn(20, 5, dtype=F64), torch.ones(2, 4, dtype=F64))
    with pytest.raises(RuntimeError, match="h_mask must be like h0"):
        _compiled.gru_sequence(xg[..., :15], h0, torch.randn(15, 5, dtype=F64), None, torch.ones(5, dtype=F64))
