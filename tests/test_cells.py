"""LSTMCell / GRUCell: parity with torch's cells, reference equations for the options, gradcheck.

Everything runs in float64; parity tolerance 1e-10 (absolute) on values and gradients.
"""
import pytest
import torch
from torch import nn

from hybridrnn.nn.cells import GRUCell, LSTMCell

TOL = 1e-10
B, I, H = 3, 4, 5


def _copy_weights(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        for name, p in src.named_parameters():
            getattr(dst, name).copy_(p)


def _grads(module: nn.Module, *tensors):
    return [p.grad for _, p in sorted(module.named_parameters())] + [t.grad for t in tensors]


def _close(a, b):
    return (a - b).abs().max().item() <= TOL


# --------------------------------------------------------------------------- hand-written references
def _ln(a, gain, bias, eps=1e-5):
    """Layer norm over the last axis, written out (not F.layer_norm)."""
    mean = a.mean(-1, keepdim=True)
    var = ((a - mean) ** 2).mean(-1, keepdim=True)
    return (a - mean) / torch.sqrt(var + eps) * gain + bias


def _ln_gates(a, gain, bias, gates):
    return torch.cat([_ln(blk, g, b) for blk, g, b in zip(a.chunk(gates, -1), gain.chunk(gates), bias.chunk(gates))], -1)


def ref_lstm_step(cell, x, h, c):
    """Textbook LSTM, each gate its own matmul; coupled: f = 1 - i; layer norm as documented in cells.py."""
    G = 3 if cell.coupled else 4
    ax = x @ cell.weight_ih.t() + (cell.bias_ih if cell.bias else 0)
    ah = h @ cell.weight_hh.t() + (cell.bias_hh if cell.bias else 0)
    if cell.layer_norm:
        ax = _ln_gates(ax, cell.ln_ih_weight, cell.ln_ih_bias, G)
        ah = _ln_gates(ah, cell.ln_hh_weight, cell.ln_hh_bias, G)
    a = (ax + ah).chunk(G, -1)
    if cell.coupled:
        i, g, o = torch.sigmoid(a[0]), torch.tanh(a[1]), torch.sigmoid(a[2])
        f = 1 - i
    else:
        i, f, g, o = torch.sigmoid(a[0]), torch.sigmoid(a[1]), torch.tanh(a[2]), torch.sigmoid(a[3])
    c_new = f * c + i * g
    c_out = _ln(c_new, cell.ln_c_weight, cell.ln_c_bias) if cell.layer_norm else c_new
    return o * torch.tanh(c_out), c_new


def ref_gru_step(cell, x, h):
    """GRU from the equations: reset_after=True torch's form, False Cho et al. 2014's W_hn (r * h)."""
    w_ir, w_iz, w_in = cell.weight_ih.chunk(3)
    w_hr, w_hz, w_hn = cell.weight_hh.chunk(3)
    zeros = torch.zeros(3 * H, dtype=x.dtype)
    b_ir, b_iz, b_in = (cell.bias_ih if cell.bias else zeros).chunk(3)
    b_hr, b_hz, b_hn = (cell.bias_hh if cell.bias else zeros).chunk(3)
    xr, xz, xn = x @ w_ir.t() + b_ir, x @ w_iz.t() + b_iz, x @ w_in.t() + b_in
    hr, hz = h @ w_hr.t() + b_hr, h @ w_hz.t() + b_hz
    if cell.layer_norm:
        gi, bi = cell.ln_ih_weight.chunk(3), cell.ln_ih_bias.chunk(3)
        gh, bh = cell.ln_hh_weight.chunk(3), cell.ln_hh_bias.chunk(3)
        xr, xz, xn = _ln(xr, gi[0], bi[0]), _ln(xz, gi[1], bi[1]), _ln(xn, gi[2], bi[2])
        hr, hz = _ln(hr, gh[0], bh[0]), _ln(hz, gh[1], bh[1])
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    hn = (h @ w_hn.t() + b_hn) if cell.reset_after else ((r * h) @ w_hn.t() + b_hn)
    if cell.layer_norm:
        hn = _ln(hn, gh[2], bh[2])
    n = torch.tanh(xn + r * hn) if cell.reset_after else torch.tanh(xn + hn)
    u = 1 - z  # textbook update gate
    return (1 - u) * h + u * n


# --------------------------------------------------------------------------- parity with torch
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_matches_torch(bias):
    torch.manual_seed(0)
    ref = nn.LSTMCell(I, H, bias=bias).double()
    ours = LSTMCell(I, H, bias=bias).double()
    _copy_weights(ref, ours)
    inputs = [torch.randn(B, I, dtype=torch.double), torch.randn(B, H, dtype=torch.double),
              torch.randn(B, H, dtype=torch.double)]
    xa, ha, ca = [t.clone().requires_grad_() for t in inputs]
    xb, hb, cb = [t.clone().requires_grad_() for t in inputs]
    h1, c1 = ref(xa, (ha, ca))
    h2, c2 = ours(xb, (hb, cb))
    assert _close(h1, h2) and _close(c1, c2)
    (h1.sum() + 2 * c1.sum()).backward()
    (h2.sum() + 2 * c2.sum()).backward()
    for g1, g2 in zip(_grads(ref, xa, ha, ca), _grads(ours, xb, hb, cb)):
        assert _close(g1, g2)


@pytest.mark.parametrize("bias", [True, False])
def test_gru_cell_matches_torch(bias):
    torch.manual_seed(1)
    ref = nn.GRUCell(I, H, bias=bias).double()
    ours = GRUCell(I, H, bias=bias).double()
    _copy_weights(ref, ours)
    inputs = [torch.randn(B, I, dtype=torch.double), torch.randn(B, H, dtype=torch.double)]
    xa, ha = [t.clone().requires_grad_() for t in inputs]
    xb, hb = [t.clone().requires_grad_() for t in inputs]
    h1, h2 = ref(xa, ha), ours(xb, hb)
    assert _close(h1, h2)
    h1.pow(2).sum().backward()
    h2.pow(2).sum().backward()
    for g1, g2 in zip(_grads(ref, xa, ha), _grads(ours, xb, hb)):
        assert _close(g1, g2)


def test_default_state_is_zeros():
    torch.manual_seed(2)
    x = torch.randn(B, I, dtype=torch.double)
    lstm = LSTMCell(I, H).double()
    zeros = torch.zeros(B, H, dtype=torch.double)
    h1, c1 = lstm(x)
    h2, c2 = lstm(x, (zeros, zeros))
    assert torch.equal(h1, h2) and torch.equal(c1, c2)
    gru = GRUCell(I, H).double()
    assert torch.equal(gru(x), gru(x, zeros))


# --------------------------------------------------------------------------- options against references
def _randomise(cell):
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p is getattr(cell, "ln_ih_weight", None) else 0.0))


