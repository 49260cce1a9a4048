"""Whole-sequence float32 products on the CPU through oneDNN instead of MKL.

torch's float32 ``mm`` / ``linear`` on the CPU call MKL's sgemm, which on AMD CPUs runs a generic kernel. On this
project's machines (AMD EPYC, one thread) the hoisted input projection ``(T*B, I) @ (I, G*H)`` at T*B = 6400,
I = 128, G*H = 512 takes 9.4 ms in MKL (89 GFLOP/s) and 3.95 ms in oneDNN (213 GFLOP/s); its input gradient 10.3
against 4.1 ms; a weight gradient ``d^T @ x`` over the 6400 rows 9.4 against 5.0 ms (oneDNN reads both operands
transposed there and copies its input: the smaller one is given as input). The sums are float32 like MKL's, in
another order (differences of float32 rounding).
oneDNN is what torch's own LSTM runs, and ``torch.ops.mkldnn._linear_pointwise`` is the op torch's compiler emits
for CPU linear layers; it takes dense tensors and its own intra-op threads are torch's.

:func:`linear` is ``F.linear`` with its forward and both backward products on that op when it applies: CPU float32,
at least :data:`MIN_ROWS` rows, outside autocast (bf16 autocast runs its own oneDNN bf16 products), eager
(:func:`hybridrnn.nn._eager.plain_eager`: not traced or exported, no ``torch.func`` transform), and the op present
in this torch build (checked once). :func:`weight_grad` is ``d^T @ x`` on the same terms. Everything else, and a
double backward (``create_graph=True``), uses torch's own ops.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridrnn.nn._eager import plain_eager

#: Products with fewer rows than this keep torch's ``mm`` (there the op's dispatch costs more than it saves).
MIN_ROWS = 256


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether this torch build runs ``torch.ops.mkldnn._linear_pointwise`` on dense float32 tensors."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        a, w = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.equal(_product(a, w), a @ w.t()))
    except Exception:  # noqa: BLE001 - any failure (op missing, unsupported CPU): torch's mm
        return False


def _product(a: Tensor, w: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``a @ w^T (+ bias)``: a ``(N, K)``, w ``(M, K)`` (either may be a transposed view) -> ``(N, M)``."""
    return torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")


def applies(x: Tensor, w: Tensor, rows: int) -> bool:
    """Whether the products of ``x`` and ``w`` run on oneDNN (see the module docstring)."""
    return (rows >= MIN_ROWS and x.dtype == torch.float32 and w.dtype == torch.float32 and x.device.type == "cpu"
            and w.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and plain_eager(x)
            and available())


class _Linear(torch.autograd.Function):
    """``x2 @ w^T + b`` with x2 ``(N, I)``, w ``(O, I)``, b ``(O,)`` or None; every product on oneDNN."""

    @staticmethod
    def forward(ctx, x2: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        return _product(x2, w, b)

    @staticmethod
    def backward(ctx, d: Tensor):
        x2, w = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():                 # create_graph=True: differentiable torch ops
            return (d @ w if needs[0] else None, d.t() @ x2 if needs[1] else None,
                    d.sum(0) if needs[2] and ctx.has_bias else None)
        d = d.contiguous()
        dx = _product(d, w.t()) if needs[0] else None                  # (N, O) @ (O, I)
        dw = _transposed_product(d, x2) if needs[1] else None           # (O, N) @ (N, I)
        db = d.sum(0) if needs[2] and ctx.has_bias else None
        return dx, dw, db


def linear(x: Tensor, w: Tensor, b: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, w, b)``: x ``(..., I)``, w ``(O, I)``, b ``(O,)`` or None -> ``(..., O)``; on oneDNN where
    :func:`applies`."""
    rows = x.numel() // max(x.shape[-1], 1)
    if not applies(x, w, rows) or (b is not None and b.dtype != torch.float32):
        return F.linear(x, w, b)
    out = _Linear.apply(x.reshape(rows, x.shape[-1]), w, b)       # (rows, O)
    return out.view(*x.shape[:-1], w.shape[0])


def weight_grad(d: Tensor, x: Tensor) -> Tensor:
    """``d^T @ x`` summed over the rows, d ``(N, A)``, x ``(N, B)`` -> ``(A, B)``: a whole sequence's weight
    gradient in one product (no graph: call it from a backward)."""
    if applies(x, d, d.shape[0]):
        return _transposed_product(d, x)
    return d.t() @ x


def _transposed_product(d: Tensor, x: Tensor) -> Tensor:
    """``d^T @ x`` as ``(x^T @ d)^T``: oneDNN copies the transposed *input* into a contiguous buffer, so the smaller
    operand goes there (5.0 against 6.8 ms for d (6400, 512), x (6400, 128)); contiguous ``(A, B)``."""
    if d.shape[1] >= x.shape[1]:
        return _product(x.t(), d.t()).t().contiguous()
    return _product(d.t(), x.t())


class Linear(nn.Linear):
    """``torch.nn.Linear`` (same parameters, state dict and repr) whose forward is :func:`linear`: for the large
    output layers (a language model's vocabulary projection) that run on the CPU in float32."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
