"""Text before the tensor: tokenisers, vocabularies, subword models, padding, length buckets, GloVe vectors.

Tokenisation rules (stated once, applied everywhere):

- ``CharTokenizer``: every Unicode code point is a token, whitespace and newlines included; ``lower=True``
  lower-cases first (off by default: case carries information at character level). ``detokenize`` joins.
- ``WordTokenizer``: ``lower=True`` (default) lower-cases first; then the text is split on whitespace and, with
  ``split_punctuation=True`` (default), every punctuation or symbol character becomes a token of its own
  (``"don't stop!"`` -> ``don ' t stop !``); runs of letters, digits and ``_`` stay whole. With
  ``split_punctuation=False`` the text is split on whitespace only (for corpora that come already tokenised,
  such as SST and PTB). ``detokenize`` joins with single spaces.
- ``SubwordTokenizer``: byte-pair encoding trained on the training split with the ``tokenizers`` library
  (whitespace + punctuation pre-tokeniser, optional lower-casing), saved as that library's own JSON.

A vocabulary maps tokens to ids: ``<pad>`` is always id 0 and ``<unk>`` id 1; tokens seen fewer than
``min_freq`` times in the training split map to ``<unk>``. Ids of the other tokens follow frequency
(descending) then the token itself, so a vocabulary built twice from the same data is identical.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from hybridrnn.data.registry import DataFileNotFoundError
from hybridrnn.errors import ConfigError, DataError, RunDirError

PAD = "<pad>"
UNK = "<unk>"
EOS = "<eos>"

_WORD_OR_PUNCT = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------
# tokenisers
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CharTokenizer:
    """One token per character (see the module docstring for the rules)."""

    lower: bool = False
    kind = "char"

    def tokenize(self, text: str) -> list[str]:
        return list(text.lower() if self.lower else text)

    def detokenize(self, tokens: Sequence[str]) -> str:
        return "".join(tokens)

    def options(self) -> dict:
        return {"lower": self.lower}


@dataclass(frozen=True)
class WordTokenizer:
    """Words (and punctuation marks, when ``split_punctuation``), see the module docstring for the rules."""

    lower: bool = True
    split_punctuation: bool = True
    kind = "word"

    def tokenize(self, text: str) -> list[str]:
        if self.lower:
            text = text.lower()
        if self.split_punctuation:
            return _WORD_OR_PUNCT.findall(text)
        return text.split()

    def detokenize(self, tokens: Sequence[str]) -> str:
        return " ".join(tokens)

    def options(self) -> dict:
        return {"lower": self.lower, "split_punctuation": self.split_punctuation}


# ---------------------------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------------------------
class Vocabulary:
    """Token <-> id map with ``<pad>`` = 0 and ``<unk>`` = 1 (then any extra specials, then the corpus)."""

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary must start with {PAD!r}, {UNK!r}; got {tokens[:2]}")
        if len(set(tokens)) != len(tokens):
            dupes = [t for t, n in Counter(tokens).items() if n > 1][:5]
            raise ValueError(f"vocabulary has duplicate tokens, e.g. {dupes}")
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    pad_id = 0
    unk_id = 1

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None,
              extra_specials: Sequence[str] = ()) -> "Vocabulary":
        """Count tokens, keep those seen at least ``min_freq`` times (at most ``max_size`` in all, specials included)."""
        if min_freq < 1:
            raise ConfigError(f"min_freq must be >= 1, got {min_freq}")
        counts: Counter = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        specials = [PAD, UNK] + [s for s in extra_specials if s not in (PAD, UNK)]
        kept = sorted((t for t, n in counts.items() if n >= min_freq and t not in specials),
                      key=lambda t: (-counts[t], t))
        if max_size is not None:
            if max_size < len(specials):
                raise ConfigError(f"max_size {max_size} is smaller than the {len(specials)} special tokens")
            kept = kept[:max_size - len(specials)]
        return cls(specials + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str]) -> list[int]:
        unk = self.unk_id
        return [self.stoi.get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        n = len(self.itos)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is outside the vocabulary (size {n})")
            out.append(self.itos[i])
        return out

    def to_dict(self) -> dict:
        return {"tokens": self.itos}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        if "tokens" not in data or not isinstance(data["tokens"], list):
            raise ValueError("vocabulary JSON needs a 'tokens' list")
        return cls(data["tokens"])


# ---------------------------------------------------------------------------------------------------------
# text encoders: text <-> ids, one interface for char / word / subword
# ---------------------------------------------------------------------------------------------------------
class TextEncoder(Protocol):
    kind: str
    pad_id: int
    unk_id: int

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def tokens(self, text: str) -> list[str]: ...
    def id_to_token(self, i: int) -> str: ...
    def save(self, path: str | Path) -> None: ...


class VocabEncoder:
    """A char or word tokeniser plus its vocabulary."""

    def __init__(self, tokenizer: CharTokenizer | WordTokenizer, vocabulary: Vocabulary, min_freq: int = 1):
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary
        self.min_freq = min_freq
        self.kind = tokenizer.kind
        self.pad_id = vocabulary.pad_id
        self.unk_id = vocabulary.unk_id

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.tokenize(text)

    def encode(self, text: str) -> list[int]:
        return self.vocabulary.encode(self.tokenizer.tokenize(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(self.vocabulary.decode(ids))

    def id_to_token(self, i: int) -> str:
        return self.vocabulary.decode([i])[0]

    def save(self, path: str | Path) -> None:
        data = {"kind": self.kind, **self.tokenizer.options(), "min_freq": self.min_freq,
                **self.vocabulary.to_dict()}
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=0))


class SubwordTokenizer:
    """Byte-pair encoding from the ``tokenizers`` library, trained on the training split."""

    kind = "subword"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.token_to_id(PAD)
        self.unk_id = tokenizer.token_to_id(UNK)
        if (self.pad_id, self.unk_id) != (0, 1):
            raise ValueError(f"subword tokenizer must have {PAD}=0 and {UNK}=1, got {self.pad_id}, {self.unk_id}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4000, lower: bool = True, min_frequency: int = 2,
              extra_specials: Sequence[str] = ()) -> "SubwordTokenizer":
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token=UNK, continuing_subword_prefix="##"))
        norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lower else [])
        tok.normalizer = normalizers.Sequence(norms)
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
        tok.decoder = decoders.WordPiece(prefix="##")
        specials = [PAD, UNK] + [s for s in extra_specials if s not in (PAD, UNK)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      continuing_subword_prefix="##", show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.encode(text).tokens

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        token = self.tokenizer.id_to_token(int(i))
        if token is None:
            raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return token

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.tokenizer.to_str(pretty=False))


def build_text_encoder(kind: str, texts: Sequence[str], *, lower: bool | None = None, split_punctuation: bool = True,
                       min_freq: int = 1, max_size: int | None = None, subword_vocab_size: int = 4000,
                       extra_specials: Sequence[str] = ()) -> VocabEncoder | SubwordTokenizer:
    """Fit a text encoder of ``kind`` ("char", "word" or "subword") on training ``texts``.

    ``lower`` defaults to False for "char" and True for "word" / "subword".
    """
    if kind == "char":
        tokenizer = CharTokenizer(lower=bool(lower) if lower is not None else False)
    elif kind == "word":
        tokenizer = WordTokenizer(lower=True if lower is None else lower, split_punctuation=split_punctuation)
    elif kind == "subword":
        return SubwordTokenizer.train(texts, vocab_size=subword_vocab_size, lower=True if lower is None else lower,
                                      min_frequency=min_freq, extra_specials=extra_specials)
    else:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; expected 'char', 'word' or 'subword'")
    vocab = Vocabulary.build((tokenizer.tokenize(t) for t in texts), min_freq=min_freq, max_size=max_size,
                             extra_specials=extra_specials)
    return VocabEncoder(tokenizer, vocab, min_freq=min_freq)


def load_text_encoder(path: str | Path) -> VocabEncoder | SubwordTokenizer:
    """Read what ``encoder.save(path)`` wrote (our vocabulary JSON, or a ``tokenizers`` JSON).

    A file that is not UTF-8, not JSON, or not an encoder's JSON is a :class:`RunDirError` naming it (the file
    belongs to a run directory); a missing file a ``FileNotFoundError``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"text encoder file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise RunDirError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); is it a text encoder "
                          f"file written by hybridrnn?") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise RunDirError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object (a text encoder), got a {type(data).__name__}")
    kind = data.get("kind")
    try:
        if kind in ("char", "word"):
            tokens = data.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise RunDirError(f"{path}: a vocabulary JSON needs a 'tokens' list of strings")
            min_freq = data.get("min_freq", 1)
            if isinstance(min_freq, bool) or not isinstance(min_freq, int):
                raise RunDirError(f"{path}: 'min_freq' must be a whole number, got {min_freq!r}")
            if kind == "char":
                tok: CharTokenizer | WordTokenizer = CharTokenizer(lower=bool(data.get("lower", False)))
            else:
                tok = WordTokenizer(lower=bool(data.get("lower", True)),
                                    split_punctuation=bool(data.get("split_punctuation", True)))
            return VocabEncoder(tok, Vocabulary.from_dict(data), min_freq=min_freq)
        if "model" in data:  # a tokenizers JSON
            from tokenizers import Tokenizer

            try:
                tokenizer = Tokenizer.from_str(text)
            except Exception as err:  # the tokenizers library raises a bare Exception for a malformed file
                raise RunDirError(f"{path}: not a valid tokenizers JSON ({str(err)[:200]})") from None
            return SubwordTokenizer(tokenizer)
    except RunDirError:
        raise
    except ValueError as err:  # Vocabulary / SubwordTokenizer checks: duplicates, specials
        raise RunDirError(f"{path}: {err}") from None
    raise RunDirError(f"{path}: neither a vocabulary JSON (kind 'char' / 'word') nor a tokenizers JSON")


