"""The Result: Chinchilla table, predictions with intervals, backtest, plots, JSON.

``Result`` is frozen and round-trips through JSON (``to_json``/``from_json``); its JSON is
the ``--json`` document of DESIGN.md.  ``predict(budget_flops)`` gives, per approach,
N_opt, D_opt and the loss with 95% bootstrap intervals; ``chinchilla_table`` puts every
approach side by side and maps N_opt back to the user's size parameter by log-log
interpolation of N across the planned sizes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, ClassVar, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .analysis.fit import Fits, hull, optimal_allocation, percentile_interval
from .analysis.isoflop import mean_interval
from .analysis.parametric import named
from .analysis.points import Points
from .verdict import Verdict, assess

__all__ = ["Result", "Table", "size_for"]


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
    """Rows of the Chinchilla table; printable (rich), exportable to Markdown and CSV."""

    model_config = ConfigDict(frozen=True)
    rows: list[dict]
    size_param: Optional[str] = None

    COLUMNS: ClassVar[tuple] = (("approach", "approach"), ("budget_flops", "C (FLOPs)"), ("num_params", "N_opt"),
               ("num_params_ci", "N 95% CI"), ("num_tokens", "D_opt"), ("num_tokens_ci", "D 95% CI"),
               ("tokens_per_param", "D/N"), ("loss", "loss"), ("loss_ci", "loss 95% CI"), ("size", "size"))

    def _cells(self, row: dict) -> list[str]:
        out = []
        for key, _ in self.COLUMNS:
            v = row.get(key)
            if v is None:
                out.append("–")
            elif isinstance(v, list):
                out.append(f"{v[0]:.3g}–{v[1]:.3g}")
            elif isinstance(v, float):
                out.append(f"{v:.4g}" if key in ("loss", "tokens_per_param", "size") else f"{v:.3g}")
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
            w.writerow([json.dumps(r.get(k)) if isinstance(r.get(k), list) else r.get(k) for k in keys])
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

    def to_json(self, **kw: Any) -> str:
        return self.model_dump_json(**kw)

    @classmethod
    def from_json(cls, text: str) -> "Result":
        return cls.model_validate_json(text)

    # -- predictions -------------------------------------------------------------------
    def predict(self, budget_flops: float) -> dict[str, dict]:
        """N_opt, D_opt, loss (and 95% intervals where bootstrapped) per approach at ``budget_flops``."""
        C = float(budget_flops)
        out = {}
        f = self.fits
        if f.isoflop:
            out["isoflop"] = self._predict_isoflop(C)
        if f.parametric:
            out["parametric"] = self._predict_parametric(C)
        if f.envelope:
            e = f.envelope
            out["envelope"] = {"num_params": e["n_opt"]["coef"] * C ** e["n_opt"]["exponent"],
                               "num_tokens": e["d_opt"]["coef"] * C ** e["d_opt"]["exponent"], "loss": None}
        for row in out.values():
            row["size"] = size_for(self.points.sizes, row["num_params"])
            row["tokens_per_param"] = row["num_tokens"] / row["num_params"]
        return out

    def _predict_isoflop(self, C: float) -> dict:
        iso = self.fits.isoflop
        lo = iso["loss_opt"]
        row = {"num_params": iso["n_opt"]["coef"] * C ** iso["n_opt"]["exponent"],
               "num_tokens": iso["d_opt"]["coef"] * C ** iso["d_opt"]["exponent"],
               "loss": lo["E"] + lo["coef"] * C ** -lo["exponent"] if lo else None}
        s = np.array(iso.get("samples") or [])
        boot_n = boot_d = None
        if len(s) >= 10:
            boot_n = percentile_interval(np.exp(s[:, 0] + s[:, 1] * math.log(C)))
            boot_d = percentile_interval(np.exp(s[:, 2] + s[:, 3] * math.log(C)))
        # the hull with the OLS interval of the law at C: the minima's scatter about the law counts too
        n_ci, d_ci = hull(boot_n, mean_interval(iso["n_opt"], C)), hull(boot_d, mean_interval(iso["d_opt"], C))
        if n_ci is not None:
            row["num_params_ci"] = n_ci
        if d_ci is not None:
            row["num_tokens_ci"] = d_ci
        return row

    def _predict_parametric(self, C: float) -> dict:
        fpu = self.fits.flops_per_unit
        n, d, loss = optimal_allocation(self.fits.parametric, C, fpu)
        row = {"num_params": n, "num_tokens": d, "loss": loss}
        samples = self.fits.parametric.get("samples") or []
        if len(samples) >= 10:
            with np.errstate(all="ignore"):
                boot = np.array([optimal_allocation(named(t), C, fpu) for t in samples])
            row.update(num_params_ci=percentile_interval(boot[:, 0]), num_tokens_ci=percentile_interval(boot[:, 1]), loss_ci=percentile_interval(boot[:, 2]))
        return row

    def chinchilla_table(self, budgets: list[float] | None = None) -> Table:
        """Every approach side by side at ``budgets`` (default: the sweep's budgets and [analysis] predict)."""
        budgets = budgets if budgets is not None else sorted(set(self.budgets) | set(self.predict_budgets))
        rows = []
        for C in budgets:
            for approach, row in self.predict(C).items():
                rows.append({"approach": approach, "budget_flops": float(C), **row})
        return Table(rows=rows, size_param=self.size_param)

    def trust(self) -> Verdict:
        """The trust verdict: checks with their numbers, and advice (see :mod:`flops_fit.verdict`)."""
        budgets = sorted(set(self.budgets) | set(self.predict_budgets))
        return assess(self.fits, self.points, budgets, self.predict)

    def summary(self) -> dict:
        """The ``--json`` document of DESIGN.md (plus ``trust``: the verdict, checks and advice)."""
        f = self.fits
        fits: dict[str, Any] = {}
        if f.isoflop:
            fits["isoflop"] = {k: f.isoflop[k] for k in ("n_opt", "d_opt", "loss_opt", "minima", "dropped_budgets", "profile") if k in f.isoflop}
        if f.parametric:
            fits["parametric"] = {k: v for k, v in f.parametric.items() if k not in ("samples", "theta")}
        if f.envelope:
            fits["envelope"] = {k: f.envelope[k] for k in ("n_opt", "d_opt")}
        verdict = self.trust()
        notes = list(f.notes) + [f"trust verdict: {verdict.verdict}"] + \
            [f"{c.name}: {c.message}" for c in verdict.checks if not c.ok] + verdict.advice
        return {"points": f.num_points, "flop_rule": self.flop_rule, "excluded": f.excluded, "notes": notes,
                "fits": fits, "table": self.chinchilla_table().rows, "backtest": f.backtest,
                "trust": verdict.model_dump(mode="json")}

    def plot(self, path: str | None = None) -> dict:
        """Matplotlib figures (isoflop, scaling, contours); saved as PNGs under ``path`` when given."""
        from .plots import make_figures

        return make_figures(self, path)

