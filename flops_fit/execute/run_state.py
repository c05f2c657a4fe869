"""The state of one training run (:class:`_Run`, what a checkpoint keeps) and what it leaves: the
logged curve (``metrics.jsonl``, trackers), the divergence verdict, and the result record with its
provenance."""

from __future__ import annotations

import math
import platform
from datetime import datetime, timezone

import torch
from accelerate import Accelerator

from .._version import __version__
from ..core.imports import source_digest
from ..plan.plan import Job
from ..store.records import CurvePoint, Provenance, RunRecord

__all__ = ["provenance"]


class _Run:
    """The mutable state of one training run, kept in one place for checkpointing."""

    def __init__(self, job: Job):
        self.job = job
        self.step = 0
        self.curve: list[CurvePoint] = []
        self.initial_loss: float | None = None
        self.train_seconds = 0.0
        self.status, self.reason = "ok", ""
        self.pre_cooldown_loss: float | None = None  # a branch: its trunk's held-out loss at the branch step
        self.trunk_seconds = 0.0

    def trainer_json(self, acc_sum: float, acc_count: int, eval_loss: float | None = None) -> dict:
        return {"step": self.step, "curve": [p.model_dump(exclude_none=True) for p in self.curve],
                "initial_loss": self.initial_loss, "train_seconds": self.train_seconds, "acc_sum": acc_sum,
                "acc_count": acc_count, "eval_loss": eval_loss, "pre_cooldown_loss": self.pre_cooldown_loss,
                "trunk_seconds": self.trunk_seconds}


def _diverged(run: _Run, train_loss: float) -> bool:
    factor = run.job.loop.divergence_factor
    if not math.isfinite(train_loss):
        run.status, run.reason = "diverged", f"non-finite training loss at step {run.step}"
    elif run.initial_loss is not None and train_loss > factor * run.initial_loss and run.step > 1:
        run.status, run.reason = "diverged", (f"training loss {train_loss:.4g} at step {run.step} exceeds "
                                              f"{factor:g} x the initial {run.initial_loss:.4g}")
    return run.status != "ok"


def _record(run: _Run, point: CurvePoint, exp_dir, accelerator: Accelerator, on_log) -> None:
    run.curve.append(point)
    if accelerator.is_main_process:
        exp_dir.mkdir(parents=True, exist_ok=True)
        with open(exp_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(point.model_dump_json(exclude_none=True) + "\n")
        if accelerator.trackers:
            accelerator.log(point.model_dump(exclude={"step"}, exclude_none=True), step=point.step)
    if on_log is not None:
        on_log(point)


def _rewrite_metrics(exp_dir, curve: list[CurvePoint]) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(p.model_dump_json(exclude_none=True) + "\n" for p in curve)
    (exp_dir / "metrics.jsonl").write_text(lines, encoding="utf-8")


def provenance(job: Job, accelerator: Accelerator) -> Provenance:
    """This machine, these versions, the Accelerator's precision and the digests of the user's sources."""
    device = accelerator.device
    return Provenance(
        flops_fit=__version__, torch=torch.__version__, python=platform.python_version(),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        processes=accelerator.num_processes, precision=str(accelerator.mixed_precision),
        device_type=device.type, host=platform.node(),
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sources=source_digest(job.targets, job.search_path))


def _result(job: Job, run: _Run, final: float, source, notes: list[str],
            accelerator: Accelerator) -> RunRecord:
    samples = run.step * job.loop.batch_size
    branch = job.branch
    return RunRecord(
        id=job.experiment_id, hash=job.hash, budget_flops=job.budget_flops, status=run.status,
        reason=run.reason, loss=final if math.isfinite(final) else None,
        train_loss=run.curve[-1].train_loss if run.curve else None, initial_loss=run.initial_loss,
        size=job.size, num_params=job.num_params, num_tokens=samples * job.tokens_per_sample,
        num_samples=samples, flops=samples * job.flops_per_sample, flops_per_sample=job.flops_per_sample,
        steps=run.step, planned_steps=job.steps, warmup_steps=job.warmup_steps,
        batch_size=job.loop.batch_size, seed=job.loop.seed, train_seconds=run.train_seconds,
        epochs=source.epochs if math.isfinite(source.epochs) else None, notes=notes,
        curve=run.curve, provenance=provenance(job, accelerator),
        reuse="trunk" if job.role == "trunk" else ("branch" if branch else "none"),
        trunk_id=branch.trunk_id if branch else None, branch_step=branch.step if branch else None,
        pre_cooldown_loss=run.pre_cooldown_loss, trunk_seconds=run.trunk_seconds)
