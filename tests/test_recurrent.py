"""LSTM / GRU layers: parity with torch.nn.LSTM/GRU (both paths), lengths, options against a plain per-sequence
reference loop, gradcheck, step(), conversion, weight tying, bad input.

Everything numeric runs in float64; parity tolerance 1e-10 (absolute) on outputs, states and gradients.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hybridrnn.nn.recurrent import GRU, LSTM

TOL = 1e-10
DT = torch.double
B, T, I, H = 3, 6, 4, 5
TORCH = {LSTM: nn.LSTM, GRU: nn.GRU}


def _close(a, b, tol=TOL):
    return a.shape == b.shape and (a - b).abs().max().item() <= tol


def _state_tensors(state):
    return list(state) if isinstance(state, tuple) else [state]


def _random_state(cls, rows, batch=B, hidden=H):
    h = torch.randn(rows, batch, hidden, dtype=DT)
    return (h, torch.randn(rows, batch, hidden, dtype=DT)) if cls is LSTM else h


def _leaf(state):
    if isinstance(state, tuple):
        return tuple(s.clone().requires_grad_() for s in state)
    return state.clone().requires_grad_()


def _run_and_grad(module, x, state, lengths=None, packed_torch=False):
    """Forward + backward of a fixed scalar loss; returns outputs, state, grads (params by name, x, state)."""
    x = x.clone().requires_grad_()
    state = None if state is None else _leaf(state)
    if packed_torch:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = module(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    else:
        out, final = module(x, state, lengths=lengths) if lengths is not None else module(x, state)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=DT).reshape(out.shape)
    loss = (out * weights).sum() + sum((s ** 2).sum() for s in _state_tensors(final))
    module.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    grads["x"] = x.grad
    if state is not None:
        for k, s in enumerate(_state_tensors(state)):
            grads[f"state{k}"] = s.grad
    return out, final, grads


def _assert_same(run_a, run_b, tol=TOL):
    out_a, st_a, g_a = run_a
    out_b, st_b, g_b = run_b
    assert _close(out_a, out_b, tol), (out_a - out_b).abs().max()
    for a, b in zip(_state_tensors(st_a), _state_tensors(st_b)):
        assert _close(a, b, tol)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        assert _close(g_a[name], g_b[name], tol), name


# --------------------------------------------------------------------------- parity with torch
@pytest.mark.parametrize("path", ["fused", "custom"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_matches_torch(cls, num_layers, bidirectional, path):
    torch.manual_seed(num_layers)
    ref = TORCH[cls](I, H, num_layers, batch_first=True, bidirectional=bidirectional).double()
    ours = cls.from_torch(ref, path=path)
    assert ours.path == path
    x = torch.randn(B, T, I, dtype=DT)
    rows = num_layers * (2 if bidirectional else 1)
    for state in (None, _random_state(cls, rows)):
        _assert_same(_run_and_grad(ref, x, state), _run_and_grad(ours, x, state))


@pytest.mark.parametrize("path", ["fused", "custom"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_lengths_match_torch_packed(cls, num_layers, bidirectional, path):
    torch.manual_seed(7 + num_layers)
    ref = TORCH[cls](I, H, num_layers, batch_first=True, bidirectional=bidirectional).double()
    ours = cls.from_torch(ref, path=path)
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([4, T, 2])  # unsorted, one full
    state = _random_state(cls, num_layers * (2 if bidirectional else 1))
    run_ref = _run_and_grad(ref, x, state, lengths, packed_torch=True)
    run_ours = _run_and_grad(ours, x, state, lengths)
    _assert_same(run_ref, run_ours)
    out, _, grads = run_ours
    for b, n in enumerate(lengths.tolist()):
        assert torch.count_nonzero(out[b, n:]) == 0  # outputs at padding are exactly 0
        assert torch.count_nonzero(grads["x"][b, n:]) == 0  # and padding never reaches anything


@pytest.mark.parametrize("path", ["fused", "custom"])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_lengths_all_shorter_than_time_match_torch_packed(cls, path):
    """No sequence fills the time axis: outputs keep T steps (zeros after each length), as torch's padded unpack."""
    torch.manual_seed(20)
    ref = TORCH[cls](I, H, 2, batch_first=True, bidirectional=True).double()
    ours = cls.from_torch(ref, path=path)
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([1, T - 1, 3])
    _assert_same(_run_and_grad(ref, x, None, lengths, packed_torch=True), _run_and_grad(ours, x, None, lengths))


