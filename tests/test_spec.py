"""The encoder spec language: parsing, canonical formatting, and errors that point at the bad token."""
import pytest

from hybridrnn.nn.spec import Layer, Parallel, SpecError, Stack, format_spec, iter_layers, parse_spec

L, G = (lambda h, n=1: Layer("lstm", h, n, False)), (lambda h, n=1: Layer("gru", h, n, False))
BL, BG = (lambda h, n=1: Layer("lstm", h, n, True)), (lambda h, n=1: Layer("gru", h, n, True))

VALID = [
    ("lstm:64", L(64)),
    ("gru:32", G(32)),
    ("bilstm:64", BL(64)),
    ("bigru:64", BG(64)),
    ("lstm:64x2", L(64, 2)),
    ("bigru:8x3", BG(8, 3)),
    ("lstm:64>gru:64", Stack((L(64), G(64)))),
    ("bilstm:64>gru:32>gru:32", Stack((BL(64), G(32), G(32)))),
    ("lstm:64|gru:64", Parallel((L(64), G(64)))),
    ("(lstm:64|gru:64)>gru:32", Stack((Parallel((L(64), G(64))), G(32)))),
    ("gru:32>(lstm:64|gru:64)", Stack((G(32), Parallel((L(64), G(64)))))),
    ("(lstm:64>gru:64)|gru:32", Parallel((Stack((L(64), G(64))), G(32)))),
    ("(lstm:4|gru:4)|gru:4", Parallel((Parallel((L(4), G(4))), G(4)))),
    ("lstm:4|gru:4|bigru:2x2", Parallel((L(4), G(4), BG(2, 2)))),
]


@pytest.mark.parametrize("text,ast", VALID, ids=[v[0] for v in VALID])
def test_valid_specs_parse_and_round_trip(text, ast):
    assert parse_spec(text) == ast
    assert format_spec(ast) == text          # these are written in canonical form
    assert parse_spec(format_spec(ast)) == ast


def test_precedence_bar_binds_tighter_than_greater():
    assert parse_spec("lstm:64|gru:64>gru:32") == parse_spec("(lstm:64|gru:64)>gru:32")
    assert parse_spec("gru:32>lstm:64|gru:64") == parse_spec("gru:32>(lstm:64|gru:64)")
    assert parse_spec("lstm:1>gru:2|gru:3>lstm:4") == Stack(
        (L(1), Parallel((G(2), G(3))), L(4)))


def test_whitespace_case_and_nested_stacks_are_normalised():
    assert parse_spec("  LSTM : 64x2 ") == L(64, 2)
    assert parse_spec("lstm:64 x 2 > gru : 8X3") == Stack((L(64, 2), G(8, 3)))
    assert parse_spec(" ( lstm:8 > gru:4 ) > BiGRU:2\t") == Stack((L(8), G(4), BG(2)))
    assert parse_spec("((lstm:8))") == L(8)
    assert format_spec(parse_spec(" ( lstm:8 | gru:8 ) > gru:2 ")) == "(lstm:8|gru:8)>gru:2"


def test_iter_layers_is_spec_order_depth_first():
    ast = parse_spec("(lstm:1>gru:2)|(bigru:3|lstm:4)>gru:5")
    assert [l.hidden for l in iter_layers(ast)] == [1, 2, 3, 4, 5]


def test_ast_nodes_validate_themselves():
    with pytest.raises(ValueError, match="kind"):
        Layer("rnn", 4)
    with pytest.raises(ValueError, match="hidden"):
        Layer("lstm", 0)
    with pytest.raises(ValueError, match="at least two"):
        Stack((L(4),))


# (spec, caret position, a fragment of the reason)
MALFORMED = [
    ("lstm:64>>gru:32", 8, "expected a layer"),
    ("lstm:64||gru:32", 8, "expected a layer"),
    ("lstn:64", 0, "did you mean 'lstm'"),
    ("lstm:64>gur:32", 8, "did you mean 'gru'"),
    ("bilstn:8", 0, "did you mean 'bilstm'"),
    ("rnn:8", 0, "unknown layer kind 'rnn'"),
    ("lstm", 4, "missing size"),
    ("lstm:", 5, "missing size"),
    ("lstm:>gru:3", 5, "missing size"),
    ("lstm:0", 5, "at least 1"),
    ("lstm:6.4", 5, "positive integer, found '6.4'"),
    ("lstm:-3", 5, "positive integer"),
    ("lstm:abc", 5, "positive integer"),
    ("lstm:64x0", 8, "layer count"),
    ("lstm:64x", 8, "missing layer count"),
    ("lstm:64x2.5", 8, "layer count"),
    ("(lstm:64|gru:64>gru:32", 0, "never closed"),
    ("gru:2>((lstm:64)", 6, "never closed"),
    ("lstm:64)", 7, "unmatched ')'"),
    (")", 0, "expected a layer"),
    ("()", 1, "empty parentheses"),
    ("", 0, "empty"),
    ("   ", 0, "empty"),
    ("lstm:64>", 8, "found the end"),
    ("lstm:64|", 8, "after '|'"),
    ("lstm:64 gru:32", 8, "expected '>', '|'"),
    ("lstm:64 x", 9, "missing layer count"),
    ("lstm:64 x >gru:2", 10, "missing layer count"),
    ("lstm:64 x y", 10, "layer count of 'lstm' must be a positive integer"),
    ("(lstm:64 gru:32)", 9, "to close the '('"),
    (":64", 0, "expected a layer"),
]


