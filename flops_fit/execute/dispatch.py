"""Send a sweep to a scheduler through submitit: Slurm job arrays, or submitit's local executor.

flops-fit does not schedule.  ``submit`` plans, leaves out what is done or running, and hands
submitit two job arrays: one of one-GPU tasks (each runs ``gpus_per_task × workers_per_gpu``
workers over a few experiments: small models packed on a GPU) and one of data-parallel tasks
(``gpus_large`` processes training one experiment; torch.distributed's environment comes from
submitit's ``TorchDistributedEnvironment``).  A trunk travels with its branches (reuse =
"branch"): the branches start from its pinned checkpoints inside the same task.

A task is a :class:`SweepTask`: a small picklable description (spec path, run directory,
experiment ids), never results.  It runs the worker entry point (:func:`flops_fit.execute.launch.worker_main`
over ``plan.json``), which claims each experiment through its lease, so two arrays on one store
never train the same experiment, and results return through the store.  Submitting is
:mod:`flops_fit.execute.submit`.  ``jobs.json`` in
``<run_dir>/launcher/`` records job ids ↔ experiment ids; the logs are in ``launcher/logs/<job>/``.

Preemption and timeouts: submitit sends USR2 ``signal_delay_s`` before the limit (Slurm sends
it on preemption).  The task's handler lets the loop finish its step and write a complete
checkpoint, then calls submitit's own handler, which calls :meth:`SweepTask.checkpoint` (the
same task again) and requeues the job; the requeued job resumes from the checkpoint.  Timeouts
requeue at most ``max_requeues`` times; preemptions without limit.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from ..core.frozen import Frozen
from ..store.store import Store

__all__ = ["SweepTask", "JobRecord", "Submission", "JobsFile", "JobFailure", "read_jobs", "wait_for",
           "job_result"]

Array = Literal["one-gpu", "data-parallel"]


class JobRecord(Frozen):
    """One submitted job (an array task): its id, the experiments it may train and its logs."""

    job_id: str
    array: Array
    experiments: list[str]
    stdout: str
    stderr: str


class Submission(Frozen):
    """One ``submit``: when, with which executor, which jobs."""

    submitted: str
    kind: str  # "slurm" or "submitit-local" (an executor passed in: its kind), else the executor's class name
    folder: str
    jobs: list[JobRecord]


class JobsFile(Frozen):
    """``<run_dir>/launcher/jobs.json``: every submission, oldest first."""

    submissions: list[Submission] = []

    def latest_job(self, exp_id: str) -> tuple[Submission, JobRecord] | None:
        for sub in reversed(self.submissions):
            for job in sub.jobs:
                if exp_id in job.experiments:
                    return sub, job
        return None


@dataclass(frozen=True)
class SweepTask:
    """What one array task runs, pickled by submitit: small, never results.

    Each of the task's processes runs the worker over ``experiment_ids`` (claimed through their
    leases).  ``data_parallel``: the processes are the ranks of one torch.distributed group;
    otherwise they are independent workers, ``per_gpu`` of them pinned to each of the task's GPUs."""

    spec_path: str
    run_dir: str
    experiment_ids: tuple[str, ...]
    import_roots: tuple[str, ...] = ()
    retry_failed: bool = False
    data_parallel: bool = False
    per_gpu: int = 1  # workers per GPU of a one-GPU task
    plan_file: str = "plan.json"  # relative to run_dir: the sweep's plan, or plans/<tag>.json

    def __call__(self) -> int:
        import submitit

        from .worker import stopping
        from .launch import WORKER_ENV, Selection, worker_main

        for root in reversed(self.import_roots):
            if root not in sys.path:
                sys.path.insert(0, root)
        os.environ[WORKER_ENV] = "1"
        cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if cpus.isdigit():  # the task's allocation, not every core of the node: tasks sharing a node
            import torch    # each with all its cores' threads trained 3-20x slower than in process

            torch.set_num_threads(int(cpus))
            os.environ["OMP_NUM_THREADS"] = cpus
        env = submitit.JobEnvironment()
        if self.data_parallel and env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                  overwrite=True)
        else:
            os.environ.pop("WORLD_SIZE", None)  # packed workers are independent processes
            visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
            if len(visible) > 1:
                os.environ["CUDA_VISIBLE_DEVICES"] = visible[min(len(visible) - 1,
                                                                 env.local_rank // self.per_gpu)]
        usr = getattr(signal, "SIG" + env.USR_SIG)
        submitit_handler = signal.getsignal(usr)  # checkpoint() and requeue, installed by submitit
        signal.signal(usr, lambda signum, frame: stopping.preempt(signum))
        stopping.in_job = True
        print(f"{env.job_id}: {len(self.experiment_ids)} experiment(s) of {self.spec_path or self.run_dir}",
              file=sys.stderr, flush=True)
        try:
            selection = Selection(ids=list(self.experiment_ids), retry_failed=self.retry_failed,
                                  plan=self.plan_file)
            return worker_main(self.run_dir, selection)
        except KeyboardInterrupt:  # the loop checkpointed the step it reached
            if stopping.preempted is None:
                raise
            if env.global_rank == 0 and not self.data_parallel:
                _wait_for_siblings(Store(Path(self.run_dir)), self.experiment_ids, env.job_id)
            print(f"{env.job_id}: signal {stopping.preempted}, checkpoint written; requeueing",
                  file=sys.stderr, flush=True)
            if callable(submitit_handler):
                submitit_handler(stopping.preempted, None)  # rank 0: checkpoint(), requeue, exit
            sys.exit(0)  # other ranks: the job is requeued by rank 0

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook: the same task again; it resumes from the store's checkpoints."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _wait_for_siblings(store: Store, ids: tuple[str, ...], job_id: str, timeout_s: float = 60.0) -> None:
    """Before requeueing, let the task's other workers finish their checkpoints (their leases go)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = [store.holder(i) for i in ids]
        if not any(h is not None and h.job == job_id and h.pid != os.getpid() for h in held):
            return
        time.sleep(0.2)


def read_jobs(run_dir: Path) -> JobsFile:
    path = Path(run_dir) / "launcher" / "jobs.json"
    return JobsFile.model_validate_json(path.read_bytes()) if path.exists() else JobsFile()


# -- waiting ------------------------------------------------------------------------------
class JobFailure(Frozen):
    """A job that ended without finishing its work: one line with the experiment and the log."""

    job_id: str
    experiments: list[str]  # the job's experiments left without a result
    error: str  # the last line of the job's error
    log: str

    def line(self) -> str:
        what = ", ".join(self.experiments) if self.experiments else "no experiment left"
        return f"job {self.job_id} failed ({what}): {self.error}; log: {self.log}"


def job_result(result_pickle: Path) -> tuple[str, Any] | None:
    """submitit's result file of a job: ("success", value) or ("error", traceback); None when absent."""
    import pickle

    if not result_pickle.exists():
        return None
    with result_pickle.open("rb") as f:
        return pickle.load(f)


def _outcome(job: Any) -> str | None:
    """None when the job succeeded, else what went wrong, in one line."""
    found = job_result(job.paths.result_pickle)
    if found is None:
        return f"ended without a result (state {job.state}): killed, out of memory, or the process crashed"
    kind, value = found
    if kind == "success":
        return None
    lines = [ln.strip() for ln in str(value).splitlines() if ln.strip()]
    return lines[-1] if lines else "failed"


def wait_for(jobs: list, records: list[JobRecord], store: Store, on_progress: Callable[[int, int], None] | None = None,
             poll_s: float = 2.0) -> list[JobFailure]:
    """Wait until every job has ended; ``on_progress(finished, total)`` with the experiments that
    have a result.  Returns the jobs that failed (the rest of the sweep is not affected)."""
    ids = sorted({e for r in records for e in r.experiments})
    while True:
        ended = all(j.done() for j in jobs)
        if on_progress is not None:
            on_progress(sum(store.result_path(i).exists() for i in ids), len(ids))
        if ended:
            break
        time.sleep(poll_s)
    failures = []
    for job, rec in zip(jobs, records):
        error = _outcome(job)
        if error is not None:
            left = [i for i in rec.experiments if not store.result_path(i).exists()]
            failures.append(JobFailure(job_id=rec.job_id, experiments=left, error=error, log=rec.stderr))
    return failures
