"""The memory diagnostic: how far back a trained recurrent model can still learn from, and how its gates behave.

Two measurements on a batch of inputs:

1. **Gradient through time.** The encoder is run one step at a time (``encoder.step``); ``s_t`` is the recurrent
   state entering step ``t`` (``s_0`` the zero initial state). For each ``t`` we report the batch mean of
   ``||dL_b / ds_t||`` where ``L_b`` is example ``b``'s loss: how strongly the loss still depends on what the
   model carried at step ``t``. ``state`` norms use every state tensor (``h`` and, for LSTM blocks, the cell
   ``c``, of every layer and block); ``hidden`` norms use the ``h`` tensors only. A curve that falls by orders of
   magnitude towards early steps is the vanishing gradient.
2. **Gate activations.** For every LSTM/GRU layer in the encoder, the gates are recomputed from the layer's own
   weights on its actual inputs (eval mode, zero state) by the layer's ``gate_trace``: the general time loop over
   the cell equations of ``hybridrnn.nn.cells``, so every cell option is covered (LSTM ``(i, f, g, o)``, coupled
   ``(i, g, o)`` with ``f = 1 - i``, layer norm; GRU ``(r, z, n)`` in both forms); the loop's outputs are checked
   against the layer's (a mismatch is an error, not a silent wrong answer). We report the mean of every gate,
   and for the forget gate ``f`` (LSTM) and the update gate ``z`` (GRU, torch's parameterisation:
   ``h' = (1 - z) * n + z * h``, so ``z`` near 1 keeps the memory; the textbook update gate is ``1 - z``) the
   fraction of values below 0.1 and above 0.9 ("saturated").

``python -m hybridrnn.experiments.memory RUN_DIR`` writes ``RUN_DIR/memory.json`` and ``RUN_DIR/memory.png``
for a run of the long-range suite.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from hybridrnn._io import atomic_write_text, new_figure, save_figure
from hybridrnn.api import load_run
from hybridrnn.errors import ConfigError, RunDirError
from hybridrnn.nn.recurrent import GRU, LSTM

SATURATION = 0.1      # a gate value below SATURATION or above 1 - SATURATION counts as saturated
CHECK_TOLERANCE = 1e-4  # max |reference loop output - layer output| accepted (float32)


# ---------------------------------------------------------------------------------------------------------
# structure of an encoder
# ---------------------------------------------------------------------------------------------------------

def recurrent_layers(encoder: nn.Module) -> list[nn.Module]:
    """The LSTM/GRU layer modules of an encoder in spec order (left to right, depth first)."""
    return [m for m in encoder.modules() if _kind(m) is not None]


def _kind(module: nn.Module) -> Optional[str]:
    if isinstance(module, (nn.LSTM, LSTM)):
        return "lstm"
    if isinstance(module, (nn.GRU, GRU)):
        return "gru"
    return None


def _hidden_parts(encoder: nn.Module, state: Any) -> list[Tensor]:
    """The ``h`` tensors of a state (dropping LSTM cells ``c``): one entry per recurrent block, spec order."""
    layers = recurrent_layers(encoder)
    entries = [state] if _kind(encoder) is not None else list(state)
    if len(entries) != len(layers):
        raise ValueError(f"state has {len(entries)} entries but the encoder has {len(layers)} recurrent blocks")
    return [s[0] if _kind(m) == "lstm" else s for m, s in zip(layers, entries)]


def _tensors(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in _tensors(s)]


def _map(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    if isinstance(state, Tensor):
        return fn(state)
    return type(state)(_map(fn, s) for s in state)


# ---------------------------------------------------------------------------------------------------------
# gradient through time
# ---------------------------------------------------------------------------------------------------------

def state_gradient_norms(encoder: nn.Module, x: Tensor,
                         loss_of_outputs: Callable[[Tensor], Tensor]) -> dict[str, np.ndarray]:
    """Per-step gradient norms of the loss with respect to the recurrent state.

    Args:
        encoder: a unidirectional recurrent module with ``step`` (hybridrnn LSTM/GRU or hybrid encoder).
        x: ``(batch, time, features)``.
        loss_of_outputs: maps the encoder outputs ``(batch, time, output_size)`` to a per-example loss
            ``(batch,)`` (summed, so each example's gradient is its own).
    Returns:
        ``{"state": (time,), "hidden": (time,)}``: batch means of ``||dL_b/ds_t||`` over all state tensors and
        over the ``h`` tensors only; entry ``t`` is the state entering step ``t``.
    """
    if getattr(encoder, "bidirectional", False):
        raise ValueError("the gradient-through-time diagnostic needs a unidirectional encoder (it runs step() "
                         "forward in time); this encoder is bidirectional")
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, time, features), got shape {tuple(x.shape)}")
    batch, steps = x.shape[0], x.shape[1]
    with torch.no_grad():
        _, template = encoder.step(x[:, 0])
    state = _map(lambda t: torch.zeros_like(t).requires_grad_(True), template)
    entering = [state]
    outputs = []
    for t in range(steps):
        y, state = encoder.step(x[:, t], state)
        outputs.append(y)
        if t < steps - 1:
            for tensor in _tensors(state):
                tensor.retain_grad()
            entering.append(state)
    losses = loss_of_outputs(torch.stack(outputs, 1))
    if losses.shape != (batch,):
        raise ValueError(f"loss_of_outputs must return a per-example loss of shape ({batch},), "
                         f"got {tuple(losses.shape)}")
    losses.sum().backward()

    def norms(parts: list[Tensor]) -> float:
        # state tensors are (layers, batch, hidden): per-example squared norms summed over layers and units
        squared = torch.zeros(batch, dtype=torch.float64)
        for p in parts:
            if p.grad is not None:
                squared += p.grad.detach().double().pow(2).sum(dim=(0, 2)).cpu()
        return float(squared.sqrt().mean())

    state_norms = np.array([norms(_tensors(s)) for s in entering])
    hidden_norms = np.array([norms(_hidden_parts(encoder, s)) for s in entering])
    return {"state": state_norms, "hidden": hidden_norms}


# ---------------------------------------------------------------------------------------------------------
# gates
# ---------------------------------------------------------------------------------------------------------

# display names of the reported gates, keyed by the field names of hybridrnn.nn.cells.LSTMGates / GRUGates
GATE_NAMES = {"lstm": {"i": "input i", "f": "forget f", "o": "output o"},
              "gru": {"r": "reset r", "z": "update z"}}


def _reference_layer(layer: nn.Module, x: Tensor) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Recompute ``layer`` on ``x (batch, time, features)`` from a zero state with the cell equations of
    :mod:`hybridrnn.nn.cells` (the layer's ``gate_trace``; a ``torch.nn.LSTM``/``GRU`` is converted first), so
    every option of the layers is covered (coupled, layer norm, paper-form GRU, tied layers...).

    Returns its outputs ``(batch, time, output_size)`` and, per (layer, direction), the gate activations
    ``{name: (batch, time, hidden)}`` under the names of :data:`GATE_NAMES`. Call it in eval mode.
    """
    kind = _kind(layer)
    if not isinstance(layer, (LSTM, GRU)):
        layer = (LSTM if kind == "lstm" else GRU).from_torch(layer, path="custom")
    outputs, trace = layer.gate_trace(x)
    names = GATE_NAMES[kind]
    return outputs, [{"layer": item["layer"], "direction": item["direction"],
                      "gates": {label: item["gates"][field] for field, label in names.items()}} for item in trace]


def gate_statistics(encoder: nn.Module, x: Tensor, saturation: float = SATURATION) -> list[dict[str, Any]]:
    """Gate activations of every LSTM/GRU layer of ``encoder`` on ``x (batch, time, features)``.

    Returns one dict per block, layer and direction: ``block`` (index, spec order), ``kind``, ``layer``,
    ``direction``, ``mean`` (gate name -> mean value), ``memory_gate`` (``"forget f"`` or ``"update z"``),
    ``saturated_low``/``saturated_high`` (fractions of that gate below ``saturation`` / above
    ``1 - saturation``) and ``values`` (that gate's activations as a flat numpy array, for histograms).
    """
    layers = recurrent_layers(encoder)
    if not layers:
        raise ValueError(f"{type(encoder).__name__} holds no LSTM/GRU layer")
    inputs: dict[int, Tensor] = {}
    outputs: dict[int, Tensor] = {}

    def hook(module, args, result, _index=None):
        inputs[_index] = args[0].detach()
        outputs[_index] = (result[0] if isinstance(result, tuple) else result).detach()

    handles = [m.register_forward_hook(lambda mod, a, r, i=i: hook(mod, a, r, i)) for i, m in enumerate(layers)]
    was_training = encoder.training
    encoder.eval()                      # no dropout of any kind: the gates the trained model uses
    references = {}
    try:
        with torch.no_grad():
            encoder(x)
            for block, layer in enumerate(layers):
                if block not in inputs:
                    raise ValueError(f"recurrent block {block} ({type(layer).__name__}) was not called by the "
                                     "encoder")
                references[block] = _reference_layer(layer, inputs[block])
    finally:
        for h in handles:
            h.remove()
        encoder.train(was_training)
    stats = []
    with torch.no_grad():
        for block, layer in enumerate(layers):
            reference, per_layer = references[block]
            error = float((reference.float() - outputs[block].float()).abs().max())
            if error > CHECK_TOLERANCE:
                raise ValueError(f"gate recomputation of block {block} ({layer!r}) does not reproduce the layer's "
                                 f"outputs (max difference {error:.2e} > {CHECK_TOLERANCE}); its options are not "
                                 "supported by the diagnostic")
            kind = _kind(layer)
            memory_gate = "forget f" if kind == "lstm" else "update z"
            for item in per_layer:
                gate = item["gates"][memory_gate]
                stats.append({"block": block, "kind": kind, "layer": item["layer"], "direction": item["direction"],
                              "mean": {k: float(v.mean()) for k, v in item["gates"].items()},
                              "memory_gate": memory_gate,
                              "saturated_low": float((gate < saturation).float().mean()),
                              "saturated_high": float((gate > 1.0 - saturation).float().mean()),
                              "values": gate.flatten().numpy()})
    return stats


# ---------------------------------------------------------------------------------------------------------
# a run of the long-range suite
# ---------------------------------------------------------------------------------------------------------

def memory_diagnostic(run_dir: str | Path, split: str = "test", examples: int = 128,
                      out: str | Path | None = None) -> dict[str, Any]:
    """Both measurements for a long-range run; writes ``memory.json`` and ``memory.png`` into ``out``
    (default the run directory) and returns what memory.json holds."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    run_dir = Path(run_dir)
    config, task, model = load_run(run_dir)
    if getattr(task, "name", None) != "long_range":
        raise RunDirError(f"{run_dir}: the memory diagnostic reads runs of task 'long_range', this is "
                         f"{getattr(task, 'name', type(task).__name__)!r}")
    task.setup()    # the run's generated problem, with its fitted state
    x, y = task.examples(split)
    x, y = task.inputs(x[:examples]), y[:examples]
    model.eval()
    encoder, head = model.encoder, model.head

    def loss_of_outputs(outputs: Tensor) -> Tensor:
        if model.per_step:
            pred = head(outputs)
            return torch.stack([task.loss(pred[b:b + 1], y[b:b + 1]) for b in range(len(y))])
        pred = head(encoder.final_output(outputs))
        return torch.stack([task.loss(pred[b:b + 1], y[b:b + 1]) for b in range(len(y))])

    grads = state_gradient_norms(encoder, x, loss_of_outputs)
    gates = gate_statistics(encoder, x)
    result = {"run_dir": str(run_dir), "encoder": config.model.encoder, "problem": task.problem,
              "length": task.length, "split": split, "examples": len(y),
              "state_gradient_norm": grads["state"].tolist(), "hidden_gradient_norm": grads["hidden"].tolist(),
              "gates": [{k: v for k, v in g.items() if k != "values"} for g in gates]}
    out = Path(out) if out is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "memory.json", json.dumps(result, indent=2))
    plot_memory(grads, gates, out / "memory.png", title=f"{config.model.encoder} on {task.problem}, T={task.length}")
    return result


def plot_memory(grads: dict[str, np.ndarray], gates: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Left: gradient norm against step (log scale); right: histograms of the forget/update gates."""
    fig, (left, right) = new_figure(1, 2, figsize=(12, 4.2))
    steps = np.arange(len(grads["state"]))
    for key, style in (("state", "-"), ("hidden", "--")):
        values = np.where(grads[key] > 0, grads[key], np.nan)
        left.plot(steps, values, style, label={"state": "whole state (h, c)", "hidden": "hidden h only"}[key])
    left.set_yscale("log")
    left.set(xlabel="step t (state entering it)", ylabel="mean ||dL/ds_t||",
             title="gradient of the loss w.r.t. the state at each step")
    left.grid(alpha=0.3, which="both")
    left.legend()
    bins = np.linspace(0, 1, 41)
    for g in gates:
        label = (f"block {g['block']} {g['kind']} l{g['layer']}{' bwd' if g['direction'] == 'backward' else ''}: "
                 f"{g['memory_gate']} mean {g['mean'][g['memory_gate']]:.2f} (<{SATURATION:g}: "
                 f"{g['saturated_low']:.0%}, >{1 - SATURATION:g}: {g['saturated_high']:.0%})")
        right.hist(g["values"], bins=bins, histtype="step", density=True, lw=1.5, label=label)
    right.set(xlabel="gate value", ylabel="density", title="forget gates (LSTM) / update gates (GRU)")
    right.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hybridrnn.experiments.memory", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    print_memory(memory_diagnostic(args.run_dir, args.split, args.examples, args.out), args.out or args.run_dir)
    return 0


def print_memory(result: dict[str, Any], out: str | Path) -> None:
    """The diagnostic's summary on standard output: the gradient at the first and last step, each memory gate."""
    norms = result["state_gradient_norm"]
    print(f"gradient norm at step 0: {norms[0]:.3g}, at the last step: {norms[-1]:.3g}")
    for g in result["gates"]:
        print(f"block {g['block']} {g['kind']} layer {g['layer']} {g['direction']}: mean {g['memory_gate']} "
              f"{g['mean'][g['memory_gate']]:.3f}, saturated <{SATURATION:g} {g['saturated_low']:.1%}, "
              f">{1 - SATURATION:g} {g['saturated_high']:.1%}")
    print(f"wrote {Path(out) / 'memory.json'} and {Path(out) / 'memory.png'}")


if __name__ == "__main__":
    sys.exit(main())
