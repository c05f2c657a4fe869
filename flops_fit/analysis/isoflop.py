"""Chinchilla Approach 2: IsoFLOP profiles.

Per budget C, a parabola of loss in x = ln N (an lmfit QuadraticModel),
L ≈ p2·x² + p1·x + p0, has its minimum at x* = −p1/(2·p2), so N* = exp(x*); its standard
error comes from the fit covariance by the delta method.  A budget is dropped (with the
reason) when it has fewer than 3 points, p2 ≤ 0 (no curvature) or x* outside the sampled
sizes.  Then ordinary least squares of ln N* on ln C gives N_opt = k·C^a (and D_opt = k'·C^b
from D at the minimum), and L_opt(C) = E + k·C^(−γ) is fitted in linear space.
"""

from __future__ import annotations

import math

import numpy as np
from lmfit import Model
from lmfit.models import LinearModel, QuadraticModel
from scipy import stats

__all__ = ["budget_minima", "power_law", "loss_law", "parabola_residuals"]


def _parabola(x: np.ndarray, y: np.ndarray):
    model = QuadraticModel()
    return model.fit(y, model.make_params(a=1.0, b=0.0, c=float(np.mean(y))), x=x)


def budget_minima(lnN: np.ndarray, lnD: np.ndarray, L: np.ndarray, budgets: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Per-budget minima (``budget_flops, n_opt, d_opt, loss, n_opt_ci, coef``) and dropped budgets."""
    minima, dropped = [], []
    for C in np.unique(budgets):
        m = budgets == C
        x, y, xd = lnN[m], L[m], lnD[m]
        if len(np.unique(x)) < 3:
            dropped.append({"budget_flops": float(C), "reason": f"{len(np.unique(x))} sizes (< 3) for a parabola"})
            continue
        fit = _parabola(x, y)
        p2, p1, p0 = fit.params["a"].value, fit.params["b"].value, fit.params["c"].value
        if p2 <= 0:
            dropped.append({"budget_flops": float(C), "reason": "no positive curvature (loss not U-shaped in ln N)"})
            continue
        xs = -p1 / (2 * p2)
        if not (x.min() <= xs <= x.max()):
            side = "smallest" if xs < x.min() else "largest"
            dropped.append({"budget_flops": float(C), "reason": f"minimum outside the sampled sizes (beyond the {side})"})
            continue
        se = _minimum_se(fit, p1, p2)
        slope, icpt = np.polyfit(x, xd, 1)
        minima.append({"budget_flops": float(C), "n_opt": math.exp(xs), "d_opt": math.exp(icpt + slope * xs),
                       "loss": p0 + p1 * xs + p2 * xs**2, "n_opt_ci": [math.exp(xs - 1.96 * se), math.exp(xs + 1.96 * se)]
                       if math.isfinite(se) else None, "coef": [p2, p1, p0], "num_points": int(m.sum())})
    return minima, dropped


def _minimum_se(fit, p1: float, p2: float) -> float:
    cov = fit.covar
    if cov is None:
        return math.nan
    names = list(fit.var_names)
    ia, ib = names.index("a"), names.index("b")
    g = np.zeros(len(names))
    g[ia], g[ib] = p1 / (2 * p2**2), -1 / (2 * p2)
    return float(math.sqrt(max(0.0, g @ cov @ g)))


def parabola_residuals(lnN: np.ndarray, L: np.ndarray, budgets: np.ndarray, min_points: int = 6) -> np.ndarray:
    """Residual of each point from its budget's least-squares parabola (NaN where fewer than ``min_points``)."""
    out = np.full(len(L), np.nan)
    for C in np.unique(budgets):
        m = budgets == C
        if len(np.unique(lnN[m])) >= min_points:
            out[m] = L[m] - np.polyval(np.polyfit(lnN[m], L[m], 2), lnN[m])
    return out


def power_law(C: np.ndarray, Y: np.ndarray) -> dict:
    """OLS of ln Y on ln C: Y = coef·C^exponent, with a 95% t-interval and R²."""
    x, y = np.log(C), np.log(Y)
    model = LinearModel()
    fit = model.fit(y, model.make_params(slope=0.5, intercept=float(y.mean() - 0.5 * x.mean())), x=x)
    slope, icpt = fit.params["slope"], fit.params["intercept"]
    dof = len(x) - 2
    half = stats.t.ppf(0.975, dof) * slope.stderr if dof > 0 and slope.stderr is not None else math.nan
    ss_res = float(np.sum(fit.residual**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"coef": math.exp(icpt.value), "exponent": slope.value, "exponent_ci": [slope.value - half, slope.value + half],
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan, "num_points": int(len(x))}


def _loss_curve(C, E, k, gamma):
    return E + k * np.exp(-gamma * np.log(C))


def loss_law(C: np.ndarray, L: np.ndarray) -> dict | None:
    """L_opt(C) = E + coef·C^(−exponent), least squares in linear space (needs 3+ budgets)."""
    if len(C) < 3:
        return None
    model = Model(_loss_curve)
    lo = float(np.min(L))
    gamma0 = 0.1
    k0 = max((float(np.max(L)) - 0.9 * lo) * float(np.min(C)) ** gamma0, 1e-12)
    params = model.make_params(E=0.9 * lo, k=k0, gamma=gamma0)
    params["E"].set(min=0, max=lo)
    params["k"].set(min=0)
    params["gamma"].set(min=1e-4, max=3)
    fit = model.fit(L, params, C=C)
    ss_tot = float(np.sum((L - L.mean()) ** 2))
    return {"E": fit.params["E"].value, "coef": fit.params["k"].value, "exponent": fit.params["gamma"].value,
            "r2": 1 - float(np.sum(fit.residual**2)) / ss_tot if ss_tot > 0 else math.nan}
