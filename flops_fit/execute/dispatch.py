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
never train the same experiment, and results return through the store.  ``jobs.json`` in
``<run_dir>/launcher/`` records job ids ↔ experiment ids; the logs are in ``launcher/logs/<job>/``.

Preemption and timeouts: submitit sends USR2 ``signal_delay_s`` before the limit (Slurm sends
it on preemption).  The task's handler lets the loop finish its step and write a complete
checkpoint, then calls submitit's own handler, which calls :meth:`SweepTask.checkpoint` (the
same task again) and requeues the job; the requeued job resumes from the checkpoint.  Timeouts
requeue at most ``max_requeues`` times; preemptions without limit.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

from filelock import FileLock

from ..core.errors import Problem, RunError
from ..core.frozen import Frozen
from .launch import data_parallel_selection, import_roots
from ..spec.launcher import LauncherSpec
from ..plan.plan import Experiment, Plan
from ..spec.spec import SpecModel
from ..store.store import Store, atomic_write_text, decide

__all__ = ["SweepTask", "JobRecord", "Submission", "JobsFile", "JobFailure", "submit_plan", "read_jobs", "wait_for",
           "make_executor", "array_parameters", "pending_groups", "job_result"]

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
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        else:
            os.environ.pop("WORLD_SIZE", None)  # packed workers are independent processes
            visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
            if len(visible) > 1:
                os.environ["CUDA_VISIBLE_DEVICES"] = visible[min(len(visible) - 1, env.local_rank // self.per_gpu)]
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
            print(f"{env.job_id}: signal {stopping.preempted}, checkpoint written; requeueing", file=sys.stderr, flush=True)
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


# -- submission ---------------------------------------------------------------------------
def make_executor(launcher: LauncherSpec, folder: Path):
    """The submitit executor of ``[launcher]`` (kind "slurm" or "submitit-local")."""
    import submitit

    cls = submitit.SlurmExecutor if launcher.kind == "slurm" else submitit.LocalExecutor
    return cls(folder=folder, max_num_timeout=launcher.max_requeues)


def array_parameters(launcher: LauncherSpec, array: Array, workers_per_gpu: int, name: str) -> dict[str, Any]:
    """submitit parameters of one array: the processes, GPUs and CPUs of its tasks."""
    gpus = launcher.gpus_per_task
    if array == "one-gpu":
        tasks = max(1, gpus) * workers_per_gpu
        cpus = max(1, launcher.cpus_per_gpu * max(1, gpus) // tasks)
    else:
        tasks, gpus, cpus = launcher.gpus_large, (launcher.gpus_large if gpus else 0), launcher.cpus_per_gpu
    if launcher.kind != "slurm":
        return {"timeout_min": launcher.timeout_min, "tasks_per_node": tasks, "gpus_per_node": gpus,
                "signal_delay_s": launcher.signal_delay_s, "setup": list(launcher.setup)}
    params: dict[str, Any] = {
        "job_name": name, "partition": launcher.partition, "time": math.ceil(launcher.timeout_min), "nodes": 1,
        "ntasks_per_node": tasks, "cpus_per_task": cpus, "signal_delay_s": launcher.signal_delay_s,
        "array_parallelism": launcher.array_parallelism, "setup": list(launcher.setup),
        "additional_parameters": dict(launcher.additional)}
    if gpus:
        params["gpus_per_node"] = gpus
    if launcher.account:
        params["account"] = launcher.account
    if launcher.mem_gb:
        params["mem"] = f"{launcher.mem_gb:g}GB"
    return params


def pending_groups(plan: Plan, store: Store, retry_failed: bool) -> list[list[Experiment]]:
    """What is left to train, in the order workers walk it: a trunk with its branches, or one
    experiment.  Done, failed (without ``retry_failed``) and running experiments are left out."""
    groups: list[list[Experiment]] = []
    for trunk in plan.trunks:
        branches = plan.branches_of(trunk)
        todo = [e for e in branches if decide(store, e, retry_failed, dry_run=True).action != "skip"]
        if todo:
            groups.append([trunk, *todo])
    for e in plan.experiments:
        if e.job.branch is None and decide(store, e, retry_failed, dry_run=True).action != "skip":
            groups.append([e])
    return groups


def _split(spec: SpecModel, groups: list[list[Experiment]]) -> dict[Array, list[list[Experiment]]]:
    """One-GPU and data-parallel groups: ``run``'s rule
    (:func:`~flops_fit.execute.launch.data_parallel_selection`) with ``gpus_large`` processes per
    data-parallel task."""
    t = spec.train
    large = data_parallel_selection(t.parallel, t.data_parallel_min_params, spec.launcher.gpus_large)
    chosen = [large is not None and large.accepts(g[0]) for g in groups]
    return {"one-gpu": [g for g, c in zip(groups, chosen) if not c],
            "data-parallel": [g for g, c in zip(groups, chosen) if c]}


def submit_plan(spec: SpecModel, plan: Plan, retry_failed: bool = False, executor: Any = None,
                plan_file: str = "plan.json") -> tuple[Submission, list]:
    """Submit the plan's pending experiments as job arrays; record the submission in ``jobs.json``
    and return it with submitit's job objects (nothing is submitted when nothing is pending).
    ``plan_file``: where in the run directory the tasks read ``plan`` (the sweep's ``plan.json``,
    or ``plans/<tag>.json`` for the experiments of ``confirm`` and ``transfer``).

    ``executor``: a configured submitit executor used as is for every task (one experiment, or a
    trunk with its branches, per task; data-parallel when its tasks have several processes)."""
    if executor is None and spec.launcher.kind == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise RunError([launcher_problem(spec, "sbatch or srun is not on this machine's PATH",
                                         hint="submit from a Slurm login node, or use kind = 'submitit-local' to run "
                                              "the jobs on this machine")])
    store = Store(Path(plan.run_dir))
    store.write_plan_json(plan.to_json(), plan_file)
    groups = pending_groups(plan, store, retry_failed)
    folder = store.root / "launcher" / "logs" / "%j"
    roots = tuple(import_roots(plan))
    source = spec.source or ""
    batches: list[tuple[Array, Any, list[SweepTask]]] = []
    if executor is not None:
        processes = executor.parameters.get("tasks_per_node", executor.parameters.get("ntasks_per_node", 1))
        dp = processes > 1
        tasks = [SweepTask(source, plan.run_dir, tuple(e.id for e in g), roots, retry_failed, dp,
                           plan_file=plan_file) for g in groups]
        batches.append(("data-parallel" if dp else "one-gpu", executor, tasks))
        name = str(getattr(executor, "cluster", type(executor).__name__)).lower()
        kind = "slurm" if "slurm" in name else "submitit-local" if "local" in name else type(executor).__name__
        folder = Path(executor.folder)
    else:
        kind = spec.launcher.kind
        per_task = (max(1, spec.launcher.gpus_per_task) * spec.train.workers_per_gpu
                    * spec.launcher.experiments_per_worker)
        for array, chosen in _split(spec, groups).items():
            if not chosen:
                continue
            ex = make_executor(spec.launcher, folder)
            ex.update_parameters(**array_parameters(spec.launcher, array, spec.train.workers_per_gpu, f"flops-fit-{plan.name}"))
            if array == "one-gpu":  # strided: each task gets small and large experiments alike
                n = -(-len(chosen) // per_task)
                chunks = [chosen[i::n] for i in range(n)]
            else:
                chunks = [[g] for g in chosen]
            if kind == "submitit-local" and len(chunks) > spec.launcher.array_parallelism:
                # submitit's local executor starts every job at once: honour array_parallelism with fewer, longer tasks
                n = spec.launcher.array_parallelism
                chunks = [[g for c in chunks[i::n] for g in c] for i in range(n)]
            tasks = [SweepTask(source, plan.run_dir, tuple(e.id for g in c for e in g), roots, retry_failed,
                               array == "data-parallel", spec.train.workers_per_gpu, plan_file)
                     for c in chunks]
            batches.append((array, ex, tasks))
    records, submitted = [], []
    try:
        for array, ex, tasks in batches:
            try:
                with _sbatch_stderr(), ex.batch():
                    jobs = [ex.submit(task) for task in tasks]
            except Exception as exc:  # sbatch said no (submitit's FailedJobError carries its stderr)
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                said = lines[-1] if lines else type(exc).__name__
                gres = "generic resource" in said.lower() or "gres" in said.lower()
                raise RunError([launcher_problem(
                    spec, f"submitting the {array} array failed: {said}",
                    key="launcher.gpus_per_task" if gres else "launcher",
                    hint=("the partition has no GPUs to give: set launcher.gpus_per_task = 0 for CPU nodes, "
                          "or submit to a GPU partition" if gres else "fix the [launcher] table")
                    + "; arrays already submitted are in jobs.json and keep running")]) from None
            submitted += jobs
            records += [JobRecord(job_id=str(j.job_id), array=array, experiments=list(t.experiment_ids),
                                  stdout=str(j.paths.stdout), stderr=str(j.paths.stderr)) for j, t in zip(jobs, tasks)]
    finally:  # what was submitted is recorded, also when a later array fails
        submission = Submission(submitted=datetime.now(timezone.utc).isoformat(timespec="seconds"), kind=kind,
                                folder=str(folder), jobs=records)
        if records:
            path = store.root / "launcher" / "jobs.json"
            with FileLock(str(path) + ".lock"):
                jobs_file = read_jobs(store.root)
                atomic_write_text(path, jobs_file.model_copy(update={"submissions": [*jobs_file.submissions, submission]})
                                  .model_dump_json(indent=2) + "\n")
    return submission, submitted


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


@contextlib.contextmanager
def _sbatch_stderr():
    """sbatch's own stderr (submitit lets it through) held back while submitting: on failure the
    error line carries it, on success it is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                text = held.read().decode(errors="replace").strip()
                if text:
                    print(text, file=sys.stderr)


def launcher_problem(spec: SpecModel, message: str, key: str = "launcher.kind", hint: str | None = None) -> Problem:
    """A problem of the spec's ``[launcher]`` table, naming the spec file, the key's line and its value."""
    from ..core.tomlpos import key_lines

    parts = tuple(key.split("."))
    lines = key_lines(Path(spec.source).read_text(encoding="utf-8")) if spec.source and Path(spec.source).exists() else {}
    value = getattr(spec.launcher, parts[1]) if len(parts) > 1 else None
    return Problem(message, key=key, file=spec.source, line=lines.get(parts) or lines.get(parts[:1]), value=value,
                   has_value=value is not None, hint=hint)