# ---------------------------------------------------------------------------------------------------------
# padding and length buckets
# ---------------------------------------------------------------------------------------------------------
def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences to the longest one. Returns ``tokens (batch, time)`` int64, ``lengths (batch,)``."""
    if len(sequences) == 0:
        raise ValueError("pad_batch needs at least one sequence")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    if int(lengths.min()) < 1:
        bad = int(torch.nonzero(lengths < 1)[0, 0])
        raise ValueError(f"sequence {bad} of the batch is empty; every sequence needs at least one token")
    out = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.int64)
    for i, seq in enumerate(sequences):
        out[i, :len(seq)] = torch.as_tensor(seq, dtype=torch.int64)
    return out, lengths


def pad_series(series: Sequence[np.ndarray], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``(time_i, channels)`` arrays with zeros. Returns ``x (batch, time, channels)``, ``lengths (batch,)``."""
    if len(series) == 0:
        raise ValueError("pad_series needs at least one series")
    channels = {s.shape[1] for s in series}
    if len(channels) != 1:
        raise ValueError(f"series in one batch must share the channel count, got {sorted(channels)}")
    lengths = torch.tensor([s.shape[0] for s in series], dtype=torch.int64)
    out = torch.zeros(len(series), int(lengths.max()), channels.pop(), dtype=dtype)
    for i, s in enumerate(series):
        out[i, :s.shape[0]] = torch.as_tensor(s, dtype=dtype)
    return out, lengths


