"""Spread a sweep over processes: experiment-parallel workers and data-parallel relaunches.

* Experiment-parallel: ``G × workers_per_gpu`` worker processes (``G`` visible GPUs, or
  ``workers_per_gpu`` processes on CPU), worker ``i`` pinned to GPU ``i mod G``.  Each worker
  walks the plan and claims whole experiments through the store's file locks, so none is
  trained twice; several workers on one GPU pack small models that would leave it idle.  A
  packed worker out of device memory gives way (:mod:`.memory`) and the next round has fewer.
  The same mechanism lets several nodes on a shared filesystem work on one store.
* Data-parallel: ``torchrun --nproc_per_node G -m flops_fit.execute.launch RUN_DIR SELECTION`` trains
  each experiment over all GPUs (accelerate reads torchrun's environment).
* ``parallel = "auto"``: experiments with N below ``train.data_parallel_min_params`` go to the
  workers, larger ones are trained data-parallel afterwards.

A worker is ``python -m flops_fit.execute.launch RUN_DIR [SELECTION_JSON]``: it reads the compiled
``RUN_DIR/plan.json`` (never the spec: nothing is re-validated or re-planned) and trains the
experiments the :class:`Selection` accepts.  Every result is the same as a single-process
run's (each experiment is seeded by its job); only the wall-clock changes.  Workers die
with their parent (Linux ``PR_SET_PDEATHSIG``), so a killed ``run`` leaves no orphans.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.frozen import Frozen
from ..plan.plan import Experiment, Plan
from ..spec.spec import SpecModel
from .memory import GAVE_WAY, PACKED_ENV, GaveWay

__all__ = ["LaunchPlan", "Selection", "launch_plan", "data_parallel_selection", "run_launched",
           "worker_main", "import_roots", "WORKER_ENV"]

WORKER_ENV = "FLOPS_FIT_WORKER"


@dataclass(frozen=True)
class LaunchPlan:
    """Which process layout ``run`` uses: ``in_process`` or a list of phases."""

    gpus: int
    workers: int  # experiment-parallel worker processes (0: none)
    data_parallel: bool  # a torchrun phase over all GPUs
    threshold: float | None  # N splitting the two phases (None: no split)

    @property
    def in_process(self) -> bool:
        return self.workers <= 1 and not self.data_parallel


class Selection(Frozen):
    """Which experiments of a plan one worker trains: ``min_params <= N < max_params``, and
    only those of ``ids`` when given (a scheduler job's experiments)."""

    min_params: Optional[float] = None
    max_params: Optional[float] = None
    ids: Optional[list[str]] = None
    retry_failed: bool = False
    plan: str = "plan.json"  # the plan file in RUN_DIR: the sweep's, or plans/<tag>.json (confirm, transfer)

    def accepts(self, exp: Experiment) -> bool:
        return ((self.min_params is None or exp.num_params >= self.min_params)
                and (self.max_params is None or exp.num_params < self.max_params)
                and (self.ids is None or exp.id in self.ids))


def data_parallel_selection(parallel: str, min_params: float, processes: int) -> Selection | None:
    """The experiments trained data-parallel over ``processes`` processes (GPUs): every one with
    ``train.parallel = "data"``, those with N >= ``data_parallel_min_params`` with "auto"; None
    (no data-parallel phase) with "experiment" or fewer than two processes."""
    if processes < 2 or parallel == "experiment":
        return None
    return Selection(min_params=min_params if parallel == "auto" else None)


def launch_plan(spec: SpecModel, gpus: int | None = None) -> LaunchPlan:
    """The process layout for ``spec`` on this machine (``in_process`` inside a worker)."""
    if os.environ.get(WORKER_ENV) or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return LaunchPlan(0, 0, False, None)
    t = spec.train
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if t.device == "cpu":
        gpus = 0
    data_parallel = data_parallel_selection(t.parallel, t.data_parallel_min_params, gpus)
    if t.parallel == "data":
        return LaunchPlan(gpus, 0, data_parallel is not None, None)
    workers = max(1, gpus) * t.workers_per_gpu  # one GPU: the workers take everything
    return LaunchPlan(gpus, workers, data_parallel is not None,
                      data_parallel.min_params if data_parallel else None)


def import_roots(plan: Plan) -> list[str]:
    """Folders a fresh process needs on ``sys.path`` to import the plan's user code as this one did.

    The job's search path (the spec's folder) plus, for every user module already imported here
    (``find_optimal`` hands over objects), the folder above its top-level package."""
    roots: list[str] = []
    for exp in plan.experiments[:1]:
        roots += exp.job.search_path
        for target in exp.job.targets:
            module = sys.modules.get(target.split(":")[0])
            file = getattr(module, "__file__", None)
            if file:
                depth = target.split(":")[0].count(".") + (1 if Path(file).name == "__init__.py" else 0)
                roots.append(str(Path(file).resolve().parents[depth]))
    return list(dict.fromkeys(roots))


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait(procs: list, plan: Plan, on_progress) -> list[int]:
    """The processes' exit codes; meanwhile ``on_progress(finished, total)`` every second from the store."""
    if on_progress is None:
        return [p.wait() for p in procs]
    import time

    from ..store.store import Store

    store, units = Store(Path(plan.run_dir)), plan.experiments
    while any(p.poll() is None for p in procs):
        on_progress(len(store.collect(units)), len(units))
        time.sleep(1.0)
    on_progress(len(store.collect(units)), len(units))
    return [p.wait() for p in procs]


def run_launched(layout: LaunchPlan, plan: Plan, retry_failed: bool, on_progress=None,
                 plan_file: str = "plan.json") -> list[int]:
    """Run the phases of ``layout`` over ``plan`` (written to ``RUN_DIR/plan_file`` beforehand);
    returns the exit codes of the processes.  Ctrl-C stops the workers too.  ``on_progress``:
    called with (finished, total) experiments while the workers train."""
    codes = []
    env = {**os.environ, WORKER_ENV: "1",
           "PYTHONPATH": os.pathsep.join([*import_roots(plan), *filter(None,
                                                                       [os.environ.get("PYTHONPATH")])])}
    entry = ["-m", "flops_fit.execute.launch", plan.run_dir]
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    procs: list[subprocess.Popen] = []
    try:
        workers = layout.workers if layout.workers > 1 else 0
        while workers:  # rounds: the workers that gave way (out of device memory) leave the next one
            selection = Selection(max_params=layout.threshold, retry_failed=retry_failed,
                                  plan=plan_file).model_dump_json()
            procs = []
            for i in range(workers):
                child = {**env, **({PACKED_ENV: "1"} if workers > 1 else {})}  # alone: out of memory fails
                if layout.gpus:
                    child["CUDA_VISIBLE_DEVICES"] = str(i % layout.gpus)
                elif "OMP_NUM_THREADS" not in os.environ:  # CPU workers share the cores
                    child["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
                procs.append(subprocess.Popen([sys.executable, *entry, selection], env=child,
                                              preexec_fn=preexec))
            done = _wait(procs, plan, on_progress)
            codes += [c for c in done if c != GAVE_WAY]
            gave = done.count(GAVE_WAY)
            workers = max(1, workers - gave) if gave else 0
        if layout.data_parallel:
            selection = Selection(min_params=layout.threshold, retry_failed=retry_failed,
                                  plan=plan_file).model_dump_json()
            torchrun = [shutil.which("torchrun") or "torchrun", "--standalone",
                        f"--nproc_per_node={layout.gpus}"]
            procs = [subprocess.Popen(torchrun + entry + [selection], env=env, preexec_fn=preexec)]
            codes += _wait(procs, plan, on_progress)
    finally:
        for p in procs:  # interrupted: take the workers down with us (they checkpoint on SIGTERM)
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    return codes


def _event_printer():
    """A worker's log on stderr (stdout stays the parent's, for --json), as quiet as the parent's
    (:class:`~flops_fit.report.progress.EventLog`; ``--verbose`` reaches it through the environment),
    and the printer of its skip summary."""
    from rich.console import Console

    from ..core.eventlog import EventLog

    log = EventLog()
    console = Console(stderr=True, highlight=False, width=220, soft_wrap=True)

    def on_event(event) -> None:
        line = log.line(event)
        if line:
            console.print(line)

    def finish() -> None:
        summary = log.summary()
        if summary:
            console.print(f"worker {os.getpid()}: " + summary)
    return on_event, finish


def worker_main(run_dir: str, selection: Selection) -> int:
    """Train the selected experiments of ``RUN_DIR/<selection.plan>``; 0 when every one was decided."""
    from .session import Session
    from ..store.store import Store

    store = Store(Path(run_dir))
    plan = Plan.from_json((store.root / selection.plan).read_text(encoding="utf-8"))
    on_event, finish = _event_printer()
    session = Session(plan.runtime, str(store.root / "tracking"), selection.retry_failed, on_event)
    try:
        session.train([e for e in plan.units() if selection.accepts(e)], store)
    except GaveWay as gave:  # packed beside others on a device that ran out of memory: step aside
        finish()
        print(f"worker {os.getpid()}: {gave}", file=sys.stderr, flush=True)
        return GAVE_WAY
    finish()
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print("usage: python -m flops_fit.execute.launch RUN_DIR [SELECTION_JSON]", file=sys.stderr)
        sys.exit(2)
    os.environ[WORKER_ENV] = "1"
    try:
        selection = Selection.model_validate_json(sys.argv[2]) if len(sys.argv) == 3 else Selection()
        sys.exit(worker_main(sys.argv[1], selection))
    except KeyboardInterrupt as exc:  # SIGINT/SIGTERM: the experiment in training was checkpointed
        print(f"worker {os.getpid()}: {exc or 'interrupted'}", file=sys.stderr, flush=True)
        sys.exit(130)
