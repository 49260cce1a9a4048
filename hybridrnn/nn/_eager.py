"""Whether a tensor is a plain eager tensor whose memory a hand-written kernel may read directly."""
from __future__ import annotations

import torch
from torch import Tensor

_functorch_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def plain_eager(t: Tensor) -> bool:
    """Whether ``t`` is a plain tensor in eager mode: not traced (``torch.jit.trace``, dynamo / ``torch.export``
    / the ONNX exporter, where tensors are fake or symbolic), not wrapped by a ``torch.func`` transform (``vmap``,
    ``grad``). Anything else must run ordinary torch ops, which those tools understand."""
    if type(t) is not Tensor or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return _functorch_wrapped is None or not _functorch_wrapped(t)
