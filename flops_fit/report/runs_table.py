"""Every experiment of a sweep as one row: what was planned, what was trained, what it cost.

``run_rows(plan, records, fits)`` joins the plan's experiments with the store's records and the
fits' exclusions; ``point_rows(points, fits)`` does the same for measurements made elsewhere (a
CSV: nothing was planned).  ``Result.to_pandas()`` and ``report/points.csv`` are these rows.
GPU-hours = train seconds × processes / 3600 for experiments trained on CUDA (0 on CPU; None
where the record predates the device type).  With ``reuse = "branch"`` each trunk is a row too
(``role = "trunk"``, never fitted) and a branch's seconds and GPU-hours are its cooldown's only,
so the rows add up to what the sweep cost.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any, Literal, Optional

from ..analysis.fit import Fits
from ..analysis.points import Points
from ..core.frozen import Frozen
from ..store.records import RunRecord

if TYPE_CHECKING:  # only its type: the report reads plans without loading the planner
    from ..plan.plan import Plan

__all__ = ["RunRow", "Cost", "cost_of", "run_rows", "point_rows", "point_columns", "rows_csv", "COLUMNS"]


class RunRow(Frozen):
    """One experiment: planned against achieved N, D and FLOPs, outcome, cost."""

    id: str
    budget_flops: float
    size: Any = None
    status: Literal["ok", "failed", "diverged", "pending"]
    excluded: Optional[str] = None  # why the fits left it out (status included), None when fitted
    loss: Optional[float] = None
    planned_num_params: Optional[float] = None
    num_params: Optional[float] = None
    planned_num_tokens: Optional[float] = None
    num_tokens: Optional[float] = None
    planned_flops: Optional[float] = None
    flops: Optional[float] = None
    epochs: Optional[float] = None
    planned_steps: Optional[int] = None
    steps: Optional[int] = None
    batch_size: Optional[int] = None
    seed: Optional[int] = None
    peak_lr: Optional[float] = None
    train_seconds: Optional[float] = None
    gpu_hours: Optional[float] = None
    device: Optional[str] = None
    role: Literal["experiment", "trunk", "branch"] = "experiment"
    branch_step: Optional[int] = None  # a branch: the trunk step S_C it started from
    pre_cooldown_loss: Optional[float] = None  # a branch: its trunk's held-out loss at S_C


COLUMNS = tuple(RunRow.model_fields)


def _gpu_hours(record: RunRecord) -> float | None:
    p = record.provenance
    if p is None or p.device_type is None:
        return None
    return record.own_seconds * p.processes / 3600 if p.device_type == "cuda" else 0.0


def run_rows(plan: Plan, records: list[RunRecord], fits: Fits) -> list[RunRow]:
    """A row per planned experiment (each trunk first, then its branches: ``Plan.units``);
    ``pending`` where the store has no record.  ``records`` may include the trunks'."""
    by_id = {r.id: r for r in records}
    excluded = {e.id: e.reason for e in fits.excluded}
    rows = []
    for exp in plan.units():
        trunk = exp.job.role == "trunk"
        planned = dict(id=exp.id, budget_flops=exp.budget_flops, size=exp.size,
                       planned_num_params=exp.num_params,
                       planned_num_tokens=exp.num_tokens, planned_flops=exp.flops, planned_steps=exp.steps,
                       batch_size=exp.job.loop.batch_size, seed=exp.job.loop.seed,
                       peak_lr=exp.job.optim.learning_rate,
                       role="trunk" if trunk else ("branch" if exp.job.branch else "experiment"),
                       branch_step=exp.job.branch.step if exp.job.branch else None)
        if trunk:
            planned["excluded"] = "a trunk: its branches are the IsoFLOP points"
        r = by_id.get(exp.id)
        if r is None:
            rows.append(RunRow(status="pending", **planned))
            continue
        why = planned.pop("excluded", None) or excluded.get(r.id)
        rows.append(RunRow(**planned, status=r.status, excluded=why, loss=r.loss,
                           num_params=r.num_params, num_tokens=r.num_tokens, flops=r.flops, epochs=r.epochs,
                           steps=r.steps, train_seconds=r.own_seconds, gpu_hours=_gpu_hours(r),
                           device=r.provenance.device if r.provenance else None,
                           pre_cooldown_loss=r.pre_cooldown_loss))
    return rows


def point_columns(points: Points, fits: Fits) -> dict[str, list]:
    """The rows of measurements made elsewhere (achieved values only), column by column: a million
    points stay columns of floats rather than a million row objects."""
    n = points.count()
    excluded = {e.id: e.reason for e in fits.excluded}
    cols: dict[str, list] = {c: [None] * n for c in COLUMNS}
    cols.update(id=list(points.id), budget_flops=list(points.budget_flops), size=list(points.size),
                status=[s if s in ("ok", "failed", "diverged") else "ok" for s in points.status],
                excluded=[excluded.get(i) for i in points.id] if excluded else [None] * n,
                loss=list(points.loss),
                num_params=list(points.num_params), num_tokens=list(points.num_tokens),
                flops=list(points.flops),
                seed=list(points.seed),
                role=["experiment"] * n)
    return cols


def point_rows(points: Points, fits: Fits) -> list[RunRow]:
    """Rows of measurements made elsewhere: achieved values only."""
    cols = point_columns(points, fits)
    return [RunRow(**{c: cols[c][i] for c in COLUMNS}) for i in range(points.count())]


def rows_csv(rows: "list[RunRow] | dict[str, list]") -> str:
    """The rows (or columns) as CSV with a header of :data:`COLUMNS` (empty cells for None)."""
    cols = rows if isinstance(rows, dict) else {c: [getattr(r, c) for r in rows] for c in COLUMNS}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    w.writerows(["" if v is None else v for v in row] for row in zip(*(cols[c] for c in COLUMNS)))
    return buf.getvalue()


class Cost(Frozen):
    """What the trained experiments cost: training time, GPU-hours, and $ at a stated price."""

    train_seconds: float
    gpu_hours: float
    usd: Optional[float] = None


def cost_of(rows: list[RunRow], usd_per_gpu_hour: float | None = None) -> Cost:
    """Sums over the rows that trained (GPU-hours of records without a device type count as 0)."""
    seconds = sum(r.train_seconds or 0.0 for r in rows)
    hours = sum(r.gpu_hours or 0.0 for r in rows)
    return Cost(train_seconds=seconds, gpu_hours=hours,
                usd=hours * usd_per_gpu_hour if usd_per_gpu_hour else None)
