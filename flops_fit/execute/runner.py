"""Run a Plan: decide per experiment (the same ``decide`` as ``estimate``), lock, train, store.

Several ``run`` processes may share a store: each experiment is trained under its file
lock, and the decision is re-read once the lock is held, so none is trained twice.  Under
``accelerate launch`` every process trains each experiment data-parallel; only the main
process decides, locks and writes, and its decision is broadcast to the others.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from filelock import Timeout

from ..plan import Experiment, Plan, Runtime
from ..store import CurvePoint, Decision, RunRecord, Store, decide
from .worker import Interrupted, provenance, stopping, train_experiment

__all__ = ["RunEvent", "run_plan", "run_experiments", "make_accelerator"]


@dataclass(frozen=True)
class RunEvent:
    """A progress event: ``kind`` is "decision", "log" or "result"."""

    kind: str
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
    return Accelerator(cpu=cpu, mixed_precision=mixed, log_with=list(runtime.log_with) or None, project_dir=project_dir)


def _claim(store: Store, exp: Experiment, retry_failed: bool):
    """Main process: the decision and, when training, the held lock."""
    decision = decide(store, exp, retry_failed)
    if decision.action == "skip":
        return decision, None
    lock = store.lock(exp.id)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return Decision("skip", "being trained by another process (locked)"), None
    decision = decide(store, exp, retry_failed, holding_lock=True)  # re-read under the lock: another run may have finished it
    if decision.action == "skip":
        lock.release()
        return decision, None
    return decision, lock


def _train_one(exp: Experiment, decision: Decision, store: Store, accelerator: Accelerator, emit,
               compile: bool) -> RunRecord:
    if accelerator.log_with:  # one tracker run per experiment, named by its id
        accelerator.init_trackers(exp.id, config={"budget_flops": exp.budget_flops, "size": exp.size,
                                                  "num_params": exp.num_params, "steps": exp.steps})
    try:
        return train_experiment(exp.job, store, accelerator, resume_from=decision.checkpoint,
                                on_log=lambda p: emit("log", point=p), compile=compile)
    except Exception as exc:  # the user's code failed: record it, the sweep goes on
        return RunRecord.failed(exp.job, f"{type(exc).__name__}: {exc}", traceback.format_exc(),
                                provenance(exp.job, accelerator))
    finally:
        # Not accelerator.end_training(): it also destroys the process group the next experiment needs.
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers.clear()


def run_plan(plan: Plan, store: Store, accelerator: Accelerator, retry_failed: bool = False,
             on_event: Callable[[RunEvent], None] | None = None,
             select: Callable[[Experiment], bool] | None = None) -> list[RunRecord]:
    """Train every pending experiment of ``plan`` (those ``select`` accepts); return the results trained now."""
    if accelerator.is_main_process:
        store.write_plan_json(plan.to_json())
    experiments = [e for e in plan.experiments if select is None or select(e)]
    return run_experiments(experiments, store, accelerator, retry_failed, on_event, compile=plan.runtime.compile)


def run_experiments(experiments: list[Experiment], store: Store, accelerator: Accelerator, retry_failed: bool = False,
                    on_event: Callable[[RunEvent], None] | None = None, compile: bool = False) -> list[RunRecord]:
    """Decide, claim, train and store each experiment in turn; return the results trained now."""
    trained = []
    total = len(experiments)
    for index, exp in enumerate(experiments):
        def emit(kind: str, **kw: Any) -> None:
            if on_event is not None and accelerator.is_main_process:
                on_event(RunEvent(kind, exp, index=index, total=total, **kw))

        decision, lock = _claim(store, exp, retry_failed) if accelerator.is_main_process else (None, None)
        if accelerator.num_processes > 1:
            decision = broadcast_object_list([decision])[0]
        emit("decision", decision=decision)
        if decision.action == "skip":
            continue
        try:
            result = _train_one(exp, decision, store, accelerator, emit, compile)
            if accelerator.is_main_process:
                store.write_result(result)  # "done": written last, atomically
                store.clear_checkpoints(exp.id)
            trained.append(result)
            emit("result", result=result)
            if stopping.pending() is not None:  # Ctrl-C during the last step: stop after recording it
                raise Interrupted(f"{exp.id}: finished as the signal came; the sweep stops here")
        finally:
            if lock is not None:
                lock.release()
    accelerator.wait_for_everyone()
    return trained
