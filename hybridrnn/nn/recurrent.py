"""LSTM and GRU layers: multi-layer, bidirectional, padded batches, two paths with one behaviour.

``forward(x, state=None, lengths=None) -> (outputs, state)``, batch first (see docs/CONTRACTS.md):

- x: ``(B, T, input_size)``; lengths: optional ``(B,)`` integers in ``1..T``; positions ``t >= lengths[b]``
  are padding: they never reach a state and ``outputs[b, t]`` is exactly 0 there.
- outputs: ``(B, T, D*H)`` with ``D = 2`` if bidirectional, ``[forward | backward]`` along features.
- state: LSTM ``(h, c)``, GRU ``h``, each ``(num_layers * D, B, H)``, row ``layer * D + direction`` as in
  ``torch.nn.LSTM``. With lengths the final state of a sequence is its last real step (step 0 backward).

Two paths:
- ``"fused"`` calls ``torch._VF.lstm`` / ``torch._VF.gru`` (oneDNN on CPU, cuDNN on GPU) with the module's own
  parameters (packing with ``pack_padded_sequence`` when lengths are given), exactly as ``torch.nn.LSTM`` does.
- ``"custom"`` hoists the input projection out of the time loop (one matmul per layer and direction, biases
  folded in) and runs the recurrence with ``hybridrnn.nn._scan`` (fused hand-written kernels, or the general
  loop over the cell functions for options the kernels lack). Every option is available here.

The equations live in one place, :mod:`hybridrnn.nn.cells`: a layer gathers its tensors for one layer and
direction into ``LSTMParams`` / ``GRUParams`` (:meth:`_cell_params`) and its input projection with
:func:`~hybridrnn.nn.cells.input_projection`; ``step()`` (non-plain options) calls ``lstm_step`` / ``gru_step``
and :meth:`gate_trace` runs the general loops to expose the gate activations (the memory diagnostic reads it).
Both paths use the same parameters (torch's names and shapes), so a model trained on one runs on the other.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from hybridrnn.errors import ConfigError
from hybridrnn.nn import _compiled
from hybridrnn.nn._scan import bf16_matmuls, gru_loop, gru_scan, lstm_loop, lstm_scan
from hybridrnn.nn.cells import (
    GRUParams,
    LSTMParams,
    gru_step,
    input_projection,
    lstm_step,
)
from hybridrnn.nn.checks import check_lengths, input_error
from hybridrnn.nn.dropout import locked_dropout as _locked_dropout
from hybridrnn.nn.init import SCHEMES, init_recurrent_

PATHS = ("auto", "fused", "custom")
LSTMState = tuple[Tensor, Tensor]


def auto_path(mode: str, device_type: str) -> str:
    """The path ``path="auto"`` runs when the options allow both: ``"fused"`` or ``"custom"``.

    The rule was measured (``benchmarks/results/auto_path.md``, ``python benchmarks/layers.py --auto-grid``: one
    thread, batch 1-64, hidden 64-256, training and inference): on CPU a GRU runs the custom path, its compiled
    loop (:mod:`hybridrnn.nn._compiled`) taking 0.03-0.49x ``nn.GRU``'s time at every point of the grid; an LSTM
    runs oneDNN, except where :func:`auto_compiled_lstm` measured the compiled loop faster
    (:meth:`_RecurrentBase.runs_path` says which path a batch takes). On a GPU both run cuDNN (``"fused"``).
    """
    return "custom" if (mode == "GRU" and device_type == "cpu") else "fused"


def auto_compiled_lstm(batch: int, hidden: int, grad: bool, bf16: bool = False) -> bool:
    """Whether an ``auto`` LSTM on the CPU runs this forward on the compiled custom loop instead of oneDNN (the
    batch also within :func:`hybridrnn.nn._compiled.batch_limit`): ``grad`` training (autograd records it) or
    inference, ``bf16`` under CPU bf16 autocast (``train.bf16``).

    Measured (``python benchmarks/layers.py --auto-grid``, ``benchmarks/results/auto_path.md``; time /
    ``nn.LSTM``'s in the same rounds, 200 steps, one thread, two runs agreeing):

    - training: the compiled loop at hidden 64 (0.79-0.89x at batch 1-32, oneDNN 0.96-1.01x) and at hidden 128
      from batch 8 (0.90-1.01x against 0.98-1.02x); oneDNN at hidden 128, batch 1 (it 0.98x, the loop 1.12-1.14x)
      and at hidden 256 (0.99-1.01x against 1.05x);
    - inference: oneDNN, except batch 1 at hidden 64 (the loop 0.93x, oneDNN 0.99x): from batch 8, or at hidden
      128, the loop is 1.15-1.31x;
    - bf16 training: the compiled loop at every batch, its input projection and weight gradients in bf16, where
      oneDNN's LSTM would run float32 (its bf16 kernel rounds the cell state to bf16 at every step).
    """
    if not grad:
        return batch <= 1 and hidden <= 64
    return bf16 or hidden <= 64 or (hidden <= 128 and batch >= 8)


def _check_options(name: str, mode: str, input_size: Any, hidden_size: Any, num_layers: Any, *, dropout: float,
                   recurrent_dropout: float, path: str, init: str, custom_only: list[str]) -> None:
    """A layer's sizes and options: a ``ConfigError`` naming the bad one (``custom_only``: the options that
    need the custom path, refused with ``path='fused'``)."""
    for label, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}: {label} must be an integer >= 1, got {value!r}")
    for label, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"{name}: {label} must be in [0, 1), got {value!r}")
    if path not in PATHS:
        raise ConfigError(f"{name}: path must be one of {PATHS}, got {path!r}")
    if init not in SCHEMES:
        raise ConfigError(f"{name}: init must be one of {SCHEMES}, got {init!r}")
    if path == "fused" and custom_only:
        raise ConfigError(f"{name}: path='fused' (torch.nn.{mode}) cannot express "
                          f"{', '.join(custom_only)}; use path='custom' or 'auto'")


class _RecurrentBase(nn.Module):
    """Shared machinery of :class:`LSTM` and :class:`GRU` (parameters, paths, validation, conversion)."""

    mode = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, *, bias: bool, bidirectional: bool,
                 dropout: float, gates: int, coupled: bool, reset_after: bool, layer_norm: bool,
                 recurrent_dropout: float, forget_bias: Optional[float], init: str,
                 chrono_tmax: Optional[float], tie_layers: bool, path: str, locked_dropout: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        _check_options(name, self.mode, input_size, hidden_size, num_layers, dropout=dropout,
                       recurrent_dropout=recurrent_dropout, path=path, init=init, custom_only=[
                           label for label, on in (
                               ("coupled", coupled), ("layer_norm", layer_norm),
                               ("recurrent_dropout", recurrent_dropout > 0), ("reset_after=False", not reset_after),
                               ("tie_layers", tie_layers),
                               ("locked_dropout", locked_dropout and dropout > 0 and num_layers > 1)) if on])
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} acts between layers and has no effect with num_layers=1",
                          stacklevel=3)

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.bidirectional = bidirectional
        self.dropout = float(dropout)
        self.locked_dropout = bool(locked_dropout)
        self.coupled = coupled
        self.reset_after = reset_after
        self.layer_norm = layer_norm
        self.recurrent_dropout = float(recurrent_dropout)
        self.forget_bias = forget_bias
        self.init = init
        self.chrono_tmax = chrono_tmax
        self.tie_layers = tie_layers
        self._path_request = path
        self.path = self._choose_path("cpu")
        self.num_directions = 2 if bidirectional else 1
        self.output_size = self.num_directions * hidden_size
        self.output_layout = ((hidden_size, False), (hidden_size, True)) if bidirectional else ((hidden_size, False),)
        self._gates = gates

        gh = gates * hidden_size
        # _names[l][d] = canonical parameter names used by layer l, direction d (tied layers share names).
        self._names: list[list[dict[str, str]]] = []
        self._flat_names: list[str] = []  # torch's _flat_weights order (fused path)
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self.output_size
            per_dir = []
            for d in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                ih_sfx, hh_sfx = sfx, sfx
                if tie_layers:
                    hh_sfx = "_l0" + ("_reverse" if d == 1 else "")
                    if layer >= 2:
                        ih_sfx = "_l1" + ("_reverse" if d == 1 else "")
                names = {"weight_ih": "weight_ih" + ih_sfx, "weight_hh": "weight_hh" + hh_sfx}
                if bias:
                    names["bias_ih"] = "bias_ih" + ih_sfx
                    names["bias_hh"] = "bias_hh" + hh_sfx
                if layer_norm:
                    names.update(ln_ih_weight="ln_ih_weight" + ih_sfx, ln_ih_bias="ln_ih_bias" + ih_sfx,
                                 ln_hh_weight="ln_hh_weight" + hh_sfx, ln_hh_bias="ln_hh_bias" + hh_sfx)
                    if self.mode == "LSTM":
                        names.update(ln_c_weight="ln_c_weight" + hh_sfx, ln_c_bias="ln_c_bias" + hh_sfx)
                shapes = {"weight_ih": (gh, layer_input), "weight_hh": (gh, hidden_size), "bias_ih": (gh,),
                          "bias_hh": (gh,), "ln_ih_weight": (gh,), "ln_ih_bias": (gh,), "ln_hh_weight": (gh,),
                          "ln_hh_bias": (gh,), "ln_c_weight": (hidden_size,), "ln_c_bias": (hidden_size,)}
                for role, pname in names.items():
                    if pname not in self._parameters:
                        self.register_parameter(pname, nn.Parameter(torch.empty(shapes[role])))
                self._flat_names.extend(names[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                                        if k in names)
                per_dir.append(names)
            self._names.append(per_dir)
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        """Re-initialise with the module's ``init`` scheme and ``forget_bias`` (see :mod:`hybridrnn.nn.init`)."""
        init_recurrent_(self, self.init, forget_bias=self.forget_bias, chrono_tmax=self.chrono_tmax)

    def _choose_path(self, device_type: str) -> str:
        """The path to run on ``device_type``: the one asked for, custom when an option needs it, else
        :func:`auto_path`."""
        if self._path_request == "custom" or self._custom_only_options():
            return "custom"
        if self._path_request == "fused":
            return "fused"
        return auto_path(self.mode, device_type)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.path = self._choose_path(self._flat_weights()[0].device.type)  # "auto" follows the device
        self._flatten_for_cudnn()
        return out

    def _flat_weights(self) -> list[Tensor]:
        # Looked up on every call (about 50 ns a tensor), so swapped parameters (torch.func.functional_call,
        # reassignment) are always the ones used.
        params = self._parameters
        return [params[n] for n in self._flat_names]

    def _flatten_for_cudnn(self) -> None:
        """Put the weights in one cuDNN buffer, as ``torch.nn.LSTM.flatten_parameters`` does (GPU only)."""
        if self.path != "fused":
            return
        flat = self._flat_weights()
        first = flat[0]
        if not first.is_cuda or not torch.backends.cudnn.is_acceptable(first):
            return
        if any(w.dtype != first.dtype or not w.is_cuda for w in flat):
            return
        from torch.backends.cudnn import rnn as cudnn_rnn
        with torch.cuda.device_of(first), torch.no_grad():
            if torch._use_cudnn_rnn_flatten_weight():
                torch._cudnn_rnn_flatten_weight(flat, 4 if self.bias else 2, self.input_size,
                                                cudnn_rnn.get_cudnn_mode(self.mode), self.hidden_size, 0,
                                                self.num_layers, True, self.bidirectional)

    def _p(self, layer: int, direction: int, role: str) -> Optional[Tensor]:
        name = self._names[layer][direction].get(role)
        return None if name is None else self._parameters[name]

    # ----------------------------------------------------------------------------------------- validation
    def _fail(self, what: str, expected: str, got) -> ValueError:
        return input_error(type(self).__name__, what, expected, got)

    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise self._fail("x", "a tensor", type(x).__name__)
        if x.dim() != 3:
            raise self._fail("x", f"of shape (batch, time, {self.input_size}) (3-D)",
                             f"shape {tuple(x.shape)} ({x.dim()}-D)")
        if x.shape[2] != self.input_size:
            raise self._fail("x", f"with {self.input_size} features, shape (batch, time, {self.input_size})",
                             f"{x.shape[2]} features, shape {tuple(x.shape)}")
        if x.shape[1] < 1 or x.shape[0] < 1:
            raise self._fail("x", "at least one sequence and one time step", f"shape {tuple(x.shape)}")

    def _check_lengths(self, lengths, batch: int, time: int) -> tuple[Tensor, bool]:
        """Validated lengths ``(B,)`` int64, and whether every sequence is full (no padding at all)."""
        return check_lengths(type(self).__name__, lengths, batch, time)

    def _check_state(self, state, batch: int, rows: int) -> None:
        expected = (rows, batch, self.hidden_size)
        parts = state if self.mode == "LSTM" else (state,)
        labels = ("h", "c") if self.mode == "LSTM" else ("h",)
        if self.mode == "LSTM" and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise self._fail("state", f"a tuple (h, c) of tensors of shape {expected}", type(state).__name__)
        for label, part in zip(labels, parts):
            if not isinstance(part, Tensor):
                raise self._fail(f"state {label}", f"a tensor of shape {expected}", type(part).__name__)
            if tuple(part.shape) != expected:
                raise self._fail(f"state {label}", f"of shape {expected} (layers*directions, batch, hidden)",
                                 f"shape {tuple(part.shape)}")

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, state=None, lengths: Optional[Tensor] = None):
        """x ``(B, T, input_size)``, state (see module docstring) or None for zeros, lengths ``(B,)`` or None.

        Returns ``(outputs (B, T, output_size), state)``.
        """
        self._check_x(x)
        batch, time = x.shape[0], x.shape[1]
        if state is not None:
            self._check_state(state, batch, self.num_layers * self.num_directions)
        full = True
        if lengths is not None:
            lengths, full = self._check_lengths(lengths, batch, time)
        if self.path == "fused" and not self._small_batch_compiled(x, full):
            return self._forward_fused(x, state, None if full else lengths)
        return self._forward_custom(x, state, None if full else lengths)

    def _small_batch_compiled(self, x: Tensor, full: bool) -> bool:
        """Whether this forward of an ``auto`` LSTM on the fused path runs the compiled custom loop instead
        (:meth:`runs_path`): x ``(B, T, F)`` on the CPU in float32/64, eager, no padding; without autocast, or
        under bf16 autocast."""
        if not (full and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and _compiled._plain_eager(x)):
            return False
        autocast = torch.is_autocast_enabled("cpu")
        bf16 = autocast and torch.get_autocast_dtype("cpu") == torch.bfloat16
        return (not autocast or bf16) and self._auto_small_batch(x.shape[0], torch.is_grad_enabled(), bf16)

    def _auto_small_batch(self, batch: int, grad: bool, bf16: bool = False) -> bool:
        if self._path_request != "auto" or self.mode != "LSTM" or self.path != "fused" or not self._plain_cell:
            return False
        limit = _compiled.batch_limit()
        return (auto_compiled_lstm(batch, self.hidden_size, grad, bf16) and (limit is None or batch <= limit)
                and self._flat_weights()[0].device.type == "cpu" and not _compiled.disabled()
                and _compiled.kernels() is not None)

    def runs_path(self, batch: int, grad: bool, bf16: bool = False) -> str:
        """The path a forward of ``batch`` unpadded float sequences runs, ``grad`` telling whether autograd records
        it (training) or not (inference), ``bf16`` whether under CPU bf16 autocast (``train.bf16``):
        ``self.path``, except where an ``auto`` LSTM on the CPU runs the compiled custom loop
        (:func:`auto_compiled_lstm`)."""
        return "custom" if self.path == "custom" or self._auto_small_batch(batch, grad, bf16) else "fused"

    def _zeros_state(self, x: Tensor, batch: int):
        rows = self.num_layers * self.num_directions
        h = torch.zeros(rows, batch, self.hidden_size, dtype=x.dtype, device=x.device)
        if self.mode == "LSTM":
            return h, torch.zeros(rows, batch, self.hidden_size, dtype=x.dtype, device=x.device)
        return h

    def _in_weight_dtype(self, x: Tensor, state):
        """``x`` and ``state`` in the weights' dtype: under autocast the input may come in low precision (from an
        autocast layer before this one), but the recurrent state is kept in the weights' dtype."""
        dtype = self._flat_weights()[0].dtype
        if state is not None:
            state = tuple(s.to(dtype) for s in state) if self.mode == "LSTM" else state.to(dtype)
        return x.to(dtype), state

    def _forward_fused(self, x: Tensor, state, lengths: Optional[Tensor]):
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # float32 inside CPU autocast: oneDNN's bf16 LSTM rounds the cell state to bf16 at every step (a
            # cell that should reach 200 stops at 32) and fails on CPUs without native bf16; torch's CPU GRU
            # would cast at every step (benchmarks/results/bf16.md)
            x, state = self._in_weight_dtype(x, state)
            with torch.autocast("cpu", enabled=False):
                return self._forward_fused(x, state, lengths)
        if state is None:
            state = self._zeros_state(x, x.shape[0])
        is_lstm = self.mode == "LSTM"
        if is_lstm:
            state = tuple(state)
        fn = _VF.lstm if is_lstm else _VF.gru
        if lengths is None:
            result = fn(x, state, self._flat_weights(), self.bias, self.num_layers, self.dropout, self.training,
                        self.bidirectional, True)
            return result[0], ((result[1], result[2]) if is_lstm else result[1])
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        data, batch_sizes, sorted_idx, unsorted_idx = packed
        if is_lstm:
            hx = (state[0].index_select(1, sorted_idx), state[1].index_select(1, sorted_idx))
        else:
            hx = state.index_select(1, sorted_idx)
        result = fn(data, batch_sizes, hx, self._flat_weights(), self.bias, self.num_layers, self.dropout,
                    self.training, self.bidirectional)
        outputs, _ = pad_packed_sequence(PackedSequence(result[0], batch_sizes, sorted_idx, unsorted_idx),
                                         batch_first=True, total_length=x.shape[1])
        if is_lstm:
            return outputs, (result[1].index_select(1, unsorted_idx), result[2].index_select(1, unsorted_idx))
        return outputs, result[1].index_select(1, unsorted_idx)

    def _forward_custom(self, x: Tensor, state, lengths: Optional[Tensor], recurrence=None):
        """The custom path; ``recurrence`` replaces :meth:`_recurrence` (same signature) when given."""
        recurrence = recurrence or self._recurrence
        batch, time = x.shape[0], x.shape[1]
        is_lstm = self.mode == "LSTM"
        if torch.is_autocast_enabled(x.device.type):
            x, state = self._in_weight_dtype(x, state)
        if state is None:
            state = self._zeros_state(x, batch)
        h0 = state[0] if is_lstm else state
        c0 = state[1] if is_lstm else None
        mask = rev_index = batch_index = None
        if lengths is not None:
            lengths = lengths.to(x.device)
            steps = torch.arange(time, device=x.device).unsqueeze(1)  # (T, 1)
            real = steps < lengths.unsqueeze(0)  # (T, B)
            mask = real.to(x.dtype).unsqueeze(2)
            if self.bidirectional:  # reverse each sequence within its own length; padding stays in place
                rev_index = torch.where(real, lengths.unsqueeze(0) - 1 - steps, steps)
                batch_index = torch.arange(batch, device=x.device).unsqueeze(0)
        dropout_on = self.training and self.recurrent_dropout > 0
        # Under autocast the input projections run in low precision, but the recurrence runs in the state's dtype:
        # the scan kernels write into buffers of one dtype, and a bf16 state would accumulate rounding over the
        # time steps. Under CPU bf16 autocast the scans' matmuls that pay in bf16 run in it (bf16_matmuls).
        device_type = x.device.type
        autocast_on = torch.is_autocast_enabled(device_type)
        low_matmuls = (autocast_on and device_type == "cpu"
                       and torch.get_autocast_dtype(device_type) == torch.bfloat16)
        layer_in = x.transpose(0, 1)  # (T, B, F)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                row = layer * self.num_directions + d
                xg = self._input_projection(layer_in, layer, d)  # (T, B, G*H)
                if d == 1:
                    xg = xg.flip(0) if rev_index is None else xg[rev_index, batch_index]
                h_mask = None
                if dropout_on:
                    keep = 1.0 - self.recurrent_dropout
                    h_mask = torch.bernoulli(x.new_full((batch, self.hidden_size), keep)).div_(keep)
                if autocast_on:
                    with torch.autocast(device_type, enabled=False), bf16_matmuls(low_matmuls):
                        out, h_last, c_last = recurrence(xg.to(h0.dtype), h0[row],
                                                         None if c0 is None else c0[row], layer, d, mask, h_mask)
                else:
                    out, h_last, c_last = recurrence(xg, h0[row], None if c0 is None else c0[row],
                                                     layer, d, mask, h_mask)
                if d == 1:
                    out = out.flip(0) if rev_index is None else out[rev_index, batch_index]
                outs.append(out)
                h_n.append(h_last)
                c_n.append(c_last)
            layer_in = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = (_locked_dropout(layer_in, self.dropout, True, time_dim=0) if self.locked_dropout
                            else F.dropout(layer_in, self.dropout, True))
        outputs = layer_in.transpose(0, 1)
        h_n = torch.stack(h_n, 0)
        return outputs, ((h_n, torch.stack(c_n, 0)) if is_lstm else h_n)

    @property
    def _folds_hh_bias(self) -> bool:
        """Whether the whole-sequence path adds the recurrent bias to the input projection instead of the
        recurrence. Exact for an LSTM, where the input and the recurrent part add into one pre-activation:
        ``b_hh`` without layer norm, the recurrent norm's bias ``ln_hh_bias`` with it (``b_hh`` then sits inside
        that norm and stays). It saves an add per step (or a pass over the sequence). ``step()`` does not fold:
        there it would cost an add per call."""
        return self.mode == "LSTM" and (self.bias or self.layer_norm)

    def _input_projection(self, layer_in: Tensor, layer: int, d: int, fold: bool = True) -> Tensor:
        """``(..., F) -> (..., G*H)``: ``W_ih x + b_ih`` (:func:`~hybridrnn.nn.cells.input_projection`), with
        ``b_hh`` folded in when ``fold`` and :attr:`_folds_hh_bias` without layer norm."""
        w_ih, b_ih = self._p(layer, d, "weight_ih"), self._p(layer, d, "bias_ih")
        if fold and self._folds_hh_bias and not self.layer_norm:
            b_ih = b_ih + self._p(layer, d, "bias_hh")
        return input_projection(layer_in, w_ih, b_ih)

    def _ln_ih(self, layer: int, d: int, fold: bool) -> Optional[tuple[Tensor, Tensor]]:
        """The input layer norm's (gain, bias), the recurrent norm's bias folded into the bias when ``fold`` and
        :attr:`_folds_hh_bias`; None without layer norm."""
        if not self.layer_norm:
            return None
        bias = self._p(layer, d, "ln_ih_bias")
        if fold and self._folds_hh_bias:
            bias = bias + self._p(layer, d, "ln_hh_bias")
        return self._p(layer, d, "ln_ih_weight"), bias

    def _cell_params(self, layer: int, d: int, fold: bool = True):
        """The recurrent tensors and options of layer ``layer``, direction ``d``: an
        :class:`~hybridrnn.nn.cells.LSTMParams` or :class:`~hybridrnn.nn.cells.GRUParams` (without the recurrent
        bias when ``fold`` and :attr:`_folds_hh_bias`: the input projection holds it)."""
        raise NotImplementedError

    def _recurrence(self, xg: Tensor, h0: Tensor, c0: Optional[Tensor], layer: int, d: int,
                    mask: Optional[Tensor], h_mask: Optional[Tensor]):
        """One layer and direction over the sequence: ``xg (T, B, G*H)``, ``h0``/``c0 (B, H)`` (c0 None for a
        GRU), ``mask (T, B, 1)`` or None, ``h_mask (B, H)`` or None -> ``(out (T, B, H), h_T, c_T or None)``."""
        raise NotImplementedError

    def gate_trace(self, x: Tensor) -> tuple[Tensor, list[dict]]:
        """Gate activations of every layer and direction on ``x (B, T, input_size)`` from a zero state.

        Runs the custom path with the general loop (:func:`~hybridrnn.nn._scan.lstm_loop` /
        :func:`~hybridrnn.nn._scan.gru_loop`, i.e. the equations of :mod:`hybridrnn.nn.cells`) in the module's
        current mode (call it in eval mode for dropout-free gates). Returns the outputs ``(B, T, output_size)``
        and one dict per layer and direction, in order: ``{"layer": l, "direction": "forward" | "backward",
        "gates": {name: (B, T, H)}}`` with the names of :class:`~hybridrnn.nn.cells.LSTMGates` (``i, f, g, o``)
        or :class:`~hybridrnn.nn.cells.GRUGates` (``r, z, n``), in the sequence's own time order.
        """
        self._check_x(x)
        trace = []
        loop = lstm_loop if self.mode == "LSTM" else gru_loop

        def recurrence(xg, h0, c0, layer, d, mask, h_mask):
            steps = []
            state = (h0,) if c0 is None else (h0, c0)
            out, *final = loop(xg, *state, self._cell_params(layer, d), mask=mask, h_mask=h_mask, gates=steps)
            gates = {name: torch.stack(values, 1) for name, values in zip(steps[0]._fields, zip(*steps))}
            if d == 1:
                gates = {name: v.flip(1) for name, v in gates.items()}
            trace.append({"layer": layer, "direction": "backward" if d else "forward", "gates": gates})
            return out, final[0], (final[1] if len(final) > 1 else None)

        outputs, _ = self._forward_custom(x, None, None, recurrence)
        return outputs, trace

    # ----------------------------------------------------------------------------------------- helpers
    def final_output(self, outputs: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """Summary of each sequence, ``(B, output_size)``: forward features at the last real step, backward
        features at step 0. outputs: ``(B, T, output_size)``; lengths: ``(B,)`` or None (all full)."""
        if outputs.dim() != 3 or outputs.shape[2] != self.output_size:
            raise self._fail("outputs", f"of shape (batch, time, {self.output_size})", f"shape {tuple(outputs.shape)}")
        batch, time = outputs.shape[0], outputs.shape[1]
        if lengths is None:
            last = outputs[:, -1]
        else:
            lengths, _ = self._check_lengths(lengths, batch, time)
            idx = (lengths - 1).to(outputs.device)
            last = outputs[torch.arange(batch, device=outputs.device), idx]
        if not self.bidirectional:
            return last
        return torch.cat([last[:, :self.hidden_size], outputs[:, 0, self.hidden_size:]], 1)

    @property
    def _locked_between_layers(self) -> bool:
        return self.locked_dropout and self.dropout > 0 and self.num_layers > 1

    def _custom_only_options(self) -> list[str]:
        return [label for label, on in (
            ("coupled", self.coupled), ("layer_norm", self.layer_norm),
            ("recurrent_dropout", self.recurrent_dropout > 0), ("reset_after=False", not self.reset_after),
            ("tie_layers", self.tie_layers),
            ("locked_dropout", self.locked_dropout and self.dropout > 0 and self.num_layers > 1)) if on]

    def to_torch(self) -> nn.Module:
        """An equivalent ``torch.nn.LSTM`` / ``torch.nn.GRU`` (``batch_first=True``) with copies of the weights.

        Raises ``ValueError`` for options torch cannot express."""
        options = self._custom_only_options()
        if options:
            raise ValueError(f"{type(self).__name__}.to_torch: torch.nn.{self.mode} cannot express "
                             f"{', '.join(options)}")
        cls = nn.LSTM if self.mode == "LSTM" else nn.GRU
        ref = self._flat_weights()[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dropout with one layer: the same warning was given at our init
            module = cls(self.input_size, self.hidden_size, self.num_layers, bias=self.bias, batch_first=True,
                         dropout=self.dropout, bidirectional=self.bidirectional, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for name in self._flat_names:
                getattr(module, name).copy_(self._parameters[name])
        module.train(self.training)
        return module

    @classmethod
    def _from_torch(cls, module: nn.Module, torch_cls: type, path: str):
        if not isinstance(module, torch_cls):
            raise ValueError(f"{cls.__name__}.from_torch: expected a torch.nn.{torch_cls.__name__}, "
                             f"got {type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"{cls.__name__}.from_torch: proj_size={module.proj_size} is not supported "
                             f"(expected 0)")
        ref = next(module.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = cls(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                       bidirectional=module.bidirectional, dropout=module.dropout, path=path)
        ours.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for name in ours._flat_names:
                ours._parameters[name].copy_(getattr(module, name))
        ours.train(module.training)
        return ours

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if not self.bias:
            parts.append("bias=False")
        if self.bidirectional:
            parts.append("bidirectional=True")
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if self.locked_dropout:
            parts.append("locked_dropout=True")
        parts.extend(self._option_repr())
        if self.recurrent_dropout:
            parts.append(f"recurrent_dropout={self.recurrent_dropout}")
        if self.init != "torch":
            parts.append(f"init={self.init!r}")
        if self.tie_layers:
            parts.append("tie_layers=True")
        parts.append(f"path={self.path!r}" + (" (auto)" if self._path_request == "auto" else ""))
        parts.extend(self._compiled_repr())
        return ", ".join(parts)

    def _option_repr(self) -> list[str]:
        return []

    # ----------------------------------------------------------------------------------------- compiled kernels
    @property
    def _plain_cell(self) -> bool:
        """No option beyond torch's cell (coupled, layer norm, the paper-form GRU): what the compiled kernels run."""
        return not (self.coupled or self.layer_norm) and self.reset_after

    def _compiled_step(self, x_t: Tensor, state) -> tuple[Any, list[Tensor]]:
        """``(kernels, weights)`` when ``step()`` runs the compiled kernel, ``(None, [])`` otherwise: a plain cell,
        no dropout between layers in training, and :func:`hybridrnn.nn._compiled.step_kernels` (CPU,
        float32/64, nothing for autograd to record, kernel built)."""
        if not self._plain_cell or (self.training and self.dropout > 0 and self.num_layers > 1):
            return None, []
        weights = self._flat_weights()
        return _compiled.step_kernels(x_t, state, weights), weights

    @property
    def _compiled_coupled(self) -> bool:
        """A coupled-gate LSTM without layer norm: its whole-sequence recurrence has a compiled loop too."""
        return self.mode == "LSTM" and self.coupled and not self.layer_norm

    @property
    def _compiled_layer_norm(self) -> bool:
        """A layer-norm LSTM (uncoupled): its whole-sequence recurrence has a compiled loop at every batch size."""
        return self.mode == "LSTM" and self.layer_norm and not self.coupled

    def _compiled_sequence_ok(self, xg: Tensor, h0: Tensor, mask, h_mask) -> bool:
        """Whether one layer and direction's recurrence runs the compiled loop instead of the pure-torch scan: no
        padding mask, no recurrent dropout for the layer-norm LSTM, and :func:`hybridrnn.nn._compiled.sequence_ok` (CPU, float32/64,
        kernel built); a plain cell up to ``_compiled.batch_limit()`` sequences, a layer-norm LSTM at any batch."""
        if mask is not None or not (self._plain_cell or self._compiled_coupled or self._compiled_layer_norm):
            return False
        if h_mask is not None and (self._compiled_layer_norm or h_mask.requires_grad):
            return False                             # the layer-norm kernel has no recurrent dropout
        return _compiled.sequence_ok(xg, h0, self._p(0, 0, "weight_hh"),
                                     max_batch=None if self._compiled_layer_norm else -1)

    def _compiled_repr(self) -> list[str]:
        """Where the compiled kernels run, for ``repr`` (nothing when disabled or the build failed)."""
        if _compiled.disabled() or _compiled.build_error() is not None:
            return []
        if self._compiled_layer_norm or self._compiled_coupled:
            return ["compiled='sequences'"]
        if not self._plain_cell:
            return []
        if self.path == "custom":
            limit = _compiled.batch_limit()
            where = "step(), sequences" + ("" if limit is None else f" batch<={limit}")
        elif self._path_request == "auto" and self.mode == "LSTM":
            where = "step(), custom where auto_compiled_lstm says"
        else:
            where = "step()"
        return [f"compiled={where!r}"]

    def _step_checks(self, x_t: Tensor, state) -> int:
        # step() is called once per token at batch 1, where a microsecond counts: the common valid case is
        # recognised with a few comparisons, and the full checks (with their messages) run only otherwise.
        if (type(x_t) is Tensor or isinstance(x_t, Tensor)) and x_t.dim() == 2 and not self.bidirectional \
                and x_t.shape[1] == self.input_size and not (self.training and (self.recurrent_dropout > 0
                                                                                 or self._locked_between_layers)):
            expected = (self.num_layers, x_t.shape[0], self.hidden_size)
            if state is None:
                return x_t.shape[0]
            if self.mode == "LSTM":
                if type(state) is tuple and len(state) == 2 and isinstance(state[0], Tensor) \
                        and isinstance(state[1], Tensor) and state[0].shape == expected \
                        and state[1].shape == expected:
                    return x_t.shape[0]
            elif isinstance(state, Tensor) and state.shape == expected:
                return x_t.shape[0]
        name = type(self).__name__
        if self.bidirectional:
            raise ValueError(f"{name}.step: a bidirectional layer needs the whole sequence; expected "
                             f"bidirectional=False, got bidirectional=True (use forward)")
        if self.training and self.recurrent_dropout > 0:
            raise ValueError(f"{name}.step: recurrent_dropout needs one mask per whole sequence; call forward on "
                             f"the sequence in training, or step() in eval mode")
        if self.training and self._locked_between_layers:
            raise ValueError(f"{name}.step: locked_dropout needs one mask per whole sequence; call forward on "
                             f"the sequence in training, or step() in eval mode")
        if not isinstance(x_t, Tensor) or x_t.dim() != 2 or x_t.shape[1] != self.input_size:
            got = f"shape {tuple(x_t.shape)}" if isinstance(x_t, Tensor) else type(x_t).__name__
            raise self._fail("x_t", f"of shape (batch, {self.input_size})", got)
        if state is not None:
            self._check_state(state, x_t.shape[0], self.num_layers)
        return x_t.shape[0]


class LSTM(_RecurrentBase):
    """Multi-layer LSTM layer, batch first, fused (torch) or custom path.

    Parameters per layer ``l`` and direction (suffix ``_l{l}`` / ``_l{l}_reverse``), named as in
    ``torch.nn.LSTM``: ``weight_ih (G*H, I_l)``, ``weight_hh (G*H, H)``, ``bias_ih``, ``bias_hh`` ``(G*H,)`` with
    ``I_0 = input_size``, ``I_l = D*H``; rows ``(i, f, g, o)`` (G=4), or ``(i, g, o)`` when ``coupled`` (G=3).
    ``layer_norm`` adds ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias`` ``(G*H,)`` and
    ``ln_c_weight``, ``ln_c_bias`` ``(H,)`` with the same suffixes (see :mod:`hybridrnn.nn.cells`).

    ``tie_layers=True``: every layer uses layer 0's recurrent tensors (``weight_hh``, ``bias_hh`` and the
    ``ln_hh_*``/``ln_c_*`` gains of ``_l0``/``_l0_reverse``), and layers 2.. use layer 1's input tensors
    (``weight_ih``, ``bias_ih``, ``ln_ih_*`` of ``_l1``/``_l1_reverse``); layer 0 keeps its own input tensors
    (its input size differs). Only those canonical names are registered, so ``parameters()`` and
    ``state_dict()`` hold each shared tensor once. Directions are never tied to each other.

    ``recurrent_dropout``: variational dropout of ``h`` where it enters ``W_hh``, one mask per sequence, layer
    and direction (the same for every step), only in training. ``locked_dropout=True`` makes ``dropout`` (between
    layers) variational too: one mask per sequence and feature for all steps (custom path). ``forget_bias``: added to the forget gate's
    bias after ``init``. ``init``/``chrono_tmax``: see :func:`hybridrnn.nn.init.init_recurrent_`.
    """

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 bidirectional: bool = False, dropout: float = 0.0, coupled: bool = False, layer_norm: bool = False,
                 recurrent_dropout: float = 0.0, forget_bias: Optional[float] = None, init: str = "torch",
                 chrono_tmax: Optional[float] = None, tie_layers: bool = False, path: str = "auto",
                 locked_dropout: bool = False) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional,
                         dropout=dropout, gates=3 if coupled else 4, coupled=coupled, reset_after=True,
                         layer_norm=layer_norm, recurrent_dropout=recurrent_dropout, forget_bias=forget_bias,
                         init=init, chrono_tmax=chrono_tmax, tie_layers=tie_layers, path=path,
                         locked_dropout=locked_dropout)

    @classmethod
    def from_torch(cls, module: nn.LSTM, path: str = "auto") -> "LSTM":
        """An ``LSTM`` with exact copies of a ``torch.nn.LSTM``'s weights (any ``batch_first``: ours is batch first)."""
        return cls._from_torch(module, nn.LSTM, path)

    def _option_repr(self) -> list[str]:
        parts = []
        if self.coupled:
            parts.append("coupled=True")
        if self.layer_norm:
            parts.append("layer_norm=True")
        if self.forget_bias is not None:
            parts.append(f"forget_bias={self.forget_bias}")
        return parts

    def _cell_params(self, layer: int, d: int, fold: bool = True) -> LSTMParams:
        ln = self.layer_norm
        fold = fold and self._folds_hh_bias
        b_hh = None if (fold and not ln) else self._p(layer, d, "bias_hh")
        ln_hh = (self._p(layer, d, "ln_hh_weight"), None if fold else self._p(layer, d, "ln_hh_bias")) if ln else None
        return LSTMParams(self._p(layer, d, "weight_hh"), b_hh, ln_hh,
                          (self._p(layer, d, "ln_c_weight"), self._p(layer, d, "ln_c_bias")) if ln else None,
                          self.coupled, self._ln_ih(layer, d, fold))

    def _recurrence(self, xg, h0, c0, layer, d, mask, h_mask):
        p = self._cell_params(layer, d)
        if self._compiled_sequence_ok(xg, h0, mask, h_mask):
            if self.layer_norm:
                if _compiled.ln_sequence_ok(p):
                    return _compiled.lstm_ln_sequence(xg, h0, c0, p)
            elif p.b_hh is None:                                                      # b_hh folded into xg
                return _compiled.lstm_sequence(xg, h0, c0, p.w_hh, h_mask, coupled=self.coupled)
        return lstm_scan(xg, h0, c0, p, mask=mask, h_mask=h_mask)

    def step(self, x_t: Tensor, state: Optional[LSTMState] = None) -> tuple[Tensor, LSTMState]:
        """One time step of a unidirectional LSTM: x_t ``(B, input_size)``, state ``(h, c)`` each
        ``(num_layers, B, H)`` or None. Returns ``(y_t (B, H), (h, c))``. Does not go through ``nn.LSTM``."""
        batch = self._step_checks(x_t, state)
        kernels, weights = self._compiled_step(x_t, state)
        if kernels is not None:   # one C++ call for every layer (hybridrnn.nn._compiled)
            h, c = (_compiled.NO_STATE[0],) * 2 if state is None else state
            y, h, c = kernels.lstm_step(x_t, h, c, weights, self.bias)
            return y, (h, c)
        if state is None:
            state = self._zeros_state(x_t, batch)
        plain = not (self.coupled or self.layer_norm)
        inp = x_t
        hs, cs = [], []
        params = self._parameters
        h_all, c_all = state
        for layer in range(self.num_layers):
            names = self._names[layer][0]
            w_ih, w_hh = params[names["weight_ih"]], params[names["weight_hh"]]
            b_ih = params[names["bias_ih"]] if self.bias else None
            b_hh = params[names["bias_hh"]] if self.bias else None
            h, c = h_all[layer], c_all[layer]
            if plain:
                h, c = torch.lstm_cell(inp, (h, c), w_ih, w_hh, b_ih, b_hh)  # torch.* skips _VF's lookup (2 us)
            else:
                h, c, _ = lstm_step(self._input_projection(inp, layer, 0, fold=False), h, c,
                                    self._cell_params(layer, 0, fold=False))
            hs.append(h)
            cs.append(c)
            inp = h
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                inp = F.dropout(inp, self.dropout, True)
        if self.num_layers == 1:
            return h, (h.unsqueeze(0), c.unsqueeze(0))
        return h, (torch.stack(hs, 0), torch.stack(cs, 0))


class GRU(_RecurrentBase):
    """Multi-layer GRU layer, batch first, fused (torch) or custom path.

    Parameters as in ``torch.nn.GRU``: ``weight_ih_l{l} (3H, I_l)``, ``weight_hh_l{l} (3H, H)``, ``bias_ih_l{l}``,
    ``bias_hh_l{l}`` ``(3H,)`` (and ``_reverse``), rows ``(r, z, n)``; ``layer_norm`` adds ``ln_ih_weight``,
    ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias`` ``(3H,)``. ``reset_after=True`` is torch's form
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; ``False`` the paper's ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)``
    (custom path only). ``tie_layers``, ``recurrent_dropout``, ``locked_dropout``, ``init`` as in :class:`LSTM`.
    """

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 bidirectional: bool = False, dropout: float = 0.0, reset_after: bool = True,
                 layer_norm: bool = False, recurrent_dropout: float = 0.0, init: str = "torch",
                 chrono_tmax: Optional[float] = None, tie_layers: bool = False, path: str = "auto",
                 locked_dropout: bool = False) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional,
                         dropout=dropout, gates=3, coupled=False, reset_after=reset_after, layer_norm=layer_norm,
                         recurrent_dropout=recurrent_dropout, forget_bias=None, init=init, chrono_tmax=chrono_tmax,
                         tie_layers=tie_layers, path=path, locked_dropout=locked_dropout)

    @classmethod
    def from_torch(cls, module: nn.GRU, path: str = "auto") -> "GRU":
        """A ``GRU`` with exact copies of a ``torch.nn.GRU``'s weights (any ``batch_first``: ours is batch first)."""
        return cls._from_torch(module, nn.GRU, path)

    def _option_repr(self) -> list[str]:
        parts = []
        if not self.reset_after:
            parts.append("reset_after=False")
        if self.layer_norm:
            parts.append("layer_norm=True")
        return parts

    def _cell_params(self, layer: int, d: int, fold: bool = True) -> GRUParams:
        ln_hh = (self._p(layer, d, "ln_hh_weight"), self._p(layer, d, "ln_hh_bias")) if self.layer_norm else None
        return GRUParams(self._p(layer, d, "weight_hh"), self._p(layer, d, "bias_hh"), ln_hh, self.reset_after,
                         self._ln_ih(layer, d, fold))

    def _recurrence(self, xg, h0, c0, layer, d, mask, h_mask):
        p = self._cell_params(layer, d)
        if self._compiled_sequence_ok(xg, h0, mask, h_mask):
            out, h = _compiled.gru_sequence(xg, h0, p.w_hh, p.b_hh, h_mask)
        else:
            out, h = gru_scan(xg, h0, p, mask=mask, h_mask=h_mask)
        return out, h, None

    def step(self, x_t: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """One time step of a unidirectional GRU: x_t ``(B, input_size)``, state h ``(num_layers, B, H)`` or None.
        Returns ``(y_t (B, H), h)``. Does not go through ``nn.GRU``."""
        batch = self._step_checks(x_t, state)
        kernels, weights = self._compiled_step(x_t, state)
        if kernels is not None:   # one C++ call for every layer (hybridrnn.nn._compiled)
            return kernels.gru_step(x_t, _compiled.NO_STATE[0] if state is None else state, weights, self.bias)
        if state is None:
            state = self._zeros_state(x_t, batch)
        plain = self.reset_after and not self.layer_norm
        inp = x_t
        hs = []
        params = self._parameters
        for layer in range(self.num_layers):
            names = self._names[layer][0]
            w_ih, w_hh = params[names["weight_ih"]], params[names["weight_hh"]]
            b_ih = params[names["bias_ih"]] if self.bias else None
            b_hh = params[names["bias_hh"]] if self.bias else None
            h = state[layer]
            if plain:
                h = torch.gru_cell(inp, h, w_ih, w_hh, b_ih, b_hh)  # torch.* skips _VF's lookup (2 us)
            else:
                h = gru_step(self._input_projection(inp, layer, 0), h, self._cell_params(layer, 0))[0]
            hs.append(h)
            inp = h
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                inp = F.dropout(inp, self.dropout, True)
        if self.num_layers == 1:
            return h, h.unsqueeze(0)
        return h, torch.stack(hs, 0)


RecurrentState = Union[Tensor, LSTMState]
