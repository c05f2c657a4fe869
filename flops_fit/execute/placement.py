"""Where experiments train: one decision for every verb (``run``, ``confirm``, ``transfer``,
``compare``, ``find_optimal``, ``Spec.*``).

* ``[launcher] kind`` other than "local" (or a submitit ``executor``): job arrays through
  :mod:`flops_fit.execute.submit`, waited for here;
* several GPUs or ``train.workers_per_gpu > 1``: local worker processes and data-parallel
  relaunches (:mod:`flops_fit.execute.launch`);
* otherwise, or for objects registered by ``cache_key`` (they exist only in this process): in
  this process, with the one Accelerator of the plan's ``Runtime``.

Workers and jobs read the compiled plan from a file in the run directory, never the spec: the
sweep's ``plan.json``, or ``plans/<tag>.json`` for the experiments a forward check or a transfer
check adds (``status`` lists those too).  Every experiment is claimed through its lease, so
processes of any of these kinds share one store without training anything twice.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..core.errors import Problem, RunError
from .launch import launch_plan, run_launched
from ..plan.plan import Experiment, Plan
from ..spec.spec import SpecModel
from ..store.store import Store

if TYPE_CHECKING:
    from .runner import RunEvent

__all__ = ["train", "train_plan", "extra_plan"]


def extra_plan(plan: Plan, experiments: list[Experiment], tag: str | None = None) -> tuple[Plan, str]:
    """The plan of experiments trained beside the sweep (a forward check's sizes, a transfer
    check's rates) and the file its workers read: ``plans/<tag>.json`` (default tag: a hash of the ids)."""
    ids = [e.id for e in experiments]
    tag = tag or "extra-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in tag)
    extra = plan.model_copy(update={"experiments": list(experiments), "trunks": [], "dropped": []})
    return extra, f"plans/{safe}.json"


def train(spec: SpecModel, plan: Plan, retry_failed: bool = False,
          on_event: Callable[["RunEvent"], None] | None = None,
          on_progress: Callable[[int, int], None] | None = None, executor: Any = None,
          plan_file: str = "plan.json") -> bool:
    """Train ``plan``'s pending experiments where the spec's ``[launcher]`` and this machine say;
    False in the non-main processes of a distributed launch (they neither fit nor report)."""
    if executor is not None or spec.launcher.kind != "local":
        from .dispatch import wait_for
        from .submit import submit_plan

        submission, jobs = submit_plan(spec, plan, retry_failed, executor, plan_file)
        failures = wait_for(jobs, submission.jobs, Store(Path(plan.run_dir)), on_progress)
        if failures:
            raise RunError([Problem(f.line()) for f in failures])
        return True
    return train_plan(spec, plan, retry_failed, on_event, on_progress, plan_file)


def train_plan(spec: SpecModel, plan: Plan, retry_failed: bool = False,
               on_event: Callable[["RunEvent"], None] | None = None,
               on_progress: Callable[[int, int], None] | None = None, plan_file: str = "plan.json") -> bool:
    """Train the plan's pending experiments on this machine: here or in worker processes
    (:func:`~flops_fit.execute.launch.launch_plan`; ``on_progress(finished, total)`` while they train).
    False in the non-main processes of a distributed launch."""
    store = Store(Path(plan.run_dir))
    layout = launch_plan(spec)
    registered = sorted({t for e in plan.experiments for t in e.job.targets if t.startswith("@")})
    if not layout.in_process and registered:
        warnings.warn(f"{', '.join(registered)} exist only in this process (registered by cache_key), "
                      f"so the sweep trains here instead of in {layout.workers or layout.gpus} worker "
                      f"processes; pass objects importable by module path to use them", stacklevel=3)
    if not layout.in_process and not registered:
        store.write_plan_json(plan.to_json(), plan_file)
        codes = run_launched(layout, plan, retry_failed, on_progress, plan_file)
        if any(codes):
            raise RunError(f"{sum(1 for c in codes if c)} worker process(es) failed (exit codes {codes})")
        return True
    from .session import Session

    session = Session(plan.runtime, str(store.root / "tracking"), retry_failed, on_event)
    session.train_plan(plan, store, plan_file)
    return session.is_main
