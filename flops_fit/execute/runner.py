"""Run a Plan: decide per experiment (the same ``decide`` as ``estimate``), lease, train, store.

Several ``run`` processes (or scheduler jobs) may share a store: each experiment is trained
under its lease (:mod:`flops_fit.store.lease`, safe on NFS and Lustre), and the decision is re-read
once the lease is held, so none is trained twice.  Under
``accelerate launch`` every process trains each experiment data-parallel; only the main
process decides, leases and writes, and its decision is broadcast to the others.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from ..plan.plan import Experiment, Plan, Runtime
from ..store.lease import HEARTBEAT_S, Lease, LeaseLost
from .checkpoint import CorruptCheckpoint
from ..store.store import CurvePoint, Decision, RunRecord, Store, decide
from .tracking import finish_runs, start_run
from .group import MAX_GROUP, group_key, grouping
from .worker import Interrupted, provenance, stopping, train_experiment, train_group

__all__ = ["RunEvent", "run_plan", "run_experiments", "make_accelerator"]


@dataclass(frozen=True)
class RunEvent:
    """A progress event: a decision, a logged point or a result."""

    kind: Literal["decision", "log", "result"]
    experiment: Experiment
    decision: Optional[Decision] = None
    point: Optional[CurvePoint] = None
    result: Optional[RunRecord] = None
    index: int = 0
    total: int = 0


def make_accelerator(runtime: Runtime, project_dir: str) -> Accelerator:
    """The one Accelerator of a run, from the plan's runtime: CUDA when present (unless device =
    "cpu"), else CPU; mixed precision as the experiments' hashes say; the trackers."""
    import torch

    cpu = runtime.device == "cpu" or (runtime.device == "auto" and not torch.cuda.is_available())
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[runtime.precision]
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state  # accelerate keeps one precision per process: a later run of
    if shared.get("_mixed_precision") not in (None, mixed) and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state()      # another precision in this process starts a fresh state
    return Accelerator(cpu=cpu, mixed_precision=mixed, log_with=list(runtime.log_with) or None, project_dir=project_dir)


def _claim(store: Store, exp: Experiment, retry_failed: bool, branches: list[Experiment], heartbeat_s: float):
    """Main process: the decision and, when training, the held lease (kept fresh by its heartbeat)."""
    decision = decide(store, exp, retry_failed, branches=branches)
    if decision.action in ("skip", "wait"):
        return decision, None
    lease = store.acquire(exp.id, heartbeat_s)
    if lease is None:
        owner = store.holder(exp.id)
        return Decision("skip", f"running on {owner.describe()}" if owner else "claimed by another process"), None
    decision = decide(store, exp, retry_failed, holding_lock=True, branches=branches)  # re-read under the lease
    if decision.action in ("skip", "wait"):
        lease.release()
        return decision, None
    lease.keep()
    return decision, lease


def _train_one(exp: Experiment, decision: Decision, store: Store, accelerator: Accelerator, emit,
               runtime: Runtime, group: str, lease: Lease | None = None) -> RunRecord:
    if accelerator.log_with:  # one tracker run per experiment, named by its id, grouped by the spec
        start_run(accelerator, group, exp.id, accelerator.logging_dir,
                  {"budget_flops": exp.budget_flops, "size": exp.size, "num_params": exp.num_params,
                   "num_tokens": exp.num_tokens, "steps": exp.steps, "flops": exp.flops, "seed": exp.job.loop.seed})
    try:
        return train_experiment(exp.job, store, accelerator, resume_from=decision.checkpoint,
                                on_log=lambda p: emit("log", point=p), compile=runtime.compile,
                                stop=decision.stop,
                                lease=lease if accelerator.num_processes == 1 else None,
                                cuda_graphs=runtime.cuda_graphs)
    except (LeaseLost, CorruptCheckpoint):
        raise
    except Exception as exc:  # the user's code failed: record it, the sweep goes on
        return RunRecord.failed(exp.job, f"{type(exc).__name__}: {exc}", traceback.format_exc(),
                                provenance(exp.job, accelerator))
    finally:
        finish_runs(accelerator)


def _grouping(runtime: Runtime, accelerator: Accelerator) -> bool:
    """Whether this process steps experiments of one shape together (``[train] group``)."""
    on, _ = grouping(runtime, accelerator.device.type, accelerator.num_processes,
                     accelerator.scaler is not None)
    return on and not accelerator.log_with


