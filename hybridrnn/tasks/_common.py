"""Small helpers shared by the classification, language-model and long-range tasks (and ``encoder_options``,
which every task uses)."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from pydantic import ValidationInfo

from hybridrnn.config import ModelConfig
from hybridrnn.data.registry import resolve_data_path
from hybridrnn.errors import DataError
from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.nn.spec import iter_layers, parse_spec

#: ModelConfig fields that are options of ``build_encoder`` (the others are read by the task models)
_NOT_ENCODER_OPTIONS = {"encoder", "attention", "attention_heads"}


def encoder_options(model: ModelConfig) -> dict[str, Any]:
    """The ``model:`` options that ``hybridrnn.nn.hybrid.build_encoder`` accepts (by its signature)."""
    wanted = {k: v for k, v in model.model_dump().items() if k not in _NOT_ENCODER_OPTIONS}
    if not any(layer.kind == "lstm" for layer in iter_layers(parse_spec(model.encoder))):
        # model.forget_bias (default 1.0) is an LSTM option; build_encoder rejects it for an LSTM-free spec
        wanted.pop("forget_bias", None)
    params = inspect.signature(build_encoder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return wanted
    return {k: v for k, v in wanted.items() if k in params}


def config_relative(value: Optional[str], info: ValidationInfo) -> Optional[str]:
    """Pydantic validator body for a data path: with a ``config_dir`` in the validation context, a relative
    path that exists relative to the config's folder becomes absolute; otherwise it is kept as written and
    :func:`data_path` resolves it (config folder, then the working directory) when the data is loaded.
    The same rule as the forecast task's ``data.path``."""
    config_dir = (info.context or {}).get("config_dir")
    if value is None or not config_dir or ":" in value.split("/")[0] or Path(value).expanduser().is_absolute():
        return value
    candidate = Path(config_dir) / value
    return str(candidate.resolve()) if candidate.exists() else value


def data_path(value: str) -> Path:
    """The file or folder a data path names (``hybridrnn.data.registry.resolve_data_path``); a
    :class:`~hybridrnn.errors.DataError` saying where it looked when there is none."""
    try:
        return resolve_data_path(value)
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """Apply ``fn`` to every tensor of a (nested tuple / list) recurrent state."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, s) for s in state)
    raise TypeError(f"unexpected recurrent state element of type {type(state).__name__}")


def detach_state(state: Any) -> Any:
    """The state with every tensor detached from the graph (truncated back-propagation through time)."""
    return map_state(lambda t: t.detach(), state)
