"""Weight sharing: every option's parameter saving against the count worked out by hand; tied tensors are one
object; count_parameters counts shared tensors once.

Hand counts (I input features, H hidden units, one direction):
  LSTM layer: 4H*I (W_ih) + 4H*H (W_hh) + 4H (b_ih) + 4H (b_hh) = 4H(I + H + 2); coupled: 3H(I + H + 2)
  GRU layer:  3H(I + H + 2)
"""
import pytest
import torch
from torch import nn

from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.nn.tying import TiedOutput, count_parameters


def lstm_params(i, h, gates=4):
    return gates * h * (i + h + 2)


def gru_params(i, h):
    return 3 * h * (i + h + 2)


I, H = 6, 5


def test_count_parameters_plain_matches_formula():
    assert count_parameters(build_encoder(f"lstm:{H}", I)) == lstm_params(I, H)
    assert count_parameters(build_encoder(f"lstm:{H}>gru:{H}", I)) == lstm_params(I, H) + gru_params(H, H)
    assert count_parameters(build_encoder(f"bilstm:{H}", I)) == 2 * lstm_params(I, H)


def test_coupled_gate_saving():
    plain = count_parameters(build_encoder(f"lstm:{H}>gru:{H}", I))
    coupled = count_parameters(build_encoder(f"lstm:{H}>gru:{H}", I, coupled=True))
    # one gate block fewer in the LSTM: H*I + H*H + H + H; the GRU is untouched
    assert plain - coupled == H * I + H * H + 2 * H


def test_tie_layers_two_blocks_saving_and_identity():
    plain = build_encoder(f"lstm:{H}>lstm:{H}", I)
    tied = build_encoder(f"lstm:{H}>lstm:{H}", I, tie_layers=True)
    # block 1 reuses block 0's W_hh (4H*H) and b_hh (4H); its W_ih (4H x H) differs in width from block 0's
    # (4H x I), so it keeps its own
    assert count_parameters(plain) - count_parameters(tied) == 4 * H * H + 4 * H
    b0, b1 = tied.blocks
    assert b1.weight_hh_l0 is b0.weight_hh_l0 and b1.bias_hh_l0 is b0.bias_hh_l0
    assert b1.weight_ih_l0 is not b0.weight_ih_l0
    with torch.no_grad():
        b0.weight_hh_l0.add_(1.0)                       # update one: the other is the same tensor
    assert torch.equal(b1.weight_hh_l0, b0.weight_hh_l0)
    # parameters() lists the shared tensor once; count_parameters counts it once
    assert count_parameters(tied) == sum(p.numel() for p in tied.parameters())
    assert count_parameters(tied) < sum(p.numel() for _, p in tied.named_parameters(remove_duplicate=False))


def test_tie_layers_three_blocks_equals_tied_multilayer_block():
    plain = count_parameters(build_encoder(f"lstm:{H}>lstm:{H}>lstm:{H}", I))
    tied = count_parameters(build_encoder(f"lstm:{H}>lstm:{H}>lstm:{H}", I, tie_layers=True))
    # blocks 1 and 2 reuse block 0's recurrent tensors: 2 * (4H*H + 4H); block 2 reuses block 1's input
    # tensors (both H wide): 4H*H + 4H
    assert plain - tied == 3 * (4 * H * H + 4 * H)
    assert plain == lstm_params(I, H) + 2 * lstm_params(H, H)
    inside = count_parameters(build_encoder(f"lstm:{H}x3", I, tie_layers=True))
    assert inside == tied
    assert count_parameters(build_encoder(f"lstm:{H}>lstm:{H}x2", I, tie_layers=True)) == tied
    # the group's first layer keeps its input tensors even when the input is as wide as the hidden size
    for spec in (f"lstm:{H}x3", f"lstm:{H}>lstm:{H}>lstm:{H}", f"lstm:{H}x2>lstm:{H}"):
        same_width = build_encoder(spec, H, tie_layers=True)
        assert count_parameters(same_width) == 2 * (4 * H * H + 4 * H) + (4 * H * H + 4 * H), spec


def test_tie_layers_with_layer_norm_ties_the_recurrent_norms_too():
    plain = count_parameters(build_encoder(f"lstm:{H}>lstm:{H}", I, layer_norm=True))
    tied_enc = build_encoder(f"lstm:{H}>lstm:{H}", I, layer_norm=True, tie_layers=True)
    # W_hh 4H*H, b_hh 4H, ln_hh gain and bias 2*4H, ln_c gain and bias 2*H
    assert plain - count_parameters(tied_enc) == 4 * H * H + 4 * H + 2 * 4 * H + 2 * H
    b0, b1 = tied_enc.blocks
    assert b1.ln_c_weight_l0 is b0.ln_c_weight_l0 and b1.ln_ih_weight_l0 is not b0.ln_ih_weight_l0
    tied_enc(torch.randn(2, 3, I))[0].sum().backward()
    assert b0.ln_hh_weight_l0.grad is not None


def test_tie_layers_bidirectional_and_mixed_kinds():
    plain = count_parameters(build_encoder(f"bigru:{H}>bigru:{H}", I))
    tied = count_parameters(build_encoder(f"bigru:{H}>bigru:{H}", I, tie_layers=True))
    assert plain - tied == 2 * (3 * H * H + 3 * H)      # W_hh and b_hh of both directions
    # different kinds or sizes are never tied
    for spec in (f"lstm:{H}>gru:{H}", f"lstm:{H}>lstm:{H + 1}", f"lstm:{H}>bilstm:{H}"):
        with pytest.warns(UserWarning, match="tie_layers"):
            tied = build_encoder(spec, I, tie_layers=True)
        assert count_parameters(tied) == count_parameters(build_encoder(spec, I))
    # in a mixed stack only the matching blocks are tied: gru:H>lstm:H>lstm:H ties the two LSTMs' recurrent
    # tensors; the second LSTM is the group's second layer, so it keeps its input tensors (as layer 1 of lstm:Hx2)
    mixed = f"gru:{H}>lstm:{H}>lstm:{H}"
    assert count_parameters(build_encoder(mixed, I)) - count_parameters(build_encoder(mixed, I, tie_layers=True)) \
        == 4 * H * H + 4 * H


