"""The encoder spec language: a small text format for recurrent encoders, used in configs and on the CLI.

Grammar (whitespace anywhere between tokens is ignored; kinds are case-insensitive)::

    spec     := stack
    stack    := parallel ( ">" parallel )*        # run left to right, each feeding the next
    parallel := atom ( "|" atom )*                # branches on the same input, outputs fused
    atom     := layer | "(" stack ")"
    layer    := kind ":" units [ "x" layers ]     # e.g. lstm:64, bigru:32, lstm:64x2
    kind     := "lstm" | "gru" | "bilstm" | "bigru"
              | "mingru" | "minlstm" | "bimingru" | "biminlstm"   # minGRU / minLSTM (hybridrnn.nn.minimal)

Precedence: ``|`` binds tighter than ``>``, so ``lstm:64|gru:64>gru:32`` means ``(lstm:64|gru:64)>gru:32``
and ``gru:32>lstm:64|gru:64`` means ``gru:32>(lstm:64|gru:64)``. Use parentheses for anything else, e.g.
``(lstm:64>gru:64)|gru:32`` (a two-block stack in parallel with a GRU).

The parser returns a small AST of frozen dataclasses: :class:`Layer`, :class:`Stack`, :class:`Parallel`.
Nested stacks are flattened (``(a>b)>c`` is the stack ``a>b>c``: running blocks in sequence is associative);
nested parallels are kept as written (``(a|b)|c`` fuses ``a`` and ``b`` first, which differs from ``a|b|c``
under a learned gate). A one-item stack or parallel is just that item. :func:`format_spec` writes the
canonical text of an AST, and ``parse_spec(format_spec(ast)) == ast`` for every AST.

Limits (so that a spec that parses can be built): sizes and layer counts are ASCII digits, at most
:data:`MAX_UNITS` units per direction and :data:`MAX_LAYERS` layers per block; parentheses nest at most
:data:`MAX_DEPTH` deep; a spec has at most :data:`MAX_BLOCKS` blocks and at most :data:`MAX_WEIGHTS` recurrent
weights (the ``hidden x hidden`` matrices alone, a lower bound of the parameter count; a ``mingru`` or
``minlstm`` block has no recurrent matrix and counts ``gates x hidden x hidden`` per layer and direction all
the same, with 2 and 3 gates). Anything beyond is a :class:`SpecError` naming the value, raised by
:func:`parse_spec` before anything is built.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Union

from hybridrnn import errors

__all__ = ["Layer", "Stack", "Parallel", "SpecNode", "SpecError", "parse_spec", "format_spec", "iter_layers",
           "KINDS", "CELL_GATES", "MAX_UNITS", "MAX_LAYERS", "MAX_DEPTH", "MAX_BLOCKS", "MAX_WEIGHTS"]

#: spelling in a spec -> (cell kind, bidirectional)
KINDS: dict[str, tuple[str, bool]] = {
    "lstm": ("lstm", False), "gru": ("gru", False), "bilstm": ("lstm", True), "bigru": ("gru", True),
    "mingru": ("mingru", False), "minlstm": ("minlstm", False), "bimingru": ("mingru", True),
    "biminlstm": ("minlstm", True),
}
#: cell kinds of :class:`Layer` -> gate blocks per layer (the minimal cells' blocks are input-only: see below)
CELL_GATES: dict[str, int] = {"lstm": 4, "gru": 3, "mingru": 2, "minlstm": 3}

#: the largest number of units per direction in one layer
MAX_UNITS = 16384
#: the largest layer count of one block (``lstm:64x<count>``)
MAX_LAYERS = 64
#: the deepest nesting of parentheses
MAX_DEPTH = 32
#: the most blocks (``kind:units[xN]`` items) in one spec
MAX_BLOCKS = 256
#: the most recurrent weights (gates x hidden x hidden per layer and direction) in one spec: 2**30, 4 GiB in float32
MAX_WEIGHTS = 2 ** 30


@dataclass(frozen=True)
class Layer:
    """One recurrent layer block: ``kind`` ``"lstm"``, ``"gru"``, ``"mingru"`` or ``"minlstm"``, ``hidden`` units
    per direction, ``layers`` stacked layers inside the block, ``bidirectional``."""
    kind: str
    hidden: int
    layers: int = 1
    bidirectional: bool = False

    def __post_init__(self):
        if self.kind not in CELL_GATES:
            raise ValueError(f"Layer.kind must be one of {tuple(CELL_GATES)}, got {self.kind!r}")
        for name in ("hidden", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Layer.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Stack:
    """Blocks run in sequence, each on the previous one's outputs (at least two items)."""
    items: tuple["SpecNode", ...]

    def __post_init__(self):
        object.__setattr__(self, "items", _check_children("Stack.items", self.items))


