"""Points: the frozen table of measurements the fits consume.

From a store (``Points.from_results``), or from a CSV with columns
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
from pydantic import BaseModel, ConfigDict, Field

from ..errors import DataError, Problem

__all__ = ["Point", "Points", "group_budgets"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Point(_Frozen):
    id: str
    budget_flops: float
    size: Any = None
    num_params: float
    num_tokens: float
    flops: float
    loss: Optional[float]
    status: str = "ok"
    reason: str = ""
    curve: list[dict] = Field(default_factory=list)


class Points(_Frozen):
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
    def from_results(cls, results: list[dict], sizes: list[tuple[Any, float]], flop_rule: str, source: str = "") -> "Points":
        pts = []
        for r in results:
            loss = r.get("loss")
            status = r.get("status", "ok")
            reason = r.get("reason", "")
            if status == "ok" and (loss is None or not math.isfinite(loss)):
                status, reason = "diverged", f"non-finite loss {loss}"
            pts.append(Point(id=r["id"], budget_flops=r.get("budget_flops") or r["flops"], size=r.get("size"),
                             num_params=r["num_params"], num_tokens=r["num_tokens"], flops=r["flops"],
                             loss=loss if loss is not None and math.isfinite(loss) else None,
                             status=status, reason=reason, curve=r.get("curve", [])))
        return cls(points=pts, sizes=sizes, source=source, flop_rule=flop_rule)

    @classmethod
    def from_csv(cls, path: str | Path, group_tolerance: float = 0.05) -> "Points":
        path = Path(path)
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                header = [h.strip() for h in (reader.fieldnames or [])]
                rows = list(reader)
        except OSError as exc:
            raise DataError([Problem(f"cannot read CSV: {exc.strerror}", file=str(path))]) from None
        missing = [c for c in ("params", "tokens", "loss") if c not in header]
        if missing:
            raise DataError([Problem(f"missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}",
                                     file=str(path), line=1, hint="columns: params,tokens,loss[,flops]")])
        problems, values = [], []
        for i, row in enumerate(rows, start=2):
            row = {k.strip(): v for k, v in row.items() if k}
            parsed = {}
            for col in ("params", "tokens", "loss", "flops"):
                if col not in header:
                    continue
                try:
                    v = float(row[col])
                except (TypeError, ValueError):
                    problems.append(Problem("not a number", key=col, file=str(path), line=i, value=row[col], has_value=True))
                    continue
                if not (math.isfinite(v) and v > 0):
                    problems.append(Problem("must be positive and finite", key=col, file=str(path), line=i, value=v, has_value=True))
                parsed[col] = v
            values.append(parsed)
        if problems:
            raise DataError(problems)
        if len(values) < 5:
            raise DataError([Problem(f"{len(values)} points are too few to fit a scaling law (need at least 5)", file=str(path))])
        flops = [v.get("flops", 6 * v["params"] * v["tokens"]) for v in values]
        budgets = flops if "flops" in header else group_budgets(flops, group_tolerance)
        pts = [Point(id=f"row{i + 2}", budget_flops=b, num_params=v["params"], num_tokens=v["tokens"], flops=f, loss=v["loss"])
               for i, (v, f, b) in enumerate(zip(values, flops, budgets))]
        return cls(points=pts, source=str(path), flop_rule="csv flops column" if "flops" in header else "6N")


def group_budgets(flops: list[float], tolerance: float = 0.05) -> list[float]:
    """Assign each FLOP value the geometric mean of its group of nearby values."""
    order = np.argsort(flops)
    logs = np.log10(np.asarray(flops, dtype=float))
    groups, current = [], [order[0]]
    for prev, idx in zip(order[:-1], order[1:]):
        if logs[idx] - logs[prev] > tolerance:
            groups.append(current)
            current = []
        current.append(idx)
    groups.append(current)
    out = [0.0] * len(flops)
    for g in groups:
        centre = float(10 ** np.mean(logs[g]))
        for idx in g:
            out[idx] = centre
    return out
