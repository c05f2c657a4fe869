"""The loss at any (N, D[, U]) without another run: a fitted law evaluated on the rows of a CSV.

``flops-fit fit POINTS.csv --evaluate OTHER.csv`` fits POINTS and predicts every row of OTHER
(columns ``params,tokens[,unique_tokens | epochs][,loss]``) with the parametric law (Approach 3,
the only one that gives a loss off the compute-optimal line), each with its 95% band over the
bootstrap fits.  A row without its unique tokens takes the data's U of the fit (the same data set).
Where OTHER has a ``loss`` column the agreement is scored:

    R² = 1 − Σ (L − L̂)² / Σ (L − L̄)²,    MAPE = mean |L̂ − L| / L.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import Field

from ..core.errors import DataError, Problem
from ..core.frozen import Frozen
from .laws import ParametricFit
from .points import _cell_problems, _read_columns

__all__ = ["EvaluatedRow", "Evaluation", "evaluate", "read_rows"]

COLUMNS = ("params", "tokens", "unique_tokens", "epochs", "loss")
HINT = "columns: params,tokens[,unique_tokens or epochs][,loss]"


class EvaluatedRow(Frozen):
    params: float
    tokens: float
    unique_tokens: Optional[float] = None
    loss: Optional[float] = None
    predicted: float
    predicted_ci: Optional[list[float]] = None


class Evaluation(Frozen):
    """The law's loss at each row, with R² and MAPE where the rows carry a measured loss."""

    source: str = ""
    r2: Optional[float] = None
    mape: Optional[float] = None
    rows: list[EvaluatedRow] = Field(default_factory=list)

    def line(self) -> str:
        score = (
            f": R² {self.r2:.4f}, MAPE {self.mape:.2%}"
            if self.r2 is not None and self.mape is not None
            else " (no loss column: nothing to score)"
        )
        return f"evaluated {len(self.rows)} rows of {self.source or 'the given rows'} with the parametric law{score}"


def read_rows(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of an evaluation CSV; every cell that is not a positive, finite number named by line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            wanted = [c for c in COLUMNS if c in header]
            cells, lines = _read_columns(reader, [header.index(c) for c in wanted])
    except OSError as exc:
        raise DataError(
            [Problem(f"cannot read CSV: {exc.strerror}", file=str(path), key="--evaluate")]
        ) from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            [Problem(f"not a CSV of UTF-8 text ({type(exc).__name__})", file=str(path), hint=HINT)]
        ) from None
    missing = [c for c in ("params", "tokens") if c not in header]
    if missing:
        raise DataError(
            [
                Problem(
                    f"missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}",
                    file=str(path),
                    line=1,
                    hint=HINT,
                )
            ]
        )
    cells = dict(zip(wanted, cells))
    try:
        data = {c: np.array(v, dtype=float) for c, v in cells.items()}
        bad = any(not (np.all(np.isfinite(v)) and np.all(v > 0)) for v in data.values())
    except (TypeError, ValueError):
        bad = True
    if bad:
        raise DataError(_cell_problems(cells, str(path), lines))
    if not len(data["params"]):
        raise DataError([Problem("no rows to evaluate", file=str(path), hint=HINT)])
    return data


def evaluate(fit: ParametricFit, data: dict[str, np.ndarray], source: str = "") -> Evaluation:
    """L̂ and its 95% band at each row of ``data`` (columns of :data:`COLUMNS`), scored where a loss is given."""
    N, D = data["params"], data["tokens"]
    U = data.get("unique_tokens", D / data["epochs"] if "epochs" in data else None)
    U_eval = None if U is None else U
    if fit.form == "data-constrained" and U is None:
        U_eval = np.full(len(N), fit.unique_tokens if fit.unique_tokens else np.nan)
    pred, lo, hi = fit.band(N, D, U_eval)
    loss = data.get("loss")
    rows = [
        EvaluatedRow(
            params=float(N[i]),
            tokens=float(D[i]),
            unique_tokens=None if U is None else float(U[i]),
            loss=None if loss is None else float(loss[i]),
            predicted=float(pred[i]),
            predicted_ci=None if lo is None else [float(lo[i]), float(hi[i])],
        )
        for i in range(len(N))
    ]
    r2 = mape = None
    if loss is not None and len(loss) >= 2:
        ss_tot = float(np.sum((loss - loss.mean()) ** 2))
        r2 = 1 - float(np.sum((loss - pred) ** 2)) / ss_tot if ss_tot > 0 else None
        mape = float(np.mean(np.abs(pred - loss) / loss))
    return Evaluation(source=source, r2=r2, mape=mape, rows=rows)
