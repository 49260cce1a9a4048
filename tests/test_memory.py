"""The memory diagnostic: per-step gradient norms against an independent computation, gate statistics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridrnn.experiments.memory import (gate_statistics, memory_diagnostic, recurrent_layers,
                                          state_gradient_norms)
from hybridrnn.nn.hybrid import build_encoder

SPECS = ["lstm:5", "gru:5", "lstm:4>gru:3", "(lstm:3|gru:3)", "lstm:4x2"]


def _tensors(state):
    return [state] if isinstance(state, torch.Tensor) else [t for s in state for t in _tensors(s)]


def _map(fn, state):
    return fn(state) if isinstance(state, torch.Tensor) else type(state)(_map(fn, s) for s in state)


def reference_norms(encoder, head, x, target):
    """||dL_b/ds_t|| from whole-sequence forwards: s_t is a leaf made from a forward over x[:, :t], and the loss
    comes from a forward over x[:, t:] starting at s_t (no step() involved)."""
    batch, steps = x.shape[:2]
    template = encoder(x[:, :1])[1]
    norms = []
    for t in range(steps):
        if t == 0:
            state = _map(torch.zeros_like, template)
        else:
            state = encoder(x[:, :t])[1]
        leaf = _map(lambda s: s.detach().clone().requires_grad_(True), state)
        outputs, _ = encoder(x[:, t:], state=leaf)
        losses = (head(encoder.final_output(outputs)).squeeze(-1) - target) ** 2
        losses.sum().backward()
        squared = sum(s.grad.pow(2).sum(dim=(0, 2)) for s in _tensors(leaf))
        norms.append(float(squared.sqrt().mean()))
    return np.array(norms)


@pytest.mark.parametrize("spec", SPECS)
def test_gradient_norms_match_whole_sequence_reference(spec):
    torch.manual_seed(0)
    encoder = build_encoder(spec, 3).double()
    head = nn.Linear(encoder.output_size, 1).double()
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    target = torch.randn(4, dtype=torch.float64)
    got = state_gradient_norms(encoder, x, lambda out: (head(encoder.final_output(out)).squeeze(-1) - target) ** 2)
    assert got["state"].shape == (7,) and got["hidden"].shape == (7,)
    assert np.isfinite(got["state"]).all() and (got["state"] > 0).all()
    np.testing.assert_allclose(got["state"], reference_norms(encoder, head, x, target), rtol=1e-8, atol=1e-12)
    if "lstm" in spec:
        assert (got["hidden"] < got["state"]).all()          # the cell c carries part of the gradient
    else:
        np.testing.assert_allclose(got["hidden"], got["state"], rtol=1e-12)


def test_gradient_needs_unidirectional_encoder():
    encoder = build_encoder("bilstm:3", 2)
    with pytest.raises(ValueError, match="bidirectional"):
        state_gradient_norms(encoder, torch.randn(2, 4, 2), lambda out: out.sum((1, 2)))


def test_forget_and_update_gates_are_the_right_rows():
    torch.manual_seed(0)
    x = torch.randn(8, 10, 3)
    lstm = build_encoder("lstm:5", 3)
    with torch.no_grad():                 # rows (i, f, g, o): push only the forget gate to 1
        lstm.bias_ih_l0.zero_()
        lstm.bias_hh_l0.zero_()
        lstm.bias_ih_l0[5:10] = 20.0
    (stats,) = gate_statistics(lstm, x)
    assert stats["memory_gate"] == "forget f" and stats["saturated_high"] == 1.0 and stats["saturated_low"] == 0.0
    assert stats["mean"]["forget f"] > 0.999 and stats["mean"]["input i"] < 0.9
    gru = build_encoder("gru:5", 3)
    with torch.no_grad():                 # rows (r, z, n): push only the update gate to 0
        gru.bias_ih_l0.zero_()
        gru.bias_hh_l0.zero_()
        gru.bias_hh_l0[5:10] = -20.0
    (stats,) = gate_statistics(gru, x)
    assert stats["memory_gate"] == "update z" and stats["saturated_low"] == 1.0
    assert stats["mean"]["update z"] < 1e-3 and stats["mean"]["reset r"] > 0.01


@pytest.mark.parametrize("spec,options,entries", [
    ("bilstm:4x2", {}, 4), ("gru:4x2", {"reset_after": False}, 2), ("lstm:4>lstm:4", {"tie_layers": True}, 2),
    ("(lstm:4|gru:4)>gru:3", {"coupled": True}, 3), ("bigru:3", {}, 2),
])
def test_gate_statistics_reproduce_every_layer(spec, options, entries):
    """gate_statistics checks its own step-by-step loop against the layer's outputs, so no error means the
    recomputed gates are the ones the layer used."""
    torch.manual_seed(1)
    encoder = build_encoder(spec, 3, **options)
    stats = gate_statistics(encoder, torch.randn(5, 9, 3))
    assert len(stats) == entries
    for s in stats:
        assert all(0.0 <= v <= 1.0 for v in s["mean"].values())
        assert 0.0 <= s["saturated_low"] + s["saturated_high"] <= 1.0
        hidden = recurrent_layers(encoder)[s["block"]].hidden_size
        assert s["values"].shape == (5 * 9 * hidden,)


@pytest.mark.parametrize("spec,options", [
    ("lstm:4x2", {"layer_norm": True}), ("bigru:3", {"layer_norm": True, "reset_after": False}),
    ("gru:4", {"layer_norm": True}), ("lstm:4", {"layer_norm": True, "coupled": True}),
    ("lstm:4>gru:3", {"recurrent_dropout": 0.5, "dropout": 0.3}),
])
def test_every_cell_option_is_supported(spec, options):
    """Layer norm, coupled and paper-form cells: the recomputed gates reproduce the layer (checked inside), and
    recurrent dropout is off (the statistics do not change between calls of a module left in training mode)."""
    torch.manual_seed(2)
    encoder = build_encoder(spec, 3, **options).train()
    x = torch.randn(4, 6, 3)
    first, second = gate_statistics(encoder, x), gate_statistics(encoder, x)
    assert encoder.training
    for a, b in zip(first, second):
        assert a["mean"] == b["mean"] and a["memory_gate"] in a["mean"]


def _ln_blocks(a, gain, bias, blocks):
    parts = zip(a.chunk(blocks, -1), gain.chunk(blocks), bias.chunk(blocks))
    return torch.cat([F.layer_norm(p, (p.shape[-1],), g, b, 1e-5) for p, g, b in parts], -1)


def _ln_lstm_forget_gates(layer, x, sfx):
    """Forget gates of a layer-norm LSTM written out from the equations, (batch, time, hidden)."""
    p = {name: getattr(layer, name + sfx) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight",
                                                        "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_c_weight",
                                                        "ln_c_bias")}
    hidden = layer.hidden_size
    h = c = x.new_zeros(x.shape[0], hidden)
    forget = []
    for t in range(x.shape[1]):
        a = (_ln_blocks(x[:, t] @ p["weight_ih"].t() + p["bias_ih"], p["ln_ih_weight"], p["ln_ih_bias"], 4)
             + _ln_blocks(h @ p["weight_hh"].t() + p["bias_hh"], p["ln_hh_weight"], p["ln_hh_bias"], 4))
        i, f, g, o = torch.sigmoid(a[:, :hidden]), torch.sigmoid(a[:, hidden:2 * hidden]), \
            torch.tanh(a[:, 2 * hidden:3 * hidden]), torch.sigmoid(a[:, 3 * hidden:])
        c = f * c + i * g
        h = o * torch.tanh(F.layer_norm(c, (hidden,), p["ln_c_weight"], p["ln_c_bias"], 1e-5))
        forget.append(f)
    return torch.stack(forget, 1)


def test_layer_norm_gates_are_the_equations():
    """The forget gates reported for a bidirectional layer-norm LSTM, against the equations written out (the
    backward direction reads the sequence reversed and is reported in the sequence's own time order)."""
    torch.manual_seed(3)
    layer = build_encoder("bilstm:4", 3, layer_norm=True).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    forward, backward = gate_statistics(layer, x)
    with torch.no_grad():
        expected = _ln_lstm_forget_gates(layer, x, "_l0")
        expected_back = _ln_lstm_forget_gates(layer, x.flip(1), "_l0_reverse").flip(1)
    assert forward["direction"] == "forward"
    np.testing.assert_allclose(forward["values"], expected.flatten().numpy(), rtol=0, atol=1e-12)
    assert backward["direction"] == "backward"
    np.testing.assert_allclose(backward["values"], expected_back.flatten().numpy(), rtol=0, atol=1e-12)


def test_memory_diagnostic_of_a_run(tmp_path):
    from conftest import train

    torch.set_num_threads(1)
    run = train({"task": "long_range", "data": {"problem": "adding", "length": 9, "n_train": 32, "n_val": 16,
                                                "n_test": 16},
                 "model": {"encoder": "lstm:4>gru:4"}, "train": {"epochs": 1, "batch_size": 16, "progress": "none"}},
                out=tmp_path / "run")
    result = memory_diagnostic(run, examples=8)
    saved = json.loads((run / "memory.json").read_text())
    assert len(saved["state_gradient_norm"]) == 9 and np.isfinite(saved["state_gradient_norm"]).all()
    assert [g["memory_gate"] for g in saved["gates"]] == ["forget f", "update z"]
    assert (run / "memory.png").stat().st_size > 1000
    assert result["examples"] == 8

    from typer.testing import CliRunner

    from hybridrnn.cli import app

    res = CliRunner().invoke(app, ["memory", str(run), "--examples", "4", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "forget f" in res.output and "update z" in res.output
    assert len(json.loads((tmp_path / "m" / "memory.json").read_text())["state_gradient_norm"]) == 9
    res = CliRunner().invoke(app, ["memory", str(run), "--split", "dev"])
    assert res.exit_code == 2 and "'dev'" in res.output
