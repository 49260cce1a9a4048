"""Initialisation of recurrent weights, gate by gate.

``init_recurrent_(module, scheme, forget_bias=None, chrono_tmax=None)`` works in place on hybridrnn's
``LSTM``/``GRU`` layers and ``LSTMCell``/``GRUCell``, and on ``torch.nn.LSTM``/``GRU``/``LSTMCell``/``GRUCell``.

Schemes:
- ``"torch"``: torch's default, every weight and bias uniform in ``(-1/sqrt(H), 1/sqrt(H))``.
- ``"xavier_orthogonal"``: each gate's input block ``(H, I)`` Xavier/Glorot uniform, each gate's recurrent
  block ``(H, H)`` orthogonal, every bias zero.
- ``"chrono"`` (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?"): weights as in
  ``"xavier_orthogonal"``, biases zero except: LSTM forget bias ``b_f = log(u)``, ``u ~ U[1, chrono_tmax - 1]``
  per unit, and input bias ``b_i = -b_f``; coupled LSTM (f = 1 - i) ``b_i = -log(u)``; GRU: torch's ``z`` gate
  (the share of the old state kept, the analogue of the forget gate) ``b_z = log(u)``. The value is put in
  ``bias_ih``; the same slice of ``bias_hh`` is zero, so the sum of the two is the chrono value.

Layer-norm gains are set to 1 and their biases to 0 by every scheme. ``forget_bias`` (LSTM only) is then added
to the forget-gate slice of ``bias_ih``; for a coupled LSTM, where ``f = 1 - sigmoid(a_i) = sigmoid(-a_i)``,
it is subtracted from the input-gate slice, which adds it to the forget pre-activation.
"""
from __future__ import annotations

import math
import re
from typing import Optional

import torch
from torch import Tensor, nn

SCHEMES = ("torch", "xavier_orthogonal", "chrono")
_WEIGHT_NAME = re.compile(r"^(weight|bias)_(ih|hh)(.*)$")


def _gate_layout(module: nn.Module) -> tuple[str, tuple[str, ...]]:
    """(mode, gate names in row order) of a recurrent module."""
    if isinstance(module, nn.LSTMCell):
        return "LSTM", ("i", "f", "g", "o")
    if isinstance(module, nn.GRUCell):
        return "GRU", ("r", "z", "n")
    mode = getattr(module, "mode", None)
    if mode == "LSTM":
        if getattr(module, "proj_size", 0):
            raise ValueError("init_recurrent_: LSTM with proj_size > 0 is not supported")
        return "LSTM", (("i", "g", "o") if getattr(module, "coupled", False) else ("i", "f", "g", "o"))
    if mode == "GRU":
        return "GRU", ("r", "z", "n")
    raise ValueError(f"init_recurrent_: expected an LSTM or GRU module or cell, got {type(module).__name__}")


def _groups(module: nn.Module) -> dict[str, dict[str, Tensor]]:
    """Parameters grouped by layer/direction suffix: {'_l0': {'weight_ih': ..., 'bias_hh': ...}, ...}."""
    groups: dict[str, dict[str, Tensor]] = {}
    for name, p in module.named_parameters(recurse=False):
        m = _WEIGHT_NAME.match(name)
        if m:
            groups.setdefault(m.group(3), {})[f"{m.group(1)}_{m.group(2)}"] = p
    if not groups:
        raise ValueError(f"init_recurrent_: {type(module).__name__} has no weight_ih/weight_hh parameters")
    return groups


def init_recurrent_(module: nn.Module, scheme: str = "torch", forget_bias: Optional[float] = None,
                    chrono_tmax: Optional[float] = None) -> nn.Module:
    """Initialise ``module``'s recurrent weights in place with ``scheme``; returns ``module``."""
    if scheme not in SCHEMES:
        raise ValueError(f"init_recurrent_: unknown scheme {scheme!r}; expected one of {SCHEMES}")
    mode, gate_names = _gate_layout(module)
    if scheme == "chrono" and (chrono_tmax is None or not chrono_tmax > 2):
        raise ValueError(f"init_recurrent_: scheme 'chrono' needs chrono_tmax > 2 (the longest dependency to "
                         f"remember, in steps), got {chrono_tmax!r}")
    if forget_bias is not None and mode != "LSTM":
        raise ValueError(f"init_recurrent_: forget_bias applies to LSTM modules only, got a {mode}")
    groups = _groups(module)
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            if name.startswith("ln_"):
                p.fill_(1.0 if "weight" in name else 0.0)
        for suffix, params in groups.items():
            # tied layers (tie_layers=True) register some groups with input or recurrent tensors only
            w_ih, w_hh = params.get("weight_ih"), params.get("weight_hh")
            b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
            hidden = next(iter(params.values())).shape[0] // len(gate_names)
            if scheme == "torch":
                bound = 1.0 / math.sqrt(hidden)
                for p in params.values():
                    p.uniform_(-bound, bound)
            else:
                for k in range(len(gate_names)):
                    rows = slice(k * hidden, (k + 1) * hidden)
                    if w_ih is not None:
                        nn.init.xavier_uniform_(w_ih[rows])
                    if w_hh is not None:
                        nn.init.orthogonal_(w_hh[rows])
                for b in (b_ih, b_hh):
                    if b is not None:
                        b.zero_()
            if b_ih is None:
                if (scheme == "chrono" or forget_bias is not None) and "bias_hh" not in params:
                    raise ValueError(f"init_recurrent_: scheme {scheme!r} / forget_bias set gate biases, but "
                                     f"the module has bias=False")
                continue  # a tied group holding recurrent tensors only: bias_ih of that layer lives elsewhere
            if scheme == "chrono":
                log_u = torch.empty(hidden, dtype=b_ih.dtype, device=b_ih.device).uniform_(
                    1.0, float(chrono_tmax) - 1.0).log_()
                sl = {g: slice(k * hidden, (k + 1) * hidden) for k, g in enumerate(gate_names)}
                if mode == "GRU":
                    b_ih[sl["z"]] = log_u
                elif "f" in sl:
                    b_ih[sl["f"]] = log_u
                    b_ih[sl["i"]] = -log_u
                else:
                    b_ih[sl["i"]] = -log_u
            if forget_bias is not None:
                if "f" in gate_names:
                    b_ih[hidden:2 * hidden] += forget_bias
                else:  # coupled: f = sigmoid(-a_i)
                    b_ih[:hidden] -= forget_bias
    return module
