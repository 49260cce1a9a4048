"""The compiled time loops: LSTM / GRU recurrences over a whole sequence, and ``step()``, as one C++ call each.

The pure-torch custom path (:mod:`hybridrnn.nn._scan`) dispatches a dozen small ops per step from Python: at
batch 1, hidden 64 that is most of its time, at batch 32 a third. The kernels in ``csrc/rnn_small.cpp`` run a
whole step (both matrix products and the gate maths, every layer) or a whole sequence (forward, and the backward
with the same hand-derived gradients as :mod:`hybridrnn.nn._scan`) in one call; the per-step products are
register-blocked AVX-512 loops (about 180 GFLOP/s on one core at batch 32, hidden 128, from a perf profile). Figures:
``benchmarks/results/small_batch.md`` and ``layers.md``.

The extension is built with ``torch.utils.cpp_extension.load`` when first needed (about a minute on two cores,
once) into a per-user cache, ``$HYBRIDRNN_CACHE_DIR`` or ``$XDG_CACHE_HOME/hybridrnn`` (default
``~/.cache/hybridrnn``), under ``extensions/<key>``; the key hashes the source, the torch and Python versions,
the compiler flags and the CPU's feature flags (the code is compiled for the building machine's CPU), so a
changed source or another machine builds afresh. It is never the only path: if the build fails (no compiler,
no ninja, ...) one ``RuntimeWarning`` says why and every caller uses the pure-torch path;
``HYBRIDRNN_NO_COMPILE=1`` forces that fallback without trying.

What runs here (the layers in :mod:`hybridrnn.nn.recurrent` decide, with :func:`step_kernels` /
:func:`sequence_ok`), on the CPU in float32 or float64:

- ``step()`` of a plain cell (the LSTM without ``coupled``/``layer_norm``, the GRU in torch's ``reset_after``
  form without ``layer_norm``) when autograd need not record it (grad mode off, or nothing requires grad) and no
  dropout acts between layers;
- whole sequences without lengths (padding masks): plain cells and the coupled-gate LSTM, ``recurrent_dropout``
  included, up to :func:`batch_limit` sequences; the layer-norm LSTM (without ``recurrent_dropout``) at any batch.
  With autograd; a double backward (``create_graph=True``) differentiates the general loop of
  :mod:`hybridrnn.nn._scan`. The recurrent weight gradient is computed in Python on oneDNN
  (:mod:`hybridrnn.nn._onednn`) for float32, in the kernel otherwise, and inside the scans' ``bf16_matmuls``
  blocks (``train.bf16``) in bf16 like the scans; the recurrence stays float32.

Products of batches from 16 rows on use torch's sgemm when torch has more than one intra-op thread; everything
else runs on one thread. Traced or exported calls (``torch.jit.trace``, dynamo / ``torch.export`` / ONNX) and
``torch.func`` transforms run the pure-torch path. The kernels hold the GIL.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from hybridrnn.nn import _onednn, _scan
from hybridrnn.nn._eager import plain_eager
from hybridrnn.nn._scan import gru_loop, lstm_loop
from hybridrnn.nn.cells import LN_EPS, GRUParams, LSTMParams

SOURCE = Path(__file__).resolve().parent / "csrc" / "rnn_small.cpp"
CFLAGS = ("-O3", "-march=native", "-fopenmp-simd")
# Where the compiled loop runs a plain cell's sequences (batch_limit). On one and on two intra-op threads it was
# faster than the pure-torch scan at every measured size but one, batch 1-256, hidden 64-256, training and
# inference (0.41-0.85x on one thread, 0.49-0.91x on two, and 1.06x for LSTM training at batch 256, hidden 256 on
# two; benchmarks/results/compiled_vs_scan.md and small_batch.md): its products use torch's sgemm with the same
# threads from batch 16 on (csrc: g_gemm_rows), but its gate maths run on one thread where the scan's
# elementwise ops use them all. With more threads than were measured, it keeps to batches of at most MAX_BATCH,
# where per-step overhead, not arithmetic, is the cost.
MAX_BATCH = 16
MEASURED_THREADS = 2
ENV_DISABLE = "HYBRIDRNN_NO_COMPILE"
_FLOATS = (torch.float32, torch.float64)
NO_STATE = (torch.empty(0),)   # the kernels' "zero state" argument (one shared empty tensor: no allocation per call)

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_module: Any = None          # the built extension
_tried = False               # a build was attempted (successfully or not) in this process
_error: Optional[str] = None  # why the build failed


# os.environ's bytes dict (POSIX CPython): a lookup there costs 0.05 us against 0.8 us for os.environ.get, and
# step() asks on every call. It is the dict os.environ itself updates, so setenv/monkeypatch are seen at once.
_ENV_DATA = getattr(os.environ, "_data", None) if os.name == "posix" else None
_ENV_KEY = os.fsencode(ENV_DISABLE) if _ENV_DATA is not None else None


def disabled() -> bool:
    """Whether ``HYBRIDRNN_NO_COMPILE`` asks for the pure-torch path (any value but empty or ``0``)."""
    if _ENV_DATA is not None and isinstance(_ENV_DATA, dict):
        return _ENV_DATA.get(_ENV_KEY, b"") not in (b"", b"0")
    return os.environ.get(ENV_DISABLE, "") not in ("", "0")


def kernels() -> Any:
    """The built extension module, or None (disabled, or the build failed: warned once per process)."""
    if _tried:
        return None if (_module is None or disabled()) else _module
    if disabled():
        return None
    _build()
    return _module


def status() -> str:
    """One line for a run's environment: ``"built"``, ``"disabled (HYBRIDRNN_NO_COMPILE)"``, ``"failed: ..."`` or
    ``"not built in this process"`` (nothing asked for it yet)."""
    if disabled():
        return f"disabled ({ENV_DISABLE})"
    if not _tried:
        return "not built in this process"
    return "built" if _module is not None else f"failed: {_error}"


def build_error() -> Optional[str]:
    """Why the build failed (None: it worked, or was not tried)."""
    return _error


def cache_dir() -> Path:
    """Where built extensions are kept: ``$HYBRIDRNN_CACHE_DIR`` or ``$XDG_CACHE_HOME/hybridrnn``."""
    root = os.environ.get("HYBRIDRNN_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hybridrnn"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key() -> str:
    """Hash of everything the built library depends on: source, torch and Python versions, flags, CPU flags."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (torch.__version__, sys.version, platform.machine(), " ".join(CFLAGS), _cpu_flags()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _build() -> None:
    global _module, _tried, _error
    with _lock:
        if _tried:
            return
        try:
            key = build_key()
            directory = cache_dir() / "extensions" / key
            directory.mkdir(parents=True, exist_ok=True)
            # torch.utils.cpp_extension imports setuptools: loaded here, only when a build is wanted.
            cpp_extension = importlib.import_module("torch.utils.cpp_extension")
            _log.info("hybridrnn: loading the compiled small-batch kernel from %s (the first build takes about "
                      "a minute)", directory)
            path = os.environ.get("PATH", "")
            ninja_dir = _pip_ninja_dir()
            if ninja_dir and shutil.which("ninja") is None:   # pip's ninja, outside an activated venv
                os.environ["PATH"] = ninja_dir + os.pathsep + path
            try:
                _module = cpp_extension.load(name=f"hybridrnn_rnn_small_{key}", sources=[str(SOURCE)],
                                             extra_cflags=list(CFLAGS), build_directory=str(directory),
                                             verbose=False)
            finally:
                os.environ["PATH"] = path
        except Exception as exc:  # noqa: BLE001 - any failure means: use the pure-torch path
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            first = next((ln for ln in lines if "error" in ln.lower()), "")
            last = lines[-1] if lines else ""
            _error = f"{type(exc).__name__}: {first}{' ... ' + last if last != first else ''}"[:500]
            _module = None
            warnings.warn(f"hybridrnn: the compiled small-batch kernel could not be built ({_error}); using the "
                          f"pure-torch path (set {ENV_DISABLE}=1 to skip the build)", RuntimeWarning, stacklevel=3)
        finally:
            _tried = True


