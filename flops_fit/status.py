"""``flops-fit status``: each experiment's state from the store, and its job's from the scheduler."""

from __future__ import annotations

import json
import os
from typing import Any, Literal, Optional

from .dispatch import JobRecord, Submission, read_jobs
from .frozen import Frozen
from .plan import Plan
from .store import Store

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
    return int(ckpt.name.split("-")[1]) if ckpt else None


def _job_state(sub: Submission, rec: JobRecord) -> str:
    """The scheduler's state of a job (sacct on Slurm; the process and result file locally)."""
    import submitit
    from submitit.core.utils import JobPaths

    if sub.kind == "slurm":
        return submitit.SlurmJob(folder=sub.folder, job_id=rec.job_id).state
    paths = JobPaths(sub.folder, job_id=rec.job_id, task_id=0)
    if paths.result_pickle.exists():
        import pickle

        with paths.result_pickle.open("rb") as f:
            outcome = pickle.load(f)[0]
        return "COMPLETED" if outcome == "success" else "FAILED"
    try:
        os.kill(int(rec.job_id), 0)
        return "RUNNING"
    except (ProcessLookupError, ValueError):
        return "ENDED"
    except PermissionError:
        return "RUNNING"


def sweep_status(plan: Plan, store: Store, scheduler: bool = True) -> list[ExperimentState]:
    """Each experiment's state (trunks included): done, failed/diverged with the reason, running
    with its owner and step, pending (with the step it resumes from); and its latest job's state."""
    jobs = read_jobs(store.root)
    out = []
    for exp in plan.units():
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
        found = jobs.latest_job(exp.id)
        if found is not None:
            sub, rec = found
            job_id = rec.job_id
            if scheduler:
                try:
                    job_state = _job_state(sub, rec)
                except Exception as exc:  # the scheduler could not be asked (sacct missing, ...)
                    job_state = f"unknown ({type(exc).__name__})"
        out.append(ExperimentState(id=exp.id, budget_flops=exp.budget_flops, size=exp.size, state=state, detail=detail,
                                   step=step, steps=exp.steps, job_id=job_id, job_state=job_state))
    return out
