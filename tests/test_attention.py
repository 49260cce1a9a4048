"""Attention modules against hand-written float64 references; exact masking; known tiny values."""
import math

import pytest
import torch

from hybridrnn.nn.attention import (AdditiveAttention, DotAttention, GeneralAttention, SelfAttentionPooling,
                                    lengths_to_mask)

TOL = 1e-12  # float64 reference vs module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def ref_attend(score_fn, q, keys, lengths):
    """Loop reference: for one query vector q (Q,) and keys (T, K) with `length` real steps."""
    scores = [score_fn(q, keys[t]) for t in range(lengths)]
    m = max(scores)
    e = [math.exp(s - m) for s in scores]
    w = [x / sum(e) for x in e] + [0.0] * (keys.shape[0] - lengths)
    ctx = sum(w[t] * keys[t] for t in range(lengths))
    return ctx, torch.tensor(w, dtype=torch.float64)


def make(kind, Q, K, A=5):
    if kind == "additive":
        m = AdditiveAttention(Q, K, A).double()
        Wq, Wk, b, v = m.query_proj.weight, m.key_proj.weight, m.key_proj.bias, m.score.weight[0]
        fn = lambda q, k: float(v @ torch.tanh(Wq @ q + Wk @ k + b))
    elif kind == "dot":
        m, fn = DotAttention(), (lambda q, k: float(q @ k))
    elif kind == "scaled_dot":
        m, fn = DotAttention(scaled=True), (lambda q, k: float(q @ k) / math.sqrt(K))
    else:
        m = GeneralAttention(Q, K).double()
        W = m.key_proj.weight  # (Q, K)
        fn = lambda q, k: float(q @ (W @ k))
    return m, fn


KINDS = ["additive", "dot", "scaled_dot", "general"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("query_rank", [2, 3])
def test_matches_reference_formula(kind, query_rank):
    B, T, Tq = 3, 6, 2
    Q, K = (4, 4) if "dot" in kind else (3, 4)
    m, fn = make(kind, Q, K)
    keys = torch.randn(B, T, K, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 1])
    mask = lengths_to_mask(lengths, T)
    query = torch.randn(B, Q, dtype=torch.float64) if query_rank == 2 else torch.randn(B, Tq, Q, dtype=torch.float64)
    with torch.no_grad():
        ctx, w = m(query, keys, mask)
    if query_rank == 2:
        assert ctx.shape == (B, K) and w.shape == (B, T)
        ctx, w, query = ctx.unsqueeze(1), w.unsqueeze(1), query.unsqueeze(1)
    else:
        assert ctx.shape == (B, Tq, K) and w.shape == (B, Tq, T)
    with torch.no_grad():
        for b in range(B):
            for j in range(query.shape[1]):
                rc, rw = ref_attend(fn, query[b, j], keys[b], int(lengths[b]))
                torch.testing.assert_close(ctx[b, j], rc, atol=TOL, rtol=0)
                torch.testing.assert_close(w[b, j], rw, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_weights_sum_to_one_and_are_exactly_zero_on_padding(kind):
    m, _ = make(kind, 4, 4)
    keys = torch.randn(2, 5, 4, dtype=torch.float64)
    mask = lengths_to_mask(torch.tensor([2, 5]), 5)
    _, w = m(torch.randn(2, 3, 4, dtype=torch.float64), keys, mask)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, dtype=torch.float64), atol=1e-14, rtol=0)
    assert torch.equal(w[0, :, 2:], torch.zeros(3, 3, dtype=torch.float64))
    assert (w[0, :, :2] > 0).all() and (w[1] > 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_padding_content_does_not_change_context(kind):
    m, _ = make(kind, 4, 4)
    keys = torch.randn(2, 5, 4, dtype=torch.float64)
    mask = lengths_to_mask(torch.tensor([3, 5]), 5)
    q = torch.randn(2, 4, dtype=torch.float64)
    other = keys.clone()
    other[0, 3:] = 1e3 * torch.randn(2, 4, dtype=torch.float64)
    c1, w1 = m(q, keys, mask)
    c2, w2 = m(q, other, mask)
    assert torch.equal(c1, c2) and torch.equal(w1, w2)
    # and equals attending over the truncated sequence alone
    c3, _ = m(q[:1], keys[:1, :3])
    torch.testing.assert_close(c1[:1], c3, atol=1e-14, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_fully_masked_row_raises(kind):
    m, _ = make(kind, 4, 4)
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"no real step in batch row\(s\) \[1\]"):
        m(torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64), mask)


