"""Chinchilla Approach 3: the parametric loss L(N, D) = E + A/N^α + B/D^β.

Objective (Hoffmann et al. 2022; Besiroglu et al. 2024): with a = ln A, b = ln B, e = ln E,

    log L̂ = logsumexp(a − α·ln N,  b − β·ln D,  e),
    minimise  Σ Huber_δ(log L̂ − log L),   δ = 1e-3   (the *sum*, not the mean).

lmfit's ``least_squares`` with ``loss="huber"``, ``f_scale=δ`` minimises exactly this.  The
start comes from variable projection: for fixed (α, β) the model is linear in (E, A, B),
solved by non-negative least squares over a grid of exponents; the best few grid cells
are refined and the lowest objective wins.  Compute-optimal allocation under C = 6ND:

    G = (αA / (βB))^(1/(α+β)),  N_opt = G·(C/6)^a,  D_opt = (C/6)^b / G,
    a = β/(α+β),  b = α/(α+β).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from lmfit import Parameters, minimize
from pydantic import Field
from scipy.optimize import least_squares, nnls

from ..core.frozen import Frozen
from .constrained import (MIN_POINTS_PER_PARAMETER, MIN_REPEATED_POINTS, R_STAR_BOUNDS, R_STAR_D, R_STAR_N,
                          fit_constrained, log_n_base,
                          log_pred, repetition_design)
from .laws import FlopsPerUnit, ParametricFit

__all__ = ["fit_parametric", "huber_objective", "refit_fast", "DELTA", "constrain", "refit_constrained",
           "DataLimit", "DataThreshold", "DataEffect", "data_limit"]

DELTA = 1e-3
_GRID = np.arange(0.05, 1.51, 0.05)


def _terms(theta, lnN, lnD) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The three log terms and their logsumexp (two-pass, stable; faster than the general one)."""
    a, b, e, alpha, beta = theta
    t1, t2 = a - alpha * lnN, b - beta * lnD
    m = np.maximum(np.maximum(t1, t2), e)
    lse = m + np.log(np.exp(t1 - m) + np.exp(t2 - m) + np.exp(e - m))
    return t1, t2, np.full_like(lnN, e), lse


def _log_pred(theta: np.ndarray, lnN: np.ndarray, lnD: np.ndarray) -> np.ndarray:
    return _terms(theta, lnN, lnD)[3]


def _residual(theta, lnN, lnD, lnL):
    return _log_pred(theta, lnN, lnD) - lnL


def _jacobian(theta, lnN, lnD, lnL):
    t1, t2, t3, lse = _terms(theta, lnN, lnD)
    w1, w2, w3 = np.exp(t1 - lse), np.exp(t2 - lse), np.exp(t3 - lse)  # softmax weights of the three terms
    return np.stack([w1, w2, w3, -w1 * lnN, -w2 * lnD], axis=1)


def huber_objective(theta: np.ndarray, lnN, lnD, lnL, delta: float = DELTA) -> float:
    """Σ Huber_δ of the log residuals."""
    r = np.abs(_residual(theta, lnN, lnD, lnL))
    return float(np.sum(np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))))


def _vpro_starts(N, D, L, keep: int = 4) -> list[np.ndarray]:
    """Best (α, β) grid cells by NNLS of L on [1, N^-α, D^-β]; returns theta starts."""
    scored = []
    for alpha in _GRID:
        x = N ** -alpha
        for beta in _GRID:
            X = np.stack([np.ones_like(N), x, D ** -beta], axis=1)
            coef, _ = nnls(X / L[:, None], np.ones_like(L))  # relative errors, as the log objective
            if np.all(coef > 0):
                pred = X @ coef
                scored.append((float(np.sum(np.log(pred / L) ** 2)), alpha, beta, coef))
    scored.sort(key=lambda s: s[0])
    starts = [np.array([np.log(c[1]), np.log(c[2]), np.log(c[0]), al, be]) for _, al, be, c in scored[:keep]]
    starts.append(np.array([6.0, 6.0, 0.5, 0.34, 0.28]))  # Chinchilla's published fit as a fallback start
    return starts


