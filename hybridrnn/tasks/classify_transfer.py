"""Transfer into a text classifier (ULMFiT, Howard & Ruder 2018): ``model.pretrained: RUN``.

``RUN`` is a language-model run directory (or a text classifier's). The classifier takes from it

- the **vocabulary and tokeniser** (``RUN/text_encoder.json``): the classifier's own ``data.tokenizer`` must
  agree on ``level``, ``lower`` and ``split_punctuation`` (else the same words would become other ids); nothing
  is fitted on the classification data;
- the **embedding and encoder weights** (``RUN/model.safetensors``, the run's best weights: for an NT-ASGD run,
  the average): every tensor named ``embedding.*`` or ``encoder.*`` in the run is copied into the tensor of the
  same name, which must exist with the same shape (``model.encoder`` must be the run's spec and
  ``classifier.embedding_dim`` its embedding width), and every such tensor of the classifier must be in the run.

A mismatch is a :class:`~hybridrnn.errors.ConfigError` naming ``model.pretrained``, the tensor or token, both
shapes or values and the key to change. Weight drop and other training-only options never change a name, so
a model trained with them transfers to one without.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridrnn.config import read_yaml
from hybridrnn.data.text import load_text_encoder
from hybridrnn.errors import ConfigError, RunDirError
from hybridrnn.tasks.text_config import TokenizerConfig
from hybridrnn.train import checkpoint as ckpt

#: name prefixes of the tensors a classifier takes from a pre-trained run
TRANSFERRED = ("embedding.", "encoder.")


def pretrained_run(value: str) -> Path:
    """The run directory ``model.pretrained`` names, checked to hold what transfer reads."""
    run = Path(value).expanduser()
    if not run.is_dir():
        raise ConfigError(f"model.pretrained: {value!r} is not a run directory (not found)")
    missing = [name for name in (ckpt.CONFIG, ckpt.BEST_WEIGHTS, "text_encoder.json") if not (run / name).is_file()]
    if missing:
        raise ConfigError(f"model.pretrained: {run} has no {', '.join(missing)}; it must be a finished language-"
                          f"model or text-classifier run (hybridrnn train ... --out {run})")
    return run


def pretrained_tokenizer(run: Path, tokenizer: TokenizerConfig):
    """The run's text encoder, after checking that ``data.tokenizer`` reads text the same way."""
    try:
        encoder = load_text_encoder(run / "text_encoder.json")
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None
    if encoder.kind != tokenizer.level:
        raise ConfigError(f"model.pretrained: {run} reads text at {encoder.kind} level, data.tokenizer.level is "
                          f"{tokenizer.level!r}; set data.tokenizer.level: {encoder.kind}")
    options = encoder.tokenizer.options() if hasattr(encoder.tokenizer, "options") else {}
    ours = {"lower": tokenizer.lower if tokenizer.lower is not None else tokenizer.level != "char",
            "split_punctuation": tokenizer.split_punctuation}
    for key, value in options.items():
        if key in ours and (key != "split_punctuation" or encoder.kind == "word") and ours[key] != value:
            raise ConfigError(f"model.pretrained: {run} was tokenised with {key}={value}, data.tokenizer.{key} is "
                              f"{ours[key]}; set data.tokenizer.{key}: {str(value).lower()} so words get the "
                              f"run's ids")
    return encoder


def check_vocabulary(run: Path, ours: Any) -> None:
    """The classifier's vocabulary must be the run's, token for token (same ids)."""
    theirs = pretrained_tokenizer_tokens(run)
    mine = _tokens(ours)
    if theirs == mine:
        return
    if len(theirs) != len(mine):
        raise ConfigError(f"model.pretrained: the vocabulary of {run} has {len(theirs)} tokens, the classifier's "
                          f"{len(mine)}: the classifier must use the run's vocabulary")
    i = next(k for k, (a, b) in enumerate(zip(theirs, mine)) if a != b)
    raise ConfigError(f"model.pretrained: vocabulary mismatch at id {i}: {run} has {theirs[i]!r}, the classifier "
                      f"{mine[i]!r}: the classifier must use the run's vocabulary")


def pretrained_tokenizer_tokens(run: Path) -> list[str]:
    return _tokens(load_text_encoder(run / "text_encoder.json"))


def _tokens(encoder: Any) -> list[str]:
    if getattr(encoder, "kind", None) == "subword":
        vocab = encoder.tokenizer.get_vocab()
        return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    return list(encoder.vocabulary.itos)


def pretrained_tensors(run: Path) -> dict[str, torch.Tensor]:
    """The ``embedding.*`` and ``encoder.*`` tensors of the run's best weights (tied aliases resolved)."""
    try:
        tensors, metadata = ckpt.read_safetensors(run / ckpt.BEST_WEIGHTS)
    except RunDirError as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None
    for name, target in json.loads(metadata.get("aliases", "{}")).items():
        if target in tensors:
            tensors[name] = tensors[target]
    return {k: v for k, v in tensors.items() if k.startswith(TRANSFERRED)}


def run_sizes(run: Path) -> str:
    """``encoder 'lstm:200', embedding 200`` from the run's config (for error messages)."""
    try:
        cfg = read_yaml(run / ckpt.CONFIG)
        width = (cfg.get("lm") or cfg.get("classifier") or {}).get("embedding_dim")
        return f"model.encoder {cfg['model']['encoder']!r}, embedding_dim {width}"
    except (ConfigError, KeyError, TypeError, AttributeError):
        return "its config.yaml"


def load_pretrained(model: nn.Module, run: Path) -> list[str]:
    """Copy the run's embedding and encoder tensors into ``model`` (checked, see the module docstring); returns
    the names copied."""
    source = pretrained_tensors(run)
    target = {k: v for k, v in model.state_dict().items() if k.startswith(TRANSFERRED)}
    problems = []
    for name, tensor in source.items():
        if name not in target:
            problems.append(f"{name} {tuple(tensor.shape)} of the run has no place in the classifier")
        elif tensor.shape != target[name].shape:
            problems.append(f"{name} is {tuple(tensor.shape)} in the run, {tuple(target[name].shape)} in the classifier")
    problems += [f"{name} {tuple(t.shape)} of the classifier is not in the run" for name, t in target.items()
                 if name not in source]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems) - 4} more)" if len(problems) > 4 else "")
        raise ConfigError(f"model.pretrained: {run} does not fit this classifier: {shown}. The run has "
                          f"{run_sizes(run)}: use the same model.encoder and classifier.embedding_dim")
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for name, tensor in source.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return sorted(source)
