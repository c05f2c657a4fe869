"""Dry run: what ``run`` would do with each experiment, what it costs, how long it takes.

Each experiment's action and reason come from :func:`flops_fit.store.store.decide`, the code
``run`` uses.  Wall-clock on this machine is calibrated by training the smallest and the
largest model for a few real steps with the real worker (in a temporary folder: the run
directory is never touched): seconds per step after the first step, interpolated
log-linearly in N, times the remaining steps, plus the first step's extra cost
(allocation, ``torch.compile``) once per experiment.  With several worker processes
(``workers_per_gpu``, several GPUs) the calibration runs with a worker's share of the CPU
threads and the total is the makespan of the experiments handed out in plan order to the
workers (plus a worker's start-up), not their sum.  The
GPU figure is ``remaining FLOPs / (peak FLOP/s × MFU)`` for the GPU named in
``[estimate]``; in GPU-hours per experiment and in total, and in $ with ``usd_per_gpu_hour``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from ..core.frozen import Frozen
from ..plan.flops import PEAK_FLOPS, RULE_DESCRIPTIONS
from ..plan.plan import Dropped, Experiment, Plan
from ..spec.spec import SpecModel
from ..execute.launch import launch_plan
from ..store.store import Store, decide

__all__ = ["EstimateRow", "Estimate", "estimate_plan", "calibrate", "makespan"]



class EstimateRow(Frozen):
    id: str
    budget_flops: float
    size: object
    num_params: int
    num_tokens: float
    steps: int
    flops: float
    action: Literal["run", "resume", "skip", "wait"]
    reason: str
    role: Literal["experiment", "trunk", "branch"] = "experiment"  # trunk, branch: reuse = "branch"
    est_seconds: Optional[float] = None
    gpu_hours: float = 0.0  # of the remaining FLOPs on the [estimate] GPU at its MFU
    usd: Optional[float] = None


class Estimate(Frozen):
    """The dry run (``estimate --json`` prints this)."""

    flop_rule: str
    flop_rule_description: str
    experiments: list[EstimateRow]
    dropped: list[Dropped]
    total_flops: float
    remaining_flops: float
    est_seconds: Optional[float]
    device: str
    calibration: dict
    gpu: str
    gpu_mfu: float
    gpu_est_seconds: float
    gpu_hours: float = 0.0  # gpu_est_seconds / 3600: the remaining work in GPU-hours on the [estimate] GPU
    usd: Optional[float] = None  # gpu_hours × [estimate] usd_per_gpu_hour
    reuse: str = "none"
    notes: list[str] = Field(default_factory=list)  # the plan's: cells of a branched sweep that train standalone
    standalone_flops: float = 0.0  # the same sweep with reuse = "none": every experiment from scratch
    saved_flops: float = 0.0  # standalone_flops − total_flops
    saved_seconds: Optional[float] = None  # the same, in estimated wall-clock here (whole sweep, from scratch)
    transfer: Optional[str] = None  # the last `flops-fit transfer` verdict for this recipe (None: no check)


def calibrate(plan: Plan, steps: int, threads: int | None = None) -> dict:
    """Seconds per step of the smallest and largest planned models, from real steps.

    ``threads``: CPU threads per worker process (the launcher gives each of W CPU workers
    cores // W), so the calibration runs as a worker will."""
    import torch

    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return calibrate(plan, steps)
        finally:
            torch.set_num_threads(before)
    from ..execute.session import Session

    if not plan.experiments:
        return {}
    by_n = sorted(plan.experiments, key=lambda e: e.num_params)
    picks = {by_n[0].num_params: by_n[0], by_n[-1].num_params: by_n[-1]}
    session = Session(plan.runtime, trackers=False)
    out = {"device": str(session.accelerator.device), "points": []}
    for n, exp in picks.items():
        job = exp.job.model_copy(update={"steps": steps + 2,
                                         "loop": exp.job.loop.model_copy(update={"log_points": 4}),
                                         "schedule": exp.job.schedule.model_copy(update={"warmup_steps": 1})})
        t0 = time.perf_counter()
        result = session.scratch(job, f"calibrate-{n}")
        wall = time.perf_counter() - t0  # the whole call: building model and data, evaluation, result
        first, last = result.curve[0], result.curve[-1]
        per_step = (last.seconds - first.seconds) / max(1, last.step - first.step)
        out["points"].append({"num_params": n, "seconds_per_step": per_step,
                              "overhead_seconds": max(0.0, wall - last.step * per_step)})
    return out


def worker_start_seconds() -> float:
    """Measured here: a fresh process importing the training stack, as each worker does first."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    code = "import torch, accelerate, flops_fit.execute.launch, flops_fit.execute.runner"
    subprocess.run([sys.executable, "-c", code], check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def makespan(seconds: list[float], workers: int,
             after: list[tuple[int, float] | None] | None = None) -> float:
    """Wall-clock of jobs on ``workers`` processes that each take the next ready one in plan order
    as they free up (list scheduling, as the store's locks hand them out).

    ``after[i] = (j, t)``: job i (a branch) cannot start before job j (its trunk) has run ``t``
    seconds (its branch point is pinned); a worker skips it until then, as the runner does, and
    waits only when nothing else is ready.  A branch whose trunk is not in the list is ready at once."""
    import heapq

    after = after or [None] * len(seconds)
    started: dict[int, float] = {}
    pending = list(range(len(seconds)))
    free = [0.0] * max(1, workers)
    end = 0.0

    def ready_at(i: int) -> float:
        dep = after[i]
        if dep is None or not seconds[dep[0]]:
            return 0.0
        return started[dep[0]] + dep[1] if dep[0] in started else float("inf")

    while pending:
        now = heapq.heappop(free)
        pick = next((i for i in pending if ready_at(i) <= now), None)
        if pick is None:  # every pending branch waits for a running trunk: idle until the first pin
            heapq.heappush(free, min(ready_at(i) for i in pending))
            continue
        pending.remove(pick)
        started[pick] = now
        end = max(end, now + seconds[pick])
        heapq.heappush(free, now + seconds[pick])
    return end


def _waits(units: list[Experiment], calib: dict, starts: dict[str, int]) -> list[tuple[int, float] | None]:
    """For :func:`makespan`: each branch waits until its trunk, started at ``starts`` (default 0),
    has trained to the branch step (its start-up plus the steps in between)."""
    where = {e.id: i for i, e in enumerate(units)}
    out: list[tuple[int, float] | None] = []
    for e in units:
        b = e.job.branch
        if b is None or b.trunk_id not in where:
            out.append(None)
            continue
        trunk = units[where[b.trunk_id]]
        steps = max(0, b.step - starts.get(trunk.id, 0))
        out.append((where[b.trunk_id], _overhead(calib) + steps * (_seconds_per_step(calib, trunk.num_params) or 0.0)))
    return out


def _overhead(calibration: dict) -> float:
    """Per-experiment cost outside its steps (building model and data, the first step's allocation
    and compilation, the final evaluation, the result): the smallest measured, a warm process's."""
    return min((p["overhead_seconds"] for p in calibration.get("points", [])), default=0.0)


def _first_call(calibration: dict) -> float:
    """What a process's first experiment costs once on top (imports of the user's code, first use
    of the data loader): the first calibration call's overhead beyond a warm one's."""
    points = calibration.get("points", [])
    return max(0.0, points[0]["overhead_seconds"] - _overhead(calibration)) if points else 0.0


def _seconds_per_step(calibration: dict, num_params: int) -> float | None:
    points = sorted((p["num_params"], p["seconds_per_step"]) for p in calibration.get("points", []))
    if not points:
        return None
    if len(points) == 1 or points[0][0] == points[-1][0]:
        return points[0][1]
    (n0, s0), (n1, s1) = points[0], points[-1]
    w = (math.log(num_params) - math.log(n0)) / (math.log(n1) - math.log(n0))
    return math.exp(math.log(s0) + w * (math.log(s1) - math.log(s0)))


def _remaining_steps(exp: Experiment, action: str, checkpoint_step: int | None,
                     stop: int | None = None) -> int:
    """Steps still to train: a trunk to its stop, a branch from its branch point (or own checkpoint)."""
    if action == "skip":
        return 0
    return (stop or exp.steps) - (checkpoint_step or 0)


def _own_steps(exp: Experiment) -> int:
    """Steps an experiment trains itself from scratch: a branch only its cooldown."""
    return exp.steps - (exp.job.branch.step if exp.job.branch is not None else 0)


def _group_note(plan: Plan, units: list[Experiment], rows: list[EstimateRow], layout,
                calib: dict) -> list[str]:
    """What ``[train] group`` will do with the experiments left to train (the runner's decision)."""
    from ..execute.group import group_sizes, grouping

    pending = [e.job for e, r in zip(units, rows) if r.action in ("run", "resume")]
    sizes = group_sizes(pending, plan.runtime.group)
    if not sizes:
        return []
    rt = plan.runtime
    cuda = layout.gpus or calib.get("device", "").startswith("cuda")
    device = rt.device if rt.device != "auto" else ("cuda" if cuda else "cpu")
    on, why = grouping(rt, device, scaler=rt.precision == "fp16" and device == "cuda")
    counts = ", ".join(str(n) for n in sizes)
    if on:
        return [f"{sum(sizes)} experiments train in {len(sizes)} groups of one shape ({counts}): {why}; "
                "the times above are one at a time"]
    if rt.group == "off" or device != "cuda" and rt.group == "auto":  # asked for, or no faster here
        return []
    return [f"{sum(sizes)} experiments could train in {len(sizes)} groups of one shape ({counts}); {why}"]


def estimate_plan(spec: SpecModel, plan: Plan, retry_failed: bool = False,
                  calibrate_steps: int | None = None) -> Estimate:
    """The dry-run report for ``plan`` against the store in ``spec.run_dir``."""
    import os

    store = Store(Path(plan.run_dir))
    layout = launch_plan(spec)
    workers = max(1, layout.workers)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 and not layout.gpus else None
    calib_steps = calibrate_steps or spec.cost.calibrate_steps
    calib = calibrate(plan, calib_steps, threads) if spec.cost.calibrate else {}
    rows, remaining_flops, total_seconds = [], 0.0, 0.0
    gpu_rate = PEAK_FLOPS[spec.cost.gpu][plan.runtime.precision] * spec.cost.mfu  # FLOP/s on the stated GPU
    price = spec.cost.usd_per_gpu_hour
    units = plan.units()
    starts: dict[str, int] = {}  # the step each unit starts from (a trunk's resume step)
    for exp in units:
        d = decide(store, exp, retry_failed, dry_run=True,
                   branches=plan.branches_of(exp) if exp.job.role == "trunk" else None)
        left = _remaining_steps(exp, d.action, d.checkpoint_step, d.stop)
        starts[exp.id] = d.checkpoint_step or 0
        sps = _seconds_per_step(calib, exp.num_params)
        seconds = left * sps + _overhead(calib) if sps is not None and left else (0.0 if sps is not None else None)
        remaining_flops += exp.flops * left / exp.steps
        total_seconds += seconds or 0.0
        hours = exp.flops * left / exp.steps / gpu_rate / 3600
        rows.append(EstimateRow(id=exp.id, budget_flops=exp.budget_flops, size=exp.size,
                                num_params=exp.num_params, num_tokens=exp.num_tokens, steps=exp.steps,
                                flops=exp.flops, action=d.action,
                                reason=d.reason, est_seconds=seconds, gpu_hours=hours,
                                usd=hours * price if price else None,
                                role="trunk" if exp.job.role == "trunk" else ("branch" if exp.job.branch else "experiment")))
    if calib and workers > 1:  # experiments are claimed by W workers: the sweep ends with the busiest one
        start = worker_start_seconds() + _first_call(calib)  # each worker imports the training stack, reads plan.json
        calib = {**calib, "workers": workers, "worker_start_seconds": start}
        total_seconds = makespan([r.est_seconds or 0.0 for r in rows], workers, _waits(units, calib, starts)) + start
    elif calib and any(r.est_seconds for r in rows):
        total_seconds += _first_call(calib)
    notes = list(plan.notes) + _group_note(plan, units, rows, layout, calib)
    gpu_hours = remaining_flops / gpu_rate / 3600
    total = sum(e.flops * _own_steps(e) / e.steps for e in units)
    standalone = sum(e.flops for e in plan.experiments)
    saved_seconds = None
    if calib and plan.trunks:  # the whole sweep from scratch, both ways, on this machine's layout
        def sweep_seconds(items: list[Experiment], steps) -> float:
            each = [steps(e) * _seconds_per_step(calib, e.num_params) + _overhead(calib) for e in items]
            return makespan(each, workers, _waits(items, calib, {})) if workers > 1 else sum(each)
        saved_seconds = sweep_seconds(plan.experiments, lambda e: e.steps) - sweep_seconds(units, _own_steps)
    return Estimate(flop_rule=plan.flop_rule, flop_rule_description=RULE_DESCRIPTIONS[plan.flop_rule],
                    experiments=rows, reuse=plan.reuse, notes=notes, standalone_flops=standalone,
                    saved_flops=standalone - total, saved_seconds=saved_seconds,
                    dropped=list(plan.dropped), total_flops=total,
                    remaining_flops=remaining_flops, est_seconds=total_seconds if calib else None,
                    device=calib.get("device", "not calibrated"), calibration=calib, gpu=spec.cost.gpu,
                    gpu_mfu=spec.cost.mfu, gpu_est_seconds=gpu_hours * 3600, gpu_hours=gpu_hours,
                    usd=gpu_hours * price if price else None)