#: Points used for the start grid and its refinement; larger fits are polished on every point after.
SUBSAMPLE = 5000


def _subsample(n: int) -> np.ndarray:
    """Every index, or SUBSAMPLE of them drawn with a fixed seed (the fit stays a pure function)."""
    if n <= SUBSAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, SUBSAMPLE, replace=False))


#: Evaluations per start.  A well-posed fit converges in tens (Epoch's 240 points: 8–23); an
#: ill-posed one (α or β near 0: A and B trade off along a flat valley) would otherwise take
#: thousands per start for no change in its (meaningless) optimum.
MAX_NFEV = 500
#: Evaluations of the polish on every point of a large fit (from the subsample's optimum, a
#: well-posed fit converges in a few; an ill-posed one would crawl for nothing, a million points a step).
POLISH_NFEV = 30


def _to_params(theta: np.ndarray) -> Parameters:
    p = Parameters()
    for name, value in zip(("a", "b", "e", "alpha", "beta"), theta):
        p.add(name, value=float(value))
    p["alpha"].set(min=0.0, max=5.0)
    p["beta"].set(min=0.0, max=5.0)
    return p


def _theta(params: Parameters) -> np.ndarray:
    return np.array([params[n].value for n in ("a", "b", "e", "alpha", "beta")])


def refit_fast(theta0: np.ndarray, lnN, lnD, lnL, delta: float = DELTA, max_nfev: int = 300) -> np.ndarray:
    """The same objective with scipy directly and an analytic Jacobian (for bootstrap).

    Warm-started from the full-data fit and bounded to ``max_nfev`` evaluations: on
    ill-conditioned data (E running to 0 in a resample) the optimiser would otherwise crawl
    along a flat valley for thousands of evaluations for no change in the intervals."""
    res = least_squares(_residual, theta0, jac=_jacobian, args=(lnN, lnD, lnL), loss="huber", f_scale=delta,
                        method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=max_nfev)
    return res.x


