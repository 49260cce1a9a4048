"""AWD-LSTM regularisation: weight drop (DropConnect on W_hh), AR / TAR, variable-length BPTT, NT-ASGD."""
from __future__ import annotations

import copy

import pytest
import torch

from hybridrnn.nn.hybrid import build_encoder
from hybridrnn.nn.language_model import LanguageModel
from hybridrnn.nn.recurrent import GRU, LSTM
from hybridrnn.nn.weight_drop import WeightDrop, draw_masks, weight_dropped_call, weight_hh_names

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- weight drop -----------------------------------------------------------------------------------------
def _pair(cls, **kw):
    """The same layer on the fused and on the custom path (equal float64 weights)."""
    torch.manual_seed(0)
    fused = cls(5, 7, num_layers=2, path="fused", **kw).double()
    custom = cls(5, 7, num_layers=2, path="custom", **kw).double()
    custom.load_state_dict(fused.state_dict())
    return fused, custom


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_weight_drop_p0_is_the_plain_call(cls):
    fused, _ = _pair(cls)
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    out, _ = fused(x)
    for p in (0.0,):
        dropped, _ = weight_dropped_call(fused.train(), p, x)
        assert torch.equal(dropped, out)
    torch.manual_seed(1)
    lm0 = LanguageModel(20, "lstm:8x2", embedding_dim=8, weight_drop=0.0)
    lm1 = copy.deepcopy(lm0)
    tokens = torch.randint(0, 20, (2, 7))
    assert torch.equal(lm0.train()(tokens)[0], lm1.train()(tokens)[0])


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_weight_drop_fused_equals_custom_with_the_same_mask(cls):
    fused, custom = _pair(cls)
    assert fused.path == "fused" and custom.path == "custom"
    x = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    masks = draw_masks(fused, 0.5, generator=torch.Generator().manual_seed(3))
    assert sorted(masks) == ["weight_hh_l0", "weight_hh_l1"]
    assert all(((m == 0) | (m == 2.0)).all() and (m == 0).any() for m in masks.values())
    out_f, h_f = weight_dropped_call(fused.train(), 0.5, x, masks=masks)
    out_c, h_c = weight_dropped_call(custom.train(), 0.5, x, masks=masks)
    torch.testing.assert_close(out_f, out_c, rtol=1e-10, atol=1e-12)
    out_f.square().sum().backward()
    out_c.square().sum().backward()
    for name in ("weight_hh_l0", "weight_hh_l1", "weight_ih_l1"):
        torch.testing.assert_close(getattr(fused, name).grad, getattr(custom, name).grad, rtol=1e-9, atol=1e-12)
    # DropConnect: a dropped connection gets no gradient
    assert (fused.weight_hh_l0.grad[masks["weight_hh_l0"] == 0] == 0).all()
    # and the parameters are the module's own again after the call
    assert isinstance(fused._parameters["weight_hh_l0"], torch.nn.Parameter)


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("path", ["fused", "custom"])
def test_weight_drop_mask_is_fixed_over_the_time_steps(cls, path):
    """One forward with weight drop equals a step-by-step run with the masked matrices at every step."""
    fused, custom = _pair(cls)
    layer = fused if path == "fused" else custom
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    masks = draw_masks(layer, 0.4, generator=torch.Generator().manual_seed(5))
    out, _ = weight_dropped_call(layer.train(), 0.4, x, masks=masks)
    masked = copy.deepcopy(layer)
    with torch.no_grad():
        for name, mask in masks.items():
            getattr(masked, name).mul_(mask)
    state, steps = None, []
    for t in range(x.shape[1]):
        y, state = masked.step(x[:, t], state)
        steps.append(y)
    torch.testing.assert_close(out, torch.stack(steps, 1), rtol=1e-10, atol=1e-12)
    plain, _ = layer(x)
    assert not torch.allclose(out, plain)         # the mask did act