@pytest.mark.parametrize("text,pos,reason", MALFORMED, ids=[m[0] or "<empty>" for m in MALFORMED])
def test_malformed_specs_point_at_the_bad_token(text, pos, reason):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.position == pos and err.spec == text
    assert reason in err.reason
    lines = str(err).split("\n")
    # the spec on one line, the caret under the bad character on the next (both indented by two)
    assert lines[-2] == "  " + text
    assert lines[-1] == "  " + " " * pos + "^"


def test_double_greater_caret_is_under_the_second_greater():
    with pytest.raises(SpecError) as info:
        parse_spec("lstm:64>>gru:32")
    spec_line, caret_line = str(info.value).split("\n")[-2:]
    assert spec_line[caret_line.index("^")] == ">" and spec_line[caret_line.index("^") - 1] == ">"


def test_non_string_spec_is_a_type_error():
    with pytest.raises(TypeError):
        parse_spec(64)


# ---------------------------------------------------------------- user errors raised by parse_spec itself

def test_spec_error_is_the_user_error_class():
    from hybridrnn.errors import HybridRNNError
    from hybridrnn.errors import SpecError as BaseSpecError

    with pytest.raises(BaseSpecError) as info:
        parse_spec("(lstm:8|>gru:8")
    assert isinstance(info.value, HybridRNNError) and isinstance(info.value, ValueError)
    assert info.value.position == 8 and "after '|'" in info.value.reason


@pytest.mark.parametrize("text,pos,reason", [
    ("lstm:99999999999", 5, "the size of 'lstm' is 99999999999, more than the largest supported 16384 units"),
    ("gru:16385", 4, "more than the largest supported 16384"),
    ("lstm:8x99999999999", 7, "the layer count of 'lstm' is 99999999999, more than the largest supported 64"),
    ("bilstm:16384x2", 0, "recurrent weights, more than the largest supported 1,073,741,824"),
    ("lstm:\u0663", 5, "must be a positive integer, found '\u0663'"),    # an Arabic-Indic digit: ASCII only
    ("lstm:8x\u00b2", 7, "layer count of 'lstm' must be a positive integer, found '\u00b2'"),
    ("(" * 33 + "lstm:8" + ")" * 33, 32, "parentheses nested more than 32 deep"),
    ("(" * 5000 + "lstm:8", 32, "nested more than 32 deep"),          # no RecursionError
    (">".join(["gru:2"] * 257), 256 * 6, "more than 256 blocks"),
    ("lstm:8|", 7, "after '|'"),
    ("lstm:8|()", 8, "empty parentheses"),
    ("((lstm:8)", 0, "never closed"),
    ("lstm:8 > rnn:4", 9, "unknown layer kind 'rnn'"),
])
def test_out_of_range_and_malformed_specs_are_spec_errors(text, pos, reason):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert info.value.position == pos and reason in info.value.reason


def test_limits_are_inclusive_and_deep_but_legal_nesting_parses():
    from hybridrnn.nn.spec import MAX_DEPTH, MAX_LAYERS, MAX_UNITS

    assert parse_spec(f"lstm:{MAX_UNITS}") == L(MAX_UNITS)
    assert parse_spec(f"gru:8x{MAX_LAYERS}") == G(8, MAX_LAYERS)
    assert parse_spec("(" * MAX_DEPTH + "lstm:8" + ")" * MAX_DEPTH) == L(8)
    assert parse_spec(">".join(["gru:2"] * 256)) == Stack(tuple([G(2)] * 256))


def test_spec_error_pickles_with_its_fields():
    import pickle

    with pytest.raises(SpecError) as info:
        parse_spec("lstm:64>>gru:32")
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.spec, again.position, again.reason, str(again)) == (
        info.value.spec, info.value.position, info.value.reason, str(info.value))


@pytest.mark.parametrize("text", ["lstm:3", "bigru:2x2", "lstm:2>gru:3", "(lstm:2|gru:2)>bilstm:1",
                                  "(lstm:2>gru:2)|gru:2", "(lstm:1|gru:1)|bigru:1x2"])
def test_specs_that_parse_build_and_run(text):
    import torch

    from hybridrnn.nn.hybrid import build_encoder

    enc = build_encoder(parse_spec(text), 3)
    out = enc(torch.randn(2, 5, 3))
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape[:2] == (2, 5) and torch.isfinite(out).all()