@pytest.mark.parametrize("path", ["fused", "custom"])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_padding_values_do_not_leak(cls, path):
    torch.manual_seed(8)
    m = cls(I, H, 2, bidirectional=True, path=path).double()
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([3, 5, 1])
    x2 = x.clone()
    for b, n in enumerate(lengths.tolist()):
        x2[b, n:] = 1e6 * torch.randn(T - n, I, dtype=DT)
    out1, st1 = m(x, lengths=lengths)
    out2, st2 = m(x2, lengths=lengths)
    assert torch.equal(out1, out2)
    for a, b in zip(_state_tensors(st1), _state_tensors(st2)):
        assert torch.equal(a, b)
    # each sequence alone, without padding, gives the same outputs and final state
    for b, n in enumerate(lengths.tolist()):
        out_b, st_b = m(x[b:b + 1, :n])
        assert _close(out_b[0], out1[b, :n])
        for a, s in zip(_state_tensors(st_b), _state_tensors(st1)):
            assert _close(a[:, 0], s[:, b])


def test_full_lengths_equal_no_lengths():
    torch.manual_seed(9)
    for path in ("fused", "custom"):
        m = LSTM(I, H, bidirectional=True, path=path).double()
        x = torch.randn(B, T, I, dtype=DT)
        out1, (h1, c1) = m(x)
        out2, (h2, c2) = m(x, lengths=torch.full((B,), T))
        assert _close(out1, out2) and _close(h1, h2) and _close(c1, c2)


# --------------------------------------------------------------------------- the two paths agree
SHARED_OPTIONS = [dict(bias=False), dict(init="xavier_orthogonal", forget_bias=1.0), dict(dropout=0.4),
                  dict(init="chrono", chrono_tmax=20)]


@pytest.mark.parametrize("options", SHARED_OPTIONS, ids=str)
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_fused_and_custom_agree(cls, options):
    if cls is GRU and "forget_bias" in options:
        options = {k: v for k, v in options.items() if k != "forget_bias"}
    torch.manual_seed(10)
    fused = cls(I, H, 2, bidirectional=True, path="fused", **options).double().eval()
    custom = cls(I, H, 2, bidirectional=True, path="custom", **options).double().eval()
    custom.load_state_dict(fused.state_dict())
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([T, 3, 5])
    state = _random_state(cls, 4)
    _assert_same(_run_and_grad(fused, x, state, lengths), _run_and_grad(custom, x, state, lengths))


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (3, False), (3, True)])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_fused_and_custom_agree_on_layer_shapes(cls, num_layers, bidirectional):
    torch.manual_seed(21)
    fused = cls(I, H, num_layers, bidirectional=bidirectional, path="fused").double()
    custom = cls(I, H, num_layers, bidirectional=bidirectional, path="custom").double()
    custom.load_state_dict(fused.state_dict())
    x = torch.randn(B, T, I, dtype=DT)
    state = _random_state(cls, num_layers * (2 if bidirectional else 1))
    for lengths in (None, torch.tensor([2, T, 5])):
        _assert_same(_run_and_grad(fused, x, state, lengths), _run_and_grad(custom, x, state, lengths))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_fused_and_custom_agree_with_dropout_in_training(cls, bidirectional):
    """Between-layer dropout in train mode: with the same seed both paths draw the same masks (without lengths;
    with lengths torch draws its masks over the packed data, so the masks, not the maths, differ)."""
    fused = cls(I, H, 3, dropout=0.5, bidirectional=bidirectional, path="fused").double().train()
    custom = cls(I, H, 3, dropout=0.5, bidirectional=bidirectional, path="custom").double().train()
    custom.load_state_dict(fused.state_dict())
    x = torch.randn(B, T, I, dtype=DT)
    torch.manual_seed(22)
    run_f = _run_and_grad(fused, x, None)
    torch.manual_seed(22)
    run_c = _run_and_grad(custom, x, None)
    _assert_same(run_f, run_c)
    torch.manual_seed(23)
    assert not torch.equal(_run_and_grad(fused, x, None)[0], run_f[0])  # dropout is on: another seed differs


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_fused_and_custom_agree_in_float32(cls):
    torch.manual_seed(24)
    fused = cls(I, H, 2, bidirectional=True, path="fused")
    custom = cls(I, H, 2, bidirectional=True, path="custom")
    custom.load_state_dict(fused.state_dict())
    x = torch.randn(B, T, I)
    for lengths in (None, torch.tensor([T, 3, 1])):
        out_f, st_f = fused(x, lengths=lengths)
        out_c, st_c = custom(x, lengths=lengths)
        assert out_c.dtype == torch.float32 and _close(out_f, out_c, 1e-5)
        for a, b in zip(_state_tensors(st_f), _state_tensors(st_c)):
            assert _close(a, b, 1e-5)
        g_f = torch.autograd.grad(out_f.pow(2).sum(), list(fused.parameters()))
        g_c = torch.autograd.grad(out_c.pow(2).sum(), list(custom.parameters()))
        for a, b in zip(g_f, g_c):
            assert _close(a, b, 1e-4)