def test_weight_drop_draws_a_new_mask_per_forward_and_eval_uses_full_weights():
    torch.manual_seed(0)
    lm = LanguageModel(20, "lstm:8>gru:8", embedding_dim=8, weight_drop=0.5)
    plain = LanguageModel(20, "lstm:8>gru:8", embedding_dim=8, weight_drop=0.0)
    plain.load_state_dict(lm.state_dict())
    assert weight_hh_names(lm.encoder) == ["blocks.0.weight_hh_l0", "blocks.1.weight_hh_l0"]
    tokens = torch.randint(0, 20, (2, 7))
    lm.train()
    a, b = lm(tokens)[0], lm(tokens)[0]
    assert not torch.allclose(a, b)               # a fresh mask each forward
    assert torch.equal(lm.eval()(tokens)[0], plain.eval()(tokens)[0])   # eval: the full weights
    assert not torch.allclose(lm.train()(tokens)[0], plain.train()(tokens)[0])
    assert set(lm.state_dict()) == set(plain.state_dict())             # names unchanged


def test_weight_drop_wrapper_and_bounds():
    enc = build_encoder("gru:6", 4)
    wrapped = WeightDrop(enc, 0.3)
    assert wrapped.output_size == enc.output_size
    x = torch.randn(2, 5, 4)
    assert torch.equal(wrapped.eval()(x)[0], enc.eval()(x)[0])
    with pytest.raises(ValueError, match="weight_drop"):
        WeightDrop(enc, 1.0)
    with pytest.raises(ValueError, match="weight_drop"):
        LanguageModel(20, "lstm:8", embedding_dim=8, weight_drop=1.5)


# ---- AR / TAR ------------------------------------------------------------------------------------------------
from hybridrnn.nn.language_model import activation_penalties  # noqa: E402


def test_ar_tar_by_hand():
    raw = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])        # (B=1, T=2, W=2)
    dropped = torch.tensor([[[2.0, 0.0], [0.0, 4.0]]])
    # AR: mean(4, 0, 0, 16) = 5; TAR: mean((3-1)^2, (5-2)^2) = (4 + 9) / 2 = 6.5
    assert float(activation_penalties(raw, dropped, 2.0, 0.0)) == pytest.approx(10.0)
    assert float(activation_penalties(raw, dropped, 0.0, 1.0)) == pytest.approx(6.5)
    assert float(activation_penalties(raw, dropped, 2.0, 1.0)) == pytest.approx(16.5)
    assert float(activation_penalties(raw, dropped, 0.0, 0.0)) == 0.0
    assert float(activation_penalties(raw[:, :1], dropped[:, :1], 0.0, 3.0)) == 0.0   # one step: no TAR


def _corpus(tmp_path, lines=120, seed=0):
    import random
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(12)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 9)))
                              for _ in range(lines)) + "\n")
    return path


def _lm_config(tmp_path, **lm):
    from hybridrnn.tasks.language_model import LanguageModelConfig
    return LanguageModelConfig.model_validate({
        "task": "language_model", "data": {"train": str(_corpus(tmp_path))},
        "model": {"encoder": "lstm:8", "init": "torch"},
        "lm": {"bptt": 10, "embedding_dim": 8, **lm},
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.5, "optimizer": "sgd", "momentum": 0.0,
                  "progress": "none", "plots": False}})


def test_training_step_adds_ar_and_tar(tmp_path):
    from hybridrnn.tasks.language_model import LanguageModelTask
    from torch.nn import functional as F
    task = LanguageModelTask(_lm_config(tmp_path, ar=2.0, tar=1.0, output_dropout=0.0))
    task.setup()
    torch.manual_seed(0)
    model = task.build_model().train()
    x, y, first = next(iter(task.train_batches(0, torch.Generator())))
    loss, n = task.training_step(model, (x, y, first))
    logits, _, (raw, dropped) = model(x, None, return_hidden=True)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    by_hand = ce + 2.0 * dropped.pow(2).mean() + 1.0 * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert loss.item() > ce.item() and n == y.numel()


