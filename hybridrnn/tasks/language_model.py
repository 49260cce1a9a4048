"""Language modelling (``task: language_model``) at word, character or subword level, and text generation.

The corpus is one stream of token ids (word level: ``<eos>`` at the end of every line; character level:
newlines are characters). Training cuts the stream into ``batch_size`` contiguous rows and walks along them
in windows of ``bptt`` steps: truncated back-propagation through time, the recurrent state carried from one
window to the next and detached, so gradients stop at the window boundary. The training stream's last
``< batch_size`` tokens (that do not fill a row) are left out; evaluation scores every token of the split.

Metrics: ``loss`` (mean negative log-likelihood per token, nats), ``perplexity`` = exp(loss) and
``bits_per_token`` = loss / ln 2 (bits per character at character level, also reported as ``bpc``).
``hybridrnn generate RUN --prompt ... --tokens N`` calls :func:`generate_cli`, which streams text one
``step()`` per token.
"""
from __future__ import annotations

import gzip
import math
import sys
from pathlib import Path
from typing import Iterator, Literal, Optional, TextIO

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from hybridrnn.config import RunConfig, Section
from hybridrnn.data.text import EOS, build_text_encoder, load_text_encoder, unigram_perplexity
from hybridrnn.tasks._common import config_relative, data_path, detach_state, encoder_options, map_state, model_device
from hybridrnn.train.checkpoint import atomic_write_json, read_json
from hybridrnn.train.task import Task


class LMDataConfig(Section):
    """A text corpus. Without ``val``, the last ``val_fraction`` of ``train`` (by characters) is validation."""

    train: str = Field(description="text file (.gz allowed)")
    val: Optional[str] = None
    test: Optional[str] = None
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    level: Literal["word", "char", "subword"] = "word"
    lower: Optional[bool] = Field(None, description="default False for char/word, True for subword")
    split_punctuation: bool = Field(False, description="word level: punctuation marks as tokens of their own")
    min_freq: int = Field(1, ge=1)
    max_vocab: Optional[int] = Field(None, ge=3)
    subword_vocab_size: int = Field(4000, ge=100)
    add_eos: bool = Field(True, description="word/subword level: an <eos> token ends every line")
    encoding: str = "utf-8"

    _paths = field_validator("train", "val", "test")(classmethod(lambda cls, v, info: config_relative(v, info)))


class LMConfig(Section):
    """The language model around the encoder (AWD-LSTM dropouts; see ``hybridrnn.nn.language_model``)."""

    bptt: int = Field(35, ge=1, description="truncated BPTT window (time steps)")
    embedding_dim: int = Field(128, ge=1)
    tie_weights: bool = True
    embedding_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    input_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    output_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    windows_per_epoch: Optional[int] = Field(None, ge=1, description="truncated epochs: each epoch runs this many "
                                             "bptt windows, continuing along the stream where the last one "
                                             "stopped (None: the whole stream every epoch)")
    eval_batch_size: int = Field(16, ge=1)
    max_val_tokens: Optional[int] = Field(None, ge=2, description="score only the first N validation tokens "
                                          "during training (faster epochs; test always scores all)")
    # generation defaults (the CLI flags override them)
    temperature: float = Field(0.8, ge=0.0)
    top_k: Optional[int] = Field(40, ge=1)


class LanguageModelConfig(RunConfig):
    task: Literal["language_model"] = "language_model"
    data: LMDataConfig
    lm: LMConfig = Field(default_factory=LMConfig)

    @model_validator(mode="after")
    def _check(self):
        if self.model.attention is not None:
            raise ValueError("model.attention is not used by the language model; leave it unset")
        return self


ARTIFACT = "language_model.json"
TEXT_ENCODER = "text_encoder.json"


def read_corpus(path: Path, encoding: str = "utf-8") -> str:
    """The text of ``path`` (gzip when it ends in ``.gz``)."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding=encoding) as handle:
            return handle.read()
    return path.read_text(encoding=encoding)


def stream_rows(ids: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut a stream into ``rows`` contiguous rows of inputs and next-token targets.

    Returns ``x, y`` of shape ``(rows, n)`` with ``n = (len(ids) - 1) // rows`` and the remainder ``x_r, y_r``
    (``< rows`` tokens) that continues row ``rows - 1``.
    """
    if ids.numel() < rows + 1:
        raise ValueError(f"a stream of {ids.numel()} tokens cannot fill {rows} rows (need at least {rows + 1})")
    n = (ids.numel() - 1) // rows
    x = ids[:rows * n].view(rows, n)
    y = ids[1:rows * n + 1].view(rows, n)
    return x, y, ids[rows * n:-1], ids[rows * n + 1:]