def _claim_mates(key: str, rest: list, taken: set, store: Store, retry_failed: bool, runtime: Runtime,
                 emit) -> list:
    """Claim up to MAX_GROUP - 1 later experiments of the same shape that are to be trained now."""
    mates = []
    for index, exp in rest:
        if len(mates) == MAX_GROUP - 1:
            break
        if exp.id in taken or group_key(exp.job) != key:
            continue
        decision, lease = _claim(store, exp, retry_failed, [], runtime.heartbeat_s)
        if decision.action == "wait":
            continue
        taken.add(exp.id)
        emit("decision", exp=exp, index=index, decision=decision)
        if decision.action != "skip":
            mates.append((index, exp, decision, lease))
    return mates


def _store(result: RunRecord, exp: Experiment, lease: Lease | None, store: Store, accelerator: Accelerator,
           branches: dict, trained: list, emit) -> None:
    if accelerator.is_main_process:
        store.write_result(result)  # "done": written last, atomically
        store.clear_checkpoints(exp.id)
        if exp.job.branch is not None:
            store.release_pins(exp.job.branch.trunk_id, branches.get(exp.job.branch.trunk_id, []))
    trained.append(result)
    emit("result", result=result)


def _train_group(members: list, store: Store, accelerator: Accelerator, emit, trained: list, by_id: dict,
                 again: list, branches: dict, runtime: Runtime) -> None:
    """Train claimed ``(index, experiment, decision, lease)`` members together; each result is
    stored as its member ends, under its own lease (lost: nothing written)."""
    def on_done(k: int, outcome) -> None:
        index, exp, decision, lease = members[k]
        try:
            if isinstance(outcome, CorruptCheckpoint):
                again.extend(_set_aside(outcome, exp, store, accelerator, by_id,
                                        lambda kind, **kw: emit(kind, exp=exp, index=index, **kw)))
                return
            if not isinstance(outcome, LeaseLost) and lease is not None:
                try:
                    lease.check()
                except LeaseLost as lost:
                    outcome = lost
            if isinstance(outcome, LeaseLost):
                emit("decision", exp=exp, index=index, decision=Decision("skip", str(outcome)))
                return
            _store(outcome, exp, lease, store, accelerator, branches, trained,
                   lambda kind, **kw: emit(kind, exp=exp, index=index, **kw))
        finally:
            if lease is not None:
                lease.release()

    def log(index: int, exp: Experiment):
        return lambda point: emit("log", exp=exp, index=index, point=point)

    try:
        train_group([(exp.job, decision.checkpoint, lease, log(index, exp))
                     for index, exp, decision, lease in members], store, accelerator, on_done,
                    runtime.cuda_graphs)
    finally:
        for _, _, _, lease in members:
            if lease is not None:
                lease.release()
    if stopping.pending() is not None:
        raise Interrupted(f"{members[0][1].id} and {len(members) - 1} grouped: finished as the signal came; "
                          "the sweep stops here")


def run_plan(plan: Plan, store: Store, accelerator: Accelerator, retry_failed: bool = False,
             on_event: Callable[[RunEvent], None] | None = None,
             select: Callable[[Experiment], bool] | None = None,
             plan_file: str = "plan.json") -> list[RunRecord]:
    """Train every pending experiment of ``plan`` (those ``select`` accepts); return the results trained now."""
    if accelerator.is_main_process:
        store.write_plan_json(plan.to_json(), plan_file)
    experiments = [e for e in plan.units() if select is None or select(e)]
    return run_experiments(experiments, store, accelerator, retry_failed, on_event, plan.runtime)


def _set_aside(bad: CorruptCheckpoint, exp: Experiment, store: Store, accelerator: Accelerator,
               by_id: dict, emit) -> list:
    """An unreadable checkpoint (truncated, half-deleted) goes to ``<experiment>/corrupt/`` with one
    line; the experiment is decided again, and so is its trunk when the checkpoint was the trunk's
    pin (the trunk then trains to that step again)."""
    if accelerator.is_main_process and Path(bad.folder).exists():
        aside = store.quarantine_checkpoint(Path(bad.folder))
        emit("decision", decision=Decision("run", f"{bad}: moved to {aside}; decided again"))
    accelerator.wait_for_everyone()
    redo = [by_id[exp.id]]
    trunk = exp.job.branch.trunk_id if exp.job.branch is not None else None
    if trunk in by_id and Path(bad.folder).parent.name == "pinned":
        redo.insert(0, by_id[trunk])
    return redo


