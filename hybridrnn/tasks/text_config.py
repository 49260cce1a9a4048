"""``TokenizerConfig``: how text becomes token ids, one section for classification and language models.

Written under ``data.tokenizer`` in both tasks, as a mapping or, for the level alone, a string::

    data:
      train: corpus.txt
      tokenizer: char                                           # = {level: char}
      tokenizer: {level: word, split_punctuation: false, min_freq: 2}

Defaults are those of :mod:`hybridrnn.data.text` (where the rules are stated): word level, lower-cased at word
and subword level (not at character level), punctuation split off at word level, every training token kept.

Configs written before this section existed (flat ``data.tokenizer: word`` / ``data.level: char``,
``data.lower``, ``data.split_punctuation``, ``data.min_freq``, ``data.max_vocab``, ``data.subword_vocab_size``)
still load: :func:`move_flat_tokenizer_keys` moves those keys into ``data.tokenizer``, so run directories
trained earlier keep working. The language model's old flat schema split punctuation off only when asked
(``split_punctuation: false`` by default); an old-style language-model config keeps that meaning.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

from pydantic import Field, model_validator

from hybridrnn.config import Section
from hybridrnn.data.text import SubwordTokenizer, VocabEncoder, build_text_encoder

#: the keys of :class:`TokenizerConfig` that older configs wrote directly under ``data``
FLAT_KEYS = ("lower", "split_punctuation", "min_freq", "max_vocab", "subword_vocab_size")


class TokenizerConfig(Section):
    """Tokeniser and vocabulary, fitted on the training split (saved with the run as ``text_encoder.json``)."""

    level: Literal["word", "char", "subword"] = Field(
        "word", description="word | char (every character, newlines included) | subword (BPE, trained on the "
                            "training split with the tokenizers library)")
    lower: Optional[bool] = Field(None, description="lower-case first; default True for word/subword, "
                                                    "False for char")
    split_punctuation: bool = Field(True, description="word level: punctuation marks are tokens of their own "
                                                      "(false: split on whitespace only, for pre-tokenised text)")
    min_freq: int = Field(1, ge=1, description="tokens seen fewer times in the training split map to <unk> "
                                               "(subword: the BPE merges' minimum frequency)")
    max_vocab: Optional[int] = Field(None, ge=3, description="keep at most this many tokens, specials included "
                                                             "(word/char)")
    subword_vocab_size: int = Field(4000, ge=100, description="subword level: the BPE vocabulary size")

    @model_validator(mode="before")
    @classmethod
    def _level_alone(cls, data: Any) -> Any:
        return {"level": data} if isinstance(data, str) else data

    def fit(self, texts: Sequence[str], extra_specials: Sequence[str] = ()) -> VocabEncoder | SubwordTokenizer:
        """A text encoder of this kind fitted on the training ``texts``."""
        return build_text_encoder(self.level, texts, lower=self.lower, split_punctuation=self.split_punctuation,
                                  min_freq=self.min_freq, max_size=self.max_vocab,
                                  subword_vocab_size=self.subword_vocab_size, extra_specials=extra_specials)


def move_flat_tokenizer_keys(data: Any, level_key: str, old_defaults: dict[str, Any] | None = None) -> Any:
    """Pydantic ``mode="before"`` body for a text data section: the tokenizer keys older configs wrote directly
    under ``data`` move into ``data.tokenizer`` (``level_key``: where the level was, ``"tokenizer"`` for
    classification, ``"level"`` for language models). ``old_defaults``: values the old flat schema defaulted
    to where they differ from :class:`TokenizerConfig`'s, filled in so an old config keeps its meaning. A key
    given both ways is an error naming both places."""
    if not isinstance(data, dict):
        return data
    moved = {k: data[k] for k in FLAT_KEYS if k in data}
    if level_key != "tokenizer" and level_key in data:
        moved["level"] = data[level_key]
    if not moved:
        return data
    moved = {**(old_defaults or {}), **moved}
    nested = data.get("tokenizer")
    nested = {"level": nested} if isinstance(nested, str) else dict(nested or {})
    both = sorted(set(moved) & set(nested))
    if both:
        raise ValueError(f"data.{both[0]} and data.tokenizer.{both[0]} are both given; keep data.tokenizer.{both[0]}")
    out = {k: v for k, v in data.items() if k not in FLAT_KEYS and k != level_key}
    out["tokenizer"] = {**nested, **moved}
    return out
