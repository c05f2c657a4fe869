"""Train one experiment with an Accelerate loop.  The worker sees its Job, never the Spec.

The hot path follows a bare PyTorch loop: batches are already on the device (tensor
datasets are moved there once), the loss is accumulated on the device and read only at
log points (no host sync per step), AdamW is fused on CUDA, mixed precision and DDP come
from ``accelerate``.  Checkpoints are written on a time/step cadence and resumed exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from .._version import __version__
from ..components import build_data, build_loss, build_model, call_model
from ..errors import RunError
from ..imports import source_digest
from ..plan import Job
from ..store import Store
from .checkpoint import load_checkpoint, save_checkpoint, save_rng
from .data import Layout, make_sources
from .schedule import lr_multiplier

__all__ = ["train_experiment", "log_steps"]


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


def _param_groups(model: torch.nn.Module, t) -> list[dict]:
    """AdamW groups: the model's own ``optimizer_groups()`` when it has one, else decay on matrices only.

    A model may return ``[{"params": [...], "lr_scale": float, "weight_decay": float}, ...]``
    (for example μP, which scales hidden-matrix learning rates by base_width / width).
    """
    if callable(getattr(model, "optimizer_groups", None)):
        groups = []
        for g in model.optimizer_groups():
            g = dict(g)
            scale = g.pop("lr_scale", 1.0)
            groups.append({**g, "lr": t.learning_rate * scale, "weight_decay": g.get("weight_decay", t.weight_decay)})
        return groups
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(job: Job, model: torch.nn.Module, device: torch.device, folders: list[str]) -> torch.optim.Optimizer:
    t = job.train
    if t.optimizer:
        from ..imports import resolve

        return resolve(t.optimizer, folders)(model.parameters(), t.learning_rate)
    return torch.optim.AdamW(_param_groups(model, t), lr=t.learning_rate, betas=tuple(t.betas), eps=t.eps,
                             fused=device.type == "cuda")


class _Run:
    """The mutable state of one training run, kept in one place for checkpointing."""

    def __init__(self, job: Job):
        self.job = job
        self.step = 0
        self.curve: list[dict] = []
        self.initial_loss: float | None = None
        self.train_seconds = 0.0
        self.status, self.reason = "ok", ""

    def trainer_json(self, acc_sum: float, acc_count: int) -> dict:
        return {"step": self.step, "curve": self.curve, "initial_loss": self.initial_loss,
                "train_seconds": self.train_seconds, "acc_sum": acc_sum, "acc_count": acc_count}


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
                     on_log: Callable[[dict], None] | None = None) -> dict:
    """Train ``job`` to its last step (or divergence) and return its result record."""
    t = job.train
    folders = job.search_path
    exp_dir = store.exp_dir(job.experiment_id)
    is_main = accelerator.is_main_process

    # 1. Seed python, numpy and torch identically on every process: same initial weights.
    set_seed(t.seed)
    model = build_model(job.model.target, job.size_param, job.size, job.model.kwargs, folders)
    raw_model = model
    loss_fn = build_loss(job.loss.target, job.loss.kwargs, folders)

    # 2. Optimizer (fused AdamW on CUDA) and an LR schedule that is a pure function of the step.
    model.to(accelerator.device)
    optimizer = _optimizer(job, model, accelerator.device, folders)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(t.schedule, job.steps, job.warmup_steps, t.min_lr_ratio, t.decay_fraction))
    if t.compile:
        # A sweep trains many sizes in one process: start each from a clean dynamo cache so
        # the per-function recompile limit never silently sends a later experiment to eager.
        torch._dynamo.reset()
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)

    # 3. Data: this process's share of each global batch, split into micro-batches.
    if t.batch_size % accelerator.num_processes or (t.micro_batch_size and (t.batch_size // accelerator.num_processes) % t.micro_batch_size):
        raise RunError(f"train.batch_size = {t.batch_size} does not split into {accelerator.num_processes} processes"
                       + (f" of micro-batches of {t.micro_batch_size}" if t.micro_batch_size else "")
                       + "; choose a batch size divisible by the process count")
    micro = t.micro_batch_size or t.batch_size // accelerator.num_processes
    layout = Layout(t.batch_size, accelerator.process_index, accelerator.num_processes, micro)
    data = build_data(job.data.target, job.data.kwargs, folders)
    eval_data = build_data(job.eval_data.target, job.eval_data.kwargs, folders) if job.eval_data else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = make_sources(data, eval_data, job, layout, accelerator.device, t.num_workers)
    notes = [str(w.message) for w in caught]

    # 4. Resume: every state from the latest complete checkpoint; the data position is the step.
    run = _Run(job)
    acc_sum, acc_count = 0.0, 0
    if resume_from:
        state = load_checkpoint(Path(resume_from), accelerator.process_index, raw_model,
                                optimizer, scheduler, accelerator.scaler)
        run.step, run.curve, run.initial_loss = state["step"], state["curve"], state["initial_loss"]
        run.train_seconds, acc_sum, acc_count = state["train_seconds"], state["acc_sum"], state["acc_count"]
    if is_main:
        _rewrite_metrics(exp_dir, run.curve)

    logged = log_steps(job.steps, t.log_points)
    log_at, eval_at = set(logged), _eval_steps(logged, t.eval_points)
    tokens_per_step = t.batch_size * job.tokens_per_sample
    flops_per_step = t.batch_size * job.flops_per_sample
    acc = torch.full((), acc_sum, device=accelerator.device)
    count = acc_count
    last_ckpt = time.monotonic()
    batches = source.batches(run.step)
    model.train()
    start = time.perf_counter()

    # 5. The loop.  No host sync except at log points.
    while run.step < job.steps:
        for k in range(layout.accum):
            inputs, targets = next(batches)
            last = k == layout.accum - 1
            with accelerator.no_sync(model) if not last and accelerator.num_processes > 1 else contextlib.nullcontext():
                loss = loss_fn(call_model(model, inputs), targets)
                accelerator.backward(loss / layout.accum if layout.accum > 1 else loss)
            acc += loss.detach().float() / layout.accum
        if t.grad_clip is not None:
            accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        run.step += 1
        count += 1

        if run.step in log_at:  # 5a. read the accumulated loss: the one sync
            train_loss = float(accelerator.reduce(acc, "mean") if accelerator.num_processes > 1 else acc) / count
            acc.zero_()
            count = 0
            point = {"step": run.step, "tokens": run.step * tokens_per_step, "flops": run.step * flops_per_step,
                     "train_loss": train_loss, "lr": scheduler.get_last_lr()[0]}
            run.initial_loss = train_loss if run.initial_loss is None else run.initial_loss
            run.train_seconds += time.perf_counter() - start
            start = time.perf_counter()
            point["seconds"] = run.train_seconds
            if run.step in eval_at and run.step != job.steps:  # held-out loss; not counted as training time
                point["eval_loss"] = _evaluate(model, source.eval_batches, loss_fn, accelerator)
                start = time.perf_counter()
            _record(run, point, exp_dir, accelerator, on_log)
            if _diverged(run, train_loss):
                break
        if _checkpoint_due(t, run.step, job.steps, last_ckpt):  # 5b. checkpoint on cadence
            run.train_seconds += time.perf_counter() - start
            _checkpoint(store, run, acc, count, raw_model, optimizer, scheduler, accelerator)
            last_ckpt = time.monotonic()
            start = time.perf_counter()
    run.train_seconds += time.perf_counter() - start

    # 6. Final held-out loss over the fixed eval batches.
    final = _evaluate(model, source.eval_batches, loss_fn, accelerator) if run.status == "ok" else math.nan
    if run.status == "ok" and not math.isfinite(final):
        run.status, run.reason = "diverged", f"final eval loss is {final}"
    if run.curve and run.status == "ok":
        run.curve[-1]["eval_loss"] = final
    return _result(job, run, final, source, notes, accelerator)


def _checkpoint_due(t, step: int, steps: int, last: float) -> bool:
    if step >= steps:
        return False
    if t.checkpoint_steps and step % t.checkpoint_steps == 0:
        return True
    return time.monotonic() - last >= t.checkpoint_seconds


def _checkpoint(store: Store, run: _Run, acc: torch.Tensor, count: int, raw_model, optimizer, scheduler, accelerator) -> None:
    acc_value = float(accelerator.reduce(acc, "mean") if accelerator.num_processes > 1 else acc)
    folder = save_checkpoint(store, run.job.experiment_id, run.step, run.job.train.keep_checkpoints,
                             accelerator.process_index, raw_model, optimizer, scheduler, accelerator.scaler,
                             run.trainer_json(acc_value, count), accelerator.is_main_process)
    accelerator.wait_for_everyone()
    save_rng(folder, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        store.mark_complete(folder, run.job.train.keep_checkpoints)


def _diverged(run: _Run, train_loss: float) -> bool:
    factor = run.job.train.divergence_factor
    if not math.isfinite(train_loss):
        run.status, run.reason = "diverged", f"non-finite training loss at step {run.step}"
    elif run.initial_loss is not None and train_loss > factor * run.initial_loss and run.step > 1:
        run.status, run.reason = "diverged", (f"training loss {train_loss:.4g} at step {run.step} exceeds "
                                              f"{factor:g} x the initial {run.initial_loss:.4g}")
    return run.status != "ok"


def _record(run: _Run, point: dict, exp_dir, accelerator: Accelerator, on_log) -> None:
    run.curve.append(point)
    if accelerator.is_main_process:
        exp_dir.mkdir(parents=True, exist_ok=True)
        with open(exp_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(point) + "\n")
        if accelerator.trackers:
            accelerator.log({k: v for k, v in point.items() if k != "step"}, step=point["step"])
    if on_log is not None:
        on_log(point)


def _rewrite_metrics(exp_dir, curve: list[dict]) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in curve), encoding="utf-8")


def _result(job: Job, run: _Run, final: float, source, notes: list[str], accelerator: Accelerator) -> dict:
    samples = run.step * job.train.batch_size
    device = accelerator.device
    return {
        "id": job.experiment_id, "status": run.status, "reason": run.reason,
        "loss": final if math.isfinite(final) else None,
        "train_loss": run.curve[-1]["train_loss"] if run.curve else None,
        "initial_loss": run.initial_loss,
        "size": job.size, "num_params": job.num_params, "num_tokens": samples * job.tokens_per_sample,
        "num_samples": samples, "flops": samples * job.flops_per_sample, "flops_per_sample": job.flops_per_sample,
        "steps": run.step, "planned_steps": job.steps, "warmup_steps": job.warmup_steps,
        "batch_size": job.train.batch_size, "train_seconds": run.train_seconds,
        "epochs": source.epochs if math.isfinite(source.epochs) else None, "notes": notes,
        "curve": run.curve,
        "provenance": {
            "flops_fit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "processes": accelerator.num_processes, "precision": job.train.precision,
            "host": platform.node(), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sources": source_digest(job.targets, job.search_path),
        },
    }
