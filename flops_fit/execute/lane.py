"""One experiment inside the training loop: a :class:`Lane`.

A lane holds everything of one run between steps — model, optimizer, schedule, data position,
the accumulated loss, the curve, the checkpoint cadence, its lease — and knows what follows a
step (:meth:`Lane.advance`: schedule, logging, held-out loss, divergence, pins, checkpoints) and
how the run ends (:meth:`Lane.finish`).  The step itself is not the lane's: one lane is stepped by
:class:`~flops_fit.execute.step.TrainStep` (eager or a CUDA graph), several lanes of one shape
together by :class:`~flops_fit.execute.group.GroupStep` (one batched forward and backward).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from ..core.errors import RunError
from ..plan.plan import Job, Optim
from ..spec.components import build_data, build_loss, build_model, call_model
from ..store.lease import Lease, LeaseLost
from ..store.store import CurvePoint, RunRecord, Store
from .checkpoint import load_checkpoint, save_checkpoint, save_rng
from .data import Layout, make_sources
from .run_state import _diverged, _record, _result, _rewrite_metrics, _Run
from .schedule import lr_multiplier
from .signals import stopping

__all__ = ["Lane", "log_steps"]


def log_steps(steps: int, points: int) -> list[int]:
    """Steps (1-based counts) at which the curve is logged: half geometric, half linear in FLOPs."""
    half = max(2, points // 2)
    geometric = {int(round(math.exp(math.log(steps) * i / (half - 1)))) for i in range(half)}
    linear = {int(round(steps * i / half)) for i in range(1, half + 1)}
    return sorted(s for s in geometric | linear | {1, steps} if 1 <= s <= steps)


def _eval_steps(logged: list[int], count: int) -> set[int]:
    if count <= 0:
        return set()
    picks = {logged[min(len(logged) - 1, int(round((len(logged) - 1) * (i + 1) / (count + 1))))]
             for i in range(count)}
    return picks | {logged[-1]}


def _param_groups(model: torch.nn.Module, o: Optim) -> list[dict]:
    """AdamW groups: the model's own ``optimizer_groups()`` when it has one, else decay on matrices only.

    A model may return ``[{"params": [...], "lr_scale": float, "weight_decay": float}, ...]``
    (for example μP, which scales hidden-matrix learning rates by base_width / width).
    """
    if callable(getattr(model, "optimizer_groups", None)):
        groups = []
        for g in model.optimizer_groups():
            g = dict(g)
            scale = g.pop("lr_scale", 1.0)
            groups.append({**g, "lr": o.learning_rate * scale,
                           "weight_decay": g.get("weight_decay", o.weight_decay)})
        return groups
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(o: Optim, model: torch.nn.Module, device: torch.device, folders: list[str]):
    if o.target:
        from ..core.imports import resolve

        return resolve(o.target, folders)(model.parameters(), o.learning_rate)
    return torch.optim.AdamW(_param_groups(model, o), lr=o.learning_rate, betas=tuple(o.betas), eps=o.eps,
                             fused=device.type == "cuda")


def evaluate(model: torch.nn.Module, batches: list, loss_fn: Callable, accelerator: Accelerator) -> float:
    """The mean loss over the fixed held-out batches (all processes agree on it)."""
    model.eval()
    with torch.no_grad():
        total = torch.zeros((), device=accelerator.device)
        for inputs, targets in batches:
            total += loss_fn(call_model(model, inputs), targets).detach().float()
        mean = total / max(1, len(batches))
    model.train()
    return float(accelerator.reduce(mean, reduction="mean")) if accelerator.num_processes > 1 else float(mean)


class Lane:
    """One experiment between steps.  Built in the order a run needs: seed, model, optimizer and
    schedule, ``accelerator.prepare``, data, then the state of ``resume_from``.

    ``end``: the step this call trains to (a trunk's last branch point, else the job's steps);
    ``inspect(model)`` sees the freshly built model; ``lease``: the claim it trains under."""

    def __init__(self, job: Job, store: Store, accelerator: Accelerator, resume_from: str | None = None,
                 on_log: Callable[[CurvePoint], None] | None = None, compile: bool = False,
                 end: int | None = None, inspect: Callable[[torch.nn.Module], None] | None = None,
                 lease: Lease | None = None):
        self.job, self.store, self.accelerator = job, store, accelerator
        self.on_log, self.lease = on_log, lease
        self.end = end or job.steps
        self.exp_dir = store.exp_dir(job.experiment_id)
        model = self._model(inspect)
        self._optimize(model, compile)
        self._data()
        self._position(resume_from)
        self.model.train()
        self.start = time.perf_counter()

    def _model(self, inspect: Callable[[torch.nn.Module], None] | None) -> torch.nn.Module:
        """1. Seed python, numpy and torch identically on every process (the same initial weights);
        build the model and the loss."""
        job = self.job
        set_seed(job.loop.seed)
        model = build_model(job.model.target, job.size_param, job.size, job.model.kwargs, job.search_path)
        self.raw_model = model
        if inspect is not None:
            inspect(model)
        self.loss_fn = build_loss(job.loss.target, job.loss.kwargs, job.search_path)
        return model

    def _optimize(self, model: torch.nn.Module, compile: bool) -> None:
        """2. The optimizer (fused AdamW on CUDA) and an LR schedule that is a pure function of the
        step; the model compiled if asked, and prepared."""
        job, accelerator, sched = self.job, self.accelerator, self.job.schedule
        model.to(accelerator.device)
        optimizer = _optimizer(job.optim, model, accelerator.device, job.search_path)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(
            sched.kind, job.steps, sched.warmup_steps, sched.min_lr_ratio, sched.decay_fraction))
        if compile:
            # A sweep trains many sizes in one process: start each from a clean dynamo cache so
            # the per-function recompile limit never silently sends a later experiment to eager.
            torch._dynamo.reset()
            model = torch.compile(model)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        # Without an fp16 GradScaler accelerate's optimizer and clipping wrappers do nothing this loop
        # needs (it accumulates and syncs gradients itself) and cost ~10% of a tiny model's step (a
        # package lookup per optimizer step, module walks per clip): step and clip with torch directly.
        self.direct = accelerator.scaler is None and accelerator.distributed_type in (
            DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
        self.step_optimizer = (getattr(self.optimizer, "optimizer", self.optimizer) if self.direct
                               else self.optimizer)

    def _data(self) -> None:
        """3. Data: this process's share of each global batch, split into micro-batches."""
        job, accelerator, lp = self.job, self.accelerator, self.job.loop
        world = accelerator.num_processes
        if lp.batch_size % world or (lp.micro_batch_size and (lp.batch_size // world) % lp.micro_batch_size):
            raise RunError(f"train.batch_size = {lp.batch_size} does not split into {world} processes"
                           + (f" of micro-batches of {lp.micro_batch_size}" if lp.micro_batch_size else "")
                           + "; choose a batch size divisible by the process count")
        micro = lp.micro_batch_size or lp.batch_size // world
        self.layout = Layout(lp.batch_size, accelerator.process_index, world, micro)
        folders = job.search_path
        data = build_data(job.data.target, job.data.kwargs, folders)
        eval_data = build_data(job.eval_data.target, job.eval_data.kwargs, folders) if job.eval_data else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.source = make_sources(data, eval_data, job, self.layout, accelerator.device, lp.num_workers)
        self.notes = [str(w.message) for w in caught]

    def _position(self, resume_from: str | None) -> None:
        """4. Where training stands: every state from the latest complete checkpoint when resuming
        (the data position is the step), the steps that log, evaluate and pin."""
        job, accelerator = self.job, self.accelerator
        self.run = run = _Run(job)
        acc_sum, self.count = 0.0, 0
        if resume_from:
            acc_sum = self._resume(Path(resume_from))
        if accelerator.is_main_process:
            _rewrite_metrics(self.exp_dir, run.curve)
        logged = log_steps(job.steps, job.loop.log_points)
        self.log_at, self.eval_at = set(logged), _eval_steps(logged, job.loop.eval_points)
        self.pins = set(job.pins)
        self.acc = torch.full((), acc_sum, device=accelerator.device)
        self.batches = self.source.batches(run.step)
        self.last_ckpt = time.monotonic()
        self.agree_every = max(8, job.steps // 2000)  # data-parallel: ranks agree on a signal ~2000 times

    def _resume(self, folder: Path) -> float:
        run, state = self.run, load_checkpoint(folder, self.accelerator.process_index, self.raw_model,
                                               self.optimizer, self.scheduler, self.accelerator.scaler)
        run.step, run.initial_loss = state["step"], state["initial_loss"]
        run.curve = [CurvePoint.model_validate(p) for p in state["curve"]]
        run.train_seconds, self.count = state["train_seconds"], state["acc_count"]
        run.pre_cooldown_loss = state.get("pre_cooldown_loss")
        run.trunk_seconds = state.get("trunk_seconds", 0.0)
        if self.job.branch is not None and folder.parent.name == "pinned":  # a branch starts off its trunk
            run.pre_cooldown_loss, run.trunk_seconds = state.get("eval_loss"), run.train_seconds
            _take_schedule(self.optimizer, self.scheduler)
            if run.curve and run.curve[-1].step == run.step:  # the trunk logged its next rate: the cooldown's
                run.curve[-1] = run.curve[-1].model_copy(update={"lr": self.scheduler.get_last_lr()[0]})
        return state["acc_sum"]

    @property
    def done(self) -> bool:
        """Trained to ``end``, or diverged."""
        return self.run.step >= self.end or self.run.status != "ok"

    def evaluate(self) -> float:
        return evaluate(self.model, self.source.eval_batches, self.loss_fn, self.accelerator)

    def wants_stop(self) -> bool:
        """Whether a signal asks this run to stop after the step just taken (data-parallel: every rank
        agrees, at the same step, every ``agree_every`` steps)."""
        if self.run.step >= self.end:
            return False
        if self.accelerator.num_processes > 1:
            return (stopping.in_job and self.run.step % self.agree_every == 0
                    and _any_rank(stopping.signum is not None, self.accelerator))
        return stopping.signum is not None

    def advance(self, signal: bool | None = None) -> bool:
        """After a step: the schedule, the log point (the one host sync), a pin, the lease, and a
        checkpoint on cadence or because a signal asks to stop; returns whether it asked (the caller
        then raises Interrupted).  ``signal``: whether one came, read once for a group of lanes
        (None: :meth:`wants_stop` asks, data-parallel ranks included)."""
        run, job, accelerator = self.run, self.job, self.accelerator
        self.scheduler.step()
        run.step += 1
        self.count += 1
        if run.step in self.log_at:
            acc = accelerator.reduce(self.acc, "mean") if accelerator.num_processes > 1 else self.acc
            train_loss = float(acc) / self.count
            self.acc.zero_()
            self.count = 0
            run.initial_loss = train_loss if run.initial_loss is None else run.initial_loss
            run.train_seconds += time.perf_counter() - self.start
            eval_loss = None
            if run.step in self.eval_at and run.step != self.end:  # not counted as training time
                eval_loss = self.evaluate()
            self.start = time.perf_counter()
            batch = job.loop.batch_size
            point = CurvePoint(step=run.step, tokens=run.step * batch * job.tokens_per_sample,
                               flops=run.step * batch * job.flops_per_sample,
                               train_loss=train_loss if math.isfinite(train_loss) else None,
                               lr=self.scheduler.get_last_lr()[0], seconds=run.train_seconds,
                               eval_loss=eval_loss)
            _record(run, point, self.exp_dir, accelerator, self.on_log)
            if _diverged(run, train_loss):
                return False
        if run.step in self.pins and run.status == "ok":  # a trunk's branch point: pinned, held-out loss
            run.train_seconds += time.perf_counter() - self.start
            pin_loss = self.evaluate()
            if self.lease is not None:
                self.lease.check()
            self._checkpoint(pinned=True, eval_loss=pin_loss)
            self.start = time.perf_counter()
        stop = self.wants_stop() if signal is None else signal and run.step < self.end
        if self.lease is not None and self.lease.lost is not None:  # another process took the lease over
            raise LeaseLost(f"{job.experiment_id}: {self.lease.lost} at step {run.step}; nothing written")
        if stop or _checkpoint_due(job.loop, run.step, self.end, self.last_ckpt):
            if self.lease is not None:
                self.lease.check()  # renewed, or LeaseLost: a resumed, overtaken owner writes no checkpoint
            run.train_seconds += time.perf_counter() - self.start
            self._checkpoint()
            self.last_ckpt = time.monotonic()
            self.start = time.perf_counter()
        return stop

    def finish(self, extra_notes: list[str] = ()) -> RunRecord:
        """The final held-out loss over the fixed eval batches, and the result record."""
        run = self.run
        run.train_seconds += time.perf_counter() - self.start
        final = self.evaluate() if run.status == "ok" else math.nan
        if run.status == "ok" and not math.isfinite(final):
            run.status, run.reason = "diverged", f"final eval loss is {final}"
        if run.curve and run.status == "ok":
            run.curve[-1] = run.curve[-1].model_copy(update={"eval_loss": final})
        return _result(self.job, run, final, self.source, self.notes + [n for n in extra_notes if n],
                       self.accelerator)

    def _checkpoint(self, pinned: bool = False, eval_loss: float | None = None) -> None:
        run, accelerator = self.run, self.accelerator
        acc_value = float(accelerator.reduce(self.acc, "mean") if accelerator.num_processes > 1 else self.acc)
        folder = save_checkpoint(self.store, run.job.experiment_id, run.step, run.job.loop.keep_checkpoints,
                                 accelerator.process_index, self.raw_model, self.optimizer, self.scheduler,
                                 accelerator.scaler, run.trainer_json(acc_value, self.count, eval_loss),
                                 accelerator.is_main_process, pinned)
        accelerator.wait_for_everyone()
        save_rng(folder, accelerator.process_index)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.store.mark_complete(folder, run.job.loop.keep_checkpoints)


def _any_rank(flag: bool, accelerator: Accelerator) -> bool:
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, "sum").item() > 0)


def _checkpoint_due(lp, step: int, steps: int, last: float) -> bool:
    if step >= steps:
        return False
    if lp.checkpoint_steps and step % lp.checkpoint_steps == 0:
        return True
    return time.monotonic() - last >= lp.checkpoint_seconds


def _take_schedule(optimizer, scheduler) -> None:
    """After loading a trunk's state: each group's rate from this run's own schedule at the step reached
    (the trunk's constant rate is not the cooldown's first rate)."""
    step = scheduler.last_epoch
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