def _pip_ninja_dir() -> Optional[str]:
    try:
        ninja = importlib.import_module("ninja")
    except ImportError:
        return None
    return getattr(ninja, "BIN_DIR", None)


# ----------------------------------------------------------------------------------------------------------
# when the kernels apply
# ----------------------------------------------------------------------------------------------------------

def _plain_eager(t: Tensor) -> bool:
    """Whether the kernels may read ``t``'s memory: :func:`hybridrnn.nn._eager.plain_eager`. Anything else runs
    the pure-torch path."""
    return plain_eager(t)


def step_kernels(x_t: Tensor, state: Any, weights: list[Tensor]) -> Any:
    """The kernels if a plain cell's ``step()`` can run them, else None: x_t ``(B, I)`` on the CPU in float32 or
    float64, eager (:func:`_plain_eager`) and no graph to record (grad mode off, or nothing requires grad). The
    kernel itself checks that the weights and state are on the CPU in x_t's dtype (an error, as torch's cell
    would raise)."""
    if not x_t.is_cpu or x_t.dtype not in _FLOATS or not _plain_eager(x_t):
        return None
    if torch.is_grad_enabled() and (x_t.requires_grad or any(w.requires_grad for w in weights) or (
            state is not None and any(s.requires_grad for s in (state if isinstance(state, tuple) else (state,))))):
        return None
    return kernels()


