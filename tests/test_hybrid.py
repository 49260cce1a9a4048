"""Hybrid encoders from specs: sizes and layouts, padding, final outputs, step(), gradients, fusion."""
import pytest
import torch

from hybridrnn.nn.hybrid import GateFusion, ParallelEncoder, StackedEncoder, build_encoder
from hybridrnn.nn.recurrent import GRU, LSTM

TOL = 1e-12  # float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


F, B_ = False, True  # forward / backward segment flags
SHAPES = [
    # spec, options, class, output_size, output_layout
    ("lstm:6", {}, LSTM, 6, ((6, F),)),
    ("bigru:5", {}, GRU, 10, ((5, F), (5, B_))),
    ("lstm:4x2", {}, LSTM, 4, ((4, F),)),
    ("lstm:6>gru:3", {}, StackedEncoder, 3, ((3, F),)),
    ("gru:3>bilstm:4", {}, StackedEncoder, 8, ((4, F), (4, B_))),
    ("bilstm:4>gru:3>gru:3", {}, StackedEncoder, 3, ((3, F),)),
    ("lstm:4|gru:3", {}, ParallelEncoder, 7, ((7, F),)),
    ("bilstm:4|bigru:3", {}, ParallelEncoder, 14, ((4, F), (4, B_), (3, F), (3, B_))),
    ("lstm:4|bigru:3", {}, ParallelEncoder, 10, ((7, F), (3, B_))),
    ("lstm:4|gru:4", {"fusion": "sum"}, ParallelEncoder, 4, ((4, F),)),
    ("bilstm:4|bigru:4", {"fusion": "sum"}, ParallelEncoder, 8, ((4, F), (4, B_))),
    ("lstm:4|gru:6|gru:2", {"fusion": "gate"}, ParallelEncoder, 6, ((6, F),)),
    ("bilstm:4|bigru:2", {"fusion": "gate"}, ParallelEncoder, 8, ((4, F), (4, B_))),
    ("(lstm:4|gru:4)>gru:3", {}, StackedEncoder, 3, ((3, F),)),
    ("gru:3>(lstm:4|gru:5)", {"fusion": "gate"}, StackedEncoder, 5, ((5, F),)),
    ("(lstm:4>gru:3)|bigru:2", {}, ParallelEncoder, 7, ((5, F), (2, B_))),
]


@pytest.mark.parametrize("spec,opts,cls,size,layout", SHAPES, ids=[s[0] + str(s[1]) for s in SHAPES])
def test_output_size_and_layout(spec, opts, cls, size, layout):
    enc = build_encoder(spec, 5, **opts)
    assert type(enc) is cls
    assert enc.input_size == 5 and enc.output_size == size and tuple(enc.output_layout) == layout
    out, state = enc(torch.randn(2, 4, 5))
    assert out.shape == (2, 4, size)
    assert enc.final_output(out).shape == (2, size)
    if cls not in (LSTM, GRU):
        assert len(state) == enc.num_blocks == spec.count(":")
        assert enc.spec.replace("(", "").replace(")", "") == spec.replace("(", "").replace(")", "")


def test_stack_state_is_one_entry_per_block_in_spec_order():
    enc = build_encoder("(lstm:4|gru:3x2)>bigru:2", 5)
    _, state = enc(torch.randn(2, 3, 5))
    h, c = state[0]
    assert h.shape == c.shape == (1, 2, 4)           # lstm:4
    assert state[1].shape == (2, 2, 3)               # gru:3x2
    assert state[2].shape == (2, 2, 2)               # bigru:2


PADDING_CASES = [
    ("lstm:4>gru:3", {}),
    ("bilstm:4>gru:3", {}),
    ("gru:3>bilstm:4", {"path": "custom"}),
    ("lstm:4|bigru:3", {}),
    ("lstm:4|gru:4", {"fusion": "sum"}),
    ("(lstm:4|gru:6)>bigru:3", {"fusion": "gate", "share_input_projection": 3}),
    ("bilstm:4|bigru:2", {"fusion": "gate"}),
    ("lstm:4>lstm:4x2", {"tie_layers": True, "coupled": True}),
]


def _state_of(state, b):
    """Slice sequence b out of a flat encoder state (tuple over blocks of (h, c) or h)."""
    return [tuple(p[:, b] for p in s) if isinstance(s, tuple) else s[:, b] for s in state]


def _assert_states_close(a, b):
    for x, y in zip(a, b):
        for p, q in zip(x if isinstance(x, tuple) else (x,), y if isinstance(y, tuple) else (y,)):
            torch.testing.assert_close(p, q, atol=TOL, rtol=0)


