"""Language modelling (``task: language_model``) at word, character or subword level, and text generation.

The corpus is one stream of token ids (word level: ``<eos>`` at the end of every line; character level:
newlines are characters). Training cuts the stream into ``batch_size`` contiguous rows and walks along them
in windows of ``bptt`` steps: truncated back-propagation through time, the recurrent state carried from one
window to the next and detached, so gradients stop at the window boundary. The training stream's last
``< batch_size`` tokens (that do not fill a row) are left out; evaluation scores every token of the split.

Metrics: ``loss`` (mean negative log-likelihood per token, nats), ``perplexity`` = exp(loss) and
``bits_per_token`` = loss / ln 2 (bits per character at character level, also reported as ``bpc``).
The tokeniser (``data.tokenizer``, shared with classification) is fitted on the training split and saved with
the run (``text_encoder.json``, ``language_model.json``); a loaded run generates without the corpus:
:meth:`LanguageModelTask.generate` yields the text one piece per token (``hybridrnn generate`` prints them as
they come).
"""
from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from hybridrnn._io import atomic_write_json, read_json
from hybridrnn.config import RunConfig, Section
from hybridrnn.data.text import EOS, load_text_encoder, unigram_perplexity
from hybridrnn.errors import ConfigError, DataError, RunDirError
from hybridrnn.nn.language_model import LanguageModel, activation_penalties
from hybridrnn.tasks._common import config_relative, data_path, detach_state, encoder_options, map_state, model_device
from hybridrnn.tasks.text_config import TokenizerConfig, move_flat_tokenizer_keys
from hybridrnn.train.callbacks import Callback
from hybridrnn.train.seeding import epoch_generator
from hybridrnn.train.task import Task


class LMDataConfig(Section):
    """A text corpus. Without ``val``, the last ``val_fraction`` of ``train`` (by characters) is validation."""

    train: Optional[str] = Field(None, description="text file (.gz allowed); may be left out when the corpus "
                                                   "is passed to the task (hybridrnn.fit(config, data=path))")
    val: Optional[str] = None
    test: Optional[str] = None
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    add_eos: bool = Field(True, description="word/subword level: an <eos> token ends every line")
    encoding: str = "utf-8"

    _paths = field_validator("train", "val", "test")(classmethod(lambda cls, v, info: config_relative(v, info)))

    @model_validator(mode="before")
    @classmethod
    def _flat_tokenizer_keys(cls, data: Any) -> Any:
        # the old flat language-model keys defaulted to split_punctuation: false (TokenizerConfig: true)
        return move_flat_tokenizer_keys(data, level_key="level", old_defaults={"split_punctuation": False})

    @property
    def level(self) -> str:
        return self.tokenizer.level


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
    ar: float = Field(0.0, ge=0.0, description="activation regularisation: + ar * mean(o_t^2) on the encoder "
                      "outputs after output dropout (AWD-LSTM: 2)")
    tar: float = Field(0.0, ge=0.0, description="temporal activation regularisation: + tar * mean((h_t - "
                       "h_{t-1})^2) on the encoder outputs before output dropout (AWD-LSTM: 1)")
    variable_bptt: bool = Field(False, description="AWD-LSTM window lengths: N(bptt, 5) with probability 0.95, "
                                "else N(bptt/2, 5) (at least 1), the lr scaled by length / bptt for that step")
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


FORMAT = "hybridrnn.language_model/1"


