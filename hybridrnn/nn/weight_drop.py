"""Weight drop: DropConnect on the hidden-to-hidden matrices of LSTM and GRU layers (AWD-LSTM, Merity et al. 2018).

For every recurrent matrix ``W_hh (G*H, H)`` of every :class:`~hybridrnn.nn.recurrent.LSTM` /
:class:`~hybridrnn.nn.recurrent.GRU` inside an encoder, one mask is drawn per forward call::

    M ~ Bernoulli(1 - p)^(G*H x H),    W~_hh = W_hh * M / (1 - p)

and the whole sequence runs with ``W~_hh``: the same dropped connections at every time step of that forward
(unlike dropout on ``h``, which would draw a new mask per step). Because the weights are masked *before* the
layer runs, both paths keep working unchanged: the fused path hands ``W~_hh`` to oneDNN / cuDNN
(``torch._VF.lstm`` / ``gru``), the custom path to its scans. Nothing in :mod:`hybridrnn.nn.recurrent` knows
about it: :func:`weight_dropped_call` runs the encoder with :func:`torch.func.functional_call`, which swaps the
masked tensors in for the duration of the call (the layers look their parameters up on every call) and puts the
parameters back afterwards, also when the call raises. Gradients reach ``W_hh`` through the mask
(``dL/dW_hh = M / (1 - p) * dL/dW~_hh``). Parameter names and ``state_dict`` keys do not change, so a model
trained with weight drop loads into one without, and language-model weights transfer to a classifier.

In eval mode (or ``p == 0``) the encoder is called directly with its full weights.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from hybridrnn.nn.recurrent import GRU, LSTM


def weight_hh_names(module: nn.Module) -> list[str]:
    """The names (as in ``module.named_parameters()``) of every ``weight_hh*`` matrix of the LSTM / GRU layers
    inside ``module`` (a layer itself, a stacked or parallel encoder, or a whole model); a matrix tied to
    several layers is listed once."""
    names = []
    for prefix, sub in module.named_modules():
        if isinstance(sub, (LSTM, GRU)):
            for name, _ in sub.named_parameters(recurse=False):
                if name.startswith("weight_hh"):
                    names.append(f"{prefix}.{name}" if prefix else name)
    seen, out = set(), []
    params = dict(module.named_parameters())          # tied tensors appear once, under their first name
    for name in names:
        if name in params and id(params[name]) not in seen:
            seen.add(id(params[name]))
            out.append(name)
    return out


def draw_masks(module: nn.Module, p: float, generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
    """One DropConnect mask per recurrent matrix: ``{name: M / (1 - p)}`` with ``M ~ Bernoulli(1 - p)`` of the
    matrix's shape, dtype and device (``generator``: a seeded source, else torch's global RNG)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"weight_drop must be in [0, 1), got {p!r}")
    params = dict(module.named_parameters())
    masks = {}
    for name in weight_hh_names(module):
        w = params[name]
        keep = torch.full(w.shape, 1.0 - p, dtype=w.dtype, device=w.device)
        masks[name] = torch.bernoulli(keep, generator=generator) / (1.0 - p)
    return masks


def weight_dropped_call(module: nn.Module, p: float, *args: Any, masks: Optional[dict[str, Tensor]] = None,
                        **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with every ``W_hh`` replaced by ``W_hh * mask`` for this one call.

    Active when ``module.training`` and ``p > 0`` (or when ``masks`` are given, e.g. in a test that runs two
    modules with the same masks); otherwise exactly ``module(*args, **kwargs)``. ``masks``: from
    :func:`draw_masks`; drawn afresh when None.
    """
    if masks is None:
        if not module.training or p == 0.0:
            return module(*args, **kwargs)
        masks = draw_masks(module, p)
    params = dict(module.named_parameters())
    dropped = {name: params[name] * mask for name, mask in masks.items()}
    return torch.func.functional_call(module, dropped, args, kwargs, tie_weights=True, strict=False)


class WeightDrop(nn.Module):
    """An encoder whose recurrent matrices are weight-dropped with probability ``p`` in training.

    ``WeightDrop(encoder, p)(x, ...)`` = ``encoder(x, ...)`` with a fresh DropConnect mask on every ``W_hh``
    (see the module docstring). The wrapped encoder is ``.module``; ``input_size``, ``output_size``,
    ``final_output`` and ``step`` (eval: full weights) are forwarded. Prefer :func:`weight_dropped_call` inside
    a model when the ``state_dict`` keys must stay those of the bare encoder.
    """

    def __init__(self, module: nn.Module, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"weight_drop must be in [0, 1), got {p!r}")
        self.module, self.p = module, float(p)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return weight_dropped_call(self.module, self.p if self.training else 0.0, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def extra_repr(self) -> str:
        return f"p={self.p}"