def batch_limit() -> Optional[int]:
    """The largest batch whose plain-cell sequences run the compiled loop: None (any) on up to
    :data:`MEASURED_THREADS` intra-op threads, else :data:`MAX_BATCH`."""
    return None if torch.get_num_threads() <= MEASURED_THREADS else MAX_BATCH


def sequence_ok(xg: Tensor, h0: Tensor, w_hh: Tensor, max_batch: Optional[int] = -1) -> bool:
    """Whether a whole-sequence recurrence can run the compiled loop: xg ``(T, B, G*H)`` with ``B <= max_batch``
    (-1: :func:`batch_limit`, None: any) on the CPU, xg, h0 and w_hh of one float dtype, outside ``bf16_matmuls``, eager
    (:func:`_plain_eager`)."""
    if max_batch == -1:
        max_batch = batch_limit()
    return (_plain_eager(xg) and (max_batch is None or xg.shape[1] <= max_batch) and xg.device.type == "cpu"
            and xg.dtype in _FLOATS
            and h0.dtype == xg.dtype and w_hh.dtype == xg.dtype and w_hh.device.type == "cpu"
            and kernels() is not None)


def _weight_mode(xg: Tensor, w_hh: Tensor) -> int:
    """How the backward computes ``dW_hh`` (csrc ``weight_grad``): 1 in bf16 inside
    :func:`hybridrnn.nn._scan.bf16_matmuls` (``train.bf16`` on a CPU with native bf16) on float32 tensors, as the
    pure-torch scans do ("weight" in ``_scan.BF16_PARTS``; the per-step products stay float32 here, as they do
    there by default); 2 here in Python on oneDNN (:func:`hybridrnn.nn._onednn.weight_grad`) for float32 where it
    applies; else 0, ``at::mm`` in the kernel."""
    if _scan._low(_scan._low_dtype(xg, w_hh), "weight") is not None:
        return 1
    return 2 if _onednn.applies(xg, w_hh, _onednn.MIN_ROWS) else 0


