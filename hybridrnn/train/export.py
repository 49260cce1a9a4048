"""ONNX export of a trained run: ``hybridrnn export RUN --output model.onnx``.

The task says what the model reads (``Task.export_inputs``) and how it is called (``Task.export_forward``);
the batch dimension is dynamic. The graph comes from torch's dynamo exporter (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnxscript``): on torch 2.13 the legacy TorchScript exporter gave a forecaster
whose outputs differed from torch's by 0.1, the dynamo one by 1e-7. After writing, the file is run with
onnxruntime on a batch of another size and compared with torch; a difference above ``tolerance`` is an error.
Requires the ``onnx`` extra: ``pip install 'hybridrnn[onnx]'``.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from hybridrnn._io import atomic_write
from hybridrnn.errors import MissingExtraError

DEFAULT_TOLERANCE = 1e-4


class _ExportedModel(nn.Module):
    def __init__(self, task, model: nn.Module):
        super().__init__()
        self.model = model
        self._task = task

    def forward(self, *inputs: torch.Tensor):
        return self._task.export_forward(self.model, *inputs)


def _require(module: str):
    import importlib   # optional extra: onnx, onnxscript and onnxruntime load only when exporting

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"ONNX export needs {module!r}: pip install 'hybridrnn[onnx]'") from None


def export_onnx(task, model: nn.Module, output: str | Path, *, check: bool = True,
                tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Write ``model`` (the task's network, e.g. a loaded run's) to ``output`` (ONNX); returns ``{"output",
    "inputs", "outputs", "max_abs_difference"}`` (the last is None when ``check`` is False). The example inputs
    come from the task's fitted state (``task.export_inputs``), so no data is read."""
    for name in ("onnx", "onnxscript"):
        _require(name)
    model.eval()
    inputs, output_names = task.export_inputs(rows=4)
    wrapped = _ExportedModel(task, model).eval()
    batch = torch.export.Dim("batch", min=1)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)   # "torchvision is not installed. Skipping torchvision::nms", ...
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the exporter's own deprecation / axis-naming chatter
            program = torch.onnx.export(wrapped, tuple(inputs.values()), dynamo=True, input_names=list(inputs),
                                        output_names=output_names, verbose=False,
                                        dynamic_shapes={"inputs": tuple({0: batch} for _ in inputs)})
    finally:
        exporter_log.setLevel(level)
    difference: list[float | None] = [None]

    def write(tmp: Path) -> None:     # checked before it replaces the output: a bad export is never kept
        program.save(str(tmp))
        if check:
            difference[0] = _check(str(tmp), task, wrapped, tolerance)

    atomic_write(output, write)
    return {"output": str(output), "inputs": {k: list(v.shape[1:]) for k, v in inputs.items()},
            "outputs": output_names, "max_abs_difference": difference[0]}


def _check(path: str, task, wrapped: nn.Module, tolerance: float) -> float:
    """Max |onnxruntime - torch| on a batch of 7 rows (not the traced 4, so the batch really is dynamic)."""
    ort = _require("onnxruntime")
    inputs, _ = task.export_inputs(rows=7)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        want = wrapped(*inputs.values())
    want = want if isinstance(want, (tuple, list)) else (want,)
    difference = max(float(abs(torch.from_numpy(g) - w.float()).max()) for g, w in zip(got, want))
    if not difference <= tolerance:
        raise RuntimeError(f"the ONNX model differs from torch by {difference:.3g} (> {tolerance:g}) on a batch "
                           f"of {len(next(iter(inputs.values())))}; not written")
    return difference
