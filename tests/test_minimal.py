"""minGRU / minLSTM (hybridrnn.nn.minimal): the log-space scan against the sequential form (float64, 1e-10),
gradients, the recurrent contract (lengths, state, step), the spec kinds and the task models built from them."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from hybridrnn.nn.hybrid import ParallelEncoder, StackedEncoder, build_encoder
from hybridrnn.nn.minimal import MinGRU, MinLSTM, g, linear_scan, log_g, log_space_scan
from hybridrnn.nn.spec import Layer, SpecError, format_spec, parse_spec

TOL = 1e-10  # float64
CLASSES = [MinGRU, MinLSTM]
SCANS = [("log_scan", None), ("log_scan", 2), ("log_scan", 4), ("loop", None)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------- the reference
def _g(v):
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def _cell(kind: str, xg, h):
    """The paper's equations, written out independently of the module."""
    if kind == "mingru":
        k, v = xg.chunk(2, -1)
        z = torch.sigmoid(k)
        return (1 - z) * h + z * _g(v)
    pf, pi, v = xg.chunk(3, -1)
    f, i = torch.sigmoid(pf), torch.sigmoid(pi)
    return f / (f + i) * h + i / (f + i) * _g(v)


def reference(m, x, h0=None, lengths=None):
    """One sequence, layer and direction at a time, one step at a time: outputs (B, T, D*H), h (L*D, B, H)."""
    batch, time, _ = x.shape
    D, H = m.num_directions, m.hidden_size
    lengths = [time] * batch if lengths is None else lengths.tolist()
    h0 = torch.zeros(m.num_layers * D, batch, H, dtype=x.dtype) if h0 is None else h0
    layer_in, finals = x, []
    for layer in range(m.num_layers):
        outs, layer_finals = [], []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w, b = getattr(m, "weight_ih" + sfx), getattr(m, "bias_ih" + sfx)
            rows, last = [], []
            for s in range(batch):
                n = lengths[s]
                h, seq = h0[layer * D + d, s], [None] * n
                for t in (range(n - 1, -1, -1) if d else range(n)):
                    h = _cell(m.kind, layer_in[s, t] @ w.t() + b, h)
                    seq[t] = h
                pad = [torch.zeros(H, dtype=x.dtype)] * (time - n)
                rows.append(torch.stack(seq + pad, 0))
                last.append(h)
            outs.append(torch.stack(rows, 0))
            layer_finals.append(torch.stack(last, 0))
        layer_in = torch.cat(outs, 2)
        finals.extend(layer_finals)
    return layer_in, torch.stack(finals, 0)


def _grads(m, x, h0, lengths, run):
    x = x.clone().requires_grad_()
    h0 = h0.clone().requires_grad_()
    m.zero_grad()
    out, h = run(m, x, h0, lengths)
    (out.sin().sum() + (h * h).sum()).backward()
    return [out.detach(), h.detach(), x.grad, h0.grad] + [p.grad.clone() for p in m.parameters()]


def _module_run(m, x, h0, lengths):
    return m(x, h0, lengths)


# ------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("path,chunk", SCANS)
def test_scan_and_sequential_form_agree_in_float64(cls, bidirectional, with_lengths, path, chunk):
    """Outputs, final state and every gradient (x, h0, weights) against the step-by-step equations, 1e-10."""
    m = cls(3, 4, 2, bidirectional=bidirectional, path=path, chunk=chunk).double()
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    h0 = torch.randn(2 * m.num_directions, 3, 4, dtype=torch.float64)  # any sign: the scan never takes log h0
    lengths = torch.tensor([7, 3, 5]) if with_lengths else None
    got = _grads(m, x, h0, lengths, _module_run)
    want = _grads(m, x, h0, lengths, reference)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    if with_lengths:
        assert got[0][1, 3:].abs().max() == 0 and got[0][2, 5:].abs().max() == 0


@pytest.mark.parametrize("cls", CLASSES)
def test_step_is_the_sequential_form_of_forward(cls):
    m = cls(3, 5, 2).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    h0 = torch.randn(2, 2, 5, dtype=torch.float64)
    out, h = m(x, h0)
    state, ys = h0, []
    for t in range(6):
        y, state = m.step(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), out, rtol=0, atol=TOL)
    torch.testing.assert_close(state, h, rtol=0, atol=TOL)
    # state continuation: two halves equal the whole
    out1, h1 = m(x[:, :4], h0)
    out2, h2 = m(x[:, 4:], h1)
    torch.testing.assert_close(torch.cat([out1, out2], 1), out, rtol=0, atol=TOL)
    torch.testing.assert_close(h2, h, rtol=0, atol=TOL)