def test_tied_stack_computes_what_an_untied_stack_with_equal_weights_computes():
    tied = build_encoder(f"gru:{H}>gru:{H}>gru:{H}", I, tie_layers=True).double()
    plain = build_encoder(f"gru:{H}>gru:{H}>gru:{H}", I, path="custom").double()
    with torch.no_grad():
        for k, block in enumerate(plain.blocks):
            src = tied.blocks[k]
            for name in ("weight_ih_l0", "bias_ih_l0", "weight_hh_l0", "bias_hh_l0"):
                getattr(block, name).copy_(getattr(src, name))
        assert torch.equal(plain.blocks[2].weight_ih_l0, plain.blocks[1].weight_ih_l0)
    x = torch.randn(2, 4, I, dtype=torch.float64)
    torch.testing.assert_close(tied(x)[0], plain(x)[0], atol=1e-12, rtol=0)
    # the gradient of a shared tensor is the sum of its uses
    tied(x)[0].sum().backward()
    plain(x)[0].sum().backward()
    expected = sum(b.weight_hh_l0.grad for b in plain.blocks)
    torch.testing.assert_close(tied.blocks[0].weight_hh_l0.grad, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("p", [3, 8])
def test_shared_input_projection_saving(p):
    wide = 20
    plain = count_parameters(build_encoder(f"lstm:{H}|gru:{H}", wide))
    enc = build_encoder(f"lstm:{H}|gru:{H}", wide, share_input_projection=p)
    shared = count_parameters(enc)
    # branches' W_ih shrink from I to P columns: (4H + 3H) * (I - P); the one Linear(I, P) costs P*I + P
    assert plain - shared == (4 * H + 3 * H) * (wide - p) - (p * wide + p)
    assert isinstance(enc.input_projection, nn.Linear) and enc.input_projection.out_features == p
    assert all(b.input_size == p for b in enc.branches)


def test_shared_input_projection_default_size_and_nesting():
    enc = build_encoder("lstm:4|gru:7", 20, share_input_projection=True)
    assert enc.input_projection.out_features == 4        # min(input 20, smallest branch hidden 4)
    enc = build_encoder("gru:3>(lstm:8|gru:8)", 20, share_input_projection=True)
    assert enc.blocks[1].input_projection.in_features == 3 and enc.blocks[1].input_projection.out_features == 3


def test_tied_output_is_the_embedding_weight():
    vocab, dim = 11, 4
    emb = nn.Embedding(vocab, dim)
    out = TiedOutput(emb, dim)
    assert out.weight is emb.weight
    with torch.no_grad():
        emb.weight[3].fill_(2.5)
    assert torch.equal(out.weight[3], torch.full((dim,), 2.5))
    h = torch.randn(2, 3, dim)
    torch.testing.assert_close(out(h), h @ emb.weight.T + out.bias)
    # an optimiser step through the output layer moves the embedding
    before = emb.weight.detach().clone()
    opt = torch.optim.SGD(out.parameters(), lr=0.1)
    out(h).sum().backward()
    opt.step()
    assert not torch.equal(emb.weight, before) and out.weight is emb.weight


def test_tied_output_saving_in_a_language_model():
    vocab, dim = 50, 6
    emb = nn.Embedding(vocab, dim)
    untied = nn.ModuleDict({"emb": emb, "out": nn.Linear(dim, vocab)})
    tied = nn.ModuleDict({"emb": emb, "out": TiedOutput(emb, dim)})
    assert count_parameters(untied) == vocab * dim + (vocab * dim + vocab)
    assert count_parameters(tied) == vocab * dim + vocab                 # saving: vocab * dim
    assert count_parameters(untied) - count_parameters(tied) == vocab * dim
    # with a projection from hidden 9: saving vocab*dim minus the Linear(9, dim)
    projected = nn.ModuleDict({"emb": emb, "out": TiedOutput(emb, 9, project=True)})
    plain_9 = vocab * dim + (9 * vocab + vocab)
    assert plain_9 - count_parameters(projected) == 9 * vocab - (9 * dim + dim)
    assert count_parameters(nn.ModuleDict({"emb": emb, "out": TiedOutput(emb, dim, bias=False)})) == vocab * dim


def test_tied_output_size_mismatch_is_a_clear_error():
    emb = nn.Embedding(10, 4)
    with pytest.raises(ValueError, match=r"hidden_size 8 != embedding_dim 4.*project=True"):
        TiedOutput(emb, 8)
    with pytest.raises(ValueError, match="nn.Embedding"):
        TiedOutput(nn.Linear(4, 10), 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        TiedOutput(emb, 4)(torch.randn(2, 5))


def test_count_parameters_dedups_views_of_one_storage_and_trainable_only():
    m = nn.Module()
    m.a = nn.Parameter(torch.randn(10))
    m.b = nn.Parameter(m.a.data[2:7])                   # another Parameter viewing a's memory
    m.c = nn.Parameter(torch.randn(3), requires_grad=False)
    assert count_parameters(m) == 10 + 3
    assert count_parameters(m, trainable_only=True) == 10
    m.d = nn.Parameter(m.a.data.view(2, 5)[:, :1])      # strided view: elements 0 and 5, already counted
    assert count_parameters(m) == 13