class LanguageModelTask(Task):
    """Word / char / subword language model with truncated BPTT. Monitors the validation ``loss``."""

    name = "language_model"
    config_class = LanguageModelConfig
    monitor = "loss"
    monitor_mode = "min"
    display_metrics = ("perplexity", "bpc")   # bpc at character level only

    def __init__(self, config: LanguageModelConfig):
        super().__init__(config)
        self.encoder = None
        self.texts: dict[str, str] = {}
        self.ids: dict[str, torch.Tensor] = {}
        self._state = None  # carried across training windows

    # ---- data --------------------------------------------------------------------------------------
    def setup(self, run_dir: Path | None = None) -> None:
        d = self.config.data
        train = read_corpus(data_path(d.train), d.encoding)
        if d.val:
            self.texts = {"train": train, "val": read_corpus(data_path(d.val), d.encoding)}
        else:
            cut = int(round(len(train) * (1 - d.val_fraction)))
            self.texts = {"train": train[:cut], "val": train[cut:]}
        if d.test:
            self.texts["test"] = read_corpus(data_path(d.test), d.encoding)
        extra = (EOS,) if d.level != "char" and d.add_eos else ()
        lines = self.texts["train"].splitlines() if d.level != "char" else [self.texts["train"]]
        self.encoder = build_text_encoder(d.level, lines, lower=d.lower, split_punctuation=d.split_punctuation,
                                          min_freq=d.min_freq, max_size=d.max_vocab,
                                          subword_vocab_size=d.subword_vocab_size, extra_specials=extra)
        self._encode_all()

    def _encode_all(self) -> None:
        self.ids = {split: self.encode_text(text, where=split) for split, text in self.texts.items()}

    def encode_text(self, text: str, where: str = "text") -> torch.Tensor:
        """A text as one stream of ids (word/subword: ``<eos>`` after every line when ``add_eos``)."""
        d = self.config.data
        if d.level == "char":
            ids = self.encoder.encode(text)
        else:
            eos = [self.eos_id] if d.add_eos else []
            ids = [i for line in text.splitlines() for i in self.encoder.encode(line) + eos]
        if len(ids) < 2:
            raise ValueError(f"the {where} text has {len(ids)} tokens; a language model needs at least 2")
        return torch.tensor(ids, dtype=torch.int64)

    @property
    def eos_id(self) -> int:
        if self.config.data.level == "char":
            raise ValueError("character-level models have no <eos> token")
        if self.encoder.kind == "subword":
            return self.encoder.tokenizer.token_to_id(EOS)
        return self.encoder.vocabulary.stoi[EOS]

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    def save_artifacts(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / ARTIFACT, {"level": self.config.data.level, "vocab_size": self.vocab_size,
                                                    "tokens": {s: int(v.numel()) for s, v in self.ids.items()}})
        self.encoder.save(Path(run_dir) / TEXT_ENCODER)

    def load_artifacts(self, run_dir: Path) -> None:
        info = read_json(Path(run_dir) / ARTIFACT)
        self.encoder = load_text_encoder(Path(run_dir) / TEXT_ENCODER)
        if self.encoder.vocab_size != info["vocab_size"]:
            raise ValueError(f"{run_dir}: {TEXT_ENCODER} has {self.encoder.vocab_size} tokens, "
                             f"{ARTIFACT} says {info['vocab_size']}")
        if self.texts:
            self._encode_all()

    # ---- model ---------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from hybridrnn.nn.language_model import LanguageModel

        lm = self.config.lm
        return LanguageModel(self.vocab_size, self.config.model.encoder, embedding_dim=lm.embedding_dim,
                             tie_weights=lm.tie_weights, embedding_dropout=lm.embedding_dropout,
                             input_dropout=lm.input_dropout, output_dropout=lm.output_dropout,
                             encoder_options=encoder_options(self.config.model))

    # ---- training ------------------------------------------------------------------------------------
    def num_examples(self, split: str) -> int:
        return max(int(self.ids[split].numel()) - 1, 0) if split in self.ids else 0

    def _stream_windows(self) -> int:
        n = (self.ids["train"].numel() - 1) // self.config.train.batch_size
        return math.ceil(n / self.config.lm.bptt)

    def num_train_batches(self) -> int:
        per_epoch = self.config.lm.windows_per_epoch
        return self._stream_windows() if per_epoch is None else per_epoch

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator:
        """Windows ``(x, y, first)`` in stream order (no shuffling: the state runs along the rows);
        ``first`` marks a window at the start of the rows (the state is reset there).

        With ``lm.windows_per_epoch = W`` epoch ``e`` runs windows ``e*W .. e*W + W - 1`` (modulo the number of
        windows in the stream), so short epochs still walk through all the data and the state carries on."""
        x, y, _, _ = stream_rows(self.ids["train"], self.config.train.batch_size)
        bptt = self.config.lm.bptt
        total = self._stream_windows()
        per_epoch = self.config.lm.windows_per_epoch
        windows = range(total) if per_epoch is None else ((epoch * per_epoch + k) % total for k in range(per_epoch))
        for w in windows:
            start = w * bptt
            yield x[:, start:start + bptt], y[:, start:start + bptt], start == 0

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, y, first = batch
        state = None if first else self._state
        if state is not None and _state_batch(state) != x.shape[0]:
            state = None   # a different batch size (e.g. the shard of another world size): start afresh
        logits, state = model(x, state)
        self._state = detach_state(state)   # truncated BPTT: no gradient into the previous window
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        return loss, int(y.numel())

    def reset_state(self) -> None:
        self._state = None

    # ---- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def stream_nll(self, model: nn.Module, ids: torch.Tensor, rows: int, window: int = 200) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of every next token of ``ids`` and how many were scored."""
        device = model_device(model)
        rows = max(1, min(rows, (ids.numel() - 1) // 2))
        x, y, x_r, y_r = stream_rows(ids, rows)
        total, count, state = 0.0, 0, None
        for start in range(0, x.shape[1], window):
            xb, yb = x[:, start:start + window].to(device), y[:, start:start + window].to(device)
            logits, state = model(xb, state)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), yb.reshape(-1),
                                           reduction="sum"))
            count += yb.numel()
        if x_r.numel():   # the remainder continues the last row: take that row's state
            last = map_state(lambda t: t[:, rows - 1:rows].contiguous(), state)
            logits, _ = model(x_r.view(1, -1).to(device), last)
            total += float(F.cross_entropy(logits[0].double(), y_r.to(device), reduction="sum"))
            count += y_r.numel()
        return total, count

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        if split not in self.ids:
            raise ValueError(f"no {split!r} split in this task (have {sorted(self.ids)})")
        ids = self.ids[split]
        limit = self.config.lm.max_val_tokens
        if split == "val" and limit is not None:
            ids = ids[:limit]
        total, count = self.stream_nll(model, ids, self.config.lm.eval_batch_size)
        loss = total / count
        out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2),
               "tokens": float(count)}
        if self.config.data.level == "char":
            out["bpc"] = out["bits_per_token"]
        return out

    def unigram_perplexity(self, split: str = "val") -> float:
        """Perplexity of an add-one unigram model of the training stream on ``split``: the baseline."""
        return unigram_perplexity(self.ids["train"], self.ids[split][1:], self.vocab_size)

    # ---- generation ---------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a prompt; an empty prompt starts from ``<eos>`` (word/subword) or a newline (char)."""
        if prompt == "":
            return [self.eos_id] if self.config.data.level != "char" else self.encoder.encode("\n")
        ids = self.encoder.encode(prompt)
        unk = [t for t, i in zip(self.encoder.tokens(prompt), ids) if i == self.encoder.unk_id]
        if self.encoder.kind != "subword" and unk:
            print(f"note: prompt words not in the vocabulary (read as <unk>): {unk[:10]}", file=sys.stderr)
        if not ids:
            raise ValueError(f"the prompt {prompt!r} has no tokens")
        return ids

    def token_text(self, token_id: int) -> str:
        """How one generated token is printed (word level: a space before it; <eos>: a newline)."""
        level = self.config.data.level
        if level == "char":
            return self.encoder.decode([token_id])
        if level == "word":
            if self.config.data.add_eos and token_id == self.eos_id:
                return "\n"
            return " " + self.encoder.id_to_token(token_id)
        raise ValueError("subword text is printed by decoding the whole sequence (see generate_cli)")


