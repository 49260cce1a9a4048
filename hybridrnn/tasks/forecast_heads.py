"""Quantile and distribution heads of the forecast task: from the Forecaster's ``K`` raw outputs per target and
step (``raw: (..., targets, K)``, ``outputs_per_target=K``) to a loss, a point forecast and quantiles.

- ``quantile`` (``K = len(model.quantiles)``): the raw values sorted along ``K`` are the quantiles, in the order
  of the levels (monotone by rearrangement, Chernozhukov et al. 2010: sorting keeps the head's exact
  location-scale equivariance under instance norm, which cumulative softplus increments would not); loss: the
  mean pinball loss over the levels; point forecast: the 0.5 quantile.
- ``gaussian`` (``K = 2``): location ``mu = raw[..., 0]``, scale ``sigma = softplus(raw[..., 1] - raw[..., 0]) +
  1e-4`` (a difference of two outputs, so instance norm's shift cancels); loss: the Gaussian negative
  log-likelihood; point forecast: ``mu``; quantile ``q``: ``mu + sigma * Phi^-1(q)``.
- ``student_t`` (``K = 3``): ``mu`` and ``sigma`` as above, degrees of freedom ``nu = 2 + softplus(raw[..., 2] -
  raw[..., 0])`` (finite variance); loss: the Student-t negative log-likelihood; quantile ``q``:
  ``mu + sigma * t_nu^-1(q)``.

Everything here is on the scaled data; the scalers are affine, so quantiles map to the original scale as values.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hybridrnn.errors import ConfigError

DISTRIBUTION_LOSSES = ("quantile", "gaussian", "student_t")
MIN_SCALE = 1e-4


def head_outputs(loss: str, quantiles: Sequence[float]) -> int:
    """``K``, the Forecaster's outputs per target and step for ``model.loss`` (1 for point losses)."""
    return {"quantile": len(quantiles), "gaussian": 2, "student_t": 3}.get(loss, 1)


def _params(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return raw[..., 0], F.softplus(raw[..., 1] - raw[..., 0]) + MIN_SCALE


def head_loss(raw: torch.Tensor, target: torch.Tensor, loss: str, quantiles: Sequence[float]) -> torch.Tensor:
    """Mean loss of ``raw: (B, H, C, K)`` against ``target: (B, H, C)`` (see the module docstring)."""
    if loss == "quantile":
        q = torch.sort(raw, dim=-1).values
        taus = torch.as_tensor(list(quantiles), dtype=raw.dtype, device=raw.device)
        d = target.unsqueeze(-1) - q
        return torch.maximum(taus * d, (taus - 1) * d).mean()
    mu, sigma = _params(raw)
    if loss == "gaussian":
        z = (target - mu) / sigma
        return (0.5 * math.log(2 * math.pi) + torch.log(sigma) + 0.5 * z ** 2).mean()
    if loss == "student_t":
        nu = 2.0 + F.softplus(raw[..., 2] - raw[..., 0])
        return -torch.distributions.StudentT(nu, mu, sigma).log_prob(target).mean()
    raise ValueError(f"not a distribution loss: {loss!r}")


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def point_forecast(raw: np.ndarray, loss: str, quantiles: Sequence[float]) -> np.ndarray:
    """``(n, H, C)``: the 0.5 quantile (quantile head) or the location (distribution heads) of ``raw: (n, H, C, K)``;
    ``raw`` itself for a point loss."""
    if loss not in DISTRIBUTION_LOSSES:
        return raw
    if loss == "quantile":
        median = int(np.argmin(np.abs(np.asarray(quantiles) - 0.5)))
        return np.sort(raw, axis=-1)[..., median]
    return raw[..., 0]


def head_quantiles(raw: np.ndarray, loss: str, quantiles: Sequence[float], levels: Sequence[float]) -> np.ndarray:
    """``(n, H, C, len(levels))``: the model's ``levels`` quantiles from ``raw: (n, H, C, K)`` (scaled data). A
    quantile head gives the levels it was trained on only; a point loss has none (``ConfigError``)."""
    if loss not in DISTRIBUTION_LOSSES:
        raise ConfigError(f"intervals='model' needs a model trained with model.loss quantile, gaussian or student_t "
                          f"(this one: {loss}); use intervals='conformal'")
    if loss == "quantile":
        trained = np.asarray(quantiles, np.float64)
        picks = []
        for level in levels:
            hit = np.flatnonzero(np.isclose(trained, level, rtol=0, atol=1e-9))
            if len(hit) == 0:
                raise ConfigError(f"the quantile head was trained on model.quantiles {list(quantiles)}; quantile "
                                  f"{level:g} is not among them (an interval of level L needs (1 - L) / 2 and "
                                  "(1 + L) / 2)")
            picks.append(int(hit[0]))
        return np.sort(raw, axis=-1)[..., picks]
    from scipy import stats

    mu, sigma = raw[..., 0], _softplus(raw[..., 1] - raw[..., 0]) + MIN_SCALE
    if loss == "gaussian":
        z = np.stack([np.full(mu.shape, stats.norm.ppf(q)) for q in levels], axis=-1)
    else:
        nu = 2.0 + _softplus(raw[..., 2] - raw[..., 0])
        z = np.stack([stats.t.ppf(q, nu) for q in levels], axis=-1)
    return mu[..., None] + sigma[..., None] * z