@pytest.mark.parametrize("spec,opts", PADDING_CASES, ids=[c[0] + str(c[1]) for c in PADDING_CASES])
def test_padding_never_changes_real_outputs_or_final_state(spec, opts):
    enc = build_encoder(spec, 3, **opts).double().eval()
    lengths = torch.tensor([5, 2, 3])
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        x[b, n:] = 100.0 * torch.randn(5 - n, 3, dtype=torch.float64)   # junk in the padding
    with torch.no_grad():
        out, state = enc(x, lengths=lengths)
        for b, n in enumerate(lengths.tolist()):
            alone, alone_state = enc(x[b:b + 1, :n])
            torch.testing.assert_close(out[b, :n], alone[0], atol=TOL, rtol=0)
            assert torch.equal(out[b, n:], torch.zeros_like(out[b, n:]))      # padding output exactly 0
            _assert_states_close(_state_of(state, b), _state_of(alone_state, 0))
            torch.testing.assert_close(enc.final_output(out, lengths)[b], enc.final_output(alone)[0],
                                       atol=TOL, rtol=0)


def test_final_output_takes_forward_at_last_real_step_and_backward_at_step_zero():
    enc = build_encoder("bilstm:4|gru:3", 2).double()        # layout (4 fwd, 4 bwd, 3 fwd)
    lengths = torch.tensor([4, 2])
    out, _ = enc(torch.randn(2, 4, 2, dtype=torch.float64), lengths=lengths)
    fin = enc.final_output(out, lengths)
    for b, n in enumerate(lengths.tolist()):
        expected = torch.cat([out[b, n - 1, :4], out[b, 0, 4:8], out[b, n - 1, 8:]])
        assert torch.equal(fin[b], expected)


def test_final_output_of_a_bidirectional_top_block_equals_its_final_state():
    enc = build_encoder("gru:3>bilstm:4", 2).double()
    lengths = torch.tensor([5, 3])
    out, state = enc(torch.randn(2, 5, 2, dtype=torch.float64), lengths=lengths)
    h = state[-1][0]                                          # (2 directions, B, 4)
    torch.testing.assert_close(enc.final_output(out, lengths), torch.cat([h[0], h[1]], 1), atol=TOL, rtol=0)


STEP_CASES = [
    ("lstm:4>gru:3", {}),
    ("(lstm:4|gru:4)>gru:3", {"fusion": "gate", "share_input_projection": True}),
    ("lstm:4|gru:6|lstm:2", {"fusion": "gate", "coupled": True}),
    ("lstm:4|gru:4", {"fusion": "sum", "layer_norm": True}),
    ("gru:3x2>gru:3", {"tie_layers": True, "reset_after": False}),
]


@pytest.mark.parametrize("spec,opts", STEP_CASES, ids=[c[0] + str(c[1]) for c in STEP_CASES])
def test_repeated_step_equals_forward(spec, opts):
    enc = build_encoder(spec, 3, **opts).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    h0 = enc(torch.randn(2, 2, 3, dtype=torch.float64))[1]   # a non-zero initial state
    with torch.no_grad():
        out, final = enc(x, h0)
        state, ys = h0, []
        for t in range(5):
            y, state = enc.step(x[:, t], state)
            ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), out, atol=TOL, rtol=0)
    _assert_states_close(state, final)


def test_step_of_bidirectional_encoder_raises():
    enc = build_encoder("lstm:4>bigru:3", 3)
    with pytest.raises(ValueError, match="bidirectional"):
        enc.step(torch.randn(2, 3))


def test_state_carries_across_chunks():
    enc = build_encoder("(lstm:4|gru:3)>lstm:2", 3).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    whole, s_whole = enc(x)
    first, s = enc(x[:, :2])
    second, s = enc(x[:, 2:], s)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=TOL, rtol=0)
    _assert_states_close(s, s_whole)


@pytest.mark.parametrize("spec,opts", [("(lstm:4|gru:6)>gru:3", {"fusion": "gate", "share_input_projection": 4}),
                                       ("bilstm:3|bigru:2", {"fusion": "gate"}),
                                       ("lstm:3>lstm:3>gru:2", {"tie_layers": True})])
def test_gradients_reach_every_parameter(spec, opts):
    enc = build_encoder(spec, 3, **opts).double()
    lengths = torch.tensor([4, 2])
    out, state = enc(torch.randn(2, 4, 3, dtype=torch.float64), lengths=lengths)
    loss = enc.final_output(out, lengths).pow(2).sum() + out.sum()
    loss.backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gate_fusion_formula_two_and_three_inputs():
    a, b, c = (torch.randn(2, 3, 4, dtype=torch.float64) for _ in range(3))
    g2 = GateFusion(2, 4).double()
    W, w0 = g2.gate.weight, g2.gate.bias
    g = torch.sigmoid(torch.cat([a, b], -1) @ W.T + w0)
    torch.testing.assert_close(g2([a, b]), g * a + (1 - g) * b, atol=TOL, rtol=0)
    g3 = GateFusion(3, 4).double()
    logits = (torch.cat([a, b, c], -1) @ g3.gate.weight.T + g3.gate.bias).reshape(2, 3, 3, 4)
    e = logits.exp()
    w = e / e.sum(2, keepdim=True)                                # softmax over the 3 branches
    expected = w[:, :, 0] * a + w[:, :, 1] * b + w[:, :, 2] * c
    torch.testing.assert_close(g3([a, b, c]), expected, atol=TOL, rtol=0)
    torch.testing.assert_close(g3.weights([a, b, c]).sum(-2), torch.ones(2, 3, 4, dtype=torch.float64),
                               atol=1e-14, rtol=0)