@pytest.mark.parametrize("path", ["fused", "custom"])
def test_dropout_between_layers_active_only_in_training(path):
    torch.manual_seed(11)
    m = LSTM(I, H, 2, dropout=0.5, path=path).double()
    x = torch.randn(B, T, I, dtype=DT)
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])


# --------------------------------------------------------------------------- options against a reference loop
def _ln(a, gain, bias, eps=1e-5):
    mean = a.mean(-1, keepdim=True)
    var = ((a - mean) ** 2).mean(-1, keepdim=True)
    return (a - mean) / torch.sqrt(var + eps) * gain + bias


def _ln_gates(a, gain, bias, gates):
    return torch.cat([_ln(u, g, b) for u, g, b in zip(a.chunk(gates, -1), gain.chunk(gates), bias.chunk(gates))], -1)


def _ref_lstm_step(p, x, h, c, h_in, coupled, layer_norm):
    G = 3 if coupled else 4
    ax = x @ p["weight_ih"].t() + p.get("bias_ih", 0)
    ah = h_in @ p["weight_hh"].t() + p.get("bias_hh", 0)
    if layer_norm:
        ax = _ln_gates(ax, p["ln_ih_weight"], p["ln_ih_bias"], G)
        ah = _ln_gates(ah, p["ln_hh_weight"], p["ln_hh_bias"], G)
    a = (ax + ah).chunk(G, -1)
    if coupled:
        i, g, o = torch.sigmoid(a[0]), torch.tanh(a[1]), torch.sigmoid(a[2])
        f = 1 - i
    else:
        i, f, g, o = torch.sigmoid(a[0]), torch.sigmoid(a[1]), torch.tanh(a[2]), torch.sigmoid(a[3])
    c_new = f * c + i * g
    return o * torch.tanh(_ln(c_new, p["ln_c_weight"], p["ln_c_bias"]) if layer_norm else c_new), c_new


def _ref_gru_step(p, x, h, h_in, reset_after, layer_norm):
    hid = h.shape[-1]
    ax = x @ p["weight_ih"].t() + p.get("bias_ih", 0)
    if layer_norm:
        ax = _ln_gates(ax, p["ln_ih_weight"], p["ln_ih_bias"], 3)
    xr, xz, xn = ax.split(hid, -1)
    w_hr, w_hz, w_hn = p["weight_hh"].split(hid)
    b_hr, b_hz, b_hn = p["bias_hh"].split(hid) if "bias_hh" in p else (0, 0, 0)
    hr, hz = h_in @ w_hr.t() + b_hr, h_in @ w_hz.t() + b_hz
    if layer_norm:
        g, b = p["ln_hh_weight"].split(hid), p["ln_hh_bias"].split(hid)
        hr, hz = _ln(hr, g[0], b[0]), _ln(hz, g[1], b[1])
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    hn = h_in @ w_hn.t() + b_hn if reset_after else (r * h_in) @ w_hn.t() + b_hn
    if layer_norm:
        hn = _ln(hn, g[2], b[2])
    n = torch.tanh(xn + r * hn) if reset_after else torch.tanh(xn + hn)
    return (1 - z) * n + z * h


def _layer_params(m, layer, d):
    """Parameters of (layer, direction) by the documented names, following the documented tying rule."""
    rev = "_reverse" if d else ""
    hh = f"_l0{rev}" if m.tie_layers else f"_l{layer}{rev}"
    ih = f"_l{min(layer, 1)}{rev}" if m.tie_layers else f"_l{layer}{rev}"
    named = dict(m.named_parameters())
    out = {}
    for role in ("weight_ih", "bias_ih", "ln_ih_weight", "ln_ih_bias"):
        if role + ih in named:
            out[role] = named[role + ih]
    for role in ("weight_hh", "bias_hh", "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias"):
        if role + hh in named:
            out[role] = named[role + hh]
    return out


