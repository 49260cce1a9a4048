"""The Trainer: the training loop every task shares.

It only talks to a :class:`~hybridrnn.train.task.Task`: batches, a loss, metrics. It does the optimiser,
the learning-rate schedule, gradient clipping by global norm (the pre-clip norm is logged), bf16 autocast,
tracking of the best weights by ``task.monitor``, the NaN/inf guard, resuming from a checkpoint, and
DistributedDataParallel under torchrun (each process takes its shard of every global batch). Everything else
(progress output, early stopping, checkpoint writing, TensorBoard, Optuna pruning) is a
:class:`~hybridrnn.train.callbacks.Callback`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridrnn.config import TrainConfig
from hybridrnn.train import checkpoint as ckpt
from hybridrnn.errors import ConfigError, DataError, HybridRNNError
from hybridrnn.train.callbacks import Callback
from hybridrnn.train.distributed import DDPModel, DistContext, all_reduce_sum, barrier
from hybridrnn.train.schedule import LRSchedule
from hybridrnn.train.seeding import epoch_generator, get_rng_states, set_rng_states
from hybridrnn.train.task import Task


class NonFiniteLossError(HybridRNNError):
    """Training produced a NaN or infinite loss (or gradient norm).

    ``where``: what and where (epoch, step); ``epoch``: the epoch (1-based) it happened in; ``kept``: what the
    run directory still holds (the run pipeline fills it in, since only it knows about checkpoints)."""

    HINT = "Lower train.lr, set train.clip_norm, or check the data for NaN / inf values."

    def __init__(self, where: str, epoch: int = 0, kept: str | None = None):
        self.where, self.epoch, self.kept = where, epoch, kept
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.where}; {self.kept or 'no checkpoint was written'}. {self.HINT}"


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did. ``history`` holds one record per epoch (as in metrics.jsonl)."""

    epochs_run: int
    best_epoch: int
    best_metric: float
    monitor: str
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def build_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config.optimizer`` over ``params`` (tensors, or param-group dicts; a group's ``lr``
    wins over ``config.lr``). ``nt_asgd`` is plain SGD without momentum here; the averaging is the
    :class:`~hybridrnn.train.callbacks.NTASGD` callback."""
    if config.optimizer == "nt_asgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.0, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def layer_param_groups(model: nn.Module, params: list[torch.Tensor], config: TrainConfig) -> list[dict[str, Any]]:
    """Discriminative learning rates (ULMFiT): ``model.layer_groups()`` lists the parameter groups from the input
    (embedding) to the output (head); group ``k`` below the top trains with ``lr / decay**k``
    (``decay = train.lr_decay_per_layer``). Each optimizer group keeps its factor as ``lr_scale``, which the
    Trainer applies to every learning rate the schedule gives. Only parameters in ``params`` are kept."""
    groups_of = getattr(model, "layer_groups", None)
    if groups_of is None:
        raise ConfigError(f"train.lr_decay_per_layer is {config.lr_decay_per_layer} but the model "
                          f"({type(model).__name__}) has no layer groups (the text classifier has); leave it unset")
    wanted = {id(p) for p in params}
    layers = [[p for p in group if id(p) in wanted] for group in groups_of()]
    layers = [g for g in layers if g]
    top = len(layers) - 1
    out = []
    for k, group in enumerate(layers):
        scale = float(config.lr_decay_per_layer) ** -(top - k)
        out.append({"params": group, "lr": config.lr * scale, "lr_scale": scale})
    return out


def check_data(task: Task, config: TrainConfig) -> None:
    """Clear errors before any training: an empty split, or a batch size larger than the training data."""
    for split in ("train", "val"):
        try:
            n = task.num_examples(split)
        except NotImplementedError:
            continue
        if n == 0:
            raise DataError(f"the {split!r} split of task {task.name!r} is empty (0 examples): check the data "
                             "path, the split fractions or dates, and the window sizes")
        if split == "train" and config.batch_size > n:
            raise ConfigError(f"train.batch_size is {config.batch_size} but the training split has only {n} "
                             f"examples; use train.batch_size <= {n}")
    if task.num_train_batches() == 0:
        raise DataError(f"task {task.name!r} yields no training batches (num_train_batches() == 0): the "
                        "training data is too short for one batch")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively: CUDA with bf16 support, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_bf16(config: TrainConfig, device: torch.device) -> None:
    """A clear error before training when ``train.bf16`` is asked for on hardware without native bfloat16."""
    if config.bf16 and not bf16_supported(device):
        what = "this GPU" if device.type == "cuda" else "this CPU (it has neither AVX512-BF16 nor AMX)"
        raise ConfigError(f"train.bf16 is true but {what} has no native bfloat16 arithmetic: bf16 autocast would "
                          "be emulated (measured 2-7x slower than fp32 on such a CPU, benchmarks/results/bf16.md). "
                          "Set train.bf16: false.")


class Trainer:
    """Trains ``model`` on ``task`` with ``config``; ``callbacks`` do the rest (see the module docstring).

    Public state that callbacks read: ``epoch`` (finished epochs), ``history`` (one record per epoch),
    ``best_metric``, ``best_epoch``, ``model``, ``optimizer``, ``config``, ``task``, ``monitor``, ``dist``,
    ``device``; a callback sets ``should_stop`` to end training after the current epoch.
    """

    def __init__(self, task: Task, model: nn.Module, config: TrainConfig, *, device: torch.device | str = "cpu",
                 dist: DistContext | None = None, callbacks: list[Callback] | tuple[Callback, ...] = ()):
        self.task = task
        self.config = config
        self.device = torch.device(device)
        self.dist = dist or DistContext()
        self.callbacks = list(callbacks)
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params if config.lr_decay_per_layer is None
                                         else layer_param_groups(self.model, self.params, config), config)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model: nn.Module = DDPModel(self.model, device_ids=ids)
        else:
            self.train_model = self.model
        self.monitor = task.monitor
        self.mode = task.monitor_mode
        if self.mode not in ("min", "max"):
            raise ValueError(f"task {task.name!r}: monitor_mode must be 'min' or 'max', got {self.mode!r}")
        self.schedule = LRSchedule(config, task.num_train_batches(), self.mode)
        self.epoch = 0                      # finished epochs
        self.best_metric = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.should_stop = False
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        #: set by a callback's ``on_validation_start`` when the weights it validates are not the model's
        #: training weights (NT-ASGD's average): the best weights are then ``best_state``, not the model's
        self.validated_other_weights = False
        self.autocast_device = "cuda" if self.device.type == "cuda" else "cpu"

    @property
    def stopped_early(self) -> bool:
        return self.should_stop and self.epoch < self.config.epochs

    # ------------------------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train until ``config.epochs`` or a callback stops it; leaves the best weights in the model."""
        check_data(self.task, self.config)
        check_bf16(self.config, self.device)
        try:
            self._call("on_fit_start")
            while self.epoch < self.config.epochs and not self.should_stop:
                record = self.train_one_epoch(self.epoch)
                t0 = time.perf_counter()
                self.validated_other_weights = False
                self._call("on_validation_start")
                val = self.validate()
                record.update({f"val_{k}": float(v) for k, v in val.items()})
                record["seconds"] = round(record["seconds"] + time.perf_counter() - t0, 6)
                self._end_epoch(record, val)
        finally:
            self._call_all_then_raise("on_fit_end")
        self.restore_best()
        return FitResult(self.epoch, self.best_epoch, self.best_metric, self.monitor, self.stopped_early,
                         list(self.history))

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _call_all_then_raise(self, hook: str) -> None:
        """Call ``hook`` on every callback even if one raises; re-raise the first error afterwards."""
        error: BaseException | None = None
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(self)
            except BaseException as exc:   # noqa: BLE001 - every callback must get its chance to clean up
                error = error or exc
        if error is not None:
            raise error

    # ------------------------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over ``task.train_batches``; returns the epoch record (train loss, lr, grad norms, ...)."""
        cfg, task, dist, device = self.config, self.task, self.dist, self.device
        model, optimizer, params = self.train_model, self.optimizer, self.params
        model.train()
        generator = epoch_generator(cfg.seed, epoch)
        schedule_steps = not self.schedule.constant
        clip = cfg.clip_norm if cfg.clip_norm is not None else math.inf
        loss_sum, items, norm_sum, norm_max, steps = 0.0, 0, 0.0, 0.0, 0
        lr = self.schedule.lr(epoch, 0)
        t0 = time.perf_counter()
        for step, batch in enumerate(task.train_batches(epoch, generator)):
            if schedule_steps or step == 0:
                lr = self.schedule.lr(epoch, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
            self._call("on_batch_start", epoch, step, batch)
            if dist.enabled:
                batch = task.shard_batch(batch, dist.rank, dist.world_size)
            if batch is not None:
                batch = task.to_device(batch, device)
                with torch.autocast(self.autocast_device, dtype=torch.bfloat16, enabled=cfg.bf16):
                    loss, n = task.training_step(model, batch)
                loss = loss.float()
            else:   # an empty shard: take part in the gradient all-reduce with zero gradients
                loss, n = sum(p.sum() for p in params) * 0.0, 0
            if dist.enabled:
                # every process weights its shard by n_r / N; DDP then averages over W processes, so the
                # scaled loss is loss_r * n_r * W / N and the synchronised gradient is the global mean
                totals = all_reduce_sum(torch.tensor([loss.detach().item() * n, float(n)], dtype=torch.float64))
                global_n = totals[1].item()
                loss_value = totals[0].item() / max(global_n, 1.0)
                backward_loss = loss * (n * dist.world_size / max(global_n, 1.0))
            else:
                loss_value, global_n, backward_loss = loss.item(), n, loss
            if not math.isfinite(loss_value):
                self._non_finite("loss", loss_value, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            backward_loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            if not math.isfinite(norm):
                self._non_finite("gradient norm", norm, epoch, step)
            optimizer.step()
            loss_sum += loss_value * global_n
            items += int(global_n)
            norm_sum += norm
            norm_max = max(norm_max, norm)
            steps += 1
            self._call("on_step_end", epoch, step, loss_value, int(global_n))
        seconds = time.perf_counter() - t0
        if steps == 0:
            raise DataError(f"task {task.name!r} yielded no training batches in epoch {epoch + 1}")
        return {"epoch": epoch + 1, "train_loss": loss_sum / max(items, 1), "lr": lr,
                "grad_norm": norm_sum / steps, "grad_norm_max": norm_max, "seconds": seconds,
                "items_per_second": items / max(seconds, 1e-9)}

    def validate(self, split: str = "val") -> dict[str, float]:
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = self.task.evaluate(self.model, split)
        finally:
            self.model.train()
        if self.monitor not in metrics:
            raise ValueError(f"task {self.task.name!r} monitors {self.monitor!r} but evaluate() returned only "
                             f"{sorted(metrics)}")
        return {k: float(v) for k, v in metrics.items()}

    # ------------------------------------------------------------------------------------------------
    def _non_finite(self, what: str, value: float, epoch: int, step: int) -> None:
        raise NonFiniteLossError(f"training stopped: the {what} is {value} at epoch {epoch + 1}, step {step + 1} "
                                 f"(batch {step + 1} of {self.task.num_train_batches()})", epoch=epoch + 1)

    def _improved(self, metric: float) -> bool:
        if math.isnan(metric):
            return False
        if self.mode == "min":
            return metric < self.best_metric - self.config.min_delta
        return metric > self.best_metric + self.config.min_delta

    def _end_epoch(self, record: dict[str, Any], val: dict[str, float]) -> None:
        metric = val[self.monitor]
        self.epoch = record["epoch"]
        improved = self._improved(metric)
        record["best"] = improved
        if improved:
            self.best_metric, self.best_epoch = metric, self.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._call("on_validation_end")
        self.schedule.end_epoch(metric)
        self.history.append(record)
        self._call("on_epoch_end", record)

    def state_dict(self) -> dict[str, Any]:
        """Everything besides tensors that a resumed run needs (JSON-serialisable)."""
        return {"epoch": self.epoch, "epochs": self.config.epochs, "monitor": self.monitor, "mode": self.mode,
                "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "schedule": self.schedule.state_dict(),
                "rng": get_rng_states(), "world_size": self.dist.world_size,
                "callbacks": {c.state_key: c.state_dict() for c in self.callbacks if c.state_key}}

    def resume_from(self, run_dir: str | Path) -> None:
        """Restore weights, optimizer, counters, RNG states and callback states from ``run_dir``'s last
        checkpoint (finishing or discarding a half-done commit first); rank 0 trims ``metrics.jsonl`` to it."""
        run_dir = Path(run_dir)
        # only the writer (rank 0) finishes a half-done commit; the other processes read once it has
        if self.dist.is_main:
            ckpt.recover_checkpoint(run_dir)
        barrier(self.dist)
        state = ckpt.load_checkpoint(run_dir, self.model, self.optimizer, write=False)
        try:
            self.epoch = int(state["epoch"])
            self.best_metric = ckpt.json_float(state["best_metric"])
            self.best_epoch = int(state["best_epoch"])
            self.should_stop = bool(state["stopped_early"])
            self.schedule.load_state_dict(state["schedule"])
            set_rng_states(state["rng"])
            saved = state.get("callbacks", {})
            for callback in self.callbacks:
                if callback.state_key and callback.state_key in saved:
                    callback.load_state_dict(saved[callback.state_key])
        except (KeyError, TypeError, ValueError) as exc:
            raise ckpt.RunDirError(f"{run_dir / ckpt.STATE} is incomplete or malformed "
                                   f"({type(exc).__name__}: {exc})") from None
        self.history = [r for r in ckpt.read_jsonl(run_dir / ckpt.METRICS) if r.get("epoch", 0) <= self.epoch]
        if len(self.history) != self.epoch:
            raise ckpt.RunDirError(f"{run_dir / ckpt.METRICS} has {len(self.history)} epochs, "
                                   f"state.json says {self.epoch}")
        if self.best_epoch > 0:
            best = copy.deepcopy(self.model)
            ckpt.load_weights(run_dir / ckpt.BEST_WEIGHTS, best)
            self.best_state = {k: v.detach().clone() for k, v in best.state_dict().items()}
        if self.dist.is_main:
            ckpt.write_jsonl(run_dir / ckpt.METRICS, self.history)

    def restore_best(self) -> None:
        """Put the best weights (by the monitored validation metric) back into the model."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