LSTM_OPTIONS = [dict(coupled=True), dict(layer_norm=True), dict(coupled=True, layer_norm=True),
                dict(coupled=True, bias=False)]
GRU_OPTIONS = [dict(reset_after=False), dict(layer_norm=True), dict(reset_after=False, layer_norm=True),
               dict(reset_after=False, bias=False), dict(reset_after=True)]


@pytest.mark.parametrize("options", LSTM_OPTIONS, ids=str)
def test_lstm_cell_options_match_reference(options):
    torch.manual_seed(3)
    cell = LSTMCell(I, H, **options).double()
    _randomise(cell)
    x, h, c = (torch.randn(B, n, dtype=torch.double) for n in (I, H, H))
    h1, c1 = cell(x, (h, c))
    h2, c2 = ref_lstm_step(cell, x, h, c)
    assert _close(h1, h2) and _close(c1, c2)
    g1 = torch.autograd.grad((h1 * c1).sum(), list(cell.parameters()))
    g2 = torch.autograd.grad((h2 * c2).sum(), list(cell.parameters()))
    for a, b in zip(g1, g2):
        assert _close(a, b)


@pytest.mark.parametrize("options", GRU_OPTIONS, ids=str)
def test_gru_cell_options_match_reference(options):
    torch.manual_seed(4)
    cell = GRUCell(I, H, **options).double()
    _randomise(cell)
    x, h = torch.randn(B, I, dtype=torch.double), torch.randn(B, H, dtype=torch.double)
    h1, h2 = cell(x, h), ref_gru_step(cell, x, h)
    assert _close(h1, h2)
    g1 = torch.autograd.grad(h1.pow(2).sum(), list(cell.parameters()))
    g2 = torch.autograd.grad(h2.pow(2).sum(), list(cell.parameters()))
    for a, b in zip(g1, g2):
        assert _close(a, b)


def test_paper_gru_differs_from_torch_form():
    """The two GRU forms are different functions (so the reset_after flag is not a no-op)."""
    torch.manual_seed(5)
    a, b = GRUCell(I, H, reset_after=True).double(), GRUCell(I, H, reset_after=False).double()
    b.load_state_dict(a.state_dict())
    x, h = torch.randn(B, I, dtype=torch.double), torch.randn(B, H, dtype=torch.double)
    assert (a(x, h) - b(x, h)).abs().max() > 1e-3