def reference_forward(m, x, state=None, lengths=None, h_masks=None):
    """Plain loop: one sequence at a time, one step at a time; backward direction reads the sequence reversed
    within its own length. h_masks[(layer, d)]: (B, H) recurrent dropout masks."""
    batch, time, _ = x.shape
    D = 2 if m.bidirectional else 1
    lengths = [time] * batch if lengths is None else lengths.tolist()
    is_lstm = isinstance(m, LSTM)
    rows = m.num_layers * D
    if state is None:
        state = _random_state(type(m), rows, batch, m.hidden_size)
        state = tuple(s * 0 for s in state) if is_lstm else state * 0
    h0, c0 = (state if is_lstm else (state, None))
    layer_in = x
    h_n, c_n = [None] * rows, [None] * rows
    for layer in range(m.num_layers):
        outs = torch.zeros(batch, time, D * m.hidden_size, dtype=x.dtype)
        outs_list = []
        for d in range(D):
            p = _layer_params(m, layer, d)
            row = layer * D + d
            per_b_out, per_b_h, per_b_c = [], [], []
            for b in range(batch):
                n = lengths[b]
                steps = range(n - 1, -1, -1) if d else range(n)
                h, c = h0[row, b:b + 1], (c0[row, b:b + 1] if is_lstm else None)
                mask = None if h_masks is None else h_masks[(layer, d)][b:b + 1]
                seq = [None] * time
                for t in steps:
                    h_in = h if mask is None else h * mask
                    if is_lstm:
                        h, c = _ref_lstm_step(p, layer_in[b:b + 1, t], h, c, h_in, m.coupled, m.layer_norm)
                    else:
                        h = _ref_gru_step(p, layer_in[b:b + 1, t], h, h_in, m.reset_after, m.layer_norm)
                    seq[t] = h
                zero = torch.zeros(1, m.hidden_size, dtype=x.dtype)
                per_b_out.append(torch.cat([s if s is not None else zero for s in seq], 0))
                per_b_h.append(h)
                per_b_c.append(c)
            outs_list.append(torch.stack(per_b_out, 0))
            h_n[row] = torch.cat(per_b_h, 0)
            if is_lstm:
                c_n[row] = torch.cat(per_b_c, 0)
        outs = torch.cat(outs_list, -1)
        layer_in = outs
    h_n = torch.stack(h_n, 0)
    return layer_in, ((h_n, torch.stack(c_n, 0)) if is_lstm else h_n)


def _randomise(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * 0.4 + (1.0 if "ln_" in name and "weight" in name else 0.0))


OPTION_CASES = [
    (LSTM, dict(coupled=True)), (LSTM, dict(layer_norm=True)), (LSTM, dict(coupled=True, layer_norm=True)),
    (LSTM, dict(tie_layers=True)), (LSTM, dict(tie_layers=True, layer_norm=True, bias=False)),
    (GRU, dict(reset_after=False)), (GRU, dict(layer_norm=True)), (GRU, dict(reset_after=False, layer_norm=True)),
    (GRU, dict(tie_layers=True, reset_after=False)), (GRU, dict(reset_after=False, bias=False)),
]


def _module_grads(m, out, final):
    loss = (out ** 2).sum() + sum(s.sum() for s in _state_tensors(final))
    return torch.autograd.grad(loss, list(m.parameters()))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cls,options", OPTION_CASES, ids=str)
def test_options_match_reference_loop(cls, options, bidirectional):
    torch.manual_seed(12)
    m = cls(I, H, 3, bidirectional=bidirectional, **options).double()
    assert m.path == "custom"
    _randomise(m)
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([5, 2, T])
    state = _random_state(cls, 3 * (2 if bidirectional else 1))
    for lens in (None, lengths):
        out, final = m(x, state, lengths=lens)
        ref_out, ref_final = reference_forward(m, x, state, lens)
        assert _close(out, ref_out)
        for a, b in zip(_state_tensors(final), _state_tensors(ref_final)):
            assert _close(a, b)
        for a, b in zip(_module_grads(m, out, final), _module_grads(m, ref_out, ref_final)):
            assert _close(a, b)


@pytest.mark.parametrize("cls,options", [(LSTM, dict(coupled=True, layer_norm=True)), (LSTM, {}),
                                         (GRU, dict(reset_after=False, layer_norm=True)), (GRU, {}),
                                         (LSTM, dict(tie_layers=True)), (LSTM, dict(coupled=True, bias=False)),
                                         (GRU, dict(reset_after=False))], ids=str)