@pytest.mark.parametrize("chunk", [None, 2, 3])
def test_gradcheck_log_space_scan(chunk):
    log_a = torch.nn.functional.logsigmoid(torch.randn(5, 2, 3, dtype=torch.float64)).requires_grad_()
    log_b = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, h: log_space_scan(a, b, h, chunk), (log_a, log_b, h0))


def test_gradcheck_linear_scan_and_its_forward():
    a = torch.rand(6, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_scan, (a, b, h0))
    h, want = h0, []
    for t in range(6):
        h = a[t] * h + b[t]
        want.append(h)
    torch.testing.assert_close(linear_scan(a, b, h0), torch.stack(want), rtol=0, atol=TOL)
    # log space agrees where it applies (b > 0)
    torch.testing.assert_close(log_space_scan(a.log(), b.abs().log(), h0), linear_scan(a, b.abs(), h0),
                               rtol=0, atol=TOL)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("path", ["log_scan", "loop"])
def test_gradcheck_layer_with_lengths(cls, path):
    m = cls(2, 3, bidirectional=True, path=path, chunk=2).double()
    lengths = torch.tensor([4, 2])
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, h0, *params):
        out, h = torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], params)),
                                            (x, h0, lengths))
        return out, h

    assert torch.autograd.gradcheck(f, (x, h0, *[p.detach().requires_grad_() for p in m.parameters()]))


def test_g_and_log_g():
    v = torch.linspace(-30, 30, 601, dtype=torch.float64)
    assert (g(v) > 0).all()
    torch.testing.assert_close(log_g(v), g(v).log(), rtol=0, atol=1e-12)
    torch.testing.assert_close(g(torch.tensor([0.0, 1.0, -1.0])), torch.tensor([0.5, 1.5, 1 / (1 + np.e)]))


def test_log_coefficients_are_the_logs_of_the_coefficients():
    for cls in CLASSES:
        m = cls(2, 4).double()
        xg = 8 * torch.randn(5, m.gates * 4, dtype=torch.float64)
        a, b = m.coefficients(xg)
        la, lb = m.log_coefficients(xg)
        torch.testing.assert_close(la.exp(), a, rtol=1e-12, atol=0)
        torch.testing.assert_close(lb.exp(), b, rtol=1e-12, atol=0)


def test_float32_paths_agree_at_long_sequences():
    torch.manual_seed(0)
    ref = MinGRU(8, 16, path="loop").double()
    x = torch.randn(2, 2000, 8, dtype=torch.float64)
    with torch.no_grad():
        want, _ = ref(x)
        for path, chunk in (("loop", None), ("log_scan", None), ("log_scan", 256)):
            m = MinGRU(8, 16, path=path, chunk=chunk)
            m.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
            got, _ = m(x.float())
            assert (got.double() - want).abs().max() < 1e-3, (path, chunk)