def test_coupled_forget_gate_is_one_minus_input():
    """With W, b chosen so i = sigmoid(a), the coupled cell keeps exactly (1 - i) of c."""
    cell = LSTMCell(1, 1, coupled=True).double()
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
        cell.bias_hh.zero_()
        cell.bias_ih.copy_(torch.tensor([0.3, -50.0, 50.0], dtype=torch.double))  # i = sigmoid(0.3), g = tanh(-50) = -1, o = 1
    c = torch.tensor([[2.0]], dtype=torch.double)
    _, c_new = cell(torch.zeros(1, 1, dtype=torch.double), (torch.zeros_like(c), c))
    i = torch.sigmoid(torch.tensor(0.3, dtype=torch.double))
    assert abs(c_new.item() - ((1 - i) * 2.0 - i).item()) < TOL


@pytest.mark.parametrize("cls,options", [(LSTMCell, dict(coupled=True, layer_norm=True)), (LSTMCell, {}),
                                         (GRUCell, dict(reset_after=False, layer_norm=True)), (GRUCell, {})],
                         ids=str)
def test_cells_gradcheck(cls, options):
    torch.manual_seed(6)
    cell = cls(2, 2, **options).double()
    _randomise(cell)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(2, 2, dtype=torch.double, requires_grad=True)
    h = torch.randn(2, 2, dtype=torch.double, requires_grad=True)

    def fn(x, h, *ps):
        state = (h, h * 0.5) if cls is LSTMCell else h
        out = torch.func.functional_call(cell, dict(zip(names, ps)), (x, state))
        return out if cls is GRUCell else out[0] + out[1]

    assert torch.autograd.gradcheck(fn, (x, h, *params), eps=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- shapes and bad input
def test_parameter_shapes_match_torch():
    for ours, ref in ((LSTMCell(I, H), nn.LSTMCell(I, H)), (GRUCell(I, H), nn.GRUCell(I, H))):
        assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in ref.named_parameters()}
    coupled = LSTMCell(I, H, coupled=True)
    assert coupled.weight_ih.shape == (3 * H, I) and coupled.weight_hh.shape == (3 * H, H)


def test_bad_input_shapes():
    lstm, gru = LSTMCell(I, H), GRUCell(I, H)
    with pytest.raises(ValueError, match=rf"expected x of shape \(batch, {I}\), got \(3, 7\)"):
        lstm(torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"expected x of shape .* got \(2, 3, 4\)"):
        gru(torch.randn(2, 3, I))
    with pytest.raises(ValueError, match=rf"expected c of shape \(3, {H}\), got \(3, 2\)"):
        lstm(torch.randn(3, I), (torch.zeros(3, H), torch.zeros(3, 2)))
    with pytest.raises(ValueError, match=rf"expected h of shape \(3, {H}\), got \(2, {H}\)"):
        gru(torch.randn(3, I), torch.zeros(2, H))
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMCell(I, 0)


# --------------------------------------------------------------------------- initialisation schemes
from hybridrnn.nn.init import init_recurrent_  # noqa: E402
from hybridrnn.nn.recurrent import GRU, LSTM  # noqa: E402


def _blocks(w, gates):
    return w.detach().double().chunk(gates, 0)


@pytest.mark.parametrize("module", [LSTMCell(32, 64), LSTMCell(32, 64, coupled=True, layer_norm=True),
                                    GRUCell(32, 64), nn.LSTM(32, 64, 2), nn.GRUCell(32, 64),
                                    LSTM(32, 64, 3, bidirectional=True, tie_layers=True)],
                         ids=["lstm_cell", "coupled_ln_cell", "gru_cell", "nn.LSTM", "nn.GRUCell", "tied_layer"])
def test_xavier_orthogonal_init_per_gate(module):
    torch.manual_seed(30)
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(7.0)  # every value below must come from the initialiser
    init_recurrent_(module, "xavier_orthogonal")
    hid = 64
    seen = 0
    for name, p in module.named_parameters():
        gates = p.shape[0] // hid
        if name.startswith("weight_hh"):
            for blk in _blocks(p, gates):  # each gate's (H, H) block is orthogonal
                assert (blk @ blk.t() - torch.eye(hid, dtype=torch.double)).abs().max() < 1e-5, name
            seen += 1
        elif name.startswith("weight_ih"):
            for blk in _blocks(p, gates):  # Xavier/Glorot uniform over fan_in + fan_out of the gate block
                bound = (6.0 / (blk.shape[0] + blk.shape[1])) ** 0.5
                assert blk.abs().max() <= bound and blk.abs().max() > 0.9 * bound, name
        elif name.startswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif name.startswith("ln_"):
            assert torch.all(p == (1.0 if "weight" in name else 0.0)), name
    assert seen > 0