@dataclass(frozen=True)
class Parallel:
    """Branches run on the same input; their outputs are fused (at least two branches)."""
    branches: tuple["SpecNode", ...]

    def __post_init__(self):
        object.__setattr__(self, "branches", _check_children("Parallel.branches", self.branches))


SpecNode = Union[Layer, Stack, Parallel]


def _check_children(what: str, children) -> tuple:
    children = tuple(children)
    if len(children) < 2:
        raise ValueError(f"{what} needs at least two entries, got {len(children)}")
    for child in children:
        if not isinstance(child, (Layer, Stack, Parallel)):
            raise ValueError(f"{what} entries must be Layer, Stack or Parallel, got {type(child).__name__}")
    return children


class SpecError(errors.SpecError):
    """A malformed spec (a :class:`hybridrnn.errors.SpecError`, so a ``HybridRNNError`` and a ``ValueError``).
    ``str(error)`` shows the reason, the spec, and a caret under the bad token.

    Attributes: ``spec`` (the text), ``position`` (0-based index of the bad token; ``len(spec)`` for "at the
    end"), ``reason`` (the message without the picture).
    """

    def __init__(self, spec: str, position: int, reason: str):
        self.spec, self.position, self.reason = spec, position, reason
        one_line = spec.replace("\n", " ").replace("\t", " ").replace("\r", " ")
        super().__init__(f"invalid encoder spec: {reason}\n  {one_line}\n  {' ' * position}^")

    def __reduce__(self):  # pickles (e.g. across worker processes) with its three arguments
        return type(self), (self.spec, self.position, self.reason)


_SEPARATORS = set(">|()") | {" ", "\t", "\n", "\r"}


