"""AWD-LSTM regularisation: weight drop (DropConnect on W_hh), AR / TAR, variable-length BPTT, NT-ASGD."""
from __future__ import annotations

import copy

import pytest
import torch

from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.nn.language_model import LanguageModel
from hybridrnn.nn.recurrent import GRU, LSTM
from hybridrnn.nn.weight_drop import WeightDrop, draw_masks, weight_dropped_call, weight_hh_names

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- weight drop -----------------------------------------------------------------------------------------
def _pair(cls, **kw):
    """The same layer on the fused and on the custom path (equal float64 weights)."""
    torch.manual_seed(0)
    fused = cls(5, 7, num_layers=2, path="fused", **kw).double()
    custom = cls(5, 7, num_layers=2, path="custom", **kw).double()
    custom.load_state_dict(fused.state_dict())
    return fused, custom


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_weight_drop_p0_is_the_plain_call(cls):
    fused, _ = _pair(cls)
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    out, _ = fused(x)
    for p in (0.0,):
        dropped, _ = weight_dropped_call(fused.train(), p, x)
        assert torch.equal(dropped, out)
    torch.manual_seed(1)
    lm0 = LanguageModel(20, "lstm:8x2", embedding_dim=8, weight_drop=0.0)
    lm1 = copy.deepcopy(lm0)
    tokens = torch.randint(0, 20, (2, 7))
    assert torch.equal(lm0.train()(tokens)[0], lm1.train()(tokens)[0])


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_weight_drop_fused_equals_custom_with_the_same_mask(cls):
    fused, custom = _pair(cls)
    assert fused.path == "fused" and custom.path == "custom"
    x = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    masks = draw_masks(fused, 0.5, generator=torch.Generator().manual_seed(3))
    assert sorted(masks) == ["weight_hh_l0", "weight_hh_l1"]
    assert all(((m == 0) | (m == 2.0)).all() and (m == 0).any() for m in masks.values())
    out_f, h_f = weight_dropped_call(fused.train(), 0.5, x, masks=masks)
    out_c, h_c = weight_dropped_call(custom.train(), 0.5, x, masks=masks)
    torch.testing.assert_close(out_f, out_c, rtol=1e-10, atol=1e-12)
    out_f.square().sum().backward()
    out_c.square().sum().backward()
    for name in ("weight_hh_l0", "weight_hh_l1", "weight_ih_l1"):
        torch.testing.assert_close(getattr(fused, name).grad, getattr(custom, name).grad, rtol=1e-9, atol=1e-12)
    # DropConnect: a dropped connection gets no gradient
    assert (fused.weight_hh_l0.grad[masks["weight_hh_l0"] == 0] == 0).all()
    # and the parameters are the module's own again after the call
    assert isinstance(fused._parameters["weight_hh_l0"], torch.nn.Parameter)


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("path", ["fused", "custom"])
def test_weight_drop_mask_is_fixed_over_the_time_steps(cls, path):
    """One forward with weight drop equals a step-by-step run with the masked matrices at every step."""
    fused, custom = _pair(cls)
    layer = fused if path == "fused" else custom
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    masks = draw_masks(layer, 0.4, generator=torch.Generator().manual_seed(5))
    out, _ = weight_dropped_call(layer.train(), 0.4, x, masks=masks)
    masked = copy.deepcopy(layer)
    with torch.no_grad():
        for name, mask in masks.items():
            getattr(masked, name).mul_(mask)
    state, steps = None, []
    for t in range(x.shape[1]):
        y, state = masked.step(x[:, t], state)
        steps.append(y)
    torch.testing.assert_close(out, torch.stack(steps, 1), rtol=1e-10, atol=1e-12)
    plain, _ = layer(x)
    assert not torch.allclose(out, plain)         # the mask did act


def test_weight_drop_draws_a_new_mask_per_forward_and_eval_uses_full_weights():
    torch.manual_seed(0)
    lm = LanguageModel(20, "lstm:8>gru:8", embedding_dim=8, weight_drop=0.5)
    plain = LanguageModel(20, "lstm:8>gru:8", embedding_dim=8, weight_drop=0.0)
    plain.load_state_dict(lm.state_dict())
    assert weight_hh_names(lm.encoder) == ["blocks.0.weight_hh_l0", "blocks.1.weight_hh_l0"]
    tokens = torch.randint(0, 20, (2, 7))
    lm.train()
    a, b = lm(tokens)[0], lm(tokens)[0]
    assert not torch.allclose(a, b)               # a fresh mask each forward
    assert torch.equal(lm.eval()(tokens)[0], plain.eval()(tokens)[0])   # eval: the full weights
    assert not torch.allclose(lm.train()(tokens)[0], plain.train()(tokens)[0])
    assert set(lm.state_dict()) == set(plain.state_dict())             # names unchanged


def test_weight_drop_wrapper_and_bounds():
    enc = build_encoder("gru:6", 4)
    wrapped = WeightDrop(enc, 0.3)
    assert wrapped.output_size == enc.output_size
    x = torch.randn(2, 5, 4)
    assert torch.equal(wrapped.eval()(x)[0], enc.eval()(x)[0])
    with pytest.raises(ValueError, match="weight_drop"):
        WeightDrop(enc, 1.0)
    with pytest.raises(ValueError, match="weight_drop"):
        LanguageModel(20, "lstm:8", embedding_dim=8, weight_drop=1.5)