def test_torch_init_is_uniform_within_one_over_sqrt_hidden():
    torch.manual_seed(31)
    m = LSTM(8, 25, 2, layer_norm=True, init="torch")
    for name, p in m.named_parameters():
        if name.startswith("ln_"):
            assert torch.all(p == (1.0 if "weight" in name else 0.0)), name
        else:
            assert p.abs().max() <= 1 / 5 and p.abs().max() > 0.9 / 5, name


@pytest.mark.parametrize("tmax", [3.5, 100.0])
def test_chrono_init_biases(tmax):
    """Tallec & Ollivier: b_f = log(u), u ~ U[1, tmax-1], b_i = -b_f; so at zero input and state the forget gate
    f = u / (1 + u) keeps a memory for 1 / (1 - f) = 1 + u steps, between 2 and tmax."""
    torch.manual_seed(32)
    H_ = 200
    lstm = LSTM(4, H_, 2, init="chrono", chrono_tmax=tmax).double()
    for sfx in ("_l0", "_l1"):
        b_i, b_f, b_g, b_o = getattr(lstm, "bias_ih" + sfx).chunk(4)
        assert torch.count_nonzero(getattr(lstm, "bias_hh" + sfx)) == 0
        assert torch.equal(b_i, -b_f) and torch.count_nonzero(b_g) == 0 and torch.count_nonzero(b_o) == 0
        memory = 1 / (1 - torch.sigmoid(b_f))
        assert memory.min() >= 2 - 1e-9 and memory.max() <= tmax + 1e-9
        assert memory.max() - memory.min() > 0.5 * (tmax - 3)  # spread over the range, not one value
    coupled = LSTM(4, H_, coupled=True, init="chrono", chrono_tmax=tmax).double()
    b_i, b_g, b_o = coupled.bias_ih_l0.chunk(3)
    memory = 1 / (1 - (1 - torch.sigmoid(b_i)))      # f = 1 - i
    assert memory.min() >= 2 - 1e-9 and memory.max() <= tmax + 1e-9
    assert torch.count_nonzero(b_g) == 0 and torch.count_nonzero(b_o) == 0
    gru = GRU(4, H_, init="chrono", chrono_tmax=tmax).double()
    b_r, b_z, b_n = gru.bias_ih_l0.chunk(3)          # torch's z keeps the old state: the forget-gate analogue
    memory = 1 / (1 - torch.sigmoid(b_z))
    assert memory.min() >= 2 - 1e-9 and memory.max() <= tmax + 1e-9
    assert torch.count_nonzero(b_r) == 0 and torch.count_nonzero(b_n) == 0
    assert torch.count_nonzero(gru.bias_hh_l0) == 0


@pytest.mark.parametrize("coupled", [False, True])
def test_forget_bias_adds_to_the_forget_preactivation(coupled):
    H_ = 6
    torch.manual_seed(33)
    plain = LSTM(3, H_, 2, coupled=coupled)
    torch.manual_seed(33)
    biased = LSTM(3, H_, 2, coupled=coupled, forget_bias=1.5)
    for name, p in biased.named_parameters():
        diff = p - dict(plain.named_parameters())[name]
        expected = torch.zeros_like(p)
        if name.startswith("bias_ih"):
            if coupled:
                expected[:H_] = -1.5                 # f = 1 - sigmoid(a_i) = sigmoid(-a_i)
            else:
                expected[H_:2 * H_] = 1.5
        assert torch.allclose(diff, expected, atol=1e-6, rtol=0), name
    assert "forget_bias=1.5" in repr(biased)


def test_init_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown scheme 'glorot'"):
        init_recurrent_(LSTMCell(2, 2), "glorot")
    with pytest.raises(ValueError, match="forget_bias applies to LSTM modules only, got a GRU"):
        init_recurrent_(GRUCell(2, 2), forget_bias=1.0)
    with pytest.raises(ValueError, match=r"chrono_tmax > 2.*got 2"):
        init_recurrent_(nn.LSTM(2, 2), "chrono", chrono_tmax=2)
    with pytest.raises(ValueError, match="bias=False"):
        LSTM(2, 2, bias=False, init="chrono", chrono_tmax=10)
    with pytest.raises(ValueError, match="expected an LSTM or GRU module or cell, got Linear"):
        init_recurrent_(nn.Linear(2, 2))