def fit_parametric(N: np.ndarray, D: np.ndarray, L: np.ndarray, delta: float = DELTA,
                   fpu: FlopsPerUnit | None = None) -> ParametricFit:
    """Fit Approach 3 with lmfit (no intervals; :func:`~flops_fit.analysis.fit.fit_points` adds them).

    ``fpu``: FLOPs per data unit (default 6·N) for the allocation exponents a and b."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    if len(L) < 5:
        raise ValueError(f"the parametric fit needs at least 5 points, got {len(L)}")
    lnN, lnD, lnL = np.log(N), np.log(D), np.log(L)
    sub = _subsample(len(L))  # starts and their refinement on at most SUBSAMPLE points, then all points
    best = None
    for start in _vpro_starts(N[sub], D[sub], L[sub]):
        sN, sD, sL = lnN[sub], lnD[sub], lnL[sub]
        out = minimize(lambda p: _residual(_theta(p), sN, sD, sL), _to_params(start), method="least_squares",
                       loss="huber", f_scale=delta, x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12,
                       max_nfev=MAX_NFEV,
                       jac=lambda p, *a, **k: _jacobian(_theta(p), sN, sD, sL))
        theta = _theta(out.params)
        obj = huber_objective(theta, sN, sD, sL, delta)
        if best is None or obj < best[0]:
            best = (obj, theta)
    theta = best[1]
    if len(sub) < len(L):  # polish the best on every point: the same objective, from a start at its optimum's door
        theta = refit_fast(theta, lnN, lnD, lnL, delta, max_nfev=POLISH_NFEV)
    obj = huber_objective(theta, lnN, lnD, lnL, delta)
    return ParametricFit.from_theta(theta, fpu, objective=float(obj), num_points=int(len(L)))


# -- repetition: the data-constrained form (see :mod:`.constrained`) ------------------------------

def _fmt_count(v: float) -> str:
    return f"{v:.3g}"


def constrain(fit: ParametricFit, N, D, U, L, delta: float = DELTA) -> ParametricFit:
    """Approach 3 on the points' unique tokens ``U`` (NaN where not known), from the Chinchilla fit.

    * No point knows U: the Chinchilla law, fresh data assumed (``form_reason`` says so).
    * Otherwise the data-constrained law with U the points' median (the data set's size).  R*_D is
      fitted when at least :data:`~.constrained.MIN_REPEATED_POINTS` points train 2+ epochs, R*_N
      when as many have N ≥ 2·N_base(U); otherwise, or when a fitted value lands on its bound, the
      published value is used.  Without any repetition the fit is Chinchilla's exactly.
    """
    N, D, U, L = (np.asarray(v, dtype=float) for v in (N, D, U, L))
    known = np.isfinite(U)
    if not known.any():
        return fit.model_copy(update={"form_reason": "unique tokens not known: the law assumes every token is fresh "
                                                     "(give [data] unique_tokens, or a unique_tokens or epochs column)"})
    lnN, lnD, lnU, lnL = np.log(N), np.log(D), np.log(U), np.log(L)
    p = fit.flops_per_unit.exponent
    reps_d, reps_n, max_epochs, max_over = repetition_design(fit.theta, lnN, lnD, lnU, p)
    free = [reps_d >= MIN_REPEATED_POINTS, reps_n >= MIN_REPEATED_POINTS]
    need = MIN_POINTS_PER_PARAMETER * (5 + sum(free))
    few = "" if len(L) >= need else f"; {len(L)} points are too few for {5 + sum(free)} parameters ({need} needed)"
    free = free if not few else [False, False]
    theta = np.concatenate([fit.theta[:5], np.log([R_STAR_D, R_STAR_N])])
    if max_epochs > 1 or max_over > 1:  # else the law is Chinchilla's at every point: nothing to refit
        theta = fit_constrained(fit.theta[:5], lnN, lnD, lnU, lnL, tuple(free), delta, p)
    lo, hi = (math.log(v) for v in R_STAR_BOUNDS)
    names = (("R*_D", R_STAR_D, f"{reps_d} points with 2+ epochs (most {max_epochs:.2f})", "repeated tokens"),
             ("R*_N", R_STAR_N, f"{reps_n} points with N ≥ 2·N_base(U) (most {max_over:.2f}×)",
              "excess parameters"))
    parts = []
    for j, (name, published, design, what) in enumerate(names):
        value = math.exp(theta[5 + j])
        if not free[j]:
            why = few[2:] if few else f"{MIN_REPEATED_POINTS} needed to fit it"
            parts.append(f"{name} = {published} published ({design}; {why})")
        elif theta[5 + j] >= hi - 1e-3:
            parts.append(f"{name} ≥ {value:.3g} fitted, at its bound: {what} lose no "
                         f"measurable value ({design})")
        elif theta[5 + j] <= lo + 1e-3:
            parts.append(f"{name} ≤ {value:.3g} fitted, at its bound: {what} are worth almost nothing ({design})")
        else:
            parts.append(f"{name} = {value:.3g} fitted ({design})")
    u = float(np.median(U[known]))
    reason = (f"data-constrained law (U = {_fmt_count(u)} unique tokens): " + "; ".join(parts))
    r = log_pred(theta, lnN, lnD, np.where(known, lnU, np.nan), p) - lnL
    a = np.abs(r)
    objective = float(np.sum(np.where(a <= delta, 0.5 * a**2, delta * (a - 0.5 * delta))))
    return ParametricFit.from_theta(theta, fit.flops_per_unit, objective=objective, num_points=fit.num_points,
                                    unique_tokens=u, form_reason=reason,
                                    fitted_r_star=[k for k, f in zip(("D", "N"), free) if f])


def refit_constrained(fit: ParametricFit, lnN, lnD, lnU, lnL, delta: float = DELTA) -> np.ndarray:
    """One bootstrap refit of ``fit``'s form from its optimum (the R* it fitted free, the rest held)."""
    if fit.form == "chinchilla":
        return refit_fast(np.asarray(fit.theta), lnN, lnD, lnL, delta)
    lo, hi = (math.log(v) + 1e-3 for v in R_STAR_BOUNDS)
    # an R* fitted to its bound is not pinned by the data: resamples hold it there
    free = tuple(k in fit.fitted_r_star and lo < fit.theta[5 + j] < hi - 2e-3 for j, k in enumerate("DN"))
    if not any(free) and np.all(~np.isfinite(lnU) | (lnD <= lnU)):
        # no repeated epochs in this resample: only N' could differ from Chinchilla's, and only past N_base
        over = np.isfinite(lnU) & (lnN > log_n_base(fit.theta, np.where(np.isfinite(lnU), lnU, 0.0),
                                                    fit.flops_per_unit.exponent))
        if not over.any():
            return np.concatenate([refit_fast(np.asarray(fit.theta[:5]), lnN, lnD, lnL, delta),
                                   fit.theta[5:]])
    start = (math.exp(fit.theta[5]), math.exp(fit.theta[6]))
    return fit_constrained(fit.theta[:5], lnN, lnD, lnU, lnL, free, delta, fit.flops_per_unit.exponent, start,
                           max_nfev=300)