def test_bad_shapes_raise_value_errors():
    m = GeneralAttention(3, 4)
    keys = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="query_size 3"):
        m(torch.randn(2, 4), keys)
    with pytest.raises(ValueError, match="key_size 4"):
        m(torch.randn(2, 3), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="batch"):
        m(torch.randn(3, 3), keys)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        m(torch.randn(2, 3), keys, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        m(torch.randn(2, 3), keys, torch.ones(2, 5))
    with pytest.raises(ValueError, match="query_size == key_size"):
        DotAttention()(torch.randn(2, 3), keys)


def test_known_values_dot_general_additive():
    # keys (1, 2, 2): k0 = [1, 0], k1 = [0, 1]; query q = [ln 3, 0]
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    q = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    # dot: scores [ln 3, 0] -> weights [3/4, 1/4], context [3/4, 1/4]
    ctx, w = DotAttention()(q, keys)
    torch.testing.assert_close(w, torch.tensor([[0.75, 0.25]], dtype=torch.float64), atol=1e-15, rtol=0)
    torch.testing.assert_close(ctx, torch.tensor([[0.75, 0.25]], dtype=torch.float64), atol=1e-15, rtol=0)
    # general with W = [[0, 1], [1, 0]] swaps the key features: scores [0, ln 3] -> weights [1/4, 3/4]
    g = GeneralAttention(2, 2).double()
    with torch.no_grad():
        g.key_proj.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    _, w = g(q, keys)
    torch.testing.assert_close(w, torch.tensor([[0.25, 0.75]], dtype=torch.float64), atol=1e-15, rtol=0)
    # additive, attn_size 1: W_q = [1, 0], W_k = [2, -2], b = 0, v = [1]
    # score_t = tanh(q0 + 2 k_t0 - 2 k_t1): t0 -> tanh(ln3 + 2), t1 -> tanh(ln3 - 2)
    a = AdditiveAttention(2, 2, 1).double()
    with torch.no_grad():
        a.query_proj.weight.copy_(torch.tensor([[1.0, 0.0]]))
        a.key_proj.weight.copy_(torch.tensor([[2.0, -2.0]]))
        a.key_proj.bias.zero_()
        a.score.weight.fill_(1.0)
    _, w = a(q, keys)
    s0, s1 = math.tanh(math.log(3) + 2), math.tanh(math.log(3) - 2)
    w0 = 1 / (1 + math.exp(s1 - s0))
    torch.testing.assert_close(w, torch.tensor([[w0, 1 - w0]], dtype=torch.float64), atol=1e-15, rtol=0)


def ref_pool(m, x, length):
    """Lin et al. formula for one sequence x (T, D)."""
    h = x[:length]
    a = torch.softmax((m.heads.weight @ torch.tanh(m.proj.weight @ h.T)), dim=1)  # (heads, length)
    pooled = a @ h  # (heads, D)
    w = torch.zeros(m.num_heads, x.shape[0], dtype=x.dtype)
    w[:, :length] = a
    if m.num_heads == 1:
        return pooled[0], w
    if m.combine == "mean":
        return pooled.mean(0), w
    return m.out.weight @ pooled.flatten() + m.out.bias, w


@pytest.mark.parametrize("heads,combine", [(1, "linear"), (3, "linear"), (3, "mean")])
def test_self_attention_pooling_matches_formula(heads, combine):
    m = SelfAttentionPooling(4, num_heads=heads, attn_size=6, combine=combine).double()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 1])
    with torch.no_grad():
        pooled, w = m(x, lengths_to_mask(lengths, 5))
        assert pooled.shape == (3, 4) and w.shape == (3, heads, 5)
        for b in range(3):
            rp, rw = ref_pool(m, x[b], int(lengths[b]))
            torch.testing.assert_close(pooled[b], rp, atol=TOL, rtol=0)
            torch.testing.assert_close(w[b], rw, atol=TOL, rtol=0)
    assert torch.equal(w[1, :, 2:], torch.zeros(heads, 3, dtype=torch.float64))
    torch.testing.assert_close(w.sum(-1), torch.ones(3, heads, dtype=torch.float64), atol=1e-14, rtol=0)


def test_self_attention_pooling_parameter_layout_and_errors():
    # W1 (attn, D) + W2 (heads, attn) + out (heads*D -> D with bias)
    m = SelfAttentionPooling(4, num_heads=2, attn_size=3)
    assert sum(p.numel() for p in m.parameters()) == 3 * 4 + 2 * 3 + (2 * 4 * 4 + 4)
    assert sum(p.numel() for p in SelfAttentionPooling(4, 2, 3, combine="mean").parameters()) == 3 * 4 + 2 * 3
    with pytest.raises(ValueError, match="no real step"):
        m(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_size 4"):
        m(torch.randn(1, 3, 5))


def test_penalty_is_zero_for_disjoint_one_hot_heads():
    w = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    assert float(SelfAttentionPooling.penalty(w)) == 0.0
    same = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # A A^T = ones(2,2): off-diagonal 1s -> penalty 2
    assert float(SelfAttentionPooling.penalty(same)) == 2.0


def test_lengths_to_mask():
    m = lengths_to_mask(torch.tensor([1, 3, 0]), 4)
    assert m.dtype == torch.bool
    assert m.tolist() == [[True, False, False, False], [True, True, True, False], [False] * 4]
    assert lengths_to_mask(torch.tensor([2, 1])).shape == (2, 2)
    with pytest.raises(ValueError, match="0..4"):
        lengths_to_mask(torch.tensor([5]), 4)
    with pytest.raises(ValueError, match="1-D integer"):
        lengths_to_mask(torch.tensor([[1]]), 4)


def test_gradients_do_not_reach_padding_keys():
    m, _ = make("additive", 4, 4)
    keys = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    ctx, _ = m(torch.randn(1, 4, dtype=torch.float64), keys, lengths_to_mask(torch.tensor([2]), 4))
    ctx.sum().backward()
    assert torch.equal(keys.grad[0, 2:], torch.zeros(2, 4, dtype=torch.float64))
    assert keys.grad[0, :2].abs().sum() > 0


def test_gradcheck_additive_attention():
    m, _ = make("additive", 2, 3, A=2)
    keys = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([3, 2]), 3)
    assert torch.autograd.gradcheck(lambda q, k: m(q, k, mask), (q, keys))
