"""Locked (variational) dropout between layers and between stacked blocks: one mask per sequence and feature,
the same at every step. Each test rebuilds the expected output from single-layer modules and the same mask
(drawn from the same seed), in float64, to 1e-10."""
from __future__ import annotations

import warnings

import pytest
import torch

from hybridrnn.nn import GRU, LSTM, build_encoder
from hybridrnn.nn.dropout import locked_dropout

TOL = 1e-10


def test_locked_dropout_mask_is_constant_over_time():
    torch.manual_seed(0)
    x = torch.ones(64, 30, 16, dtype=torch.float64)
    y = locked_dropout(x, 0.25, True)
    assert torch.equal(y, y[:, :1].expand_as(y))                       # same mask at every step
    assert set(y.unique().tolist()) == {0.0, 1 / 0.75}                 # inverted-dropout scaling
    assert 0.2 < (y[:, 0] == 0).double().mean() < 0.3                  # about p of the units dropped
    assert not torch.equal(y[0, 0], y[1, 0])                           # different sequences, different masks
    assert locked_dropout(x, 0.25, False) is x and locked_dropout(x, 0.0, True) is x
    t_first = locked_dropout(x.transpose(0, 1), 0.25, True, time_dim=0)
    assert torch.equal(t_first, t_first[:1].expand_as(t_first))


def _split_layers(layer, cls, **options):
    """Two one-layer modules holding the weights of ``layer``'s layers 0 and 1."""
    first = cls(layer.input_size, layer.hidden_size, **options).double()
    second = cls(layer.hidden_size, layer.hidden_size, **options).double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            target, suffix = (first, "_l0") if name.endswith("_l0") else (second, "_l1")
            getattr(target, name[:-len(suffix)] + "_l0").copy_(p)
    return first, second


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_locked_dropout_between_layers_matches_a_composition_of_single_layers(cls):
    torch.manual_seed(1)
    layer = cls(3, 5, 2, dropout=0.4, locked_dropout=True).double().train()
    assert layer.path == "custom" and "locked_dropout=True" in repr(layer)
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    torch.manual_seed(7)
    out, _ = layer(x)
    first, second = _split_layers(layer, cls)
    torch.manual_seed(7)
    mask = torch.empty(1, 4, 5, dtype=torch.float64).bernoulli_(0.6) / 0.6   # (time=1, batch, features)
    expected, _ = second(first(x)[0] * mask.transpose(0, 1))
    assert (out - expected).abs().max() < TOL
    # ordinary dropout draws a fresh mask per step: a different result from the same seed
    plain = cls(3, 5, 2, dropout=0.4, path="custom").double().train()
    plain.load_state_dict(layer.state_dict())
    torch.manual_seed(7)
    assert (plain(x)[0] - out).abs().max() > 1e-3


def test_locked_dropout_between_stacked_blocks():
    torch.manual_seed(2)
    enc = build_encoder("lstm:5>gru:4", 3, dropout=0.5, locked_dropout=True).double().train()
    assert "locked_dropout=True" in repr(enc)
    x = torch.randn(3, 8, 3, dtype=torch.float64)
    torch.manual_seed(11)
    out, _ = enc(x)
    torch.manual_seed(11)
    mask = torch.empty(3, 1, 5, dtype=torch.float64).bernoulli_(0.5) / 0.5
    expected, _ = enc.blocks[1](enc.blocks[0](x)[0] * mask)
    assert (out - expected).abs().max() < TOL
    enc.eval()                                      # no dropout in eval: step() and forward() agree
    y, state = enc(x)
    s = None
    for t in range(8):
        y_t, s = enc.step(x[:, t], s)
    assert (y_t - y[:, -1]).abs().max() < TOL


def test_step_in_training_is_refused_and_paths_are_chosen():
    layer = LSTM(3, 4, 2, dropout=0.3, locked_dropout=True).train()
    with pytest.raises(ValueError, match="locked_dropout needs one mask per whole sequence"):
        layer.step(torch.randn(2, 3))
    with pytest.raises(ValueError, match="locked_dropout needs one mask"):
        build_encoder("lstm:4>gru:4", 3, dropout=0.3, locked_dropout=True).train().step(torch.randn(2, 3))
    with pytest.raises(ValueError, match="cannot express locked_dropout"):
        GRU(3, 4, 2, dropout=0.3, locked_dropout=True, path="fused")
    assert LSTM(3, 4, 2, locked_dropout=True).path == "fused"          # no dropout: nothing to lock
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert LSTM(3, 4, 1, dropout=0.3, locked_dropout=True).path == "fused"   # one layer: no between-layer dropout
    with pytest.warns(UserWarning, match="locked_dropout=True makes dropout variational, and dropout is 0"):
        build_encoder("lstm:4>gru:4", 3, locked_dropout=True)


def test_locked_dropout_from_a_config():
    from hybridrnn.config import ModelConfig
    from hybridrnn.tasks._common import encoder_options
    model = ModelConfig(encoder="lstm:8x2>gru:8", dropout=0.2, locked_dropout=True)
    enc = build_encoder(model.encoder, 3, **encoder_options(model))
    assert enc.locked_dropout and enc.blocks[0].locked_dropout and enc.blocks[0].path == "custom"