def test_gradcheck_gate_fusion():
    for k in (2, 3):
        fusion = GateFusion(k, 2).double()
        inputs = tuple(torch.randn(2, 2, dtype=torch.float64, requires_grad=True) for _ in range(k))
        assert torch.autograd.gradcheck(lambda *xs: fusion(list(xs)), inputs)


def test_gradcheck_gated_parallel_encoder():
    enc = build_encoder("lstm:2|gru:3", 2, fusion="gate").double()
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])
    assert torch.autograd.gradcheck(lambda x: enc(x, lengths=lengths)[0], (x,))


def test_sum_and_gate_fusion_reject_incompatible_branches():
    with pytest.raises(ValueError, match=r"equal output sizes.*lstm:4 -> \(4 forward\); gru:3 -> \(3 forward\)"):
        build_encoder("lstm:4|gru:3", 2, fusion="sum")
    with pytest.raises(ValueError, match="same directions"):
        build_encoder("lstm:4|bigru:2", 2, fusion="gate")
    with pytest.raises(ValueError, match="fusion must be one of"):
        build_encoder("lstm:4|gru:4", 2, fusion="max")


def test_dropout_between_blocks_only_in_training():
    enc = build_encoder("lstm:8>gru:4", 3, dropout=0.5).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    enc.train()
    a, b = enc(x)[0], enc(x)[0]
    assert not torch.allclose(a, b)
    enc.eval()
    assert torch.equal(enc(x)[0], enc(x)[0])
    enc.dropout = 0.0
    enc.train()
    torch.testing.assert_close(enc(x)[0], enc.eval()(x)[0], atol=0, rtol=0)


def test_bad_input_names_expected_and_received():
    enc = build_encoder("lstm:4>gru:3", 5)
    with pytest.raises(ValueError, match=r"\(batch, time, 5\).*\(2, 3, 4\)"):
        enc(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="tuple of 2 per-block states"):
        enc(torch.randn(2, 3, 5), state=(torch.zeros(1, 2, 4),))
    with pytest.raises(ValueError, match=r"1\.\.3.*\[4\]"):
        enc(torch.randn(2, 3, 5), lengths=torch.tensor([2, 4]))
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        enc.step(torch.randn(2, 4))
    with pytest.raises(ValueError, match="tie_layers"):
        build_encoder("lstm:4>lstm:4", 5, tie_layers=True, path="fused")


@pytest.mark.parametrize("spec,opts,match", [
    ("gru:4", {"forget_bias": 1.0}, "forget_bias=1.0 applies to LSTM blocks"),
    ("gru:4|gru:4", {"coupled": True}, "coupled=True applies to LSTM"),
    ("lstm:4>gru:3", {"share_input_projection": True}, "share_input_projection=True applies to parallel groups"),
    ("lstm:4>gru:3", {"fusion": "gate"}, "fusion='gate' applies to parallel groups"),
    ("lstm:4>gru:3", {"tie_layers": True}, "has neither"),
])
def test_options_with_nothing_to_act_on_warn(spec, opts, match):
    with pytest.warns(UserWarning, match=match):
        enc = build_encoder(spec, 5, **opts)
    plain = build_encoder(spec, 5)
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in plain.parameters())


def test_options_that_act_do_not_warn():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_encoder("lstm:4x2>gru:3|lstm:3", 5, forget_bias=1.0, coupled=True, share_input_projection=True,
                      fusion="gate", tie_layers=True, dropout=0.2)



def test_bad_input_reaches_the_user_with_shapes_and_values():
    from hybridrnn.nn.spec import SpecError
    with pytest.raises(SpecError) as info:
        build_encoder("lstm:64>>gru:32", 5)
    assert str(info.value).endswith("  lstm:64>>gru:32\n          ^")
    enc = build_encoder("lstm:4>gru:3", 5)
    x = torch.randn(2, 3, 5)
    good = enc(x)[1]
    with pytest.raises(ValueError, match=r"expected state c of shape \(1, 2, 4\).*got shape \(1, 2, 3\)"):
        enc(x, ((good[0][0], torch.zeros(1, 2, 3)), good[1]))
    with pytest.raises(ValueError, match=r"expected state h of shape \(1, 2, 3\).*got shape \(2, 2, 3\)"):
        enc(x, (good[0], torch.zeros(2, 2, 3)))
    par = build_encoder("lstm:4|gru:3", 5)
    with pytest.raises(ValueError, match=r"expected lengths in 1\.\.3.*got values \[0\]"):
        par(x, lengths=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, time, 5\), got shape \(3, 5\)"):
        par(torch.randn(3, 5))
