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
from .memory import GaveWay
from .worker import Interrupted, failure, stopping, train_experiment, train_group

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
    return Accelerator(cpu=cpu, mixed_precision=mixed, log_with=list(runtime.log_with) or None,
                       project_dir=project_dir)


def _claim(store: Store, exp: Experiment, retry_failed: bool, branches: list[Experiment], heartbeat_s: float):
    """Main process: the decision and, when training, the held lease (kept fresh by its heartbeat)."""
    decision = decide(store, exp, retry_failed, branches=branches)
    if decision.action in ("skip", "wait"):
        return decision, None
    lease = store.acquire(exp.id, heartbeat_s)
    if lease is None:
        owner = store.holder(exp.id)
        return Decision("skip",
                        f"running on {owner.describe()}" if owner else "claimed by another process"), None
    # re-read under the lease
    decision = decide(store, exp, retry_failed, holding_lock=True, branches=branches)
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
                   "num_tokens": exp.num_tokens, "steps": exp.steps, "flops": exp.flops,
                   "seed": exp.job.loop.seed})
    try:
        return train_experiment(exp.job, store, accelerator, resume_from=decision.checkpoint,
                                on_log=lambda p: emit("log", point=p), compile=runtime.compile,
                                stop=decision.stop,
                                lease=lease if accelerator.num_processes == 1 else None,
                                cuda_graphs=runtime.cuda_graphs)
    except (LeaseLost, CorruptCheckpoint):
        raise
    except Exception as exc:  # the user's code failed: record it, the sweep goes on
        outcome = failure(exp.job, exc, store, accelerator)
        if isinstance(outcome, GaveWay):  # unless packing ran the device out of memory
            raise outcome from exc
        return outcome
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
        if exp.id in taken or group_key(exp.job, runtime.group) != key:
            continue
        decision, lease = _claim(store, exp, retry_failed, [], runtime.heartbeat_s)
        if decision.action == "wait":
            continue
        taken.add(exp.id)
        emit("decision", exp=exp, index=index, decision=decision)
        if decision.action != "skip":
            mates.append((index, exp, decision, lease))
    return mates


def _train_group(members: list, sweep: "_Sweep", emit, again: list) -> None:
    """Train claimed ``(index, experiment, decision, lease)`` members together; each result is
    stored as its member ends, under its own lease (lost: nothing written)."""
    def on_done(k: int, outcome) -> None:
        index, exp, decision, lease = members[k]
        own = sweep.emitter(exp, index)
        try:
            if isinstance(outcome, CorruptCheckpoint):
                again.extend(_set_aside(outcome, exp, sweep.store, sweep.accelerator, sweep.by_id, own))
                return
            if not isinstance(outcome, LeaseLost) and lease is not None:
                try:
                    lease.check()
                except LeaseLost as lost:
                    outcome = lost
            if isinstance(outcome, (LeaseLost, GaveWay)):
                own("decision", decision=Decision("skip", str(outcome)))
                if isinstance(outcome, GaveWay):
                    gave.append(outcome)
                return
            sweep.keep(outcome, exp, own)
        finally:
            if lease is not None:
                lease.release()

    gave: list[GaveWay] = []
    try:
        train_group([(exp.job, decision.checkpoint, lease, _logger(sweep.emitter(exp, index)))
                     for index, exp, decision, lease in members], sweep.store, sweep.accelerator, on_done,
                    sweep.runtime.cuda_graphs)
    finally:
        for _, _, _, lease in members:
            if lease is not None:
                lease.release()
    if gave:  # the group's other members finished (or gave way too): now this worker steps aside
        raise gave[0]
    if stopping.pending() is not None:
        raise Interrupted(f"{members[0][1].id} and {len(members) - 1} grouped: finished as the signal came; "
                          "the sweep stops here")


def _logger(emit) -> Callable[[CurvePoint], None]:
    return lambda point: emit("log", point=point)


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


