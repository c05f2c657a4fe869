"""Train one experiment (or a group of same-shape experiments) with an Accelerate loop.
The worker sees its Job, never the Spec.

The hot path follows a bare PyTorch loop: batches are already on the device (tensor
datasets are moved there once), the loss is accumulated on the device and read only at
log points (no host sync per step), AdamW is fused on CUDA, mixed precision and DDP come
from ``accelerate``.  Checkpoints are written on a time/step cadence and resumed exactly.
The loop is the same for one experiment and for a group: step the lanes, then
:meth:`Lane.advance` each (:mod:`.lane`).
"""

from __future__ import annotations

import gc
import traceback
from typing import Callable

import torch
from accelerate import Accelerator

from ..plan.plan import Job
from ..store.lease import Lease, LeaseLost
from ..store.store import CurvePoint, RunRecord, Store
from .checkpoint import CorruptCheckpoint
from .lane import Lane, log_steps
from .memory import GaveWay, gives_way
from .run_state import provenance
from .signals import Interrupted, stopping
from .step import GraphMode, TrainStep

__all__ = ["train_experiment", "train_group", "log_steps", "provenance", "Interrupted", "stopping"]


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
            lane = Lane(job, store, accelerator, resume_from, on_log, compile, stop or job.steps, inspect,
                        lease)
            train_step = TrainStep(lane.model, lane.loss_fn, lane.step_optimizer, accelerator,
                                   lane.layout.accum, job.optim.grad_clip, lane.direct, lane.acc,
                                   cuda_graphs if inspect is None else "off")
            while not lane.done:  # no host sync but at log points
                train_step(lane.batches)
                if lane.advance():  # Ctrl-C / SIGTERM / a job's preemption: checkpoint written
                    raise Interrupted(f"{job.experiment_id}: stopped by signal {stopping.signum} at step "
                                      f"{lane.run.step}/{lane.end}; checkpoint written, the next run "
                                      "resumes there")
            return lane.finish([train_step.note])
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


def failure(job: Job, exc: BaseException, store: Store, accelerator: Accelerator) -> RunRecord | GaveWay:
    """What ``exc`` raised by the user's code while training ``job`` ends in: its failed record, or,
    when packing ran the device out of memory beside other workers, the :class:`~.memory.GaveWay`
    that leaves it pending."""
    gave = gives_way(exc, store, job.experiment_id)
    if gave is not None:
        return gave
    return RunRecord.failed(job, f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)),
                            provenance(job, accelerator))


def train_group(members: list[tuple[Job, str | None, Lease | None, Callable[[CurvePoint], None] | None]],
                store: Store, accelerator: Accelerator,
                on_done: Callable[[int, RunRecord | BaseException], None],
                cuda_graphs: GraphMode = "auto") -> None:
    """Train experiments of one shape together (:mod:`.group`): ``members`` are ``(job, resume_from,
    lease, on_log)``.  ``on_done(k, outcome)`` is called as soon as member ``k`` ends — with its
    result, a failed record (its own code raised), or the :class:`LeaseLost` /
    :class:`CorruptCheckpoint` / :class:`~.memory.GaveWay` that ends it without a result — so
    finished members are stored while the others train.  A signal checkpoints every member still
    training, then raises Interrupted.
    ``cuda_graphs``: replay the batched forward and backward from a CUDA graph (as one experiment's)."""
    from .group import GroupStep

    try:
        with stopping.handlers(enabled=accelerator.num_processes == 1):
            active: dict[int, Lane] = {}
            for k, (job, resume_from, lease, on_log) in enumerate(members):
                try:
                    active[k] = Lane(job, store, accelerator, resume_from, on_log, lease=lease)
                except (LeaseLost, CorruptCheckpoint) as exc:
                    on_done(k, exc)
                except Exception as exc:  # noqa: BLE001 - the user's code failed for this member
                    on_done(k, failure(job, exc, store, accelerator))
            step, together = GroupStep(accelerator, cuda_graphs), len(active)

            def notes() -> list[str]:
                if not step.grouped:
                    return [step.note]
                return [f"stepped together with {together - 1} other experiments of its shape ([train] group)"
                        ] if together > 1 else []

            while active:
                lanes = list(active.items())
                for position, exc in step([lane for _, lane in lanes]).items():
                    k = lanes[position][0]
                    del active[k]
                    on_done(k, failure(members[k][0], exc, store, accelerator))
                signal, stopped = stopping.signum is not None, False
                for k, lane in list(active.items()):
                    try:
                        stopped = lane.advance(signal) or stopped
                        outcome = lane.finish(notes()) if lane.done else None
                    except LeaseLost as lost:
                        outcome = lost
                    except Exception as exc:  # noqa: BLE001 - its evaluation or checkpoint failed
                        outcome = failure(members[k][0], exc, store, accelerator)
                    if outcome is not None:
                        del active[k]
                        on_done(k, outcome)
                if stopped:
                    raise Interrupted(f"{len(active)} grouped experiments stopped by signal "
                                      f"{stopping.signum}; "
                                      "checkpoints written, the next run resumes there")
    finally:
        _release(accelerator, False)