# ------------------------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("cls", CLASSES)
def test_padding_never_reaches_a_state(cls):
    m = cls(3, 4, 2, bidirectional=True)
    x = torch.randn(3, 6, 3)
    lengths = torch.tensor([6, 2, 4])
    out, h = m(x, lengths=lengths)
    junk = x.clone()
    junk[1, 2:] = 1e6
    junk[2, 4:] = -1e6
    out2, h2 = m(junk, lengths=lengths)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    torch.testing.assert_close(h2, h, rtol=0, atol=0)
    assert out[1, 2:].abs().max() == 0 and out[2, 4:].abs().max() == 0
    # each sequence alone, unpadded, gives the same outputs and state
    for s, n in enumerate(lengths.tolist()):
        o, hs = m(x[s:s + 1, :n])
        torch.testing.assert_close(o[0], out[s, :n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hs[:, 0], h[:, s], rtol=1e-5, atol=1e-6)
    fo = m.final_output(out, lengths)
    torch.testing.assert_close(fo, torch.cat([out[[0, 1, 2], lengths - 1, :4], out[:, 0, 4:]], 1))


def test_sizes_layout_repr_and_auto_path():
    m = MinLSTM(5, 6, 3, bidirectional=True)
    assert m.output_size == 12 and m.output_layout == ((6, False), (6, True))
    out, h = m(torch.randn(2, 4, 5))
    assert out.shape == (2, 4, 12) and h.shape == (6, 2, 6)
    assert m.path == "loop" and "path='loop' (auto)" in repr(m) and m.spec == "biminlstm:6x3"
    assert MinGRU(2, 3, path="log_scan").path == "log_scan"
    assert dict(MinGRU(2, 3).named_parameters()).keys() == {"weight_ih_l0", "bias_ih_l0"}
    assert MinLSTM(2, 3, bias=False).weight_ih_l0.shape == (9, 2)


def test_bad_inputs_are_value_errors_naming_the_shape():
    m = MinGRU(3, 4)
    with pytest.raises(ValueError, match=r"\(batch, time, 3\)"):
        m(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"in 1..5"):
        m(torch.randn(2, 5, 3), lengths=torch.tensor([5, 6]))
    with pytest.raises(ValueError, match=r"\(1, 2, 4\)"):
        m(torch.randn(2, 5, 3), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="bidirectional"):
        MinGRU(3, 4, bidirectional=True).step(torch.randn(2, 3))
    with pytest.raises(ValueError, match="path"):
        MinGRU(3, 4, path="fused")
    with pytest.raises(ValueError, match="chrono_tmax"):
        MinLSTM(3, 4, init="chrono")


def test_inits():
    m = MinLSTM(4, 6, init="chrono", chrono_tmax=100)
    b = m.bias_ih_l0
    assert (b[:6] >= 0).all() and (b[:6] <= np.log(99) + 1e-6).all()
    torch.testing.assert_close(b[6:12], -b[:6])
    assert (b[12:] == 0).all()
    m = MinGRU(4, 6, init="xavier_orthogonal")
    assert (m.bias_ih_l0 == 0).all()


def test_autocast_bf16_runs_the_recurrence_in_float32():
    m = MinGRU(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = m(torch.randn(2, 5, 4))
    assert out.dtype == torch.float32 and h.dtype == torch.float32


# ------------------------------------------------------------------------------------------- spec and builder
def test_spec_kinds_parse_and_format():
    ast = parse_spec("MinGRU:8 > (minlstm:4x2 | bimingru:3) > biminlstm:2")
    assert format_spec(ast) == "mingru:8>(minlstm:4x2|bimingru:3)>biminlstm:2"
    assert parse_spec(format_spec(ast)) == ast
    assert ast.items[0] == Layer("mingru", 8) and ast.items[2] == Layer("minlstm", 2, 1, True)
    with pytest.raises(SpecError, match="mingru"):
        parse_spec("mingur:8")
    with pytest.raises(ValueError, match="Layer.kind"):
        Layer("minrnn", 4)


def test_build_encoder_hybrid_mingru_into_lstm():
    enc = build_encoder("mingru:8>lstm:8", 5).double()
    assert isinstance(enc, StackedEncoder) and isinstance(enc.blocks[0], MinGRU)
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    out, state = enc(x, lengths=lengths)
    assert out.shape == (3, 6, 8) and len(state) == 2 and state[0].shape == (1, 3, 8)
    assert out[1, 2:].abs().max() == 0
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    enc.eval()
    with torch.no_grad():
        full, final = enc(x)
        s, ys = None, []
        for t in range(6):
            y, s = enc.step(x[:, t], s)
            ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), full, rtol=0, atol=TOL)
    torch.testing.assert_close(s[0], final[0], rtol=0, atol=TOL)
    torch.testing.assert_close(s[1][1], final[1][1], rtol=0, atol=TOL)


@pytest.mark.parametrize("spec,cls,size", [("mingru:6", MinGRU, 6), ("biminlstm:3x2", MinLSTM, 6),
                                           ("(mingru:4|gru:4)", ParallelEncoder, 4),
                                           ("minlstm:4>mingru:4>gru:3", StackedEncoder, 3)])
def test_build_encoder_shapes(spec, cls, size):
    enc = build_encoder(spec, 5, fusion="gate" if "|" in spec else "concat", dropout=0.1)
    assert type(enc) is cls and enc.output_size == size
    out, _ = enc(torch.randn(2, 4, 5), lengths=torch.tensor([4, 3]))
    assert out.shape == (2, 4, size) and out[1, 3].abs().max() == 0


def test_lstm_gru_options_warn_for_minimal_blocks():
    with pytest.warns(UserWarning, match=r"layer_norm=True, recurrent_dropout=0.2 are options of LSTM/GRU blocks"):
        build_encoder("mingru:4>gru:4", 3, layer_norm=True, recurrent_dropout=0.2)
    with pytest.warns(UserWarning, match="reset_after=False is an option"):
        build_encoder("minlstm:4", 3, reset_after=False)
    with pytest.warns(UserWarning, match="path='custom'"):
        build_encoder("mingru:4", 3, path="custom")
    with pytest.warns(UserWarning, match="tie_layers=True"):  # nothing to tie: minimal blocks have no W_hh
        enc = build_encoder("mingru:4>mingru:4x2", 3, tie_layers=True)
    assert enc.blocks[0].weight_ih_l0 is not enc.blocks[1].weight_ih_l0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_encoder("mingru:4>lstm:4", 3, forget_bias=1.0, coupled=True, init="chrono", chrono_tmax=50)