def _state_batch(state) -> int:
    while isinstance(state, (tuple, list)):
        state = state[0]
    return int(state.shape[1])


def generate_cli(run_dir: str | Path, prompt: str = "", tokens: int = 200, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, seed: int = 0, out: TextIO | None = None) -> str:
    """Stream ``tokens`` generated tokens after ``prompt`` to ``out`` (stdout), one ``step()`` per token.

    ``temperature`` / ``top_k`` default to the run's ``lm.temperature`` / ``lm.top_k``; ``seed`` fixes the
    sampling. Returns the whole text (prompt + continuation) as printed.
    """
    from hybridrnn.train.run import load_run

    out = out or sys.stdout
    config, task, model = load_run(run_dir)
    if not isinstance(task, LanguageModelTask):
        raise ValueError(f"{run_dir} is a {config.task!r} run; generate needs a language_model run")
    temperature = config.lm.temperature if temperature is None else temperature
    top_k = config.lm.top_k if top_k is None else top_k
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    ids = task.prompt_ids(prompt)
    printed = [prompt]
    out.write(prompt)
    out.flush()
    subword = config.data.level == "subword"
    produced: list[int] = []
    shown = ""
    for token_id in model.iter_generate(ids, tokens, temperature=temperature, top_k=top_k, generator=generator):
        if subword:
            produced.append(token_id)
            text = task.encoder.decode(produced)
            piece, shown = text[len(shown):], text
            if token_id == task.eos_id:
                piece, produced, shown = "\n", [], ""
        else:
            piece = task.token_text(token_id)
        printed.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return "".join(printed)
