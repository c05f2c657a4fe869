"""A process's training session: the one Accelerator, the options, and the two ways to train.

Every place that trains goes through a :class:`Session`: a worker process and the in-process path
of ``run`` (:meth:`Session.train_plan`), and the short measurements that are not experiments —
the estimate's calibration and the transfer check's coordinate check (:meth:`Session.scratch`).
The Accelerator is built once per session from the plan's ``Runtime``; the stop signal is the
process's (:mod:`.signals`), the loss of a lease belongs to its claim (:class:`~flops_fit.store.lease.Lease`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from ..plan.plan import Experiment, Job, Plan, Runtime
from ..store.store import RunRecord, Store
from .runner import RunEvent, make_accelerator, run_experiments
from .worker import train_experiment

__all__ = ["Session"]


class Session:
    """``Session(runtime, project_dir)``: train experiments (:meth:`train`, :meth:`train_plan`) or a
    scratch job (:meth:`scratch`) with one Accelerator.  ``trackers=False`` leaves ``log_with`` out
    (a measurement is no experiment: it opens no tracker run)."""

    def __init__(self, runtime: Runtime, project_dir: str | None = None, retry_failed: bool = False,
                 on_event: Callable[[RunEvent], None] | None = None, trackers: bool = True):
        self.runtime = runtime if trackers else runtime.model_copy(update={"log_with": []})
        self.accelerator = make_accelerator(self.runtime, project_dir or tempfile.gettempdir())
        self.retry_failed, self.on_event = retry_failed, on_event

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def train(self, experiments: list[Experiment], store: Store) -> list[RunRecord]:
        """Decide, claim, train and store each experiment (trunks before their branches)."""
        return run_experiments(experiments, store, self.accelerator, self.retry_failed, self.on_event,
                               self.runtime)

    def train_plan(self, plan: Plan, store: Store, plan_file: str = "plan.json",
                   select: Callable[[Experiment], bool] | None = None) -> list[RunRecord]:
        """Write ``plan`` to ``RUN_DIR/plan_file`` (main process); train its units ``select`` accepts."""
        if self.is_main:
            store.write_plan_json(plan.to_json(), plan_file)
        return self.train([e for e in plan.units() if select is None or select(e)], store)

    def scratch(self, job: Job, name: str, inspect=None) -> RunRecord:
        """Train ``job`` as a measurement: in a temporary store that is deleted afterwards, no
        checkpoint, no evaluation but one batch at the end, no lease, no tracker."""
        loop = job.loop.model_copy(update={"eval_points": 0, "checkpoint_seconds": 1e9,
                                           "checkpoint_steps": None})
        job = job.model_copy(update={"loop": loop, "eval_batches": 1, "experiment_id": name})
        with tempfile.TemporaryDirectory(prefix="flops-fit-scratch-") as tmp:
            return train_experiment(job, Store(Path(tmp)), self.accelerator,
                                    compile=self.runtime.compile and inspect is None,
                                    inspect=inspect, cuda_graphs=self.runtime.cuda_graphs)