# ---- variable-length BPTT --------------------------------------------------------------------------------------
def test_variable_bptt_lengths_vary_with_the_seed_and_walk_the_stream(tmp_path):
    from hybridrnn.tasks.language_model import LanguageModelTask
    task = LanguageModelTask(_lm_config(tmp_path, variable_bptt=True))
    task.setup()
    a = task.window_lengths(0)
    assert a == task.window_lengths(0)                              # same seed and epoch: same lengths
    assert a != task.window_lengths(1)                              # another epoch: others
    assert len(set(a)) > 3 and min(a) >= 1 and len(a) == task.num_train_batches()
    other = LanguageModelTask(_lm_config(tmp_path, variable_bptt=True))
    other.config.train.seed = 1
    other.setup()
    assert other.window_lengths(0) != a                             # another seed: others
    # windows follow each other along the rows across epochs, restarting at 0 at the end of the rows
    n = (task.ids["train"].numel() - 1) // task.config.train.batch_size
    walk = task.variable_windows(0) + task.variable_windows(1) + task.variable_windows(2)
    for (s0, l0), (s1, _) in zip(walk, walk[1:]):
        assert s1 == (0 if s0 + l0 >= n else s0 + l0)
    batches = list(task.train_batches(1, torch.Generator()))
    assert [b[0].shape[1] for b in batches] == [length for _, length in task.variable_windows(1)]
    # a statistical check of the distribution: mean near 0.975 * bptt, about 5% near bptt / 2
    task.config.lm.bptt = 70
    lengths = torch.tensor([v for e in range(40) for v in task.window_lengths(e)], dtype=torch.float64)
    assert abs(float(lengths.mean()) - 0.975 * 70) < 1.5


class _LrRecorder:
    """Records (window length, lr during the step, lr after it) for every step."""

    def __init__(self):
        from hybridrnn.train.callbacks import Callback

        rec = self

        class Recorder(Callback):
            def on_batch_start(self, trainer, epoch, step, batch):
                rec.during.append((batch[0].shape[1], trainer.optimizer.param_groups[0]["lr"]))

            def on_step_end(self, trainer, epoch, step, loss, items):
                rec.after.append(trainer.optimizer.param_groups[0]["lr"])

        self.during, self.after, self.callback = [], [], Recorder()


def test_variable_bptt_scales_the_lr_for_the_step_and_restores_it(tmp_path):
    from hybridrnn.api import train_run
    rec = _LrRecorder()
    cfg = _lm_config(tmp_path, variable_bptt=True)
    train_run(cfg, out=tmp_path / "run", callbacks=[rec.callback])
    assert len(rec.during) == len(rec.after) > 0
    for length, lr in rec.during:
        assert lr == pytest.approx(0.5 * length / 10)
    assert all(lr == 0.5 for lr in rec.after)
    assert len({length for length, _ in rec.during}) > 2
    # without variable_bptt nothing is scaled
    rec2 = _LrRecorder()
    train_run(_lm_config(tmp_path), out=tmp_path / "run2", callbacks=[rec2.callback])
    assert all(lr == 0.5 for _, lr in rec2.during)


# ---- NT-ASGD -------------------------------------------------------------------------------------------------
from hybridrnn.train.callbacks import NTASGD  # noqa: E402

SCRIPT = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 2.0, 1.5]
# n = 2: epoch t triggers when v_t > min(v_1 .. v_{t-3}):  t=4: 3.5 > 5 no; t=5: 3.6 > min(5, 4) no;
# t=6: 3.7 > min(5, 4, 3) = 3 yes -> averaging from the first step of epoch 7


