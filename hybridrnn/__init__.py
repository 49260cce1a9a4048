"""hybridrnn: LSTM, GRU and hybrid LSTM-GRU networks for PyTorch.

>>> import hybridrnn
>>> run = hybridrnn.fit("configs/quickstart.yaml", out="runs/x")   # config: YAML path, dict or config object
>>> run.predict(new_df); run.evaluate()
>>> run = hybridrnn.load("runs/x")
"""
from hybridrnn._version import __version__

__all__ = ["__version__", "fit", "load", "Run", "load_config"]

_API = ("fit", "load", "Run", "load_config")


def __getattr__(name: str):
    # start-up time: `hybridrnn --help` must not import torch; the API loads on first use
    if name in _API:
        import hybridrnn.api as api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hybridrnn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