def bucket_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None,
                   pool_batches: int = 50) -> list[list[int]]:
    """Mini-batches of indices whose items have similar lengths (so padding per batch stays small).

    With a ``generator``: indices are shuffled, cut into pools of ``pool_batches * batch_size`` items, each pool
    is sorted by length and cut into batches, and the batch order is shuffled. Without one: sorted by length,
    deterministic (for evaluation). Every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(lengths)
    lengths_t = torch.as_tensor(list(lengths), dtype=torch.int64)
    if generator is None:
        order = torch.argsort(lengths_t, stable=True).tolist()
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator)
    pool = batch_size * pool_batches
    batches: list[list[int]] = []
    for start in range(0, n, pool):
        chunk = perm[start:start + pool]
        chunk = chunk[torch.argsort(lengths_t[chunk], stable=True)].tolist()
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


# ---------------------------------------------------------------------------------------------------------
# pretrained word vectors
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Coverage:
    """How much of a vocabulary a vector file covers (specials excluded)."""

    found: int
    total: int
    found_lowercase: int = 0

    @property
    def fraction(self) -> float:
        return self.found / self.total if self.total else 0.0

    def __str__(self) -> str:
        extra = f" ({self.found_lowercase} through lower-casing)" if self.found_lowercase else ""
        return f"{self.found}/{self.total} vocabulary words have a pretrained vector ({100 * self.fraction:.1f}%){extra}"


def load_glove(path: str | Path, vocabulary: Vocabulary, init: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, Coverage]:
    """Vectors for ``vocabulary`` from a GloVe text file (``word v1 v2 ... vd`` per line, utf-8).

    Words missing from the file keep ``init`` (or a ``N(0, 0.1^2)`` draw); ``<pad>`` is zero. A word not found
    as written is looked up lower-cased. Returns ``weights (len(vocabulary), d)`` and the :class:`Coverage`.
    Lines with a different number of values than the first, non-numeric or non-finite values and text that is
    not UTF-8 raise :class:`DataError` (a ``ValueError``) naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"word vector file not found: {path}")
    wanted = set(vocabulary.itos[2:])
    lower_wanted: dict[str, list[str]] = {}
    for w in wanted:
        lower_wanted.setdefault(w.lower(), []).append(w)
    exact: dict[str, np.ndarray] = {}
    lowered: dict[str, np.ndarray] = {}
    dim = None
    with path.open("rb") as handle:   # bytes, decoded line by line: a bad byte is named with its own line
        for lineno, raw_line in enumerate(handle, 1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start} of the "
                                f"line); GloVe files are UTF-8 text") from None
            parts = line.rstrip("\n").rstrip("\r").rstrip(" ").split(" ")
            if len(parts) < 2:
                if line.strip() == "":
                    continue
                raise DataError(f"{path}:{lineno}: expected 'word v1 ... vd', got {line[:60]!r}")
            if dim is None:
                dim = len(parts) - 1
            elif len(parts) - 1 != dim:
                raise DataError(f"{path}:{lineno}: {len(parts) - 1} values, but the first line has {dim}")
            word = parts[0]
            if word in wanted or word in lower_wanted:
                try:
                    with np.errstate(over="ignore"):
                        vec = np.asarray(parts[1:], dtype=np.float64).astype(np.float32)
                except ValueError:
                    raise DataError(f"{path}:{lineno}: non-numeric value in the vector of {word!r}") from None
                if not np.isfinite(vec).all():
                    raise DataError(f"{path}:{lineno}: non-finite value (nan, inf, or beyond float32) in the "
                                    f"vector of {word!r}")
                if word in wanted:
                    exact[word] = vec
                if word in lower_wanted:
                    lowered.setdefault(word, vec)
    if dim is None:
        raise DataError(f"{path}: no vectors in the file")
    if init is not None:
        if tuple(init.shape) != (len(vocabulary), dim):
            raise DataError(f"{path}: vectors of size {dim} do not fit init of shape {tuple(init.shape)}; expected "
                            f"({len(vocabulary)}, {dim})")
        weights = init.detach().clone().float()
    else:
        weights = torch.randn(len(vocabulary), dim, generator=generator) * 0.1
    weights[vocabulary.pad_id] = 0.0
    found = found_lower = 0
    for word in vocabulary.itos[2:]:
        if word in exact:
            vec = exact[word]
        elif word.lower() in lowered:
            vec = lowered[word.lower()]
            found_lower += 1
        else:
            continue
        weights[vocabulary.stoi[word]] = torch.from_numpy(vec)
        found += 1
    return weights, Coverage(found=found, total=len(vocabulary) - 2, found_lowercase=found_lower)


