"""LanguageModel: embedding -> recurrent encoder -> output layer (tied to the embedding), with AWD-LSTM dropouts
and step-wise generation.

Dropouts (Merity et al. 2018, "Regularizing and optimizing LSTM language models"), active in training only:

- ``embedding_dropout``: drops whole word types (rows of the embedding matrix) for a batch, rescaling the rest
  by ``1 / (1 - p)``; a dropped word is dropped at every position of the batch.
- ``input_dropout`` / ``output_dropout``: variational ("locked") dropout on the embedded inputs and on the
  encoder outputs: one mask per sequence and feature, shared over all time steps.
- recurrent (hidden-to-hidden) variational dropout belongs to the encoder (``recurrent_dropout`` option).
- ``weight_drop``: DropConnect on every ``W_hh`` of the encoder, one mask per forward call
  (:mod:`hybridrnn.nn.weight_drop`); both the fused and the custom path run with the masked matrices.

Activation regularisation (:func:`activation_penalties`, the task adds them to the loss): AR
``alpha * mean(o_t^2)`` on the dropped encoder outputs ``o_t`` and TAR ``beta * mean((h_t - h_{t-1})^2)`` on the
un-dropped ones; ``forward(..., return_hidden=True)`` also returns both.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hybridrnn.errors import ConfigError
from hybridrnn.nn import _onednn
from hybridrnn.nn.dropout import LockedDropout  # noqa: F401  (re-exported: it lived here first)
from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.nn.spec import iter_layers, parse_spec
from hybridrnn.nn.tying import TiedOutput
from hybridrnn.nn.weight_drop import weight_dropped_call


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
        embedding_dropout, input_dropout, output_dropout, weight_drop: see the module docstring.
        encoder_options: keyword options for ``build_encoder``.

    ``forward(tokens (batch, time), state=None, lengths=None) -> (logits (batch, time, vocab), state)``; with
    ``return_hidden=True`` ``(logits, state, (raw, dropped))``: the encoder outputs ``(batch, time, width)``
    before and after the output dropout (for AR / TAR);
    ``step(token (batch,), state=None) -> (logits (batch, vocab), state)`` runs one time step through the
    encoder's streaming ``step()``.
    """

    def __init__(self, vocab_size: int, encoder: str | nn.Module, *, embedding_dim: int = 128,
                 tie_weights: bool = True, embedding_dropout: float = 0.0, input_dropout: float = 0.0,
                 output_dropout: float = 0.0, encoder_options: Optional[dict] = None, weight_drop: float = 0.0):
        super().__init__()
        if not 0.0 <= weight_drop < 1.0:
            raise ConfigError(f"weight_drop must be in [0, 1), got {weight_drop}")
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
            self.output = _onednn.Linear(width, vocab_size)   # nn.Linear, its products on oneDNN
        self.embedding_dropout = embedding_dropout
        self.weight_drop = float(weight_drop)
        self.input_dropout = LockedDropout(input_dropout)
        self.output_dropout = LockedDropout(output_dropout)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def forward(self, tokens: Tensor, state=None, lengths: Optional[Tensor] = None, return_hidden: bool = False):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, time) ids, got shape {tuple(tokens.shape)}")
        x = embedding_dropout(self.embedding, tokens, self.embedding_dropout, self.training)
        x = self.input_dropout(x)
        outputs, state = weight_dropped_call(self.encoder, self.weight_drop if self.training else 0.0, x,
                                             state=state, lengths=lengths)
        dropped = self.output_dropout(outputs)
        logits = self.output(dropped)
        return (logits, state, (outputs, dropped)) if return_hidden else (logits, state)

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


def activation_penalties(raw: Tensor, dropped: Tensor, ar: float, tar: float) -> Tensor:
    """AR + TAR of AWD-LSTM (Merity et al. 2018, section 4.6) for encoder outputs ``(batch, time, width)``::

        AR  = ar  * mean_{b,t,j} dropped[b, t, j]^2                        (the outputs after output dropout)
        TAR = tar * mean_{b,t>0,j} (raw[b, t, j] - raw[b, t-1, j])^2       (the outputs before it)

    A scalar tensor (0 when both weights are 0; TAR is 0 for a one-step window)."""
    penalty = raw.new_zeros(())
    if ar > 0:
        penalty = penalty + ar * dropped.float().pow(2).mean()
    if tar > 0 and raw.shape[1] > 1:
        penalty = penalty + tar * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
    return penalty


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
