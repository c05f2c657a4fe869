"""``flops-fit status``: each experiment's state from the store, and its job's from the scheduler."""

from __future__ import annotations

import json
from typing import Any, Literal, Optional

from ..execute.dispatch import JobRecord, Submission, job_result, read_jobs
from ..core.frozen import Frozen
from ..store.lease import pid_alive
from ..plan.plan import Plan
from ..store.store import Store, checkpoint_step

__all__ = ["ExperimentState", "sweep_status"]


class ExperimentState(Frozen):
    """One experiment as ``status`` shows it: from the store, and its latest job from the scheduler."""

    id: str
    budget_flops: float
    size: Any
    state: Literal["done", "failed", "diverged", "running", "pending"]
    detail: str
    step: Optional[int] = None  # the step reached (running or resumable)
    steps: int
    job_id: Optional[str] = None
    job_state: Optional[str] = None
    part: str = "sweep"  # "sweep", or the plan file's tag of a forward or transfer check ("confirm-4e+15")


def _step_of(store: Store, exp_id: str) -> Optional[int]:
    """The last logged step (``metrics.jsonl``), else the latest checkpoint's."""
    path = store.exp_dir(exp_id) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        if lines:
            return int(json.loads(lines[-1])["step"])
    except (OSError, ValueError, KeyError):
        pass
    ckpt = store.latest_checkpoint(exp_id)
    return checkpoint_step(ckpt) if ckpt else None


def _slurm_states(found: list[tuple[Submission, JobRecord]]) -> dict[str, str]:
    """Every Slurm job's state from one ``sacct`` call (submitit's watcher asks again for each job it has not seen)."""
    import submitit

    ids = sorted({rec.job_id for sub, rec in found if sub.kind == "slurm"})
    if not ids:
        return {}
    jobs = [submitit.SlurmJob(folder=sub.folder, job_id=rec.job_id)
            for sub, rec in found if sub.kind == "slurm"]
    jobs[0].watcher.update()
    return {i: jobs[0].watcher.get_state(i, mode="cache") for i in ids}


def _local_state(sub: Submission, rec: JobRecord) -> str:
    """A local job's state: its result file, else whether its process (the job id is its pid) is alive."""
    from submitit.core.utils import JobPaths

    found = job_result(JobPaths(sub.folder, job_id=rec.job_id, task_id=0).result_pickle)
    if found is not None:
        return "COMPLETED" if found[0] == "success" else "FAILED"
    return "RUNNING" if rec.job_id.isdigit() and pid_alive(int(rec.job_id)) else "ENDED"


def sweep_status(plan: Plan, store: Store, scheduler: bool = True) -> list[ExperimentState]:
    """Each experiment's state (trunks included): done, failed/diverged with the reason, running
    with its owner and step, pending (with the step it resumes from); and its latest job's state."""
    jobs = read_jobs(store.root)
    units = _units(plan, store)
    latest = {exp.id: jobs.latest_job(exp.id) for exp, _ in units}
    slurm: dict[str, str] = {}
    if scheduler:
        try:
            slurm = _slurm_states([f for f in latest.values() if f is not None])
        except Exception as exc:  # sacct could not be asked (not on PATH, down, ...)
            slurm = {f[1].job_id: f"unknown ({type(exc).__name__})" for f in latest.values() if f is not None}
    out = []
    for exp, part in units:
        record = store.read_result(exp.id, quarantine=False)
        owner = store.holder(exp.id)
        step = _step_of(store, exp.id)
        if record is not None and record.status == "ok":
            state, detail, step = "done", f"loss {record.loss:.4g}", record.steps
        elif record is not None:
            state, detail, step = record.status, record.reason, record.steps
        elif owner is not None:
            state, detail = "running", f"on {owner.describe()}"
        else:
            state = "pending"
            detail = f"resumes from step {step}" if step else "not started"
        job_id = job_state = None
        found = latest[exp.id]
        if found is not None:
            sub, rec = found
            job_id = rec.job_id
            if scheduler:
                job_state = slurm.get(rec.job_id) if sub.kind == "slurm" else _local_state(sub, rec)
        out.append(ExperimentState(id=exp.id, budget_flops=exp.budget_flops, size=exp.size, state=state,
                                   detail=detail, step=step, steps=exp.steps, job_id=job_id,
                                   job_state=job_state, part=part))
    return out


def _units(plan: Plan, store: Store) -> list[tuple]:
    """The sweep's experiments, then those of the plan files beside it (``confirm``, ``transfer``)."""
    units = [(e, "sweep") for e in plan.units()]
    seen = {e.id for e, _ in units}
    for path in store.extra_plans():
        try:
            extra = Plan.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # written by another version, or half-read: not this sweep's
            continue
        for e in extra.experiments:
            if e.id not in seen:
                seen.add(e.id)
                units.append((e, path.stem))
    return units