class DataThreshold(Frozen):
    """The budget above which the compute-optimal run repeats the data more than ``epochs`` times."""

    epochs: float
    budget_flops: Optional[float] = None  # None: not within 1e6 of the fitted budgets' range


class DataEffect(Frozen):
    """At one budget: the optimum under the data's repetition against the fresh-data optimum."""

    budget_flops: float
    num_params: float
    num_params_fresh: float
    epochs: float
    loss: float
    loss_fresh: float


class DataLimit(Frozen):
    """Where the data run out, and what that does to N_opt (from the data-constrained law)."""

    unique_tokens: float
    thresholds: list[DataThreshold] = Field(default_factory=list)
    effects: list[DataEffect] = Field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for t in self.thresholds:
            if t.budget_flops is not None:
                out.append(f"beyond C ≈ {t.budget_flops:.3g} FLOPs the optimum repeats the data more than "
                           f"{t.epochs:g} time{'s' if t.epochs != 1 else ''} (U = {self.unique_tokens:.3g})")
        for e in self.effects:
            if e.epochs > 1:
                out.append(f"at {e.budget_flops:.3g} FLOPs the data repeat {e.epochs:.1f} times: N_opt "
                           f"{e.num_params:.3g} instead of {e.num_params_fresh:.3g} with fresh data "
                           f"({e.num_params / e.num_params_fresh:.2f}×), loss {e.loss:.4g} instead of {e.loss_fresh:.4g}")
        return out


def data_limit(fit: ParametricFit, budgets: list[float], epochs=(1.0, 4.0)) -> DataLimit | None:
    """Budgets where the optimum's D/U crosses each of ``epochs`` (bisection in ln C) and, at each
    of ``budgets``, N_opt under repetition against fresh data.  None unless the law is data-constrained."""
    if fit.form != "data-constrained" or not fit.unique_tokens:
        return None
    U = fit.unique_tokens
    fresh = fit.model_copy(update={"form": "chinchilla"})

    def ratio(lnC: float) -> float:
        return fit.allocate(math.exp(lnC), U)[1] / U

    lo, hi = math.log(min(budgets)) - math.log(1e6), math.log(max(budgets)) + math.log(1e6)
    thresholds = []
    for k in epochs:
        if not (ratio(lo) < k < ratio(hi)):
            thresholds.append(DataThreshold(epochs=k))
            continue
        a, b = lo, hi
        for _ in range(32):  # the bracket (~30 in ln C) to 7e-9: far below the 4 digits reported
            m = 0.5 * (a + b)
            a, b = (m, b) if ratio(m) < k else (a, m)
        thresholds.append(DataThreshold(epochs=k, budget_flops=float(f"{math.exp(0.5 * (a + b)):.4g}")))
    effects = []
    for C in sorted(set(budgets)):
        n, d, loss = fit.allocate(C, U)
        n0, _, loss0 = fresh.allocate(C)
        effects.append(DataEffect(budget_flops=C, num_params=n, num_params_fresh=n0, epochs=d / U, loss=loss,
                                  loss_fresh=loss0))
    return DataLimit(unique_tokens=U, thresholds=thresholds, effects=effects)