def _finish_weight_grad(mode: int, d_w: Tensor, d_rec: Tensor, h0: Tensor, out: Tensor,
                        h_mask: Optional[Tensor] = None) -> Tensor:
    """``dW_hh``: the kernel's, or (mode 2) ``d_rec^T @ ([h0, out[:-1]] * h_mask)`` on oneDNN; d_rec
    ``(T, B, G*H)``, h_mask ``(B, H)`` or None."""
    if mode != 2:
        return d_w
    T, B, H = out.shape
    h_prev = torch.cat([h0.unsqueeze(0), out[:-1]], 0)                    # (T, B, H): the state each step read
    if h_mask is not None:
        h_prev.mul_(h_mask)
    return _onednn.weight_grad(d_rec.reshape(T * B, -1), h_prev.view(T * B, H))


# ----------------------------------------------------------------------------------------------------------
# whole sequences (autograd)
# ----------------------------------------------------------------------------------------------------------

def _needs_graph(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lstm_sequence(xg: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, h_mask: Optional[Tensor] = None,
                  coupled: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The LSTM recurrence over a sequence (no layer norm): xg ``(T, B, G*H)`` the input projection with both
    biases, gates ``(i, f, g, o)`` (G = 4) or, ``coupled``, ``(i, g, o)`` with ``f = 1 - i`` (G = 3); h0, c0
    ``(B, H)``, w_hh ``(G*H, H)``, h_mask ``(B, H)`` (variational recurrent dropout, a constant) or None ->
    ``out (T, B, H)``, ``h_T``, ``c_T`` ``(B, H)``. Same contract as :func:`hybridrnn.nn._scan.lstm_scan`;
    gradients to the four tensors."""
    if _needs_graph(xg, h0, c0, w_hh):
        return _LSTMSequence.apply(xg, h0, c0, w_hh, h_mask, coupled)
    out, h_t, c_t = kernels().lstm_forward(xg, h0, c0, w_hh, _mask_or_empty(h_mask, xg), coupled, False)[:3]
    return out, h_t, c_t


def _mask_or_empty(h_mask: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(0) if h_mask is None else h_mask


def gru_sequence(xg: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                 h_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The GRU recurrence over a sequence (torch's reset-after form): xg ``(T, B, 3H)`` the input projection
    ``W_ih x + b_ih``, h0 ``(B, H)``, w_hh ``(3H, H)``, b_hh ``(3H,)`` or None, h_mask ``(B, H)`` (multiplied into
    h where it enters ``W_hh``; a constant) or None -> ``out (T, B, H)``, ``h_T``. Same contract as
    :func:`hybridrnn.nn._scan.gru_scan` without options; gradients to the tensors but the mask."""
    if _needs_graph(xg, h0, w_hh, b_hh):
        return _GRUSequence.apply(xg, h0, w_hh, b_hh, h_mask)
    out, h_t = kernels().gru_forward(xg, h0, w_hh, _bias_or_empty(b_hh, w_hh), _mask_or_empty(h_mask, xg),
                                     False)[:2]
    return out, h_t


def lstm_ln_sequence(xg: Tensor, h0: Tensor, c0: Tensor, p: LSTMParams) -> tuple[Tensor, Tensor, Tensor]:
    """The layer-norm LSTM recurrence over a sequence (:func:`hybridrnn.nn._scan.lstm_scan`'s equations):
    ``a = W_hh h + b_hh``, ``pre = gain_ih * LN(xg_t) + bias_ih + gain_hh * LN(a)`` (LN over each gate's H;
    without ``p.ln_ih``, ``xg_t`` itself), ``h = o * tanh(gain_c * LN(c) + bias_c)``. xg ``(T, B, 4H)``, h0, c0
    ``(B, H)``; ``p`` an uncoupled :class:`~hybridrnn.nn.cells.LSTMParams` with ``ln_hh`` and ``ln_c``, the
    recurrent norm's bias folded into ``ln_ih``'s bias or into xg (``p.ln_hh[1]`` None: see
    :func:`ln_sequence_ok`). Returns ``out (T, B, H)``, ``h_T``, ``c_T``; gradients to every tensor."""
    (gain_hh, _), (gain_c, bias_c) = p.ln_hh, p.ln_c
    gain_ih, bias_ih = p.ln_ih if p.ln_ih is not None else (None, None)
    tensors = (xg, h0, c0, p.w_hh, p.b_hh, gain_hh, gain_ih, bias_ih, gain_c, bias_c)
    if _needs_graph(*tensors):
        return _LSTMLNSequence.apply(*tensors)
    empty = _empty(xg)
    out, h_t, c_t = kernels().lstm_ln_forward(*(empty if v is None else v for v in tensors), LN_EPS, False)[:3]
    return out, h_t, c_t


def ln_sequence_ok(p: LSTMParams) -> bool:
    """Whether :func:`lstm_ln_sequence` takes these parameters: uncoupled, with the recurrent and cell norms (both
    gain and bias of the cell norm), the recurrent norm's bias folded away, every tensor in one dtype."""
    if p.coupled or p.ln_hh is None or p.ln_c is None or p.ln_hh[1] is not None or p.ln_c[1] is None:
        return False
    if p.ln_ih is not None and (p.ln_ih[0] is None or p.ln_ih[1] is None):
        return False
    dtype = p.w_hh.dtype
    extra = (p.b_hh, p.ln_hh[0], *p.ln_c, *(p.ln_ih or ()))
    return all(v is None or (v.dtype == dtype and v.device.type == "cpu") for v in extra)


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _bias_or_empty(b_hh: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(0) if b_hh is None else b_hh


def _reference_grads(run, inputs: tuple, grads: tuple) -> tuple:
    """Gradients of ``run(*inputs)`` with a graph (backward with ``create_graph=True``): the general loop."""
    wanted = [x for x in inputs if x is not None and x.requires_grad]
    outputs = run(*inputs)
    found = iter(torch.autograd.grad(outputs, wanted, grads, create_graph=True, allow_unused=True))
    return tuple(next(found) if (x is not None and x.requires_grad) else None for x in inputs)


class _LSTMSequence(torch.autograd.Function):
    """Whole-sequence LSTM: forward keeps the gate activations, cells and their tanh; backward in C++."""

    @staticmethod
    def forward(ctx, xg, h0, c0, w_hh, h_mask, coupled):
        mask = _mask_or_empty(h_mask, xg)
        out, h_t, c_t, acts, cs, tcs = kernels().lstm_forward(xg, h0, c0, w_hh, mask, coupled, True)
        ctx.weight_mode = _weight_mode(xg, w_hh)
        ctx.coupled = coupled
        ctx.save_for_backward(xg, h0, c0, w_hh, out, acts, cs, tcs, mask)
        return out, h_t, c_t

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        xg, h0, c0, w_hh, out, acts, cs, tcs, mask = ctx.saved_tensors
        h_mask = mask if mask.numel() else None
        if torch.is_grad_enabled():
            return _reference_grads(
                lambda *a: lstm_loop(a[0], a[1], a[2], LSTMParams(a[3], coupled=ctx.coupled), h_mask=h_mask),
                (xg, h0, c0, w_hh), (d_out, d_h, d_c)) + (None, None)
        d_xg, d_h0, d_c0, d_w = kernels().lstm_backward(d_out, d_h, d_c, acts, cs, tcs, out, h0, c0, w_hh, mask,
                                                        ctx.coupled, ctx.weight_mode)
        return d_xg, d_h0, d_c0, _finish_weight_grad(ctx.weight_mode, d_w, d_xg, h0, out, h_mask), None, None


class _GRUSequence(torch.autograd.Function):
    """Whole-sequence GRU: forward keeps ``(r, z, n, W_hn h + b_hn)``; backward in C++."""

    @staticmethod
    def forward(ctx, xg, h0, w_hh, b_hh, h_mask):
        mask = _mask_or_empty(h_mask, xg)
        out, h_t, acts = kernels().gru_forward(xg, h0, w_hh, _bias_or_empty(b_hh, w_hh), mask, True)
        ctx.weight_mode = _weight_mode(xg, w_hh)
        ctx.save_for_backward(xg, h0, w_hh, b_hh, out, acts, mask)
        return out, h_t

    @staticmethod
    def backward(ctx, d_out, d_h):
        xg, h0, w_hh, b_hh, out, acts, mask = ctx.saved_tensors
        h_mask = mask if mask.numel() else None
        if torch.is_grad_enabled():
            return _reference_grads(lambda *a: gru_loop(a[0], a[1], GRUParams(a[2], a[3]), h_mask=h_mask),
                                    (xg, h0, w_hh, b_hh), (d_out, d_h)) + (None,)
        d_xg, d_h0, d_w, d_b, d_rec = kernels().gru_backward(d_out, d_h, acts, out, h0, w_hh, mask, ctx.weight_mode)
        return (d_xg, d_h0, _finish_weight_grad(ctx.weight_mode, d_w, d_rec, h0, out, h_mask),
                d_b if b_hh is not None else None, None)


class _LSTMLNSequence(torch.autograd.Function):
    """Whole-sequence layer-norm LSTM: forward keeps the activations and the normalised values with their rstd
    (of xg only the mean and rstd); backward in C++. Inputs ``xg, h0, c0, w_hh, b_hh, gain_hh, gain_ih, bias_ih, gain_c, bias_c`` (b_hh and the
    input norm's pair may be None)."""

    @staticmethod
    def forward(ctx, xg, h0, c0, w_hh, b_hh, gain_hh, gain_ih, bias_ih, gain_c, bias_c):
        empty = _empty(xg)
        given = (b_hh, gain_hh, gain_ih, bias_ih, gain_c, bias_c)
        out, h_t, c_t, *saved = kernels().lstm_ln_forward(xg, h0, c0, w_hh, *(empty if v is None else v
                                                                               for v in given), LN_EPS, True)
        ctx.has = tuple(v is not None for v in given)
        ctx.weight_mode = _weight_mode(xg, w_hh)
        ctx.save_for_backward(xg, h0, c0, w_hh, out, *(empty if v is None else v for v in given), *saved)
        return out, h_t, c_t

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        xg, h0, c0, w_hh, out, b_hh, gain_hh, gain_ih, bias_ih, gain_c, bias_c, *saved = ctx.saved_tensors
        given = [v if has else None for v, has in zip((b_hh, gain_hh, gain_ih, bias_ih, gain_c, bias_c), ctx.has)]
        b_hh, gain_hh, gain_ih, bias_ih, gain_c, bias_c = given
        if torch.is_grad_enabled():
            def run(x_, h_, c_, w_, b_, gh_, gi_, bi_, gc_, bc_):
                return lstm_loop(x_, h_, c_, LSTMParams(w_, b_, (gh_, None), (gc_, bc_), False,
                                                        None if gi_ is None else (gi_, bi_)))
            return _reference_grads(run, (xg, h0, c0, w_hh, *given), (d_out, d_h, d_c))
        acts, cs, tcs, ahat, rstd_a, chat, rstd_c, stats_x = saved
        empty = _empty(xg)
        (d_xg, d_h0, d_c0, d_w, d_b, d_gain_hh, d_gain_c, d_bias_c, d_gain_ih, d_bias_ih,
         d_rec) = kernels().lstm_ln_backward(d_out, d_h, d_c, acts, cs, tcs, ahat, rstd_a, chat, rstd_c, xg,
                                                 stats_x, out, h0, c0, w_hh, gain_hh,
                                                 empty if gain_ih is None else gain_ih, gain_c, ctx.weight_mode)
        d_w = _finish_weight_grad(ctx.weight_mode, d_w, d_rec, h0, out)
        return (d_xg, d_h0, d_c0, d_w, d_b if b_hh is not None else None, d_gain_hh,
                d_gain_ih if gain_ih is not None else None, d_bias_ih if bias_ih is not None else None,
                d_gain_c, d_bias_c)
