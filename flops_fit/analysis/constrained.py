"""The data-constrained law: Approach 3 when the training data repeat (Muennighoff et al. 2023).

With U unique tokens and D tokens trained, R_D = max(D/U − 1, 0) is the number of repeated
epochs.  Repeated tokens are worth less than fresh ones, and parameters beyond what U can feed
are worth less than the first ones:

    D' = U + U·R*_D·(1 − exp(−R_D/R*_D))                      (effective data)
    U_N = min(N, N_base(U)),  R_N = N/U_N − 1                   (parameters U can use)
    N' = U_N + U_N·R*_N·(1 − exp(−R_N/R*_N))                   (effective parameters)
    L(N, D, U) = E + A/N'^α + B/D'^β

N_base(U) is the size for which U is the compute-optimal data of the law itself: from
αA·N^−α = pβB·D^−β (the optimum under C = c·N^p·D) at D = U,

    N_base(U) = (αA·U^β / (pβB))^(1/α).

R*_D and R*_N are the number of repetitions after which repeated data (excess parameters) have
lost 1 − 1/e of their value.  The paper's fitted values are R*_D ≈ 15.4 and R*_N ≈ 5.3; a sweep
that repeats its data too little to pin them uses those (and says so).  Without repetition
(D ≤ U, N ≤ N_base) the law is Chinchilla's exactly; as R* → ∞ it becomes Chinchilla's for every
D; as R*_D → 0 extra epochs are worth nothing (D' = U).

``theta`` of this law is (ln A, ln B, ln E, α, β, ln R*_D, ln R*_N); every function here is
vectorised and pure (no fit objects: :mod:`.laws` builds on them).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import least_squares

__all__ = [
    "R_STAR_D",
    "R_STAR_N",
    "MIN_REPEATED_POINTS",
    "log_effective",
    "log_n_base",
    "log_pred",
    "allocate_capped",
    "fit_constrained",
    "repetition_design",
]

#: Muennighoff et al. (2023), "Scaling Data-Constrained Language Models", their fitted values.
R_STAR_D = 15.4
R_STAR_N = 5.3
#: A repetition constant is fitted only with at least this many points repeating it at least once
#: (epochs ≥ 2 for R*_D; N ≥ 2·N_base(U) for R*_N); with fewer the published value is used.
MIN_REPEATED_POINTS = 3
#: Points per fitted parameter a repetition constant needs (7 parameters: 14 points).
MIN_POINTS_PER_PARAMETER = 2
#: Bounds of a fitted R* (a fit that lands on one does not pin it: the published value is used).
R_STAR_BOUNDS = (0.05, 1000.0)


def _columns(theta) -> list[np.ndarray]:
    """theta's entries as arrays: a (7,) vector gives scalars, an (S, 7) stack gives (S, 1) columns
    that broadcast against (S, M) points."""
    t = np.asarray(theta, dtype=float)
    return [t[..., j] if t.ndim == 1 else t[:, j : j + 1] for j in range(t.shape[-1])]


def log_effective(ln_count, ln_unique, ln_r_star) -> np.ndarray:
    """ln of the effective count U·(1 + R*·(1 − exp(−R/R*))), R = max(count/U − 1, 0); the count
    itself where U is not known (NaN) or not exceeded."""
    ln_count, ln_unique = np.asarray(ln_count, float), np.asarray(ln_unique, float)
    known = np.isfinite(ln_unique)
    ln_u = np.where(known, ln_unique, ln_count)  # unknown U: R = 0 below
    with np.errstate(over="ignore", invalid="ignore"):
        R = np.expm1(np.maximum(ln_count - ln_u, 0.0))
        r_star = np.exp(ln_r_star)
        gain = np.log1p(r_star * -np.expm1(-R / r_star))
    return np.where(R > 0, ln_u + gain, ln_count)


def log_n_base(theta, ln_unique, p: float = 1.0) -> np.ndarray:
    """ln N_base(U) = (ln(αA) + β·ln U − ln(pβB)) / α: the size whose optimal data is U."""
    a, b, _, alpha, beta = _columns(theta)[:5]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (
            np.log(alpha) + a + beta * np.asarray(ln_unique, float) - math.log(p) - np.log(beta) - b
        ) / alpha


def log_pred(theta, lnN, lnD, lnU, p: float = 1.0) -> np.ndarray:
    """ln L̂ of the data-constrained law, elementwise (``theta`` a 7-vector, or an (S, 7) stack
    against (S, M) or (M,) points); lnU NaN: no cap."""
    a, b, e, alpha, beta, ln_rd, ln_rn = _columns(theta)
    lnU = np.asarray(lnU, float)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ln_d_eff = log_effective(lnD, lnU, ln_rd)
        ln_un = np.minimum(lnN, np.where(np.isfinite(lnU), log_n_base(theta, lnU, p), np.inf))
        ln_n_eff = log_effective(lnN, ln_un, ln_rn)
        t1, t2 = a - alpha * ln_n_eff, b - beta * ln_d_eff
        m = np.maximum(np.maximum(t1, t2), e)
        return m + np.log(np.exp(t1 - m) + np.exp(t2 - m) + np.exp(e - m))


def allocate_capped(
    theta, budget_flops: float, unique_tokens: float, c: float = 6.0, p: float = 1.0, span: float = 6.0
) -> tuple:
    """(N_opt, D_opt, L_opt) minimising L(N, C/(c·N^p), U) over N: a grid of 481 points over
    ±``span`` in ln N around the unconstrained optimum, then three finer grids of 101 points, each
    between the best point's neighbours on the last (the cell shrinks 50× a round, 0.025 → 2e-7 in
    ln N, in four vectorised evaluations: the loss is so flat at its minimum that double precision
    places N_opt no closer than ~1e-7 anyway).  Without repetition this is the closed form's optimum
    (to 7e-8).
    ``theta``: a 7-vector (floats back) or an (S, 7) stack of bootstrap fits (arrays of S back,
    NaN where degenerate)."""
    t = np.atleast_2d(np.asarray(theta, dtype=float))
    a, b, _, alpha, beta = (col[:, 0] for col in _columns(t)[:5])
    C, lnU = float(budget_flops), math.log(unique_tokens)
    with np.errstate(all="ignore"):
        x0 = (np.log(alpha * np.exp(a) / (p * beta * np.exp(b) * c**beta)) + beta * math.log(C)) / (
            alpha + p * beta
        )
    ok = np.isfinite(x0)
    x0 = np.where(ok, x0, 0.0)

    def f(x):  # x: (S, M)
        return log_pred(t, x, math.log(C / c) - p * x, lnU, p)

    step = 2 * span / 480
    grid = x0[:, None] + np.linspace(-span, span, 481)[None, :]
    vals = np.where(np.isfinite(v := f(grid)), v, np.inf)
    finite = np.isfinite(vals).any(axis=1)
    x = grid[np.arange(len(x0)), np.argmin(vals, axis=1)]
    fine = np.linspace(-1.0, 1.0, 101)[None, :]
    for _ in range(3):  # zoom into the best point's two neighbouring cells, 101 points
        grid = x[:, None] + step * fine
        vals = np.where(np.isfinite(v := f(grid)), v, np.inf)
        x, step = grid[np.arange(len(x0)), np.argmin(vals, axis=1)], step / 50
    loss = np.exp(f(x[:, None])[:, 0])
    N, D = np.exp(x), C / (c * np.exp(p * x))
    ok &= finite & np.isfinite(loss)
    N, D, loss = (np.where(ok, v, np.nan) for v in (N, D, loss))
    if np.asarray(theta).ndim == 1:
        return float(N[0]), float(D[0]), float(loss[0])
    return N, D, loss


def repetition_design(theta5, lnN, lnD, lnU, p: float = 1.0) -> tuple[int, int, float, float]:
    """How much the points repeat: (points with epochs ≥ 2, points with N ≥ 2·N_base(U), the
    largest D/U, the largest N/N_base(U)) under a Chinchilla fit ``theta5``."""
    known = np.isfinite(lnU)
    if not known.any():
        return 0, 0, 0.0, 0.0
    epochs = np.exp(lnD[known] - lnU[known])
    over = np.exp(lnN[known] - log_n_base(theta5, lnU[known], p))
    return int(np.sum(epochs >= 2)), int(np.sum(over >= 2)), float(epochs.max()), float(over.max())


def fit_constrained(
    theta5,
    lnN,
    lnD,
    lnU,
    lnL,
    free: tuple[bool, bool],
    delta: float,
    p: float = 1.0,
    start=(R_STAR_D, R_STAR_N),
    max_nfev: int = 2000,
) -> np.ndarray:
    """The 7-vector minimising Σ Huber_δ(ln L̂ − ln L) from Chinchilla's ``theta5`` (and ``start``
    R*s); ``free``: whether R*_D and R*_N are fitted (else held at ``start``)."""
    lo_r, hi_r = (math.log(v) for v in R_STAR_BOUNDS)
    full = np.concatenate([np.asarray(theta5, float), np.log(np.asarray(start, float))])
    mask = np.array([True] * 5 + list(free))

    def resid(x):
        t = full.copy()
        t[mask] = x
        return log_pred(t, lnN, lnD, lnU, p) - lnL

    x0 = full[mask]
    # ln A, ln B, ln E within e^±20 of Chinchilla's: a flat valley cannot carry them off to ±∞
    lower = np.array([*(full[:3] - 20), 0.0, 0.0] + [lo_r] * int(sum(free)))
    upper = np.array([*(full[:3] + 20), 5.0, 5.0] + [hi_r] * int(sum(free)))
    x0 = np.clip(x0, lower + 1e-9, upper - 1e-9)
    k = len(x0)

    def jac(x):  # forward differences (scipy's "2-point" step), every column in one stacked evaluation
        h = np.sqrt(np.finfo(float).eps) * np.maximum(1.0, np.abs(x))
        h = np.where(x + h > upper, -h, h)
        t = np.repeat(full[None, :], k + 1, axis=0)
        t[:, mask] = x
        t[1:, np.flatnonzero(mask)] += np.diag(h)
        v = log_pred(t, lnN, lnD, lnU, p)
        return ((v[1:] - v[0]) / h[:, None]).T

    res = least_squares(
        resid,
        x0,
        jac=jac,
        loss="huber",
        f_scale=delta,
        method="trf",
        x_scale="jac",
        bounds=(lower, upper),
        xtol=1e-12,
        ftol=1e-12,
        gtol=1e-12,
        max_nfev=max_nfev,
    )
    out = full.copy()
    out[mask] = res.x
    return out
