"""Points: the frozen table of measurements the fits consume.

From a store (``Points.from_records``), or from a CSV with columns
``params,tokens,loss[,flops]`` (``Points.from_csv``).  Without a ``flops`` column each
point's compute is C = 6·N·D and nearby budgets are grouped (a new group starts where
sorted log10 C jumps by more than ``group_tolerance`` dex).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import Field

from ..frozen import Frozen
from ..errors import DataError, Problem
from ..store import CurvePoint, RunRecord

__all__ = ["Point", "Points", "group_budgets"]



class Point(Frozen):
    id: str
    budget_flops: float
    size: Any = None
    num_params: float
    num_tokens: float
    flops: float
    loss: Optional[float]
    status: str = "ok"
    reason: str = ""
    curve: list[CurvePoint] = Field(default_factory=list)


class Points(Frozen):
    """Measured points and the size table (size -> N) of the model family, when known."""

    points: list[Point]
    sizes: list[tuple[Any, float]] = Field(default_factory=list)
    source: str = ""
    flop_rule: str = "6N"

    def usable(self) -> list[Point]:
        return [p for p in self.points if p.status == "ok" and p.loss is not None and math.isfinite(p.loss)]

    def arrays(self, points: list[Point] | None = None) -> tuple[np.ndarray, ...]:
        pts = self.usable() if points is None else points
        return tuple(np.array([getattr(p, k) for p in pts], dtype=float)
                     for k in ("num_params", "num_tokens", "loss", "budget_flops", "flops"))

    @classmethod
    def from_records(cls, records: list[RunRecord], sizes: list[tuple[Any, float]], flop_rule: str,
                     source: str = "") -> "Points":
        """Points from the store's run records (an ``ok`` record without a finite loss counts as diverged)."""
        pts = []
        for r in records:
            loss = r.loss if r.loss is not None and math.isfinite(r.loss) else None
            status, reason = r.status, r.reason
            if status == "ok" and loss is None:
                status, reason = "diverged", f"non-finite loss {r.loss}"
            pts.append(Point(id=r.id, budget_flops=r.budget_flops, size=r.size, num_params=r.num_params,
                             num_tokens=r.num_tokens, flops=r.flops, loss=loss, status=status, reason=reason,
                             curve=r.curve))
        return cls(points=pts, sizes=sizes, source=source, flop_rule=flop_rule)

    @classmethod
    def from_csv(cls, path: str | Path, group_tolerance: float = 0.05) -> "Points":
        """Points from a CSV with columns ``params,tokens,loss[,flops]``; problems name the line."""
        path = Path(path)
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM is not a column name
                reader = csv.DictReader(f)
                header = [h.strip() for h in (reader.fieldnames or [])]
                rows = [{k.strip(): v for k, v in row.items() if k} for row in reader]
        except OSError as exc:
            raise DataError([Problem(f"cannot read CSV: {exc.strerror}", file=str(path))]) from None
        except (UnicodeDecodeError, csv.Error) as exc:
            why = (f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
                   if isinstance(exc, UnicodeDecodeError) else f"not a CSV ({exc})")
            raise DataError([Problem(why, file=str(path), hint="columns: params,tokens,loss[,flops]")]) from None
        return cls.from_rows(rows, columns=header, source=str(path), group_tolerance=group_tolerance)

    @classmethod
    def from_rows(cls, rows: list[dict], columns: list[str] | None = None, source: str | None = None,
                  group_tolerance: float = 0.05) -> "Points":
        """Points from dicts with ``params``, ``tokens``, ``loss`` and optionally ``flops``.

        Every problem is reported at once: with ``source`` (a CSV) by file and line, else by row index.
        Without ``flops`` a point's compute is 6·N·D and nearby budgets are grouped.
        """
        rows = list(rows)
        columns = list(columns if columns is not None else (rows[0] if rows else []))
        missing = [c for c in ("params", "tokens", "loss") if c not in columns]
        if missing:
            raise DataError([Problem(f"missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}",
                                     file=source, line=1 if source else None, hint="columns: params,tokens,loss[,flops]")])
        has_flops = "flops" in columns
        cols = ("params", "tokens", "loss", "flops")[: 4 if has_flops else 3]
        try:  # the fast path: every cell a number
            data = {c: np.array([row.get(c) for row in rows], dtype=float) for c in cols}
            bad = any(not (np.all(np.isfinite(v)) and np.all(v > 0)) for v in data.values())
        except (TypeError, ValueError):
            bad = True
        if bad:
            raise DataError(_cell_problems(rows, cols, source))
        if len(rows) < 5:
            raise DataError([Problem(f"{len(rows)} points are too few to fit a scaling law (need at least 5)", file=source)])
        flops = data["flops"] if has_flops else 6 * data["params"] * data["tokens"]
        budgets = flops if has_flops else np.asarray(group_budgets(list(flops), group_tolerance))
        first = 2 if source else 0
        pts = [Point.model_construct(id=f"row{i + first}", budget_flops=float(b), size=None, num_params=float(n),
                                     num_tokens=float(d), flops=float(f), loss=float(l), status="ok", reason="", curve=[])
               for i, (n, d, l, f, b) in enumerate(zip(data["params"], data["tokens"], data["loss"], flops, budgets))]
        return cls(points=pts, source=source or "", flop_rule="csv flops column" if has_flops else "6N")


def _cell_problems(rows: list[dict], cols: tuple, source: str | None) -> list[Problem]:
    """Every cell that is not a positive, finite number, by file and line (or row index)."""
    problems = []
    for i, row in enumerate(rows):
        where = {"file": source, "line": i + 2} if source else {}
        for col in cols:
            key = col if source else f"[{i}].{col}"
            try:
                v = float(row.get(col))
            except (TypeError, ValueError):
                problems.append(Problem("not a number", key=key, value=row.get(col), has_value=True, **where))
                continue
            if not (math.isfinite(v) and v > 0):
                problems.append(Problem("must be positive and finite", key=key, value=v, has_value=True, **where))
    return problems


def group_budgets(flops: list[float], tolerance: float = 0.05) -> list[float]:
    """Assign each FLOP value the geometric mean of its group of nearby values: sorted by log10 C,
    a new group starts where the next value is more than ``tolerance`` dex above the previous."""
    logs = np.log10(np.asarray(flops, dtype=float))
    order = np.argsort(logs, kind="stable")
    group = np.concatenate([[0], np.cumsum(np.diff(logs[order]) > tolerance)])
    centres = 10 ** (np.bincount(group, weights=logs[order]) / np.bincount(group))
    out = np.empty(len(logs))
    out[order] = centres[group]
    return out.tolist()