WAIT_SECONDS = 2.0  # how often a worker with only waiting branches looks for their trunks' checkpoints


def run_experiments(experiments: list[Experiment], store: Store, accelerator: Accelerator, retry_failed: bool = False,
                    on_event: Callable[[RunEvent], None] | None = None,
                    runtime: Runtime | None = None) -> list[RunRecord]:
    """Decide, claim, train and store each experiment in turn; return the results trained now.

    ``runtime``: the plan's run-level settings this process trains with (compile, CUDA graphs,
    the lease heartbeat); default: eager, fp32, the default heartbeat.

    ``experiments`` may hold trunks followed by their branches (``Plan.units``).  A branch whose
    trunk checkpoint is not there yet waits: the worker goes on with the next experiment and
    comes back to it; with nothing else to do it polls while another process trains the trunk,
    and gives up (the branch stays pending) when no process does."""
    runtime = runtime or Runtime(precision="fp32", device="auto", compile=False, heartbeat_s=HEARTBEAT_S)
    trained = []
    total = len(experiments)
    branches = {e.id: [b for b in experiments if b.job.branch is not None and b.job.branch.trunk_id == e.id]
                for e in experiments if e.job.role == "trunk"}
    queue = list(enumerate(experiments))
    by_id = {e.id: (i, e) for i, e in queue}
    group_on = _grouping(runtime, accelerator)
    while queue:
        waiting, again, taken = [], [], set()
        for position, (index, exp) in enumerate(queue):
            if exp.id in taken:  # trained in an earlier member's group
                continue

            def emit(kind: str, exp: Experiment = exp, index: int = index, **kw: Any) -> None:
                if on_event is not None and accelerator.is_main_process:
                    on_event(RunEvent(kind, exp, index=index, total=total, **kw))

            if stopping.preempted is not None:  # a job's checkpoint signal came between experiments
                raise Interrupted(f"signal {stopping.preempted}: stopped before {exp.id}")
            decision, lease = (_claim(store, exp, retry_failed, branches.get(exp.id, []), runtime.heartbeat_s)
                              if accelerator.is_main_process else (None, None))
            if accelerator.num_processes > 1:
                decision = broadcast_object_list([decision])[0]
            if decision.action == "wait":
                waiting.append((index, exp))
                continue
            emit("decision", decision=decision)
            if decision.action == "skip":
                continue
            key = group_key(exp.job) if group_on else None
            if key is not None:
                mates = _claim_mates(key, queue[position + 1:], taken, store, retry_failed, runtime, emit)
                if mates:
                    _train_group([(index, exp, decision, lease)] + mates, store, accelerator, emit, trained,
                                 by_id, again, branches, runtime)
                    continue
            try:
                try:
                    result = _train_one(exp, decision, store, accelerator, emit, runtime, store.root.name,
                                        lease)
                    if lease is not None:
                        lease.check()  # still ours right before "done" (an owner paused past expiry is not)
                except LeaseLost as lost:  # its new owner resumes it: this process writes nothing
                    emit("decision", decision=Decision("skip", str(lost)))
                    continue
                except CorruptCheckpoint as bad:  # moved aside; decided again (a lost pin: the trunk too)
                    again.extend(_set_aside(bad, exp, store, accelerator, by_id, emit))
                    continue
                _store(result, exp, lease, store, accelerator, branches, trained, emit)
                if stopping.pending() is not None:  # Ctrl-C during the last step: stop after recording it
                    raise Interrupted(f"{exp.id}: finished as the signal came; the sweep stops here")
            finally:
                if lease is not None:
                    lease.release()
        if again:  # decided again at once, trunks first: no wait
            queue = again + [w for w in waiting if w not in again]
            continue
        if len(waiting) == len(queue):  # nothing could start: are the trunks being trained elsewhere?
            busy = (any(store.holder(e.job.branch.trunk_id) is not None for _, e in waiting)
                    if accelerator.is_main_process else False)
            if accelerator.num_processes > 1:
                busy = broadcast_object_list([busy])[0]
            if not busy:
                for index, exp in waiting:
                    if on_event is not None and accelerator.is_main_process:
                        on_event(RunEvent("decision", exp, index=index, total=total, decision=Decision(
                            "skip", f"its trunk {exp.job.branch.trunk_id} has no checkpoint at step "
                                    f"{exp.job.branch.step} and no process is training it")))
                break
            time.sleep(WAIT_SECONDS)
        queue = waiting
    accelerator.wait_for_everyone()
    return trained