def test_gradcheck_custom_path(cls, options):
    """One bidirectional layer (two with tie_layers); multi-layer gradients are checked against torch and the
    reference loop above at 1e-10, so gradcheck's cost goes into the options instead."""
    torch.manual_seed(13)
    layers = 2 if options.get("tie_layers") else 1
    m = cls(2, 2, layers, bidirectional=True, path="custom", **options).double()
    _randomise(m)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(2, 3, 2, dtype=DT, requires_grad=True)
    h0 = torch.randn(2 * layers, 2, 2, dtype=DT, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def fn(x, h0, *ps):
        state = (h0, h0 * 0.5) if cls is LSTM else h0
        out, final = torch.func.functional_call(m, dict(zip(names, ps)), (x, state), {"lengths": lengths})
        return out, *_state_tensors(final)

    assert torch.autograd.gradcheck(fn, (x, h0, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls,options", [(LSTM, {}), (GRU, dict(reset_after=False)),
                                         (LSTM, dict(layer_norm=True))], ids=str)
def test_gradcheck_recurrent_dropout(cls, options):
    """Recurrent dropout in training, the mask fixed by reseeding before every call (gradcheck calls many times)."""
    m = cls(2, 2, recurrent_dropout=0.4, **options).double().train()  # both directions: see the next test
    _randomise(m)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(2, 3, 2, dtype=DT, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def fn(x, *ps):
        torch.manual_seed(25)
        out, final = torch.func.functional_call(m, dict(zip(names, ps)), (x,), {"lengths": lengths})
        return out, *_state_tensors(final)

    assert not torch.equal(fn(x, *params)[0], m.eval()(x, lengths=lengths)[0])  # the masks do act
    m.train()
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- recurrent dropout
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_recurrent_dropout_is_identity_in_eval(cls):
    torch.manual_seed(14)
    m = cls(I, H, 2, recurrent_dropout=0.5).double().eval()
    plain = cls(I, H, 2, path="custom").double().eval()
    plain.load_state_dict(m.state_dict())
    x = torch.randn(B, T, I, dtype=DT)
    assert torch.equal(m(x)[0], plain(x)[0])
    m.train()
    assert not torch.equal(m(x)[0], plain(x)[0])


@pytest.mark.parametrize("cls,options", [(LSTM, {}), (GRU, {}), (GRU, dict(reset_after=False)),
                                         (LSTM, dict(bidirectional=True))], ids=str)
def test_recurrent_dropout_one_mask_per_sequence(cls, options):
    """Recover each sequence's dropped units from the zero columns of d(loss_b)/d(W_hh), then check the outputs
    equal the reference loop with that one mask applied at every step."""
    p = 0.5
    m = cls(I, H, recurrent_dropout=p, path="custom", **options).double().train()
    x = torch.randn(2, T, I, dtype=DT)
    D = 2 if m.bidirectional else 1
    for seed in range(20):
        torch.manual_seed(seed)
        out, _ = m(x)
        masks, n_dropped = {}, 0
        for d in range(D):
            w_hh = getattr(m, "weight_hh_l0" + ("_reverse" if d else ""))
            rows = []
            for b in range(2):
                g, = torch.autograd.grad(out[b].sum(), w_hh, retain_graph=True)
                dropped = g.abs().sum(0) == 0
                n_dropped += int(dropped.sum())
                rows.append(torch.where(dropped, 0.0, 1.0 / (1 - p)).to(DT))
            masks[(0, d)] = torch.stack(rows, 0)
        if 0 < n_dropped < 2 * D * H:
            break
    ref_out, _ = reference_forward(m, x, h_masks=masks)
    assert _close(out, ref_out)
    assert not torch.equal(masks[(0, 0)][0], masks[(0, 0)][1]) or D == 2  # different sequences, own masks


# --------------------------------------------------------------------------- step()
STEP_CASES = [(LSTM, {}), (LSTM, dict(num_layers=2)), (LSTM, dict(coupled=True, num_layers=2)),
              (LSTM, dict(layer_norm=True)), (LSTM, dict(bias=False)), (LSTM, dict(tie_layers=True, num_layers=3)),
              (GRU, {}), (GRU, dict(num_layers=2)), (GRU, dict(reset_after=False)),
              (GRU, dict(layer_norm=True, reset_after=False, num_layers=2))]


@pytest.mark.parametrize("cls,options", STEP_CASES, ids=str)
def test_step_equals_forward(cls, options, monkeypatch):
    torch.manual_seed(15)
    m = cls(I, H, **options).double().eval()
    x = torch.randn(2, T, I, dtype=DT)
    out, final = m(x)
    monkeypatch.setattr(torch._VF, "lstm", None)  # step() must not go through torch's whole-sequence kernels
    monkeypatch.setattr(torch._VF, "gru", None)
    state, ys = None, []
    for t in range(T):
        y, state = m.step(x[:, t], state)
        ys.append(y)
    assert _close(torch.stack(ys, 1), out)
    for a, b in zip(_state_tensors(state), _state_tensors(final)):
        assert _close(a, b)


def test_step_rejects_bidirectional_and_bad_shapes():
    with pytest.raises(ValueError, match="bidirectional"):
        LSTM(I, H, bidirectional=True).step(torch.randn(1, I))
    with pytest.raises(ValueError, match=rf"expected x_t of shape \(batch, {I}\), got shape \(1, 1, {I}\)"):
        GRU(I, H).step(torch.randn(1, 1, I))
    with pytest.raises(ValueError, match=rf"expected state h of shape \(2, 1, {H}\).*got shape \(1, 1, {H}\)"):
        GRU(I, H, 2).step(torch.randn(1, I), torch.zeros(1, 1, H))
    with pytest.raises(ValueError, match="recurrent_dropout"):
        LSTM(I, H, recurrent_dropout=0.2).train().step(torch.randn(1, I))


# --------------------------------------------------------------------------- conversion and paths
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_from_torch_to_torch_round_trip_exact(cls):
    torch.manual_seed(16)
    ref = TORCH[cls](I, H, 2, bidirectional=True, dropout=0.25, bias=True)
    ours = cls.from_torch(ref)
    back = ours.to_torch()
    assert isinstance(back, TORCH[cls]) and back.batch_first and back.dropout == 0.25
    for (n1, p1), (n2, p2), (n3, p3) in zip(ref.named_parameters(), ours.named_parameters(), back.named_parameters()):
        assert n1 == n2 == n3 and torch.equal(p1, p2) and torch.equal(p1, p3)
    custom = cls.from_torch(ref, path="custom")
    assert custom.path == "custom" and torch.equal(custom.weight_hh_l1_reverse, ref.weight_hh_l1_reverse)
    no_bias = cls.from_torch(TORCH[cls](I, H, bias=False))
    assert not no_bias.bias and "bias_ih_l0" not in dict(no_bias.named_parameters())


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_converted_modules_compute_exactly_what_the_original_computes(cls, batch_first):
    """from_torch (fused path: the same kernel) gives bitwise-equal outputs; to_torch of a custom-path model gives
    torch's module with the same weights; dtype, training flag and state_dict survive the round trip."""
    torch.manual_seed(26)
    ref = TORCH[cls](I, H, 3, bidirectional=True, batch_first=batch_first).double().eval()
    x = torch.randn(B, T, I, dtype=DT)
    out_ref, st_ref = ref(x if batch_first else x.transpose(0, 1))
    out_ref = out_ref if batch_first else out_ref.transpose(0, 1)
    assert cls.from_torch(ref).path == ("custom" if cls is GRU else "fused")   # auto: the CPU rule
    ours = cls.from_torch(ref, path="fused")
    assert ours.path == "fused" and not ours.training and ours.weight_ih_l0.dtype == DT
    out, st = ours(x)
    assert torch.equal(out, out_ref)
    for a, b in zip(_state_tensors(st), _state_tensors(st_ref)):
        assert torch.equal(a, b)
    custom = cls.from_torch(ref, path="custom")
    back = custom.to_torch()
    assert back.weight_hh_l2_reverse.dtype == DT and not back.training
    sd_ref, sd_back = ref.state_dict(), back.state_dict()
    assert sd_ref.keys() == sd_back.keys() and all(torch.equal(sd_ref[k], sd_back[k]) for k in sd_ref)
    assert _close(back(x)[0], custom(x)[0])
    again = cls.from_torch(back)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_conversion_errors():
    with pytest.raises(ValueError, match="expected a torch.nn.LSTM, got GRU"):
        LSTM.from_torch(nn.GRU(I, H))
    with pytest.raises(ValueError, match="proj_size=2"):
        LSTM.from_torch(nn.LSTM(I, H, proj_size=2))
    with pytest.raises(ValueError, match="cannot express coupled"):
        LSTM(I, H, coupled=True).to_torch()
    with pytest.raises(ValueError, match="cannot express reset_after=False"):
        GRU(I, H, reset_after=False).to_torch()


@pytest.mark.parametrize("cls,option,label", [
    (LSTM, dict(coupled=True), "coupled"), (LSTM, dict(layer_norm=True), "layer_norm"),
    (LSTM, dict(recurrent_dropout=0.1), "recurrent_dropout"), (LSTM, dict(tie_layers=True), "tie_layers"),
    (GRU, dict(reset_after=False), "reset_after=False"), (GRU, dict(layer_norm=True), "layer_norm")])
def test_path_selection(cls, option, label):
    rule = "custom" if cls is GRU else "fused"          # auto on CPU: benchmarks/results/auto_path.md
    assert cls(I, H).path == rule and f"path='{rule}' (auto)" in repr(cls(I, H))
    assert cls(I, H, path="custom").path == "custom" and "(auto)" not in repr(cls(I, H, path="custom"))
    assert cls(I, H, path="fused").path == "fused"
    auto = cls(I, H, **option)
    assert auto.path == "custom" and "path='custom'" in repr(auto)
    with pytest.raises(ValueError, match=f"path='fused'.*cannot express {label}"):
        cls(I, H, path="fused", **option)
    with pytest.raises(ValueError, match="path must be one of"):
        cls(I, H, path="cudnn")


def test_auto_rule_follows_the_device(monkeypatch):
    """auto_path decides by cell kind and device; a module re-decides when it moves (here: a faked device)."""
    from hybridrnn.nn import recurrent

    assert recurrent.auto_path("GRU", "cpu") == "custom" and recurrent.auto_path("LSTM", "cpu") == "fused"
    assert recurrent.auto_path("GRU", "cuda") == "fused" and recurrent.auto_path("LSTM", "cuda") == "fused"
    m = GRU(I, H)
    monkeypatch.setattr(recurrent, "auto_path", lambda mode, device_type: "fused")
    m.double()
    assert m.path == "fused"
    assert GRU(I, H, path="custom").double().path == "custom"


def test_to_and_parameter_swap_reach_the_fused_path():
    torch.manual_seed(17)
    m = LSTM(I, H)
    m.double()  # the fused path must see the converted weights
    x = torch.randn(B, T, I, dtype=DT)
    assert m(x)[0].dtype == DT
    m.weight_hh_l0 = nn.Parameter(torch.zeros(4 * H, H, dtype=DT))
    ref = m.to_torch()
    assert torch.count_nonzero(ref.weight_hh_l0) == 0 and _close(m(x)[0], ref(x)[0])
    zeros = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    out, _ = torch.func.functional_call(m, zeros, (x,))
    assert torch.count_nonzero(out) == 0


# --------------------------------------------------------------------------- layout, final_output, tying
@pytest.mark.parametrize("path", ["fused", "custom"])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_output_layout_and_final_output(cls, path):
    torch.manual_seed(18)
    m = cls(I, H, 2, bidirectional=True, path=path).double()
    assert m.input_size == I and m.output_size == 2 * H and m.output_layout == ((H, False), (H, True))
    assert cls(I, H).output_layout == ((H, False),)
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([2, T, 4])
    out, state = m(x, lengths=lengths)
    h = state[0] if cls is LSTM else state
    assert torch.equal(m.final_output(out, lengths), torch.cat([h[-2], h[-1]], 1))
    out, state = m(x)
    h = state[0] if cls is LSTM else state
    assert torch.equal(m.final_output(out), torch.cat([h[-2], h[-1]], 1))
    uni = cls(I, H).double()
    out, state = uni(x, lengths=lengths)
    h = state[0] if cls is LSTM else state
    assert torch.equal(uni.final_output(out, lengths), h[-1])


def test_tie_layers_shares_tensors_and_counts_once():
    m = LSTM(I, H, 3, bidirectional=True, tie_layers=True)
    names = [n for n, _ in m.named_parameters()]
    assert names == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                     "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse",
                     "weight_ih_l1", "bias_ih_l1", "weight_ih_l1_reverse", "bias_ih_l1_reverse"]
    G, D = 4, 2
    layer0 = D * (G * H * I + G * H * H + 2 * G * H)
    layer1 = D * (G * H * D * H + G * H)
    assert sum(p.numel() for p in m.parameters()) == layer0 + layer1
    untied = LSTM(I, H, 3, bidirectional=True)
    assert sum(p.numel() for p in untied.parameters()) - (layer0 + layer1) == D * (
        2 * (G * H * H + G * H) + (G * H * D * H + G * H))  # saved: 2 layers' recurrent + 1 layer's input tensors


def test_tie_layers_equals_untied_copy_and_sums_gradients():
    torch.manual_seed(19)
    tied = GRU(I, H, 3, tie_layers=True).double()
    untied = GRU(I, H, 3, path="custom").double()
    with torch.no_grad():
        for layer in range(3):
            for role in ("weight_ih", "bias_ih", "weight_hh", "bias_hh"):
                src = f"_l{min(layer, 1)}" if role.endswith("ih") else "_l0"
                getattr(untied, f"{role}_l{layer}").copy_(getattr(tied, role + src))
    x = torch.randn(B, T, I, dtype=DT)
    out_t, _ = tied(x)
    out_u, _ = untied(x)
    assert _close(out_t, out_u)
    out_t.pow(2).sum().backward()
    out_u.pow(2).sum().backward()
    assert _close(tied.weight_hh_l0.grad, sum(getattr(untied, f"weight_hh_l{k}").grad for k in range(3)))
    assert _close(tied.weight_ih_l1.grad, untied.weight_ih_l1.grad + untied.weight_ih_l2.grad)
    assert _close(tied.weight_ih_l0.grad, untied.weight_ih_l0.grad)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("path", ["fused", "custom"])
def test_bad_input_raises_value_error(path):
    m = LSTM(I, H, 2, path=path)
    x = torch.randn(B, T, I)
    with pytest.raises(ValueError, match=rf"expected x of shape \(batch, time, {I}\) \(3-D\), got shape \(6, {I}\)"):
        m(torch.randn(T, I))
    with pytest.raises(ValueError, match=rf"expected x with {I} features.*got 7 features, shape \({B}, {T}, 7\)"):
        m(torch.randn(B, T, 7))
    with pytest.raises(ValueError, match=rf"expected lengths in 1..{T}.*got values \[{T + 1}\]"):
        m(x, lengths=torch.tensor([1, T + 1, 2]))
    with pytest.raises(ValueError, match=rf"expected lengths in 1..{T}.*got values \[0\]"):
        m(x, lengths=torch.tensor([0, 2, 2]))
    with pytest.raises(ValueError, match=rf"expected lengths of shape \({B},\).*got shape \(2,\)"):
        m(x, lengths=torch.tensor([2, 2]))
    with pytest.raises(ValueError, match="expected lengths an integer tensor, got dtype torch.float32"):
        m(x, lengths=torch.tensor([2.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match=rf"expected state c of shape \(2, {B}, {H}\).*got shape \(1, {B}, {H}\)"):
        m(x, (torch.zeros(2, B, H), torch.zeros(1, B, H)))
    with pytest.raises(ValueError, match=r"expected state a tuple \(h, c\)"):
        m(x, torch.zeros(2, B, H))
    gru = GRU(I, H, bidirectional=True, path=path)
    with pytest.raises(ValueError, match=rf"expected state h of shape \(2, {B}, {H}\).*got shape \(1, {B}, {H}\)"):
        gru(x, torch.zeros(1, B, H))
    with pytest.raises(ValueError, match=rf"expected outputs of shape \(batch, time, {2 * H}\)"):
        gru.final_output(torch.zeros(B, T, H))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_size must be an integer >= 1, got 0"):
        LSTM(I, 0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        GRU(I, H, 2, dropout=1.0)
    with pytest.raises(ValueError, match="init must be one of"):
        LSTM(I, H, init="glorot")
    with pytest.raises(ValueError, match="chrono_tmax"):
        LSTM(I, H, init="chrono")


# --------------------------------------------------------------------------- autocast
AUTOCAST_CASES = [(LSTM, dict(path="fused")), (LSTM, dict(path="custom")), (LSTM, dict(coupled=True)),
                  (LSTM, dict(layer_norm=True)), (LSTM, dict(recurrent_dropout=0.2)), (GRU, dict(path="fused")),
                  (GRU, dict(path="custom")), (GRU, dict(reset_after=False)), (GRU, dict(layer_norm=True))]


@pytest.mark.parametrize("cls,options", AUTOCAST_CASES, ids=str)
def test_bf16_autocast_runs_every_path(cls, options):
    """Under CPU bf16 autocast (the trainer's bf16 option) every path runs forward and backward; the recurrence
    stays in the state's dtype, so outputs are float32 and within bf16 rounding of the float32 run."""
    torch.manual_seed(27)
    m = cls(I, H, 2, bidirectional=True, **options).eval()
    x = torch.randn(B, T, I)
    lengths = torch.tensor([T, 2, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = m(x, lengths=lengths)
    assert out.dtype == torch.float32
    ref, _ = m(x, lengths=lengths)
    assert _close(out, ref, 0.05)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    uni = cls(I, H, **options).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = uni.step(x[:, 0])
    assert _close(y.float(), uni.step(x[:, 0])[0], 0.05)


# --------------------------------------------------------------------------- gate_trace
@pytest.mark.parametrize("cls,options", OPTION_CASES + [(LSTM, {}), (GRU, {})], ids=str)
def test_gate_trace_reproduces_the_layer(cls, options):
    """gate_trace (the general loop over the cell functions) gives the layer's own outputs and one entry of
    gates per layer and direction, each (B, T, H) and in (0, 1) for the sigmoid gates."""
    torch.manual_seed(19)
    m = cls(I, H, 2, bidirectional=True, **options).double().eval()
    _randomise(m)
    x = torch.randn(B, T, I, dtype=DT)
    out, trace = m.gate_trace(x)
    assert _close(out, m(x)[0])
    assert [(e["layer"], e["direction"]) for e in trace] == [(0, "forward"), (0, "backward"), (1, "forward"),
                                                             (1, "backward")]
    names = ("i", "f", "g", "o") if cls is LSTM else ("r", "z", "n")
    for entry in trace:
        assert tuple(entry["gates"]) == names
        assert all(v.shape == (B, T, H) for v in entry["gates"].values())
        sig = entry["gates"]["f" if cls is LSTM else "z"]
        assert sig.min() >= 0 and sig.max() <= 1
