"""Submitting a plan as job arrays: ``[launcher]`` (or the user's submitit executor) decides the
arrays, their tasks and resources; each submission is recorded in ``<run_dir>/launcher/jobs.json``.
What a task runs, and waiting for the jobs, is :mod:`flops_fit.execute.dispatch`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from ..core.errors import Problem, RunError
from ..plan.plan import Experiment, Plan
from ..spec.launcher import LauncherSpec
from ..spec.spec import SpecModel
from ..store.store import Store, atomic_write_text, decide
from .dispatch import Array, JobRecord, Submission, SweepTask, read_jobs
from .launch import data_parallel_selection, import_roots

__all__ = ["submit_plan", "make_executor", "array_parameters", "pending_groups", "launcher_problem"]


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
        "job_name": name, "partition": launcher.partition, "time": math.ceil(launcher.timeout_min),
        "nodes": 1, "ntasks_per_node": tasks, "cpus_per_task": cpus,
        "signal_delay_s": launcher.signal_delay_s, "array_parallelism": launcher.array_parallelism,
        "setup": list(launcher.setup),
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
    slurm = shutil.which("sbatch") and shutil.which("srun")
    if executor is None and spec.launcher.kind == "slurm" and not slurm:
        raise RunError([launcher_problem(spec, "sbatch or srun is not on this machine's PATH",
                                         hint="submit from a Slurm login node, or use kind = "
                                              "'submitit-local' to run the jobs on this machine")])
    store = Store(Path(plan.run_dir))
    store.write_plan_json(plan.to_json(), plan_file)
    groups = pending_groups(plan, store, retry_failed)
    task = partial(SweepTask, spec.source or "", plan.run_dir, import_roots=tuple(import_roots(plan)),
                   retry_failed=retry_failed, plan_file=plan_file)
    if executor is not None:
        kind, folder, batches = _executor_batches(executor, groups, task)
    else:
        folder = store.root / "launcher" / "logs" / "%j"
        kind, batches = spec.launcher.kind, _launcher_batches(spec, plan.name, groups, folder, task)
    records, submitted = [], []
    try:
        for array, ex, tasks in batches:
            jobs = _submit_array(spec, array, ex, tasks)
            submitted += jobs
            records += [JobRecord(job_id=str(j.job_id), array=array, experiments=list(t.experiment_ids),
                                  stdout=str(j.paths.stdout), stderr=str(j.paths.stderr))
                        for j, t in zip(jobs, tasks)]
    finally:  # what was submitted is recorded, also when a later array fails
        submission = Submission(submitted=datetime.now(timezone.utc).isoformat(timespec="seconds"), kind=kind,
                                folder=str(folder), jobs=records)
        if records:
            _record(store, submission)
    return submission, submitted


def _executor_batches(executor: Any, groups: list[list[Experiment]], task: Callable[..., "SweepTask"]):
    """A user's submitit executor: one array, one task per group, data-parallel when its tasks have
    several processes.  Returns (kind, log folder, [(array, executor, tasks)])."""
    processes = executor.parameters.get("tasks_per_node", executor.parameters.get("ntasks_per_node", 1))
    dp = processes > 1
    tasks = [task(tuple(e.id for e in g), data_parallel=dp) for g in groups]
    name = str(getattr(executor, "cluster", type(executor).__name__)).lower()
    kind = "slurm" if "slurm" in name else "submitit-local" if "local" in name else type(executor).__name__
    return kind, Path(executor.folder), [("data-parallel" if dp else "one-gpu", executor, tasks)]


def _launcher_batches(spec: SpecModel, name: str, groups: list[list[Experiment]], folder: Path,
                      task: Callable[..., "SweepTask"]) -> list:
    """``[launcher]``'s arrays: one-GPU groups packed several to a task (strided, so each task gets
    small and large experiments alike), data-parallel groups one a task."""
    per_task = (max(1, spec.launcher.gpus_per_task) * spec.train.workers_per_gpu
                * spec.launcher.experiments_per_worker)
    batches = []
    for array, chosen in _split(spec, groups).items():
        if not chosen:
            continue
        ex = make_executor(spec.launcher, folder)
        ex.update_parameters(**array_parameters(spec.launcher, array, spec.train.workers_per_gpu,
                                                f"flops-fit-{name}"))
        if array == "one-gpu":
            n = -(-len(chosen) // per_task)
            chunks = [chosen[i::n] for i in range(n)]
        else:
            chunks = [[g] for g in chosen]
        if spec.launcher.kind == "submitit-local" and len(chunks) > spec.launcher.array_parallelism:
            # submitit's local executor starts every job at once: honour array_parallelism with fewer,
            # longer tasks
            n = spec.launcher.array_parallelism
            chunks = [[g for c in chunks[i::n] for g in c] for i in range(n)]
        tasks = [task(tuple(e.id for g in c for e in g), data_parallel=array == "data-parallel",
                      per_gpu=spec.train.workers_per_gpu) for c in chunks]
        batches.append((array, ex, tasks))
    return batches


def _submit_array(spec: SpecModel, array: Array, ex: Any, tasks: list) -> list:
    """Submit one array; sbatch's refusal becomes one problem naming the key to change."""
    try:
        with _sbatch_stderr(), ex.batch():
            return [ex.submit(task) for task in tasks]
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


def _record(store: Store, submission: Submission) -> None:
    """Append a submission to ``launcher/jobs.json`` (under its file lock: several submitters)."""
    path = store.root / "launcher" / "jobs.json"
    with FileLock(str(path) + ".lock"):
        jobs_file = read_jobs(store.root)
        updated = jobs_file.model_copy(update={"submissions": [*jobs_file.submissions, submission]})
        atomic_write_text(path, updated.model_dump_json(indent=2) + "\n")




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


def launcher_problem(spec: SpecModel, message: str, key: str = "launcher.kind",
                     hint: str | None = None) -> Problem:
    """A problem of the spec's ``[launcher]`` table, naming the spec file, the key's line and its
    value."""
    from ..core.tomlpos import key_lines

    parts = tuple(key.split("."))
    source = Path(spec.source) if spec.source else None
    lines = key_lines(source.read_text(encoding="utf-8")) if source and source.exists() else {}
    value = getattr(spec.launcher, parts[1]) if len(parts) > 1 else None
    return Problem(message, key=key, file=spec.source, line=lines.get(parts) or lines.get(parts[:1]),
                   value=value, has_value=value is not None, hint=hint)