def run_experiments(experiments: list[Experiment], store: Store, accelerator: Accelerator,
                    retry_failed: bool = False,
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
    sweep = _Sweep(store, accelerator, retry_failed, on_event, runtime, experiments)
    queue = list(enumerate(experiments))
    while queue:
        waiting, again = sweep.one_pass(queue)
        if again:  # decided again at once, trunks first: no wait
            queue = again + [w for w in waiting if w not in again]
            continue
        if len(waiting) == len(queue):  # nothing could start: are the trunks being trained elsewhere?
            if not sweep.trunks_in_training(waiting):
                sweep.give_up(waiting)
                break
            time.sleep(WAIT_SECONDS)
        queue = waiting
    accelerator.wait_for_everyone()
    return sweep.trained


class _Sweep:
    """What the steps of one :func:`run_experiments` call share: where and how it trains, who waits
    for which trunk, and the results trained so far (returned by the call; nothing outlives it)."""

    def __init__(self, store: Store, accelerator: Accelerator, retry_failed: bool,
                 on_event: Callable[[RunEvent], None] | None, runtime: Runtime,
                 experiments: list[Experiment]):
        self.store, self.accelerator, self.retry_failed = store, accelerator, retry_failed
        self.on_event, self.runtime, self.total = on_event, runtime, len(experiments)
        self.branches = {e.id: [b for b in experiments if b.job.branch is not None
                                and b.job.branch.trunk_id == e.id]
                         for e in experiments if e.job.role == "trunk"}
        self.by_id = {e.id: (i, e) for i, e in enumerate(experiments)}
        self.group_on = _grouping(runtime, accelerator)
        self.trained: list[RunRecord] = []

    def emitter(self, exp: Experiment, index: int) -> Callable[..., None]:
        """``emit(kind, **fields)`` of one experiment's events (``exp``/``index`` may be overridden)."""
        def emit(kind: str, exp: Experiment = exp, index: int = index, **kw: Any) -> None:
            if self.on_event is not None and self.accelerator.is_main_process:
                self.on_event(RunEvent(kind, exp, index=index, total=self.total, **kw))
        return emit

    def decide(self, exp: Experiment) -> tuple[Decision, Lease | None]:
        """The main process decides and claims; the others get its decision."""
        decision, lease = (_claim(self.store, exp, self.retry_failed, self.branches.get(exp.id, []),
                                  self.runtime.heartbeat_s)
                           if self.accelerator.is_main_process else (None, None))
        if self.accelerator.num_processes > 1:
            decision = broadcast_object_list([decision])[0]
        return decision, lease

    def one_pass(self, queue: list) -> tuple[list, list]:
        """Every experiment of ``queue`` once: skipped, trained (alone or with its group), or left
        waiting for its trunk.  Returns (waiting, decided again at once)."""
        waiting, again, taken = [], [], set()
        for position, (index, exp) in enumerate(queue):
            if exp.id in taken:  # trained in an earlier member's group
                continue
            emit = self.emitter(exp, index)
            if stopping.preempted is not None:  # a job's checkpoint signal came between experiments
                raise Interrupted(f"signal {stopping.preempted}: stopped before {exp.id}")
            decision, lease = self.decide(exp)
            if decision.action == "wait":
                waiting.append((index, exp))
                continue
            emit("decision", decision=decision)
            if decision.action == "skip":
                continue
            key = group_key(exp.job, self.runtime.group) if self.group_on else None
            mates = (_claim_mates(key, queue[position + 1:], taken, self.store, self.retry_failed,
                                  self.runtime, emit) if key is not None else [])
            if mates:
                _train_group([(index, exp, decision, lease)] + mates, self, emit, again)
            else:
                again.extend(self.train_claimed(exp, decision, lease, emit))
        return waiting, again

    def train_claimed(self, exp: Experiment, decision: Decision, lease: Lease | None, emit) -> list:
        """Train one claimed experiment and store its result; returns what must be decided again
        (a corrupt checkpoint set aside)."""
        try:
            try:
                result = _train_one(exp, decision, self.store, self.accelerator, emit, self.runtime,
                                    self.store.root.name, lease)
                if lease is not None:
                    lease.check()  # still ours right before "done" (an owner paused past expiry is not)
            except LeaseLost as lost:  # its new owner resumes it: this process writes nothing
                emit("decision", decision=Decision("skip", str(lost)))
                return []
            except CorruptCheckpoint as bad:  # moved aside; decided again (a lost pin: the trunk too)
                return _set_aside(bad, exp, self.store, self.accelerator, self.by_id, emit)
            self.keep(result, exp, emit)
            if stopping.pending() is not None:  # Ctrl-C during the last step: stop after recording it
                raise Interrupted(f"{exp.id}: finished as the signal came; the sweep stops here")
            return []
        finally:
            if lease is not None:
                lease.release()

    def keep(self, result: RunRecord, exp: Experiment, emit) -> None:
        """Store a finished experiment's result ("done", written last and atomically)."""
        if self.accelerator.is_main_process:
            self.store.write_result(result)
            self.store.clear_checkpoints(exp.id)
            if exp.job.branch is not None:
                trunk = exp.job.branch.trunk_id
                self.store.release_pins(trunk, self.branches.get(trunk, []))
        self.trained.append(result)
        emit("result", result=result)

    def trunks_in_training(self, waiting: list) -> bool:
        """Whether another process holds a trunk that a waiting branch needs."""
        busy = (any(self.store.holder(e.job.branch.trunk_id) is not None for _, e in waiting)
                if self.accelerator.is_main_process else False)
        if self.accelerator.num_processes > 1:
            busy = broadcast_object_list([busy])[0]
        return busy

    def give_up(self, waiting: list) -> None:
        """No process trains the trunks these branches wait for: they stay pending, each said."""
        for index, exp in waiting:
            self.emitter(exp, index)("decision", decision=Decision(
                "skip", f"its trunk {exp.job.branch.trunk_id} has no checkpoint at step "
                        f"{exp.job.branch.step} and no process is training it"))