def test_nt_asgd_condition_by_hand():
    cb = NTASGD(2)
    assert [cb.should_trigger(SCRIPT[:t], "min") for t in range(1, 9)] == [False] * 5 + [True, False, False]
    assert not cb.should_trigger([5, 4, 3, 2, 1, 0.5], "min")           # monotone: never
    assert cb.should_trigger([0.5, 0.6, 0.7, 0.65, 0.4], "max")         # 0.4 < max(0.5, 0.6)
    assert not cb.should_trigger([0.5, 0.6, 0.7, 0.65, 0.62], "max")   # 0.62 >= 0.6


def _register(monkeypatch):
    """``task: toy`` is the toy regression task with the validation loss of epoch t scripted as SCRIPT[t-1]."""
    import sys
    from hybridrnn.api import registry
    from toy_task import ToyTask

    class Scripted(ToyTask):
        def evaluate(self, model, split):
            out = super().evaluate(model, split)
            if split == "val":
                out["loss"] = SCRIPT[self._epoch - 1]
            return out

    module = type(sys)("awd_scripted_task")
    module.Scripted = Scripted
    monkeypatch.setitem(sys.modules, "awd_scripted_task", module)
    monkeypatch.setitem(registry.TASKS, "toy", "awd_scripted_task:Scripted")


def _toy_cfg(epochs):
    return {"task": "toy", "model": {"encoder": "gru:4"},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "optimizer": "nt_asgd", "nt_asgd_interval": 2,
                      "progress": "none", "plots": False, "seed": 0}}


def _average_key(tensors):
    return {k: v for k, v in tensors.items() if k.endswith(".nt_asgd_average")}


def test_nt_asgd_switches_exactly_at_the_trigger_and_saves_the_running_average(tmp_path, monkeypatch):
    import json
    from hybridrnn.api import train_run
    from hybridrnn.train.callbacks import Callback
    from hybridrnn.train.checkpoint import read_safetensors

    _register(monkeypatch)
    seen: dict[int, list[dict[str, torch.Tensor]]] = {}

    class Weights(Callback):          # the SGD weights after every step, by 1-based epoch
        def on_step_end(self, trainer, epoch, step, loss, items):
            seen.setdefault(epoch + 1, []).append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    trained = train_run(_toy_cfg(8), out=tmp_path / "a", callbacks=[Weights()])
    run = trained.run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["nt_asgd_averaged"] for r in records] == [0] * 6 + [1, 1]
    state = json.loads((run / "state.json").read_text())
    assert state["callbacks"]["nt_asgd"]["triggered_epoch"] == 6
    steps = seen[7] + seen[8]
    assert state["callbacks"]["nt_asgd"]["steps"] == len(steps)
    # the best epoch (8, val 1.5) saved the mean of the SGD weights after every step since the trigger
    best, _ = read_safetensors(run / "model.safetensors")
    last, _ = read_safetensors(run / "last.safetensors")
    for name in best:
        mean = torch.stack([s[name] for s in steps]).mean(0)
        torch.testing.assert_close(best[name], mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(last[name], steps[-1][name], rtol=0, atol=0)     # training weights
        assert not torch.allclose(best[name], last[name])
    # the model returned holds the average
    for name, value in trained.model.state_dict().items():
        torch.testing.assert_close(value, best[name], rtol=0, atol=0)
    # the average is part of the optimizer state in the checkpoint
    assert _average_key(read_safetensors(run / "optimizer.safetensors")[0])


def test_nt_asgd_resume_restores_the_average(tmp_path, monkeypatch):
    from hybridrnn.api import train_run
    from hybridrnn.train.checkpoint import read_safetensors

    _register(monkeypatch)
    full = train_run(_toy_cfg(8), out=tmp_path / "full").run_dir
    part = train_run(_toy_cfg(7), out=tmp_path / "part").run_dir         # stops inside the averaging
    train_run(resume=part, overrides=["train.epochs=8"])
    for name in ("model.safetensors", "last.safetensors", "optimizer.safetensors"):
        a, _ = read_safetensors(full / name)
        b, _ = read_safetensors(part / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert _average_key(read_safetensors(part / "optimizer.safetensors")[0])