# ------------------------------------------------------------------------------------------- task models
@pytest.mark.parametrize("strategy,extra", [("direct", {"attention": "additive"}), ("recursive", {}),
                                            ("parallel", {"segment": 4}), ("seq2seq", {"attention": "dot"})])
def test_forecaster_with_minimal_encoders(strategy, extra):
    from hybridrnn.nn.forecaster import Forecaster
    inp = 3 if strategy == "recursive" else 4
    future = 0 if strategy == "parallel" else 2
    m = Forecaster(inp, 1, 8, "mingru:8>minlstm:8", lookback=16, future_size=future, strategy=strategy, **extra)
    y, _ = m(torch.randn(3, 16, inp), torch.randn(3, 8, 2) if future else None)
    assert y.shape == (3, 8, 1)
    y.sum().backward()


def test_classifier_and_language_model_with_minimal_encoders():
    from hybridrnn.nn.classifier import SequenceClassifier
    from hybridrnn.nn.language_model import LanguageModel
    clf = SequenceClassifier(3, "biminlstm:6>mingru:4", vocab_size=20, embedding_dim=8)
    tokens = torch.randint(1, 20, (4, 7))
    logits = clf(tokens, torch.tensor([7, 5, 3, 1]))
    logits = logits[0] if isinstance(logits, tuple) else logits
    assert logits.shape == (4, 3)
    lm = LanguageModel(20, "mingru:8>minlstm:8", embedding_dim=8).double().eval()
    out, _ = lm(tokens)
    out = out if isinstance(out, torch.Tensor) else out[0]
    state, steps = None, []
    for t in range(7):
        y, state = lm.step(tokens[:, t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), out, rtol=0, atol=1e-10)


def _hourly(path, n=240):
    rng = np.random.default_rng(0)
    t = pd.date_range("2021-03-01", periods=n, freq="h")
    y = np.sin(2 * np.pi * np.arange(n) / 24) + 0.1 * rng.normal(size=n)
    pd.DataFrame({"time": t.strftime("%Y-%m-%d %H:%M:%S"), "y": y}).to_csv(path, index=False)


def test_forecast_config_trains_saves_and_reloads(tmp_path):
    import hybridrnn
    from conftest import train
    _hourly(tmp_path / "h.csv")
    config = {"task": "forecast", "data": {"path": str(tmp_path / "h.csv"), "time_column": "time", "target": ["y"],
                                           "split": [0.6, 0.2, 0.2]},
              "window": {"lookback": 16, "horizon": 4},
              "model": {"encoder": "mingru:8>lstm:8"},
              "train": {"epochs": 2, "batch_size": 16, "seed": 0, "progress": "none", "plots": False}}
    run_dir = train(config, out=tmp_path / "run")
    run = hybridrnn.load(run_dir)
    metrics = run.metrics(split="test")
    assert np.isfinite(metrics["scaled_mse"]) and metrics["scaled_mse"] < 1.0
    assert isinstance(run.model.core.encoder.blocks[0], MinGRU)


def test_classify_config_trains(tmp_path):
    import hybridrnn
    from conftest import train
    rng = np.random.default_rng(0)
    words = ["plain", "film", "story", "actor", "scene"]
    for name, n in (("train", 200), ("dev", 40), ("test", 40)):
        rows = []
        for _ in range(n):
            label = int(rng.integers(2))
            text = list(rng.choice(words, size=int(rng.integers(3, 8))))
            text.insert(int(rng.integers(len(text) + 1)), "great" if label else "awful")
            rows.append(f"{label} {' '.join(text)}")
        (tmp_path / f"{name}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = {"task": "classify",
              "data": {"kind": "text", "train": str(tmp_path / "train.txt"), "val": str(tmp_path / "dev.txt"),
                       "test": str(tmp_path / "test.txt"), "tokenizer": "word"},
              "model": {"encoder": "biminlstm:8"},
              "classifier": {"embedding_dim": 8},
              "train": {"epochs": 4, "batch_size": 16, "lr": 0.02, "seed": 0, "progress": "none", "plots": False}}
    run = hybridrnn.load(train(config, out=tmp_path / "run"))
    assert run.metrics(split="test")["accuracy"] > 0.8
