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

import numpy as np
from lmfit import Parameters, minimize
from scipy.optimize import least_squares, nnls

from .laws import FlopsPerUnit, ParametricFit

__all__ = ["fit_parametric", "huber_objective", "refit_fast", "DELTA"]

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
                       loss="huber", f_scale=delta, x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=MAX_NFEV,
                       jac=lambda p, *a, **k: _jacobian(_theta(p), sN, sD, sL))
        theta = _theta(out.params)
        obj = huber_objective(theta, sN, sD, sL, delta)
        if best is None or obj < best[0]:
            best = (obj, theta)
    theta = best[1]
    if len(sub) < len(L):  # polish the best on every point: the same objective, from a start at its optimum's door
        theta = refit_fast(theta, lnN, lnD, lnL, delta, max_nfev=200)
    obj = huber_objective(theta, lnN, lnD, lnL, delta)
    return ParametricFit.from_theta(theta, fpu, objective=float(obj), num_points=int(len(L)))
