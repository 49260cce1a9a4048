"""Segment recurrence and parallel multi-step decoding (SegRNN) in the Forecaster: hybridrnn.nn.segment."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridrnn.nn import segment as seg_mod
from hybridrnn.nn.forecaster import Forecaster
from hybridrnn.nn.segment import SegmentEmbedding

ENCODERS = ["lstm:6", "gru:6", "lstm:6>gru:6", "(lstm:6|gru:6)", "gru:6x2", "bilstm:6", "bigru:6>gru:6",
            "(lstm:6>gru:6)|gru:6"]
TOL = 1e-12   # float64: the batched step and the loop do the same arithmetic in a different order


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("attention", [None, "additive"])
def test_segment_embed_unembed_shapes_every_encoder(encoder, attention):
    torch.manual_seed(0)
    emb = SegmentEmbedding(4, 3, None)
    x = torch.randn(5, 24, 3)
    flat = emb(x)
    assert flat.shape == (5, 6, 12) and torch.equal(emb.unembed(flat), x)           # round trip, exact
    assert SegmentEmbedding(4, 3, 10)(x).shape == (5, 6, 10)
    m = Forecaster(4, 3, 12, encoder, lookback=24, segment=4, strategy="parallel", attention=attention,
                   channel_independent=True, instance_norm="last")
    y, w = m(torch.randn(5, 24, 4))
    assert y.shape == (5, 12, 3)
    e = m.core.embed(torch.randn(15, 24, 2))                                        # (B*C, n, E)
    assert e.shape == (15, 6, 6) and m.core.encoder.input_size == 6
    if attention is None:
        assert w is None
    else:                                                                           # (batch, horizon, lookback)
        assert w.shape == (5, 12, 24) and torch.allclose(w.sum(-1), torch.ones(5, 12))


@pytest.mark.parametrize("encoder", ["gru:5", "lstm:5", "lstm:5>gru:5"])
@pytest.mark.parametrize("attention", [None, "additive"])
def test_segment_one_recursive_is_the_pointwise_model(encoder, attention):
    torch.manual_seed(1)
    kw = dict(lookback=10, future_size=2, strategy="recursive", attention=attention)
    ref = Forecaster(3, 1, 4, encoder, **kw).double()
    seg = Forecaster(3, 1, 4, encoder, segment=1, segment_embed=0, **kw).double()
    missing = seg.load_state_dict(ref.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys
    past, fut = torch.randn(3, 10, 3, dtype=torch.float64), torch.randn(3, 4, 2, dtype=torch.float64)
    (y0, w0), (y1, w1) = ref(past, fut), seg(past, fut)
    assert torch.equal(y0, y1)
    assert (w0 is None and w1 is None) or torch.equal(w0, w1)
    rmf = Forecaster(3, 1, 4, encoder, segment=1, segment_embed=0, **{**kw, "strategy": "rmf"}).double()
    rmf.load_state_dict(ref.state_dict())
    assert torch.equal(rmf(past, fut)[0], y0)


def _parts(m, past, future=None):
    core = m.core
    outputs, state = core.encoder(core.embed(past))
    return state, core.encoder.final_output(outputs), outputs


@pytest.mark.parametrize("encoder,decoder", [("gru:6", None), ("lstm:6", None), ("lstm:6>gru:6", None),
                                             ("(lstm:6|gru:6)", None), ("bigru:6", None), ("lstm:6", "gru"),
                                             ("gru:6", "lstm")])
@pytest.mark.parametrize("future_size", [0, 2])
def test_parallel_decoder_is_one_call_and_matches_a_step_loop(encoder, decoder, future_size, monkeypatch):
    torch.manual_seed(2)
    m = Forecaster(3 + future_size, 3, 16, encoder, lookback=12, future_size=future_size, segment=4,
                   strategy="parallel", decoder=decoder, channel_independent=True).double().eval()
    past = torch.randn(4 * 3, 12, 1 + future_size, dtype=torch.float64)             # core rows: (window, channel)
    fut = torch.randn(4 * 3, 16, future_size, dtype=torch.float64) if future_size else None
    state, summary, _ = _parts(m, past)
    pmf, step = m.core.pmf, m.core.encoder.step
    assert pmf.segments == 4
    y_loop, _ = pmf.loop(state, summary, step, fut)
    y_fast, _ = pmf(state, summary, step, fut)                                      # fast path where it applies
    monkeypatch.setattr(seg_mod, "fast_step_ok", lambda layer: False)
    calls = []
    orig = pmf._step
    monkeypatch.setattr(pmf, "_step", lambda *a: calls.append(a[1].shape) or orig(*a))
    y_one, _ = pmf(state, summary, step, fut)                                       # generic: one batched step
    assert calls == [(4 * 3 * 4, pmf.pos.shape[1] + (0 if pmf.chan is None else pmf.chan.shape[1]))]
    assert y_one.shape == (12, 16, 1)
    assert torch.allclose(y_one, y_loop, atol=TOL, rtol=0) and torch.allclose(y_fast, y_loop, atol=TOL, rtol=0)


@pytest.mark.parametrize("attention", ["additive", "dot", "self"])
def test_parallel_decoder_with_attention_matches_the_loop(attention):
    torch.manual_seed(3)
    m = Forecaster(2, 2, 8, "lstm:6>gru:6", lookback=16, segment=4, strategy="parallel", attention=attention,
                   channel_independent=True).double().eval()
    past = torch.randn(6, 16, 1, dtype=torch.float64)
    state, summary, outputs = _parts(m, past)
    core = m.core

    def attend(q, k):
        c, w = core._attend(q, k)
        return c, (w if w.dim() == 2 else w.mean(1))
    y1, w1 = core.pmf(state, summary, core.encoder.step, None, outputs, attend)
    y2, w2 = core.pmf.loop(state, summary, core.encoder.step, None, outputs, attend)
    assert torch.allclose(y1, y2, atol=TOL, rtol=0) and torch.allclose(w1, w2, atol=TOL, rtol=0)


@pytest.mark.parametrize("norm", ["last", "standard"])
def test_channel_independent_instance_norm_inverse_is_exact(norm):
    torch.manual_seed(4)
    m = Forecaster(3, 3, 8, "gru:6", lookback=16, segment=8, strategy="parallel", channel_independent=True,
                   instance_norm=norm, eps=0.0).double().eval()
    with torch.no_grad():                                                            # the network outputs zeros
        m.core.pmf.head.weight.zero_()
        m.core.pmf.head.bias.zero_()
    past = torch.randn(4, 16, 3, dtype=torch.float64) * 5 + 3
    y, _ = m(past)
    expected = past[:, -1:, :] if norm == "last" else past.mean(dim=1, keepdim=True)
    assert torch.equal(y, expected.expand(4, 8, 3))
    # and with a trained-looking head: the forecast moves with each channel's own shift (and scale)
    m2 = Forecaster(3, 3, 8, "gru:6", lookback=16, segment=8, strategy="parallel", channel_independent=True,
                    instance_norm=norm, eps=0.0).double().eval()
    shift = torch.tensor([10.0, -4.0, 0.5], dtype=torch.float64)
    scale = torch.tensor([1.0, 1.0, 1.0] if norm == "last" else [2.0, 0.5, 3.0], dtype=torch.float64)
    y1, y2 = m2(past)[0], m2(past * scale + shift)[0]
    assert torch.allclose(y2, y1 * scale + shift, atol=1e-10, rtol=0)


def test_lookback_or_horizon_not_a_multiple_of_the_segment_is_a_clear_error():
    with pytest.raises(ValueError, match=r"lookback \(100\) and the horizon \(96\).*lookback 100 is not"):
        Forecaster(1, 1, 96, "gru:8", lookback=100, segment=24, strategy="parallel")
    with pytest.raises(ValueError, match=r"horizon 30 is not"):
        Forecaster(1, 1, 30, "gru:8", lookback=96, segment=24)
    with pytest.raises(ValueError, match="needs the lookback"):
        Forecaster(1, 1, 24, "gru:8", segment=24)
    with pytest.raises(ValueError, match="bidirectional encoder has no step"):
        Forecaster(1, 1, 24, "bigru:8", lookback=48, segment=24, strategy="parallel", decoder="shared")


def test_default_recipe_from_data_and_window():
    from hybridrnn.tasks.forecast_config import ForecastConfig, auto_segment
    cfg = ForecastConfig.model_validate({"data": {"path": "x.csv", "target": ["a", "b"]},
                                         "window": {"lookback": 96, "horizon": 336}})
    m = cfg.model
    assert (m.strategy, m.segment, m.instance_norm, m.channel_independent) == ("parallel", 24, "last", True)
    assert set(m.chosen_by_default) == {"strategy", "segment", "instance_norm", "channel_independent"}
    again = ForecastConfig.model_validate(cfg.model_dump())                          # a run's saved config
    assert again.model == m
    explicit = ForecastConfig.model_validate({"data": {"path": "x.csv", "target": ["a"]},
                                              "window": {"lookback": 64, "horizon": 5},
                                              "model": {"strategy": "direct", "instance_norm": True}})
    assert (explicit.model.strategy, explicit.model.segment, explicit.model.instance_norm,
            explicit.model.channel_independent) == ("direct", None, True, False)
    assert auto_segment(96, 720) == 24 and auto_segment(28, 7) == 7 and auto_segment(64, 5) is None


def _regime_series(n, rng):
    """A seasonal series (period 12) whose periods have one of two shapes; the shape persists from one period to
    the next with probability 0.85; slow amplitude modulation; noise 0.3. The best forecast needs to tell the
    current shape from noisy periods (non-linear), which a fixed linear map of the look-back cannot."""
    t = np.arange(n)
    a = np.sin(2 * np.pi * np.arange(12) / 12)
    b = np.where(np.arange(12) < 3, 2.0, -0.5)
    b = b - b.mean()
    reg = np.zeros(n // 12 + 1, int)
    for k in range(1, len(reg)):
        reg[k] = reg[k - 1] if rng.random() < 0.85 else 1 - reg[k - 1]
    shape = np.where(reg[t // 12] == 0, a[t % 12], b[t % 12])
    return shape * (1 + 0.5 * np.sin(2 * np.pi * t / 500)) + 0.3 * rng.normal(size=n)


def test_segment_model_beats_the_linear_baseline_on_a_seasonal_series():
    from hybridrnn.tasks.forecast_metrics import LinearBaseline
    rng = np.random.default_rng(0)
    y, lookback, horizon = _regime_series(4000, rng), 48, 12

    def windows(v):
        idx = range(len(v) - lookback - horizon + 1)
        return (np.stack([v[i:i + lookback] for i in idx])[..., None],
                np.stack([v[i + lookback:i + lookback + horizon] for i in idx])[..., None])
    x_tr, y_tr = windows(y[:3000])
    x_te, y_te = windows(y[3000:])
    linear_mse = float(((LinearBaseline().fit(x_tr, y_tr).predict(x_te) - y_te) ** 2).mean())
    torch.manual_seed(0)
    m = Forecaster(1, 1, horizon, "gru:32", lookback=lookback, segment=12, strategy="parallel")
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    xt, yt = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        order = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            loss = ((m(xt[idx])[0] - yt[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        mse = float(((m(torch.tensor(x_te, dtype=torch.float32))[0].double().numpy() - y_te) ** 2).mean())
    assert mse < 0.98 * linear_mse, (mse, linear_mse)


def test_a_min_cell_encoder_gets_its_gated_counterpart_as_decoder_kind():
    from hybridrnn.nn.hybrid import build_encoder
    from hybridrnn.nn.segment import last_block_kind

    assert last_block_kind(build_encoder("lstm:4>mingru:4", 3)) == "gru"
    assert last_block_kind(build_encoder("gru:4>minlstm:4", 3)) == "lstm"
    assert last_block_kind(build_encoder("minlstm:4>gru:4", 3)) == "gru"
