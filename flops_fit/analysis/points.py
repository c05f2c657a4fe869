"""Points: the frozen table of measurements the fits consume.

From a store (``Points.from_records``), or from a CSV with columns
``params,tokens,loss[,flops][,unique_tokens | epochs][,budget]`` (``Points.from_csv``).  Without a ``flops`` column each
point's compute is C = 6·N·D and nearby budgets are grouped (a new group starts where
sorted log10 C jumps by more than ``group_tolerance`` dex).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import Field, model_validator

from ..core.frozen import Frozen
from ..core.errors import DataError, Problem
from ..store.records import CurvePoint, RunRecord

__all__ = ["Point", "Points", "group_budgets"]



COLUMNS = ("id", "budget_flops", "size", "num_params", "num_tokens", "flops", "loss", "status", "reason",
           "seed",
           "unique_tokens")
#: Columns of a CSV of measurements (the first three required).
CSV_COLUMNS = ("params", "tokens", "loss", "flops", "unique_tokens", "epochs")
CSV_HINT = "columns: params,tokens,loss[,flops][,unique_tokens or epochs]"


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
    seed: Optional[int] = None
    unique_tokens: Optional[float] = None  # U: the unique data units the run drew from (None: not known)
    curve: list[CurvePoint] = Field(default_factory=list)


class Points(Frozen):
    """Measured points, column by column, and the size table (size -> N) of the model family, when known.

    Columns (one entry per point): ``id, budget_flops, size, num_params, num_tokens, flops, loss,
    status, reason, seed`` and ``curve`` (each point's logged training curve; empty when none was logged).
    A million CSV rows are lists of floats (about 300 MB), not a million objects; :attr:`points`
    gives :class:`Point` objects on demand.
    ``Points(points=[Point, ...])`` (and a result.json written with a list of points) is accepted.
    """

    id: list[str] = Field(default_factory=list)
    budget_flops: list[float] = Field(default_factory=list)
    size: list[Any] = Field(default_factory=list)
    num_params: list[float] = Field(default_factory=list)
    num_tokens: list[float] = Field(default_factory=list)
    flops: list[float] = Field(default_factory=list)
    loss: list[Optional[float]] = Field(default_factory=list)
    status: list[str] = Field(default_factory=list)
    reason: list[str] = Field(default_factory=list)
    seed: list[Optional[int]] = Field(default_factory=list)  # the training seed (None: not known); replicates share a cell
    unique_tokens: list[Optional[float]] = Field(default_factory=list)  # U of each point (None: not known)
    curve: list[list[CurvePoint]] = Field(default_factory=list)  # [] when no point logged a curve
    sizes: list[tuple[Any, float]] = Field(default_factory=list)
    source: str = ""
    flop_rule: str = "6N"
    grouping: str = ""  # how a CSV's rows were grouped into budgets, when it was not one budget per FLOP value

    @model_validator(mode="before")
    @classmethod
    def _from_point_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and "points" not in data and "id" in data:
            for col in ("seed", "unique_tokens"):  # written before seeds (unique tokens) were recorded
                if col not in data:
                    data = {**data, col: [None] * len(data["id"])}
            return data
        if not (isinstance(data, dict) and "points" in data):
            return data
        data = dict(data)
        pts = [p if isinstance(p, Point) else Point.model_validate(p) for p in data.pop("points")]
        for col in COLUMNS:
            data[col] = [getattr(p, col) for p in pts]
        data["curve"] = [p.curve for p in pts] if any(p.curve for p in pts) else []
        return data

    @model_validator(mode="after")
    def _same_lengths(self) -> "Points":
        n = len(self.id)
        bad = [c for c in COLUMNS if len(getattr(self, c)) != n]
        bad += ["curve"] if self.curve and len(self.curve) != n else []
        if bad:
            raise ValueError(f"columns {', '.join(bad)} do not have one entry per id ({n})")
        return self

    def count(self) -> int:
        """The number of points (usable or not)."""
        return len(self.id)

    def point(self, i: int) -> Point:
        return Point(**{c: getattr(self, c)[i] for c in COLUMNS}, curve=self.curve[i] if self.curve else [])

    @property
    def points(self) -> list[Point]:
        """Every point as a :class:`Point` (built on demand: prefer the columns for large tables)."""
        return [self.point(i) for i in range(self.count())]

    def usable_index(self) -> np.ndarray:
        """Indices of the points with status ``ok`` and a finite loss."""
        loss = np.array(self.loss, dtype=float)  # None -> nan
        ok = np.fromiter((s == "ok" for s in self.status), bool,
                         len(self.status)) if self.status else np.zeros(0, bool)
        return np.flatnonzero(ok & np.isfinite(loss))

    def usable(self) -> list[Point]:
        return [self.point(int(i)) for i in self.usable_index()]

    def arrays(self, index: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """(N, D, loss, budget, flops) of the points at ``index`` (default: the usable ones)."""
        idx = self.usable_index() if index is None else np.asarray(index, dtype=int)
        return tuple(np.array(getattr(self, k), dtype=float)[idx]
                     for k in ("num_params", "num_tokens", "loss", "budget_flops", "flops"))

    def unique(self, index: np.ndarray | None = None) -> np.ndarray:
        """U of the points at ``index`` (default: the usable ones); NaN where not known."""
        idx = self.usable_index() if index is None else np.asarray(index, dtype=int)
        return np.array([np.nan if v is None else v for v in self.unique_tokens], dtype=float)[idx] \
            if self.unique_tokens else np.full(len(idx), np.nan)

    @classmethod
    def from_records(cls, records: list[RunRecord], sizes: list[tuple[Any, float]], flop_rule: str,
                     source: str = "", unique_tokens: float | None = None) -> "Points":
        """Points from the store's run records (an ``ok`` record without a finite loss counts as diverged).

        A point's unique tokens U are its tokens over its passes through the data (D / epochs,
        the data set's training tokens), else ``unique_tokens`` (``[data] unique_tokens``)."""
        pts = []
        for r in records:
            U = r.num_tokens / r.epochs if r.epochs and math.isfinite(r.epochs) and r.epochs > 0 else unique_tokens
            loss = r.loss if r.loss is not None and math.isfinite(r.loss) else None
            status, reason = r.status, r.reason
            if status == "ok" and loss is None:
                status, reason = "diverged", f"non-finite loss {r.loss}"
            pts.append(Point(id=r.id, budget_flops=r.budget_flops, size=r.size, num_params=r.num_params,
                             num_tokens=r.num_tokens, flops=r.flops, loss=loss, status=status, reason=reason,
                             seed=r.seed, unique_tokens=U, curve=r.curve))
        return cls(points=pts, sizes=sizes, source=source, flop_rule=flop_rule)

    @classmethod
    def from_csv(cls, path: str | Path, group_tolerance: float = 0.05) -> "Points":
        """Points from a CSV with columns ``params,tokens,loss[,flops]``; problems name the line.

        Read column by column and parsed a chunk at a time (a million rows in a few seconds)."""
        path = Path(path)
        try:
            with open(path, newline="",
                      encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM is not a column name
                reader = csv.reader(f)
                header = [h.strip() for h in next(reader, [])]
                wanted = [c for c in (*CSV_COLUMNS, "budget") if c in header]
                cells, lines = _read_columns(reader, [header.index(c) for c in wanted])
                cells = dict(zip(wanted, cells))
        except OSError as exc:
            raise DataError([Problem(f"cannot read CSV: {exc.strerror}", file=str(path))]) from None
        except (UnicodeDecodeError, csv.Error) as exc:
            why = (f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
                   if isinstance(exc, UnicodeDecodeError) else f"not a CSV ({exc})")
            raise DataError([Problem(why, file=str(path), hint=CSV_HINT)]) from None
        return cls._from_columns(cells, header, str(path), lines, group_tolerance)

    @classmethod
    def from_rows(cls, rows: list[dict], columns: list[str] | None = None, source: str | None = None,
                  group_tolerance: float = 0.05) -> "Points":
        """Points from dicts with ``params``, ``tokens``, ``loss`` and optionally ``flops``.

        Every problem is reported at once: with ``source`` (a CSV) by file and line, else by row index.
        Without ``flops`` a point's compute is 6·N·D and nearby budgets are grouped.
        """
        rows = list(rows)
        columns = list(columns if columns is not None else (rows[0] if rows else []))
        cells = {c: [row.get(c) for row in rows] for c in (*CSV_COLUMNS, "budget") if c in columns}
        return cls._from_columns(cells, columns, source, None, group_tolerance)

    @classmethod
    def _from_columns(cls, cells: dict[str, list], columns: list[str], source: str | None,
                      lines: list[int] | None,
                      group_tolerance: float) -> "Points":
        missing = [c for c in ("params", "tokens", "loss") if c not in columns]
        if missing:
            raise DataError([Problem(f"missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}",
                                     file=source, line=1 if source else None, hint=CSV_HINT)])
        has_flops = "flops" in columns
        try:  # the fast path: every cell a number
            data = {c: np.array(v, dtype=float) for c, v in cells.items()}
            bad = any(not (np.all(np.isfinite(v)) and np.all(v > 0)) for v in data.values())
        except (TypeError, ValueError):
            bad = True
        if bad:
            raise DataError(_cell_problems(cells, source, lines))
        rows = len(cells["params"])
        if rows < 5:
            raise DataError([Problem(f"{rows} points are too few to fit a scaling law (need at least 5)",
                                     file=source)])
        with np.errstate(over="ignore"):
            flops = data["flops"] if has_flops else 6 * data["params"] * data["tokens"]
        if not np.all(np.isfinite(flops)):
            rows_at = np.flatnonzero(~np.isfinite(flops))
            raise DataError([Problem("6 · params · tokens overflows a float (values this large are not measurements)",
                                     key="params × tokens", file=source, line=lines[i] if lines else None,
                                     value=f"{data['params'][i]:g} × {data['tokens'][i]:g}", has_value=True)
                             for i in rows_at])
        budgets, grouping = _budgets(data, flops, group_tolerance)
        grouping = grouping if has_flops else ""  # 6·N·D of one budget differ only by rounding: nothing to say
        U = data["unique_tokens"] if "unique_tokens" in data else data["tokens"] / data["epochs"] if "epochs" in data \
            else None
        ids = [f"row{n}" for n in lines] if lines is not None else [f"row{i}" for i in range(rows)]
        return cls.model_construct(id=ids, budget_flops=np.asarray(budgets, dtype=float).tolist(),
                                   size=[None] * rows,
                                   num_params=data["params"].tolist(), num_tokens=data["tokens"].tolist(),
                                   flops=flops.tolist(), loss=data["loss"].tolist(), status=["ok"] * rows,
                                   reason=[""] * rows, seed=[None] * rows,
                                   unique_tokens=U.tolist() if U is not None else [None] * rows, curve=[],
                                   sizes=[],
                                   source=source or "", flop_rule="csv flops column" if has_flops else "6N",
                                   grouping=grouping)


def _budgets(data: dict[str, np.ndarray], flops: np.ndarray, tolerance: float) -> tuple[np.ndarray, str]:
    """Each row's budget: the ``budget`` column, else its FLOPs grouped within ``tolerance`` dex
    (measured FLOPs of one nominal budget differ by a few percent); with what was done, said."""
    if "budget" in data:
        return data["budget"], f"budgets from the budget column ({len(np.unique(data['budget']))} budgets)"
    budgets = np.asarray(group_budgets(flops, tolerance))
    distinct, groups = len(np.unique(flops)), len(np.unique(budgets))
    if distinct == groups:
        return budgets, ""
    return budgets, (f"{distinct} distinct FLOP values grouped into {groups} budgets (values within {tolerance:g} "
                     f"dex of the next are one budget; a budget column sets them)")


def _read_columns(reader, where: list[int], chunk: int = 1 << 16) -> tuple[list, list[int]]:
    """The columns at ``where`` of the rows of a csv reader, with each row's line number.

    Cells are parsed to floats a chunk at a time, so a million rows never sit in memory as strings;
    once a chunk has a cell that is not a number (or a short row), the rest stay as read, for
    :func:`_cell_problems` to name."""
    need = max(where, default=-1)
    bufs: list[list] = [[] for _ in where]
    parts: list[list] = [[] for _ in where]
    lines: list[int] = []
    exact = True

    def flush() -> None:
        nonlocal exact
        if exact:
            try:
                arrays = [np.array(b, dtype=float) for b in bufs]
                for part, a, b in zip(parts, arrays, bufs):
                    part.append(a), b.clear()
                return
            except (TypeError, ValueError):
                exact = False
        for part, b in zip(parts, bufs):
            part.append(list(b)), b.clear()

    for row in reader:
        if not row:
            continue
        lines.append(reader.line_num)
        if len(row) > need:
            for j, b in zip(where, bufs):
                b.append(row[j])
        else:
            exact = False
            for j, b in zip(where, bufs):
                b.append(row[j] if j < len(row) else None)
        if len(bufs[0]) >= chunk if bufs else False:
            flush()
    flush()
    if exact:
        return [np.concatenate(p) if p else np.zeros(0) for p in parts], lines
    flat = [[v for piece in p for v in (piece.tolist() if isinstance(piece, np.ndarray) else piece)]
            for p in parts]
    return flat, lines


def _cell_problems(cells: dict[str, list], source: str | None, lines: list[int] | None) -> list[Problem]:
    """Every cell that is not a positive, finite number, by file and line (or row index)."""
    problems = []
    for i in range(len(cells["params"])):
        where = {"file": source, "line": lines[i] if lines else i + 2} if source else {}
        for col, values in cells.items():
            key = col if source else f"[{i}].{col}"
            try:
                v = float(values[i])
            except (TypeError, ValueError):
                problems.append(Problem("not a number", key=key, value=values[i], has_value=True, **where))
                continue
            if not (math.isfinite(v) and v > 0):
                problems.append(Problem("must be positive and finite", key=key, value=v, has_value=True,
                                        **where))
    return problems


def group_budgets(flops, tolerance: float = 0.05) -> list[float]:
    """Assign each FLOP value the geometric mean of its group of nearby values: sorted by log10 C,
    a new group starts where the next value is more than ``tolerance`` dex above the previous."""
    logs = np.log10(np.asarray(flops, dtype=float))
    order = np.argsort(logs, kind="stable")
    group = np.concatenate([[0], np.cumsum(np.diff(logs[order]) > tolerance)])
    centres = 10 ** (np.bincount(group, weights=logs[order]) / np.bincount(group))
    out = np.empty(len(logs))
    out[order] = centres[group]
    return out.tolist()