def _describe(text: str, pos: int) -> str:
    if pos >= len(text):
        return "the end of the spec"
    return repr(text[pos])


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.depth = 0      # parentheses open around the current position
        self.blocks = 0     # layers parsed so far
        self.weights = 0    # recurrent weights of those layers

    # -- low level --------------------------------------------------------------------------------------
    def error(self, pos: int, reason: str) -> SpecError:
        return SpecError(self.text, pos, reason)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def word(self) -> tuple[str, int]:
        """The run of characters up to the next separator (``>|()``, whitespace, ``:``) and its start."""
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _SEPARATORS and self.text[self.pos] != ":":
            self.pos += 1
        return self.text[start:self.pos], start

    # -- grammar ----------------------------------------------------------------------------------------
    def parse(self) -> SpecNode:
        if not self.text.strip():
            raise self.error(0, "the spec is empty; write e.g. 'lstm:64' or 'lstm:64>gru:32'")
        node = self.stack()
        if self.peek():
            pos = self.pos
            if self.text[pos] == ")":
                raise self.error(pos, "unmatched ')' (no '(' before it)")
            raise self.error(pos, f"expected '>', '|' or the end of the spec, found {_describe(self.text, pos)}")
        return node

    def stack(self) -> SpecNode:
        items: list[SpecNode] = []
        first = self.parallel(after=None)
        items.extend(first.items if isinstance(first, Stack) else [first])
        while self.peek() == ">":
            self.pos += 1
            nxt = self.parallel(after="'>'")
            items.extend(nxt.items if isinstance(nxt, Stack) else [nxt])
        return items[0] if len(items) == 1 else Stack(tuple(items))

    def parallel(self, after: str | None) -> SpecNode:
        branches = [self.atom(after)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.atom("'|'"))
        return branches[0] if len(branches) == 1 else Parallel(tuple(branches))

    def atom(self, after: str | None) -> SpecNode:
        c = self.peek()
        if c == "(":
            open_pos = self.pos
            if self.depth >= MAX_DEPTH:
                raise self.error(open_pos, f"parentheses nested more than {MAX_DEPTH} deep")
            self.pos += 1
            if self.peek() == ")":
                raise self.error(self.pos, "empty parentheses: expected a layer such as 'lstm:64' inside")
            self.depth += 1
            node = self.stack()
            self.depth -= 1
            if self.peek() != ")":
                if self.pos >= len(self.text):
                    raise self.error(open_pos, "unbalanced parentheses: this '(' is never closed")
                raise self.error(self.pos, "expected '>', '|' or ')' to close the '(' at position "
                                           f"{open_pos}, found {_describe(self.text, self.pos)}")
            self.pos += 1
            return node
        if c == "" or c in ">|)":
            where = f" after {after}" if after else ""
            what = _describe(self.text, self.pos)
            raise self.error(self.pos, f"expected a layer such as 'lstm:64' or '('{where}, found {what}")
        return self.layer()

    def layer(self) -> Layer:
        name, start = self.word()
        if not name:  # a separator we do not know, e.g. ':' at the start
            raise self.error(self.pos, f"expected a layer such as 'lstm:64', found {_describe(self.text, self.pos)}")
        key = name.lower()
        if key not in KINDS:
            close = difflib.get_close_matches(key, list(KINDS), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise self.error(start, f"unknown layer kind '{name}' (known: {', '.join(KINDS)}){hint}")
        kind, bidirectional = KINDS[key]
        if self.peek() != ":":
            raise self.error(self.pos, f"missing size after '{name}': write '{key}:<units>', e.g. '{key}:64'")
        self.pos += 1
        size_text, size_pos = self.word()
        if not size_text:
            raise self.error(self.pos, f"missing size after '{name}:': expected a positive integer such as 64, "
                                       f"found {_describe(self.text, self.pos)}")
        m = re.fullmatch(r"([0-9]+)(?:[xX](.*))?", size_text)
        if m is None:
            raise self.error(size_pos, f"the size of '{name}' must be a positive integer, found '{size_text}'")
        hidden = int(m.group(1))
        if hidden < 1:
            raise self.error(size_pos, f"the size of '{name}' must be at least 1, found {m.group(1)}")
        if hidden > MAX_UNITS:
            raise self.error(size_pos, f"the size of '{name}' is {hidden}, more than the largest supported "
                                       f"{MAX_UNITS} units")
        layers = 1
        count_pos, count = size_pos + m.end(1) + 1, m.group(2)
        if count is None and self.peek() in ("x", "X"):  # "lstm:64 x 2": spaces around the x
            self.pos += 1
            count, count_pos = self.word()
            count_pos = count_pos if count else self.pos
        if count is not None:
            if not count:
                raise self.error(count_pos, f"missing layer count after 'x' in '{name}:{size_text}': expected "
                                            f"e.g. '{key}:{hidden}x2'")
            if not re.fullmatch(r"[0-9]+", count):
                raise self.error(count_pos, f"the layer count of '{name}' must be a positive integer, "
                                            f"found '{count}'")
            layers = int(count)
            if layers < 1:
                raise self.error(count_pos, f"the layer count of '{name}' must be at least 1, found {count}")
            if layers > MAX_LAYERS:
                raise self.error(count_pos, f"the layer count of '{name}' is {layers}, more than the largest "
                                            f"supported {MAX_LAYERS}")
        self.blocks += 1
        if self.blocks > MAX_BLOCKS:
            raise self.error(start, f"more than {MAX_BLOCKS} blocks in one spec")
        gates = CELL_GATES[kind]  # minGRU / minLSTM: counted the same way, as a size measure
        self.weights += gates * hidden * hidden * layers * (2 if bidirectional else 1)
        if self.weights > MAX_WEIGHTS:
            raise self.error(start, f"the spec up to '{name}:{size_text}' has {self.weights:,} recurrent weights, "
                                    f"more than the largest supported {MAX_WEIGHTS:,} (make the layers smaller)")
        return Layer(kind, hidden, layers, bidirectional)


def parse_spec(spec: str | SpecNode) -> SpecNode:
    """Parse an encoder spec such as ``"bilstm:64>gru:32"`` into its AST (an AST is returned unchanged).

    Raises:
        SpecError: (a ``ValueError``) showing the spec with a caret under the bad token.
    """
    if isinstance(spec, (Layer, Stack, Parallel)):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"an encoder spec must be a string such as 'lstm:64', got {type(spec).__name__}")
    return _Parser(spec).parse()


def format_spec(node: SpecNode) -> str:
    """The canonical text of an AST: no spaces, lowercase, ``x1`` left out, parentheses around a parallel
    inside a stack (not required by the precedence, written for readability) and wherever the grammar needs
    them."""
    if isinstance(node, Layer):
        name = ("bi" if node.bidirectional else "") + node.kind
        return f"{name}:{node.hidden}" + (f"x{node.layers}" if node.layers != 1 else "")
    if isinstance(node, Stack):
        return ">".join(f"({format_spec(i)})" if isinstance(i, Parallel) else format_spec(i) for i in node.items)
    if isinstance(node, Parallel):
        return "|".join(format_spec(b) if isinstance(b, Layer) else f"({format_spec(b)})" for b in node.branches)
    raise TypeError(f"not a spec node: {node!r}")


def iter_layers(node: SpecNode):
    """The :class:`Layer` leaves of an AST in spec order (left to right, depth first)."""
    if isinstance(node, Layer):
        yield node
    else:
        for child in (node.items if isinstance(node, Stack) else node.branches):
            yield from iter_layers(child)
