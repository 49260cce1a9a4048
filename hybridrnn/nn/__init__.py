"""hybridrnn.nn: recurrent modules in torch, with no I/O of data, configs or runs. The one exception is
``_compiled``, which builds its small-batch C++ kernel once into a cache folder (``~/.cache/hybridrnn``) and
falls back to the pure-torch path where it cannot.

Names are imported lazily from their submodules, so ``import hybridrnn.nn`` stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # cells and layers
    "LSTMCell": "cells", "GRUCell": "cells",
    "LSTM": "recurrent", "GRU": "recurrent",
    "MinGRU": "minimal", "MinLSTM": "minimal", "WeightDrop": "weight_drop",
    "init_recurrent_": "init",
    # hybrid encoders
    "parse_spec": "spec", "SpecError": "spec",
    "build_encoder": "hybrid", "StackedEncoder": "hybrid", "ParallelEncoder": "hybrid",
    # attention
    "AdditiveAttention": "attention", "DotAttention": "attention", "GeneralAttention": "attention",
    "SelfAttentionPooling": "attention", "lengths_to_mask": "attention",
    # sharing
    "TiedOutput": "tying", "count_parameters": "tying",
    # task models
    "Forecaster": "forecaster", "SequenceClassifier": "classifier", "LanguageModel": "language_model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"hybridrnn.nn.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hybridrnn.nn' has no attribute {name!r}")


def __dir__():
    return __all__