def read_corpus(source: str | Path, encoding: str = "utf-8") -> str:
    """The text of a corpus file (gzip when it ends in ``.gz``); a missing or undecodable file is a DataError."""
    if not isinstance(source, (str, Path)):
        raise DataError(f"a language model reads a text file (a path), not a {type(source).__name__}")
    path = data_path(str(source))
    if not path.is_file():
        raise DataError(f"corpus file not found: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding=encoding) as handle:
                return handle.read()
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {encoding} ({exc.reason} at byte {exc.start}); set data.encoding") from None


def stream_rows(ids: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut a stream into ``rows`` contiguous rows of inputs and next-token targets.

    Returns ``x, y`` of shape ``(rows, n)`` with ``n = (len(ids) - 1) // rows`` and the remainder ``x_r, y_r``
    (``< rows`` tokens) that continues row ``rows - 1``.
    """
    if ids.numel() < rows + 1:
        raise DataError(f"a stream of {ids.numel()} tokens cannot fill {rows} rows (need at least {rows + 1}): "
                        "use a longer text or a smaller batch_size")
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
    supports_generate = True
    supports_export = True

    def __init__(self, config: LanguageModelConfig):
        super().__init__(config)
        self.encoder = None
        self.texts: dict[str, str] = {}
        self.ids: dict[str, torch.Tensor] = {}
        self._state = None  # carried across training windows
        self._window_starts: dict[int, int] = {0: 0}   # variable BPTT: epoch -> stream position at its start

    # ---- data --------------------------------------------------------------------------------------
    def setup(self, data: Any = None, *, whole: bool = False) -> None:
        """Read the corpus (``data``: None for ``data.train``, else a text file that replaces it; ``val`` and
        ``test`` as configured); fit the tokeniser on the training text unless ``load_artifacts`` restored it.
        ``whole``: all of ``data`` (or of ``data.test``) is the "test" split."""
        d = self.config.data
        if whole:
            if self.encoder is None:
                raise RuntimeError("setup(whole=True) evaluates a trained model: call load_artifacts(run_dir) first")
            self.texts = {"test": read_corpus(self._source(data, d.test, "test"), d.encoding)}
        else:
            train = read_corpus(self._source(data, d.train, "train"), d.encoding)
            if d.val:
                self.texts = {"train": train, "val": read_corpus(d.val, d.encoding)}
            else:
                cut = int(round(len(train) * (1 - d.val_fraction)))
                self.texts = {"train": train[:cut], "val": train[cut:]}
            if d.test:
                self.texts["test"] = read_corpus(d.test, d.encoding)
        if self.encoder is None:
            extra = (EOS,) if d.level != "char" and d.add_eos else ()
            lines = self.texts["train"].splitlines() if d.level != "char" else [self.texts["train"]]
            self.encoder = d.tokenizer.fit(lines, extra_specials=extra)
        self._encode_all()

    @staticmethod
    def _source(data: Any, configured: Optional[str], key: str) -> Any:
        if data is not None:
            return data
        if configured is None:
            raise ConfigError(f"data.{key} is not set: name a text file in the config or pass one to the task")
        return configured

    def _encode_all(self) -> None:
        self._window_starts = {0: 0}
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
            raise DataError(f"the {where} text has {len(ids)} tokens; a language model needs at least 2")
        return torch.tensor(ids, dtype=torch.int64)

    @property
    def eos_id(self) -> int:
        if self.config.data.level == "char":
            raise ValueError("character-level models have no <eos> token")
        if self.encoder.kind == "subword":
            return self.encoder.tokenizer.token_to_id(EOS)
        return self.encoder.vocabulary.stoi[EOS]

    @property
    def has_eos(self) -> bool:
        return self.config.data.level != "char" and self.config.data.add_eos

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    # ---- artifacts ------------------------------------------------------------------------------------
    def save_artifacts(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / ARTIFACT, {
            "format": FORMAT, "level": self.config.data.level, "add_eos": self.config.data.add_eos,
            "vocab_size": self.vocab_size, "tokens": {s: int(v.numel()) for s, v in self.ids.items()}})
        self.encoder.save(Path(run_dir) / TEXT_ENCODER)

    def load_artifacts(self, run_dir: Path) -> None:
        """The tokeniser and its vocabulary (``text_encoder.json``), checked against ``language_model.json``
        and the config; text already read is re-encoded with them."""
        path = Path(run_dir) / ARTIFACT
        info = read_json(path)
        if not isinstance(info, dict) or info.get("format", FORMAT) != FORMAT or "vocab_size" not in info:
            raise RunDirError(f"{path}: not the artifacts of a language-model run (format {FORMAT!r})")
        level = self.config.data.level
        if info.get("level", level) != level:
            raise RunDirError(f"{path}: the run was trained at {info['level']} level, its config says {level}")
        enc_path = Path(run_dir) / TEXT_ENCODER
        try:
            self.encoder = load_text_encoder(enc_path)
        except FileNotFoundError:
            raise RunDirError(f"{enc_path} is missing: the run's vocabulary is needed to read and write text") from None
        except ValueError as exc:
            raise RunDirError(f"{enc_path}: {exc}") from None
        if self.encoder.vocab_size != info["vocab_size"]:
            raise RunDirError(f"{run_dir}: {TEXT_ENCODER} has {self.encoder.vocab_size} tokens, "
                              f"{ARTIFACT} says {info['vocab_size']}")
        if self.texts:
            self._encode_all()

    # ---- model ---------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if self.encoder is None:
            raise RuntimeError("build_model needs the vocabulary: call setup() or load_artifacts() first")
        lm = self.config.lm
        return LanguageModel(self.vocab_size, self.config.model.encoder, embedding_dim=lm.embedding_dim,
                             tie_weights=lm.tie_weights, embedding_dropout=lm.embedding_dropout,
                             input_dropout=lm.input_dropout, output_dropout=lm.output_dropout,
                             encoder_options=encoder_options(self.config.model),
                             weight_drop=self.config.model.weight_drop)

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
        windows in the stream), so short epochs still walk through all the data and the state carries on.
        With ``lm.variable_bptt`` see :meth:`variable_windows`."""
        x, y, _, _ = stream_rows(self.ids["train"], self.config.train.batch_size)
        if self.config.lm.variable_bptt:
            for start, length in self.variable_windows(epoch):
                yield x[:, start:start + length], y[:, start:start + length], start == 0
            return
        bptt = self.config.lm.bptt
        total = self._stream_windows()
        per_epoch = self.config.lm.windows_per_epoch
        windows = range(total) if per_epoch is None else ((epoch * per_epoch + k) % total for k in range(per_epoch))
        for w in windows:
            start = w * bptt
            yield x[:, start:start + bptt], y[:, start:start + bptt], start == 0

    def window_lengths(self, epoch: int) -> list[int]:
        """The ``num_train_batches()`` window lengths of ``epoch`` with ``lm.variable_bptt`` (AWD-LSTM)::

            base = bptt with probability 0.95, else bptt / 2;   length = max(1, int(base + 5 z)),  z ~ N(0, 1)

        drawn from ``epoch_generator(train.seed, epoch)``: the same seed and epoch give the same lengths."""
        bptt, count = self.config.lm.bptt, self.num_train_batches()
        gen = epoch_generator(self.config.train.seed, epoch)
        halve = torch.rand(count, generator=gen, dtype=torch.float64) >= 0.95
        z = torch.randn(count, generator=gen, dtype=torch.float64)
        base = torch.where(halve, bptt / 2.0, float(bptt))
        return [max(1, int(v)) for v in (base + 5.0 * z).tolist()]

    def variable_windows(self, epoch: int) -> list[tuple[int, int]]:
        """``(start, length)`` of the windows of ``epoch`` with ``lm.variable_bptt``: ``num_train_batches()``
        windows of :meth:`window_lengths` walking along the rows and continuing across epochs where the last
        one stopped; a window is cut at the end of the rows and the next starts again at 0 (state reset).
        The position at the start of ``epoch`` is found by replaying the earlier epochs' lengths (cheap), so
        a resumed run walks the same windows."""
        n = (self.ids["train"].numel() - 1) // self.config.train.batch_size
        cache = self._window_starts
        first = max(e for e in cache if e <= epoch)
        pos = cache[first]
        for e in range(first, epoch + 1):
            cache[e] = pos
            windows = []
            for length in self.window_lengths(e):
                length = min(length, n - pos)
                windows.append((pos, length))
                pos = 0 if pos + length >= n else pos + length
        return windows

    def train_callbacks(self) -> list[Callback]:
        """Trainer callbacks this task needs (the pipeline adds them): the length-scaled lr of variable BPTT."""
        return [LengthScaledLR(self.config.lm.bptt)] if self.config.lm.variable_bptt else []

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        """Cross-entropy of the window's next tokens, plus AR / TAR (``lm.ar``, ``lm.tar``) when set; the state
        carries over from the previous window (detached) unless this one starts the rows."""
        x, y, first = batch
        state = None if first else self._state
        if state is not None and _state_batch(state) != x.shape[0]:
            state = None   # a different batch size (e.g. the shard of another world size): start afresh
        lm = self.config.lm
        if lm.ar > 0 or lm.tar > 0:
            logits, state, (raw, dropped) = model(x, state, return_hidden=True)
            penalty = activation_penalties(raw, dropped, lm.ar, lm.tar)
        else:
            logits, state = model(x, state)
            penalty = None
        self._state = detach_state(state)   # truncated BPTT: no gradient into the previous window
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        return (loss if penalty is None else loss + penalty), int(y.numel())

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
            raise DataError(f"no {split!r} split: the data read has {sorted(self.ids)} (set data.{split} in the "
                            "config, or evaluate another split)")
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

    # ---- ONNX export ----------------------------------------------------------------------------------
    def export_inputs(self, rows: int = 4) -> tuple[dict[str, torch.Tensor], list[str]]:
        """``tokens: (batch, T)`` int64 ids drawn from the vocabulary, ``T = min(lm.bptt, 64)`` (the exported
        graph reads windows of that length, from a zero state); the output ``logits: (batch, T, vocab)`` scores
        the next token after each position. Built from the vocabulary alone."""
        generator = torch.Generator().manual_seed(0)
        steps = min(self.config.lm.bptt, 64)
        return {"tokens": torch.randint(0, self.vocab_size, (rows, steps), generator=generator)}, ["logits"]

    def export_forward(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return model(tokens)[0]

    # ---- generation ---------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a prompt; an empty prompt starts from ``<eos>`` (word/subword) or a newline (char)."""
        if prompt == "":
            if self.config.data.level == "char":
                return self.encoder.encode("\n")
            if not self.has_eos:
                raise DataError("this model has no <eos> token (data.add_eos is false) to start from: give a prompt")
            return [self.eos_id]
        ids = self.encoder.encode(prompt)
        unk = [t for t, i in zip(self.encoder.tokens(prompt), ids) if i == self.encoder.unk_id]
        if self.encoder.kind != "subword" and unk:
            warnings.warn(f"prompt tokens not in the vocabulary (read as <unk>): {unk[:10]}", stacklevel=3)
        if not ids:
            raise DataError(f"the prompt {prompt!r} has no tokens")
        return ids

    def generate(self, model: nn.Module, prompt: str, tokens: int, *, temperature: float | None = None,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> Iterator[str]:
        """The text after ``prompt``, one piece per generated token (``tokens`` of them), one ``step()`` each.

        Word level: each word after a space (none at the start of a line), ``<eos>`` as a newline; character
        level: the characters; subword level: what each token adds to the decoded line (no space inside a word).
        The prompt itself is not yielded. ``temperature`` / ``top_k`` default to the run's ``lm.temperature`` /
        ``lm.top_k``; ``generator`` (on the model's device) fixes the sampling, else torch's global RNG draws.
        """
        lm = self.config.lm
        temperature = lm.temperature if temperature is None else temperature
        top_k = lm.top_k if top_k is None else top_k
        ids = self.prompt_ids(prompt)
        pieces = self._pieces(line_start=prompt == "" or prompt.endswith("\n"),
                              context=[] if prompt == "" else list(ids))
        next(pieces)
        for token_id in model.iter_generate(ids, tokens, temperature=temperature, top_k=top_k, generator=generator):
            yield pieces.send(token_id)

    def _pieces(self, line_start: bool, context: list[int]):
        """Coroutine: sent a generated token id, returns the text it adds (see :meth:`generate`)."""
        level, eos = self.config.data.level, (self.eos_id if self.has_eos else None)
        shown = self.encoder.decode(context) if level == "subword" and context else ""
        piece = None
        while True:
            token_id = yield piece
            if token_id == eos:
                piece, line_start, context, shown = "\n", True, [], ""
            elif level == "char":
                piece = self.encoder.decode([token_id])
            elif level == "word":
                piece = ("" if line_start else " ") + self.encoder.id_to_token(token_id)
                line_start = False
            else:
                context.append(token_id)
                text = self.encoder.decode(context)
                piece, shown = text[len(shown):], text


def _state_batch(state) -> int:
    while isinstance(state, (tuple, list)):
        state = state[0]
    return int(state.shape[1])


class LengthScaledLR(Callback):
    """Variable-length BPTT's learning rate (AWD-LSTM): for a window of ``L`` steps every param group's lr is
    multiplied by ``L / bptt`` for that one step (``on_batch_start``) and restored after it (``on_step_end``),
    so that short windows (whose mean loss is over fewer tokens) move the weights less."""

    def __init__(self, bptt: int):
        self.bptt = int(bptt)
        self.saved: list[float] | None = None

    def on_batch_start(self, trainer, epoch: int, step: int, batch) -> None:
        scale = batch[0].shape[1] / self.bptt
        groups = trainer.optimizer.param_groups
        self.saved = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] = g["lr"] * scale

    def on_step_end(self, trainer, epoch: int, step: int, loss: float, items: int) -> None:
        if self.saved is not None:
            for g, lr in zip(trainer.optimizer.param_groups, self.saved):
                g["lr"] = lr
            self.saved = None
