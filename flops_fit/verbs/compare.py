"""Two recipes at equal compute: the effective compute multiplier of B over A.

At a budget C, B reaches the compute-optimal loss L_B(C).  A reaches the same loss at the
compute C_A* that solves L_A(C_A*) = L_B(C); the multiplier is m(C) = C_A*/C (m = 2: B is
worth twice the compute of A; m < 1: B is worse).  L is the fitted optimal loss of the chosen
approach: E + A/N_opt^α + B/D_opt^β for the parametric fit, E + k·C^(−γ) for the IsoFLOP loss
law.  Its 95% interval pairs the two fits' bootstrap draws (parametric); the difference is
``resolved`` when the interval excludes 1.  Pure: ``compare_results(a, b)`` on two Results.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
from scipy.optimize import brentq

from ..analysis.laws import ParametricFit, percentile_interval
from ..core.frozen import Frozen

__all__ = ["CompareRow", "RecipeLaw", "Comparison", "compare_results", "multiplier"]

ComparedApproach = Literal["parametric", "isoflop"]  # the approaches a recipe comparison can use


class CompareRow(Frozen):
    budget_flops: float
    loss_a: float
    loss_b: float
    multiplier: float  # compute A needs for B's loss at this budget, over this budget
    multiplier_ci: Optional[list[float]] = None
    resolved: Optional[bool] = None  # the interval excludes 1 (None without an interval)


class RecipeLaw(Frozen):
    """One recipe's fitted law, side by side with the other's."""

    name: str
    a: Optional[float] = None  # N_opt ∝ C^a
    a_ci: Optional[list[float]] = None
    alpha: Optional[float] = None
    beta: Optional[float] = None
    E: Optional[float] = None


class Comparison(Frozen):
    """``compare --json`` prints this."""

    approach: ComparedApproach
    a: RecipeLaw
    b: RecipeLaw
    rows: list[CompareRow]
    notes: list[str] = []


def _loss_curve(result, approach: ComparedApproach, theta: list[float] | None = None):
    """C -> the fitted compute-optimal loss (of a bootstrap draw when ``theta`` is given)."""
    if approach == "parametric":
        fit = result.fits.parametric
        if theta is not None:
            fit = ParametricFit.from_theta(theta, fit.flops_per_unit)
        return lambda C: fit.allocate(C)[2], fit.E
    law = result.fits.isoflop.loss_opt
    return law.predict, law.E


def multiplier(loss_a, floor_a: float, target: float, C: float) -> float:
    """C_A*/C with loss_a(C_A*) = target; inf when the target is at or below A's irreducible loss."""
    if not math.isfinite(target) or target <= floor_a:
        return math.inf
    f = lambda lnc: loss_a(math.exp(lnc)) - target  # noqa: E731  (decreasing in C)
    lo, hi = math.log(C) - 46.0, math.log(C) + 46.0  # e^±46 ≈ 1e±20 around C
    try:
        if f(lo) < 0:
            return 0.0
        if f(hi) > 0:
            return math.inf
        return math.exp(brentq(f, lo, hi, xtol=1e-10)) / C
    except (ValueError, OverflowError):
        return math.nan


def compare_results(a, b, budgets: list[float] | None = None, approach: ComparedApproach = "parametric",
                    names: tuple[str, str] = ("A", "B")) -> Comparison:
    """The effective compute multiplier of ``b`` over ``a`` at ``budgets`` (default: both sweeps' budgets)."""
    for name, r in zip(names, (a, b)):
        if (approach == "parametric" and r.fits.parametric is None) or \
                (approach == "isoflop" and (r.fits.isoflop is None or r.fits.isoflop.loss_opt is None)):
            raise ValueError(f"{name} has no {approach} fit with a loss law to compare")
    budgets = sorted(set(budgets if budgets is not None else [*a.budgets, *b.budgets]))
    loss_a, floor_a = _loss_curve(a, approach)
    loss_b, _ = _loss_curve(b, approach)
    draws = []
    if approach == "parametric":
        pairs = list(zip(a.fits.parametric.samples, b.fits.parametric.samples))
        draws = [(_loss_curve(a, approach, ta), _loss_curve(b, approach, tb)[0]) for ta, tb in pairs]
    rows = []
    with np.errstate(all="ignore"):
        for C in budgets:
            target = loss_b(C)
            m = multiplier(loss_a, floor_a, target, C)
            ci = None
            if len(draws) >= 10:
                ci = percentile_interval([multiplier(la, fa, lb(C), C) for (la, fa), lb in draws])
            rows.append(CompareRow(budget_flops=C, loss_a=float(loss_a(C)), loss_b=float(target),
                                   multiplier=m, multiplier_ci=ci,
                                   resolved=None if ci is None else not (ci[0] <= 1 <= ci[1])))
    notes = []
    span = (max(min(a.budgets), min(b.budgets)), min(max(a.budgets), max(b.budgets)))
    outside = [r.budget_flops for r in rows if not span[0] <= r.budget_flops <= span[1]]
    if outside:
        notes.append(f"budgets {', '.join(f'{c:.3g}' for c in outside)} lie outside the range both sweeps measured: "
                     f"the multiplier there extrapolates a law")
    return Comparison(approach=approach, a=_law(a, names[0]), b=_law(b, names[1]), rows=rows, notes=notes)


def _law(result, name: str) -> RecipeLaw:
    p, iso = result.fits.parametric, result.fits.isoflop
    if p is not None:
        return RecipeLaw(name=name, a=p.a, a_ci=p.ci.get("a"), alpha=p.alpha, beta=p.beta, E=p.E)
    if iso is not None:
        return RecipeLaw(name=name, a=iso.n_opt.exponent, a_ci=iso.n_opt.exponent_ci,
                         E=iso.loss_opt.E if iso.loss_opt else None)
    return RecipeLaw(name=name)
