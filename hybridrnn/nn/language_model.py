"""LanguageModel: embedding -> recurrent encoder -> output layer (tied to the embedding), with AWD-LSTM dropouts
and step-wise generation.

Dropouts (Merity et al. 2018, "Regularizing and optimizing LSTM language models"), active in training only:

- ``embedding_dropout``: drops whole word types (rows of the embedding matrix) for a batch, rescaling the rest
  by ``1 / (1 - p)``; a dropped word is dropped at every position of the batch.
- ``input_dropout`` / ``output_dropout``: variational ("locked") dropout on the embedded inputs and on the
  encoder outputs: one mask per sequence and feature, shared over all time steps.
- recurrent (hidden-to-hidden) variational dropout belongs to the encoder (``recurrent_dropout`` option).
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hybridrnn.errors import ConfigError
from hybridrnn.nn.dropout import LockedDropout  # noqa: F401  (re-exported: it lived here first)
from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.nn.spec import iter_layers, parse_spec
from hybridrnn.nn.tying import TiedOutput


def embedding_dropout(embedding: nn.Embedding, tokens: Tensor, p: float, training: bool) -> Tensor:
    """Look up ``tokens`` with whole rows of the embedding dropped (probability ``p``) when ``training``."""
    weight = embedding.weight
    if training and p > 0.0:
        mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1.0 - p) / (1.0 - p)
        weight = weight * mask
    return F.embedding(tokens, weight, embedding.padding_idx)


class LanguageModel(nn.Module):
    """Next-token model over a vocabulary of ``vocab_size`` ids.

    Args:
        vocab_size: number of token ids.
        encoder: a unidirectional encoder spec (built with ``hybridrnn.nn.hybrid.build_encoder``) or module.
        embedding_dim: width of the embedding (default 128).
        tie_weights: the output layer is the embedding's transpose (:class:`TiedOutput`), with a learned
            projection from the encoder width to ``embedding_dim`` when they differ; otherwise a ``Linear``.
        embedding_dropout, input_dropout, output_dropout: see the module docstring.
        encoder_options: keyword options for ``build_encoder``.

    ``forward(tokens (batch, time), state=None, lengths=None) -> (logits (batch, time, vocab), state)``;
    ``step(token (batch,), state=None) -> (logits (batch, vocab), state)`` runs one time step through the
    encoder's streaming ``step()``.
    """

    def __init__(self, vocab_size: int, encoder: str | nn.Module, *, embedding_dim: int = 128,
                 tie_weights: bool = True, embedding_dropout: float = 0.0, input_dropout: float = 0.0,
                 output_dropout: float = 0.0, encoder_options: Optional[dict] = None):
        super().__init__()
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ConfigError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        if not 0.0 <= embedding_dropout < 1.0:
            raise ConfigError(f"embedding_dropout must be in [0, 1), got {embedding_dropout}")
        if isinstance(encoder, str):
            bidirectional = [layer for layer in iter_layers(parse_spec(encoder)) if layer.bidirectional]
            if bidirectional:
                raise ConfigError(f"a language model needs a unidirectional encoder (it predicts the next token "
                                  f"from the past only); {encoder!r} has a bidirectional block")
            encoder = build_encoder(encoder, embedding_dim, **(encoder_options or {}))
        elif encoder.input_size != embedding_dim:
            raise ConfigError(f"encoder expects {encoder.input_size} input features, embedding_dim is {embedding_dim}")
        self.vocab_size, self.embedding_dim, self.tie_weights = vocab_size, embedding_dim, tie_weights
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.encoder = encoder
        width = encoder.output_size
        if tie_weights:
            self.output = TiedOutput(self.embedding, width, project=width != embedding_dim)
        else:
            self.output = nn.Linear(width, vocab_size)
        self.embedding_dropout = embedding_dropout
        self.input_dropout = LockedDropout(input_dropout)
        self.output_dropout = LockedDropout(output_dropout)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def forward(self, tokens: Tensor, state=None, lengths: Optional[Tensor] = None):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, time) ids, got shape {tuple(tokens.shape)}")
        x = embedding_dropout(self.embedding, tokens, self.embedding_dropout, self.training)
        x = self.input_dropout(x)
        outputs, state = self.encoder(x, state=state, lengths=lengths)
        return self.output(self.output_dropout(outputs)), state

    def step(self, token: Tensor, state=None):
        """One token per sequence: ``token (batch,)`` -> ``(logits (batch, vocab), state)``."""
        if token.dim() != 1:
            raise ValueError(f"step takes one token per sequence, shape (batch,); got {tuple(token.shape)}")
        x = embedding_dropout(self.embedding, token, self.embedding_dropout, self.training)
        x = self.input_dropout(x.unsqueeze(1)).squeeze(1)
        y, state = self.encoder.step(x, state)
        y = self.output_dropout(y.unsqueeze(1)).squeeze(1)
        return self.output(y), state

    @torch.no_grad()
    def iter_generate(self, prompt_ids: Sequence[int] | Tensor, n: int, temperature: float = 1.0,
                      top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Iterator[int]:
        """Yield ``n`` sampled token ids after ``prompt_ids``, one ``step()`` per token (streaming).

        The prompt is read token by token with ``step()``; then each sampled token is fed back. ``temperature``
        divides the logits (0 means greedy); ``top_k`` keeps the ``k`` most likely tokens. Sampling draws from
        ``generator`` (on the model's device), so a seeded generator repeats the text exactly.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None), got {top_k}")
        device = self.embedding.weight.device
        prompt = torch.as_tensor(prompt_ids, dtype=torch.int64, device=device).reshape(-1)
        if prompt.numel() == 0:
            raise ValueError("the prompt needs at least one token")
        if int(prompt.min()) < 0 or int(prompt.max()) >= self.vocab_size:
            raise ValueError(f"prompt ids must lie in 0..{self.vocab_size - 1}")
        was_training = self.training
        self.eval()
        try:
            state = None
            for token in prompt:
                logits, state = self.step(token.reshape(1), state)
            for _ in range(n):
                next_id = sample_next(logits[0], temperature, top_k, generator)
                yield next_id
                logits, state = self.step(torch.tensor([next_id], device=device), state)
        finally:
            self.train(was_training)

    def generate(self, prompt_ids: Sequence[int] | Tensor, n: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> list[int]:
        """The ``n`` ids that :meth:`iter_generate` yields, as a list."""
        return list(self.iter_generate(prompt_ids, n, temperature, top_k, generator))


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> int:
    """Draw one id from ``logits (vocab,)`` with temperature and top-k (``temperature == 0``: argmax)."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
