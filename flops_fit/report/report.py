"""The Result: Chinchilla table, predictions with intervals, backtest, plots, JSON.

``Result`` is frozen and round-trips through JSON (``to_json``/``from_json``); its JSON is
the ``--json`` document of docs/DESIGN.md.  ``predict(budget_flops)`` gives, per approach,
N_opt, D_opt and the loss with 95% bootstrap intervals; ``chinchilla_table`` puts every
approach side by side and maps N_opt back to the user's size parameter by log-log
interpolation of N across the planned sizes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.evaluate import Evaluation
from ..analysis.fit import Fits
from ..analysis.laws import Prediction
from ..analysis.points import Points
from .runs_table import COLUMNS, Cost, RunRow, point_columns, point_rows, rows_csv
from ..core.files import atomic_write_text
from .verdict import Verdict, assess

__all__ = ["Result", "Table", "size_for", "write_report"]


def size_for(sizes: list[tuple[Any, float]], num_params: float) -> float | None:
    """Size-parameter value whose model has ``num_params``: log-log interpolation (extrapolated at the ends)."""
    if len(sizes) < 2 or not (num_params and num_params > 0):
        return None
    pairs = sorted((math.log(n), math.log(float(s))) for s, n in sizes)
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    lx = math.log(num_params)
    i = int(np.clip(np.searchsorted(x, lx) - 1, 0, len(x) - 2))
    w = (lx - x[i]) / (x[i + 1] - x[i])
    return float(f"{math.exp(y[i] + w * (y[i + 1] - y[i])):.4g}")


class Table(BaseModel):
    """Rows of the Chinchilla table (one :class:`Prediction` per approach and budget);
    printable (rich), exportable to Markdown and CSV."""

    model_config = ConfigDict(frozen=True)
    rows: list[Prediction]
    size_param: Optional[str] = None

    COLUMNS: ClassVar[tuple] = (
        ("approach", "approach"), ("budget_flops", "C (FLOPs)"), ("num_params", "N_opt"),
        ("num_params_ci", "N 95% CI"), ("num_tokens", "D_opt"), ("num_tokens_ci", "D 95% CI"),
        ("tokens_per_param", "D/N"), ("epochs", "epochs"), ("loss", "loss"), ("loss_ci", "loss 95% CI"),
        ("size", "size"))

    def _cells(self, row: Prediction) -> list[str]:
        out = []
        for key, _ in self.COLUMNS:
            v = getattr(row, key)
            if v is None:
                out.append("–")
            elif isinstance(v, list):
                out.append(f"{v[0]:.3g}–{v[1]:.3g}")
            elif isinstance(v, float):
                out.append(f"{v:.4g}" if key in ("loss", "tokens_per_param", "size") else
                           f"{v:.2f}" if key == "epochs" else f"{v:.3g}")
            else:
                out.append(str(v))
        return out

    def headers(self) -> list[str]:
        return [h if k != "size" else (self.size_param or "size") for k, h in self.COLUMNS]

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers()) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(self._cells(r)) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        keys = [k for k, _ in self.COLUMNS]
        w = csv.writer(buf)
        w.writerow(keys)
        for r in self.rows:
            w.writerow([json.dumps(getattr(r, k)) if isinstance(getattr(r, k), list) else getattr(r, k) for k in keys])
        return buf.getvalue()

    def __rich__(self):
        from rich.table import Table as RichTable

        t = RichTable(title="Compute-optimal allocation (Chinchilla table)")
        for h in self.headers():
            t.add_column(h, justify="right")
        for r in self.rows:
            t.add_row(*self._cells(r))
        return t


class Result(BaseModel):
    """Fits, points and predictions of one analysis."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    fits: Fits
    points: Points
    budgets: list[float] = Field(default_factory=list)
    predict_budgets: list[float] = Field(default_factory=list)
    size_param: Optional[str] = None
    flop_rule: str = "6N"
    runs: list[RunRow] = Field(default_factory=list)  # every experiment, planned and achieved (points.csv);
    # empty for points made elsewhere: run_rows() builds theirs from the points and fits
    cost: Optional[Cost] = None  # what the sweep's training cost (from the store; None for points made elsewhere)
    evaluation: Optional[Evaluation] = None  # `fit --evaluate`: the law's loss at another CSV's rows

    def to_pandas(self):
        """The runs table as a pandas DataFrame, a row per experiment (columns:
        :data:`~flops_fit.report.runs_table.COLUMNS`)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Result.to_pandas() needs pandas: pip install pandas (or flops-fit[tables]); "
                              "report/points.csv has the same table") from None
        return pd.DataFrame(self._columns(), columns=list(COLUMNS))

    def run_rows(self) -> list[RunRow]:
        """Every experiment (planned and achieved), or for points made elsewhere a row per point."""
        return self.runs or point_rows(self.points, self.fits)

    def _columns(self) -> dict[str, list]:
        if self.runs:
            return {c: [getattr(r, c) for r in self.runs] for c in COLUMNS}
        return point_columns(self.points, self.fits)

    def tracker_summary(self) -> tuple[dict[str, float], dict[str, tuple[list[str], list[list]]]]:
        """What a tracker's summary run carries: the fitted values (``parametric/a``, ``isoflop/a``,
        ``noise/std``, ...) and the points and Chinchilla tables as (columns, rows)."""
        f = self.fits
        scalars: dict[str, float] = {}
        if f.parametric is not None:
            names = ("E", "A", "B", "alpha", "beta", "a", "b")
            scalars |= {f"parametric/{k}": float(getattr(f.parametric, k)) for k in names}
        if f.isoflop is not None:
            scalars |= {"isoflop/a": float(f.isoflop.n_opt.exponent),
                        "isoflop/b": float(f.isoflop.d_opt.exponent)}
        if f.noise is not None:
            scalars["noise/std"] = float(f.noise.std)

        def cell(v: Any) -> Any:
            return "–".join(f"{x:.3g}" for x in v) if isinstance(v, list) else ("" if v is None else v)

        cols = self._columns()
        table = self.chinchilla_table()
        keys = [k for k, _ in table.COLUMNS]
        return scalars, {"points": (list(COLUMNS),
                                    [[cell(v) for v in r] for r in zip(*(cols[c] for c in COLUMNS))]),
                         "chinchilla_table": (keys, [[cell(getattr(r,
                                                                   k)) for k in keys] for r in table.rows])}

    def to_json(self, **kw: Any) -> str:
        return self.model_dump_json(**kw)

    @classmethod
    def from_json(cls, text: str) -> "Result":
        return cls.model_validate_json(text)

    # -- predictions -------------------------------------------------------------------
    def predict(self, budget_flops: float) -> dict[str, Prediction]:
        """N_opt, D_opt, loss (and 95% intervals where bootstrapped) per approach at ``budget_flops``,
        with N_opt mapped back to the size parameter."""
        return {name: p.model_copy(update={"size": size_for(self.points.sizes, p.num_params)})
                for name, p in self.fits.predict(budget_flops).items()}

    def chinchilla_table(self, budgets: list[float] | None = None) -> Table:
        """Every approach side by side at ``budgets`` (default: the sweep's budgets and [analysis] predict)."""
        budgets = budgets if budgets is not None else sorted(set(self.budgets) | set(self.predict_budgets))
        rows = [row for C in budgets for row in self.predict(C).values()]
        return Table(rows=rows, size_param=self.size_param)

    def trust(self) -> Verdict:
        """The trust verdict: checks with their numbers, and advice (see :mod:`flops_fit.report.verdict`)."""
        budgets = sorted(set(self.budgets) | set(self.predict_budgets))
        return assess(self.fits, self.points, budgets, self.predict)

    def summary(self) -> dict:
        """The ``--json`` document of docs/DESIGN.md (plus ``trust``: the verdict, checks and advice)."""
        f = self.fits
        fits: dict[str, Any] = {}
        if f.isoflop:
            fits["isoflop"] = f.isoflop.model_dump(mode="json", exclude={"samples"})
        if f.parametric:
            fits["parametric"] = f.parametric.model_dump(mode="json", exclude={"samples", "theta"})
        if f.envelope:
            fits["envelope"] = f.envelope.model_dump(mode="json", include={"n_opt", "d_opt"})
        verdict = self.trust()
        notes = list(f.notes) + (f.data_limit.lines() if f.data_limit else []) + [f"trust verdict: {verdict.verdict}"] + \
            [f"{c.name}: {c.message}" for c in verdict.checks if not c.ok] + verdict.advice
        return {"points": f.num_points, "flop_rule": self.flop_rule,
                "excluded": [e.model_dump() for e in f.excluded],
                "notes": notes, "fits": fits,
                "table": [r.model_dump(mode="json") for r in self.chinchilla_table().rows],
                "backtest": f.backtest.model_dump(mode="json") if f.backtest else None,
                "cost": self.cost.model_dump() if self.cost else None,
                "noise": f.noise.model_dump(mode="json") if f.noise else None,
                "data_limit": f.data_limit.model_dump(mode="json") if f.data_limit else None,
                "evaluation": self.evaluation.model_dump(mode="json") if self.evaluation else None,
                "trust": verdict.model_dump(mode="json")}

    def save(self, folder: str | Path, figures: tuple = ("png", "pdf")) -> Path:
        """Write the report: fits.json, result.json, chinchilla_table.md/.csv and the plots in the
        ``figures`` formats (see :func:`write_report`)."""
        return write_report(self, Path(folder), tuple(figures))

    def plot(self, path: str | None = None, format: str | tuple = "png") -> dict:
        """Matplotlib figures (isoflop, scaling, contours, envelope, backtest, lr_schedule, as the fits
        and curves allow); saved under ``path`` as ``format`` ("png", "pdf" or both) when given."""
        from .plots import make_figures

        return make_figures(self, path, format)



def write_report(result: Result, folder: Path, figures: tuple = ("png", "pdf")) -> Path:
    """fits.json (the ``--json`` document), result.json (the Result), chinchilla_table.md/.csv,
    points.csv (every experiment, planned and achieved) and the plots (in the ``figures`` formats,
    none for ``()``) under ``folder``; each file written atomically."""
    import warnings

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "fits.json", json.dumps(result.summary(), indent=2, default=float) + "\n")
    atomic_write_text(folder / "result.json", result.to_json())
    table = result.chinchilla_table()
    atomic_write_text(folder / "chinchilla_table.md", table.to_markdown())
    atomic_write_text(folder / "chinchilla_table.csv", table.to_csv())
    atomic_write_text(folder / "points.csv", rows_csv(result._columns()))
    if not figures:
        return folder
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = result.plot(folder, format=figures)  # closes its figures itself when a save fails
    for fig in made.values():
        plt.close(fig)
    return folder
