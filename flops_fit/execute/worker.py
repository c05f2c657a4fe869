"""Train one experiment with an Accelerate loop.  The worker sees its Job, never the Spec.

The hot path follows a bare PyTorch loop: batches are already on the device (tensor
datasets are moved there once), the loss is accumulated on the device and read only at
log points (no host sync per step), AdamW is fused on CUDA, mixed precision and DDP come
from ``accelerate``.  Checkpoints are written on a time/step cadence and resumed exactly.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from ..spec.components import (
    build_data, build_loss, build_model, call_model)
from ..core.errors import RunError
from ..plan.plan import Job, Optim
from ..store.lease import Lease, LeaseLost
from ..store.store import CurvePoint, RunRecord, Store
from .checkpoint import load_checkpoint, save_checkpoint, save_rng
from .run_state import _diverged, _record, _result, _rewrite_metrics, _Run, provenance
from .signals import Interrupted, stopping
from .step import GraphMode, TrainStep
from .data import Layout, make_sources
from .schedule import lr_multiplier

__all__ = ["train_experiment", "log_steps", "provenance", "Interrupted", "stopping"]


def log_steps(steps: int, points: int) -> list[int]:
    """Steps (1-based counts) at which the curve is logged: half geometric, half linear in FLOPs."""
    half = max(2, points // 2)
    geometric = {int(round(math.exp(math.log(steps) * i / (half - 1)))) for i in range(half)}
    linear = {int(round(steps * i / half)) for i in range(1, half + 1)}
    return sorted(s for s in geometric | linear | {1, steps} if 1 <= s <= steps)


def _eval_steps(logged: list[int], count: int) -> set[int]:
    if count <= 0:
        return set()
    picks = {logged[min(len(logged) - 1, int(round((len(logged) - 1) * (i + 1) / (count + 1))))] for i in range(count)}
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
            groups.append({**g, "lr": o.learning_rate * scale, "weight_decay": g.get("weight_decay", o.weight_decay)})
        return groups
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(o: Optim, model: torch.nn.Module, device: torch.device, folders: list[str]) -> torch.optim.Optimizer:
    if o.target:
        from ..core.imports import resolve

        return resolve(o.target, folders)(model.parameters(), o.learning_rate)
    return torch.optim.AdamW(_param_groups(model, o), lr=o.learning_rate, betas=tuple(o.betas), eps=o.eps,
                             fused=device.type == "cuda")


def _evaluate(model: torch.nn.Module, batches: list, loss_fn: Callable, accelerator: Accelerator) -> float:
    model.eval()
    with torch.no_grad():
        total = torch.zeros((), device=accelerator.device)
        for inputs, targets in batches:
            total += loss_fn(call_model(model, inputs), targets).detach().float()
        mean = total / max(1, len(batches))
    model.train()
    return float(accelerator.reduce(mean, reduction="mean")) if accelerator.num_processes > 1 else float(mean)


def train_experiment(job: Job, store: Store, accelerator: Accelerator, resume_from: str | None = None,
                     on_log: Callable[[CurvePoint], None] | None = None, compile: bool = False,
                     stop: int | None = None, inspect: Callable[[torch.nn.Module], None] | None = None,
                     lease: Lease | None = None, cuda_graphs: GraphMode = "auto") -> RunRecord:
    """Train ``job`` to its last step (or divergence) and return its result record.

    A trunk (``job.role == "trunk"``) trains to ``stop`` (default its last branch point) and
    writes a pinned checkpoint, with the held-out loss, at each of ``job.pins``.  A branch
    resumed from its trunk's pinned checkpoint takes the learning rate of its own wsd schedule
    at that step, so it is the same computation as a standalone wsd run of ``job.steps``.
    ``inspect(model)`` is called with the freshly built model (``transfer`` hangs its forward hooks there).

    ``accelerator`` is the run's one Accelerator (built from the plan's ``Runtime``); it
    decides device, mixed precision and the data-parallel split.  ``compile``: torch.compile
    the model (the runtime's ``compile``); ``cuda_graphs``: replay the step from a CUDA graph
    (:mod:`flops_fit.execute.step`; off while ``inspect`` hooks the model).  SIGINT or SIGTERM (one
    process) checkpoints the step reached and raises :class:`Interrupted`.  Nothing of the
    experiment outlives the call: the Accelerator's references to the prepared model and
    optimizer are released and the CUDA cache emptied (``accelerator.free_memory()``), also when the user's code raises.

    ``lease``: the claim this process trains under (one process).  Lost (taken over, deleted), the
    loop raises :class:`~flops_fit.store.lease.LeaseLost` at the next step, and every checkpoint is
    written only after the lease was renewed: nothing of a lost claim reaches the store.
    """
    try:
        with stopping.handlers(enabled=accelerator.num_processes == 1):
            return _train(job, store, accelerator, resume_from, on_log, compile, stop or job.steps, inspect,
                          lease, cuda_graphs)
    finally:
        _release(accelerator, compile)


def _release(accelerator: Accelerator, compiled: bool) -> None:
    """Drop the Accelerator's references to the experiment's model, optimizer and loaders.  On an
    accelerator the memory is reclaimed now (two full garbage collections, the cache emptied: the
    prepared model's forward wrapper is a reference cycle); on the CPU the lists are cleared and the
    cycle left to Python's collector: two full collections cost ~0.3 s an experiment, as long as a
    toy experiment's training."""
    if compiled:
        torch._dynamo.reset()
    if accelerator.device.type == "cpu":
        for name in ("_schedulers", "_optimizers", "_models", "_dataloaders"):  # what free_memory clears
            setattr(accelerator, name, [])
        accelerator.step = 0
        return
    accelerator.free_memory()  # drops its lists after its own gc pass, so collect again:
    gc.collect()
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()


def _train(job: Job, store: Store, accelerator: Accelerator, resume_from: str | None,
           on_log: Callable[[CurvePoint], None] | None, compile: bool, end: int, inspect=None,
           lease: Lease | None = None, cuda_graphs: GraphMode = "auto") -> RunRecord:
    o, sched, lp = job.optim, job.schedule, job.loop
    folders = job.search_path
    exp_dir = store.exp_dir(job.experiment_id)
    is_main = accelerator.is_main_process

    # 1. Seed python, numpy and torch identically on every process: same initial weights.
    set_seed(lp.seed)
    model = build_model(job.model.target, job.size_param, job.size, job.model.kwargs, folders)
    raw_model = model
    if inspect is not None:
        inspect(model)
    loss_fn = build_loss(job.loss.target, job.loss.kwargs, folders)

    # 2. Optimizer (fused AdamW on CUDA) and an LR schedule that is a pure function of the step.
    model.to(accelerator.device)
    optimizer = _optimizer(o, model, accelerator.device, folders)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(sched.kind, job.steps, sched.warmup_steps, sched.min_lr_ratio, sched.decay_fraction))
    if compile:
        # A sweep trains many sizes in one process: start each from a clean dynamo cache so
        # the per-function recompile limit never silently sends a later experiment to eager.
        torch._dynamo.reset()
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Without an fp16 GradScaler accelerate's optimizer and clipping wrappers do nothing this loop
    # needs (it accumulates and syncs gradients itself) and cost ~10% of a tiny model's step (a
    # package lookup per optimizer step, module walks per clip): step and clip with torch directly.
    direct = accelerator.scaler is None and accelerator.distributed_type in (
        DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
    step_optimizer = getattr(optimizer, "optimizer", optimizer) if direct else optimizer

    # 3. Data: this process's share of each global batch, split into micro-batches.
    if lp.batch_size % accelerator.num_processes or (lp.micro_batch_size and (lp.batch_size // accelerator.num_processes) % lp.micro_batch_size):
        raise RunError(f"train.batch_size = {lp.batch_size} does not split into {accelerator.num_processes} processes"
                       + (f" of micro-batches of {lp.micro_batch_size}" if lp.micro_batch_size else "")
                       + "; choose a batch size divisible by the process count")
    micro = lp.micro_batch_size or lp.batch_size // accelerator.num_processes
    layout = Layout(lp.batch_size, accelerator.process_index, accelerator.num_processes, micro)
    data = build_data(job.data.target, job.data.kwargs, folders)
    eval_data = build_data(job.eval_data.target, job.eval_data.kwargs, folders) if job.eval_data else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = make_sources(data, eval_data, job, layout, accelerator.device, lp.num_workers)
    notes = [str(w.message) for w in caught]

    # 4. Resume: every state from the latest complete checkpoint; the data position is the step.
    run = _Run(job)
    acc_sum, acc_count = 0.0, 0
    if resume_from:
        state = load_checkpoint(Path(resume_from), accelerator.process_index, raw_model,
                                optimizer, scheduler, accelerator.scaler)
        run.step, run.initial_loss = state["step"], state["initial_loss"]
        run.curve = [CurvePoint.model_validate(p) for p in state["curve"]]
        run.train_seconds, acc_sum, acc_count = state["train_seconds"], state["acc_sum"], state["acc_count"]
        run.pre_cooldown_loss, run.trunk_seconds = state.get("pre_cooldown_loss"), state.get("trunk_seconds", 0.0)
        if job.branch is not None and Path(resume_from).parent.name == "pinned":  # a branch starts off its trunk
            run.pre_cooldown_loss, run.trunk_seconds = state.get("eval_loss"), run.train_seconds
            _take_schedule(optimizer, scheduler)
            if run.curve and run.curve[-1].step == run.step:  # the trunk logged its next rate; this run's is the cooldown's
                run.curve[-1] = run.curve[-1].model_copy(update={"lr": scheduler.get_last_lr()[0]})
    if is_main:
        _rewrite_metrics(exp_dir, run.curve)

    logged = log_steps(job.steps, lp.log_points)
    log_at, eval_at = set(logged), _eval_steps(logged, lp.eval_points)
    tokens_per_step = lp.batch_size * job.tokens_per_sample
    flops_per_step = lp.batch_size * job.flops_per_sample
    acc = torch.full((), acc_sum, device=accelerator.device)
    count = acc_count
    last_ckpt = time.monotonic()
    batches = source.batches(run.step)
    train_step = TrainStep(model, loss_fn, step_optimizer, accelerator, layout.accum, o.grad_clip, direct,
                           acc, cuda_graphs if inspect is None else "off")
    model.train()
    start = time.perf_counter()

    # 5. The loop.  No host sync except at log points.
    pins = set(job.pins)
    agree_every = max(8, job.steps // 2000)  # data-parallel jobs: ranks agree on a signal (a sync) ~2000 times a run
    while run.step < end:
        train_step(batches)
        scheduler.step()
        run.step += 1
        count += 1

        if run.step in log_at:  # 5a. read the accumulated loss: the one sync
            train_loss = float(accelerator.reduce(acc, "mean") if accelerator.num_processes > 1 else acc) / count
            acc.zero_()
            count = 0
            run.initial_loss = train_loss if run.initial_loss is None else run.initial_loss
            run.train_seconds += time.perf_counter() - start
            eval_loss = None
            if run.step in eval_at and run.step != end:  # held-out loss; not counted as training time
                eval_loss = _evaluate(model, source.eval_batches, loss_fn, accelerator)
            start = time.perf_counter()
            point = CurvePoint(step=run.step, tokens=run.step * tokens_per_step, flops=run.step * flops_per_step,
                               train_loss=train_loss, lr=scheduler.get_last_lr()[0], seconds=run.train_seconds,
                               eval_loss=eval_loss)
            _record(run, point, exp_dir, accelerator, on_log)
            if _diverged(run, train_loss):
                break
        if run.step in pins and run.status == "ok":  # 5b. a trunk's branch point: pinned, with its held-out loss
            run.train_seconds += time.perf_counter() - start
            pin_loss = _evaluate(model, source.eval_batches, loss_fn, accelerator)
            if lease is not None:
                lease.check()
            _checkpoint(store, run, acc, count, raw_model, optimizer, scheduler, accelerator, pinned=True, eval_loss=pin_loss)
            start = time.perf_counter()
        stop = stopping.signum is not None and run.step < end
        if accelerator.num_processes > 1:  # a job's preemption: every rank stops at the same step, or none does
            stop = stopping.in_job and run.step % agree_every == 0 and run.step < end and _any_rank(
                stopping.signum is not None, accelerator)
        if lease is not None and lease.lost is not None:  # another process took the lease over
            raise LeaseLost(f"{job.experiment_id}: {lease.lost} at step {run.step}; nothing written")
        if stop or _checkpoint_due(lp, run.step, end, last_ckpt):  # 5b. checkpoint on cadence or on a signal
            if lease is not None:
                lease.check()  # renewed, or LeaseLost: a resumed, overtaken owner writes no checkpoint
            run.train_seconds += time.perf_counter() - start
            _checkpoint(store, run, acc, count, raw_model, optimizer, scheduler, accelerator)
            last_ckpt = time.monotonic()
            start = time.perf_counter()
        if stop:  # Ctrl-C / SIGTERM / a job's preemption: the checkpoint keeps every step; the next run resumes there
            raise Interrupted(f"{job.experiment_id}: stopped by signal {stopping.signum} at step {run.step}/"
                              f"{end}; checkpoint written, the next run resumes there")
    run.train_seconds += time.perf_counter() - start

    # 6. Final held-out loss over the fixed eval batches.
    final = _evaluate(model, source.eval_batches, loss_fn, accelerator) if run.status == "ok" else math.nan
    if run.status == "ok" and not math.isfinite(final):
        run.status, run.reason = "diverged", f"final eval loss is {final}"
    if run.curve and run.status == "ok":
        run.curve[-1] = run.curve[-1].model_copy(update={"eval_loss": final})
    return _result(job, run, final, source, notes + [train_step.note] * bool(train_step.note), accelerator)


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


def _checkpoint(store: Store, run: _Run, acc: torch.Tensor, count: int, raw_model, optimizer, scheduler, accelerator,
                pinned: bool = False, eval_loss: float | None = None) -> None:
    acc_value = float(accelerator.reduce(acc, "mean") if accelerator.num_processes > 1 else acc)
    folder = save_checkpoint(store, run.job.experiment_id, run.step, run.job.loop.keep_checkpoints,
                             accelerator.process_index, raw_model, optimizer, scheduler, accelerator.scaler,
                             run.trainer_json(acc_value, count, eval_loss), accelerator.is_main_process, pinned)
    accelerator.wait_for_everyone()
    save_rng(folder, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        store.mark_complete(folder, run.job.loop.keep_checkpoints)
