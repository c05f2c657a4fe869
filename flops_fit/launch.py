"""Spread a sweep over processes: experiment-parallel workers and data-parallel relaunches.

* Experiment-parallel: ``G × workers_per_gpu`` worker processes (``G`` visible GPUs, or
  ``workers_per_gpu`` processes on CPU), worker ``i`` pinned to GPU ``i mod G``.  Each worker
  walks the plan and claims whole experiments through the store's file locks, so none is
  trained twice; several workers on one GPU pack small models that would leave it idle.
  The same mechanism lets several nodes on a shared filesystem work on one store.
* Data-parallel: ``torchrun --nproc_per_node G -m flops_fit run SPEC --worker`` trains each
  experiment over all GPUs (accelerate reads torchrun's environment).
* ``parallel = "auto"``: experiments with N below ``train.data_parallel_min_params`` go to the
  workers, larger ones are trained data-parallel afterwards.

Every result is the same as a single-process run's (each experiment is seeded by its job);
only the wall-clock changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import torch

from .spec import Spec

__all__ = ["LaunchPlan", "launch_plan", "run_launched", "WORKER_ENV"]

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


def launch_plan(spec: Spec, gpus: int | None = None) -> LaunchPlan:
    """The process layout for ``spec`` on this machine (``in_process`` inside a worker)."""
    if os.environ.get(WORKER_ENV) or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return LaunchPlan(0, 0, False, None)
    t = spec.train
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if t.device == "cpu":
        gpus = 0
    workers = max(1, gpus) * t.workers_per_gpu
    if t.parallel == "data":
        return LaunchPlan(gpus, 0, gpus > 1, None)
    if t.parallel == "experiment":
        return LaunchPlan(gpus, workers, False, None)
    split = t.data_parallel_min_params if gpus > 1 else None  # one GPU: the workers take everything
    return LaunchPlan(gpus, workers if workers > 1 else 0, gpus > 1, split)


def _worker_cmd(spec_path: str, retry_failed: bool, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "flops_fit", "run", spec_path, "--worker"] + extra
    return cmd + (["--retry-failed"] if retry_failed else [])


def run_launched(layout: LaunchPlan, spec_path: str, retry_failed: bool) -> list[int]:
    """Run the phases of ``layout``; returns the exit codes of the processes."""
    codes = []
    env = {**os.environ, WORKER_ENV: "1"}
    if layout.workers > 1:
        extra = ["--max-params", repr(layout.threshold)] if layout.threshold is not None else []
        procs = []
        for i in range(layout.workers):
            child = dict(env)
            if layout.gpus:
                child["CUDA_VISIBLE_DEVICES"] = str(i % layout.gpus)
            elif "OMP_NUM_THREADS" not in os.environ:  # CPU workers share the cores
                child["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // layout.workers))
            procs.append(subprocess.Popen(_worker_cmd(spec_path, retry_failed, extra), env=child))
        codes += [p.wait() for p in procs]
    if layout.data_parallel:
        extra = ["--min-params", repr(layout.threshold)] if layout.threshold is not None else []
        torchrun = [shutil.which("torchrun"), "--standalone", f"--nproc_per_node={layout.gpus}"]
        codes.append(subprocess.run(torchrun + _worker_cmd(spec_path, retry_failed, extra)[1:], env=env).returncode)
    return codes