# ---------------------------------------------------------------------------------------------------------
# labelled text files
# ---------------------------------------------------------------------------------------------------------
def read_labelled_lines(path: str | Path, encoding: str = "utf-8") -> tuple[list[str], list[str]]:
    """Read ``<label> <text>`` lines (the SST / TREC / MR format). Returns ``(texts, labels)``.

    Blank lines are an error (:class:`DataError` naming the line), as is a line with a label and no text, and
    text that does not decode with ``encoding`` (an unknown encoding is a :class:`ConfigError`).
    """
    path = Path(path)
    raw = read_text_file(path, encoding)
    texts, labels = [], []
    lines = raw.split("\n")   # not splitlines(): it also breaks at \x85, \u2028, ... inside a text
    if lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[1].strip():
            raise DataError(f"{path}:{lineno}: expected '<label> <text>', got {line[:60]!r}")
        labels.append(parts[0])
        texts.append(parts[1].strip())
    if not texts:
        raise DataError(f"{path}: no lines")
    return texts, labels


def read_text_file(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole text of ``path`` (gzip-compressed when its name ends in ``.gz``), decoded with ``encoding``.

    For corpora (the language model's ``data.train``) and ``predict`` inputs. Errors: a missing file is a
    :class:`DataFileNotFoundError`; a folder, a broken ``.gz`` and text that does not decode are a
    :class:`DataError` naming the file, the line and the byte (and suggesting ``data.encoding``); an encoding
    Python does not know is a :class:`ConfigError`. Nothing is replaced or dropped.
    """
    import codecs
    import gzip
    import zlib

    path = Path(path)
    if not path.exists():
        raise DataFileNotFoundError(f"text file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a text file")
    try:
        if not getattr(codecs.lookup(encoding), "_is_text_encoding", True):   # e.g. 'rot13', 'base64'
            raise LookupError(encoding)
    except (LookupError, TypeError):
        raise ConfigError(f"unknown text encoding {encoding!r} (data.encoding); use e.g. 'utf-8' or "
                          f"'latin-1'") from None
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        lineno = data[:err.start].count(b"\n") + 1
        raise DataError(f"{path}:{lineno}: not valid {encoding} ({err.reason} at byte {err.start}); "
                        f"set the data's encoding (e.g. encoding: latin-1)") from None


def read_text_lines(path: str | Path, encoding: str = "utf-8") -> list[str]:
    """One text per line of ``path`` (``predict`` inputs): lines split at ``\n`` only (``\r\n`` accepted),
    each stripped; an empty line, or a file with no lines, is a :class:`DataError` naming the line. Decoding
    as :func:`read_text_file`."""
    path = Path(path)
    lines = read_text_file(path, encoding).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    texts = [line.rstrip("\r").strip() for line in lines]
    if not texts:
        raise DataError(f"{path}: no lines; give one text per line")
    empty = [i + 1 for i, t in enumerate(texts) if not t]
    if empty:
        raise DataError(f"{path}: line {empty[0]} is empty ({len(empty)} empty line(s)); give one text per line")
    return texts


def read_text_table(path: str | Path, text_column: str, label_column: str,
                    encoding: str = "utf-8") -> tuple[list[str], list[str]]:
    """``(texts, labels)`` from a CSV with a text column and a label column (the classifier's ``format: csv``).

    Every error is a :class:`DataError` naming the file: not CSV, not ``encoding``, a missing column, an empty
    text or label (naming the CSV line), no data rows. Values are read as text (a label ``01`` stays ``01``).
    """
    import warnings

    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataFileNotFoundError(f"text file not found: {path}")
    raw = read_text_file(path, encoding)
    if not raw.strip():
        raise DataError(f"{path}: the file is empty (expected a header with {text_column!r} and {label_column!r})")
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(raw), dtype=str, keep_default_na=False, index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot be read as CSV: {first}") from None
    for col in (text_column, label_column):
        if col not in frame.columns:
            raise DataError(f"{path}: column {col!r} not found; columns are {list(frame.columns)}")
    if len(frame) == 0:
        raise DataError(f"{path}: has a header but no data rows")
    for col, what in ((text_column, "texts"), (label_column, "labels")):
        empty = np.flatnonzero(frame[col].str.strip().eq("").to_numpy())
        if empty.size:
            raise DataError(f"{path}: column {col!r} has {empty.size} empty {what}; first at data row "
                            f"{int(empty[0]) + 1}")
    return frame[text_column].tolist(), frame[label_column].tolist()


def unigram_log_probs(train_ids: torch.Tensor, vocab_size: int, smoothing: float = 1.0) -> torch.Tensor:
    """Add-``smoothing`` unigram log-probabilities ``(vocab_size,)`` from a stream of training ids."""
    counts = torch.bincount(train_ids.reshape(-1), minlength=vocab_size).double() + smoothing
    return (counts / counts.sum()).log()


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of the add-one unigram model of ``train_ids`` on ``eval_ids``: the baseline an LM must beat."""
    logp = unigram_log_probs(train_ids, vocab_size)
    return math.exp(-float(logp[eval_ids.reshape(-1)].mean()))


def iter_chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
