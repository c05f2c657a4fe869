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

from .laws import OLS, BudgetMinimum, DroppedBudget, LossLaw, PowerLaw
from .shape import fit_shape, shape_minimum

__all__ = ["budget_minima", "power_law", "loss_law", "profile_residuals", "profile_minimum", "WINDOW_POINTS"]

WINDOW_POINTS = 5


def _parabola(x: np.ndarray, y: np.ndarray):
    model = QuadraticModel()
    return model.fit(y, model.make_params(a=1.0, b=0.0, c=float(np.mean(y))), x=x)


def _window(x: np.ndarray, y: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices (into x sorted ascending) of the points centred on the lowest loss: ``k`` of them,
    by default max(WINDOW_POINTS, 60% of the budget's points).  The centre is the minimum of a
    3-point running median, so one spike or noisy point does not move the window."""
    k = k or max(WINDOW_POINTS, int(round(0.6 * len(x))))
    padded = np.pad(y, 1, mode="edge")
    smooth = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    i = int(np.argmin(smooth))
    lo = min(max(0, i - k // 2), max(0, len(x) - k))
    return np.arange(lo, min(len(x), lo + k))


def _profile_points(x: np.ndarray, y: np.ndarray, profile: str) -> tuple[np.ndarray, int]:
    """Which points (indices into x sorted ascending) a profile fits, and the polynomial degree
    (``auto`` judges points as the window does)."""
    if profile in ("window", "auto", "shape"):
        return _window(x, y), 2
    return np.arange(len(x)), 3 if profile == "cubic" and len(x) >= 5 else 2


def _rss(x: np.ndarray, y: np.ndarray, degree: int) -> float:
    X = np.vander(x - x.mean(), degree + 1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return float(np.sum((y - X @ coef) ** 2))


def _lacks_fit(x: np.ndarray, y: np.ndarray, degree: int, level: float = 0.05) -> bool:
    """Whether a polynomial of ``degree`` misses a shape the next degree finds: the extra-sum-of-
    squares F test, F = (RSS_d − RSS_{d+1}) / (RSS_{d+1} / (n − d − 2)) on (1, n − d − 2) df."""
    dof = len(x) - degree - 2
    if dof < 2:
        return False
    lo, hi = _rss(x, y, degree), _rss(x, y, degree + 1)
    if hi <= 0:
        return lo > 0
    return bool(stats.f.sf((lo - hi) / (hi / dof), 1, dof) < level)


def choose_profile(x: np.ndarray, y: np.ndarray) -> str:
    """The ``auto`` profile's choice for one budget (x = ln N sorted ascending): the parabola over
    every point (the sharpest minimum: every measurement counts) unless an F test finds a cubic
    term in the profile (a lopsided profile, where a parabola's minimum is biased); then the cubic
    over every point, unless a quartic term is found too (far edges that no low polynomial
    follows), where the window's parabola through the central points is left."""
    if not _lacks_fit(x, y, 2):
        return "parabola"
    return "window" if _lacks_fit(x, y, 3) else "cubic"


def profile_minimum(x: np.ndarray, y: np.ndarray, profile: str = "window",
                    shape: tuple[float, float] | None = None) -> tuple[float | None, float | None, list, str]:
    """The minimum (x*, L*) of one IsoFLOP profile, the fitted curve's coefficients and range, or a reason.

    ``x`` = ln N sorted ascending.  Profiles:

    * ``"parabola"``: L ≈ p2·x² + p1·x + p0 over every point, x* = −p1/(2·p2);
    * ``"window"``: the same parabola over the points centred on the lowest measured loss
      (max(5, 60%) of them; all when there are fewer): the far edges of a wide sweep, where a
      parabola is a poor local model, no longer pull the minimum;
    * ``"cubic"``: a cubic in x over every point (≥ 5; a parabola below that), minimum where the
      derivative vanishes with positive curvature.

    * ``"auto"``: per budget, the parabola unless the profile lacks fit, then the cubic or the
      window (:func:`choose_profile`);
    * ``"shape"``: the shape g(d) = e^(−u·d)/u + e^(v·d)/v of the Chinchilla law's profiles with
      ``shape`` = (u, v) shared by every budget (:mod:`.shape`), level and scale per budget;
      ``coef`` is then [u, v, c, K, x*, x_lo, x_hi].

    The minimum must lie inside the fitted range, else (None, None, [], reason).
    """
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(np.unique(x)) < 3:
        return None, None, [], f"{len(np.unique(x))} sizes (< 3) for a profile"
    if profile == "auto":
        profile = choose_profile(x, y)
    x_lo, x_hi = x.min(), x.max()
    if profile == "shape":
        u, v = shape
        xs, loss, c, K = shape_minimum(x, y, u, v)
        if K <= 0:
            return None, None, [], "no positive curvature (loss not U-shaped in ln N)"
        if not (x_lo <= xs <= x_hi):
            return None, None, [], f"minimum outside the sampled sizes (beyond the {'smallest' if xs < x_lo else 'largest'})"
        return float(xs), float(loss), [u, v, c, K, float(xs), float(x_lo), float(x_hi)], ""
    idx, degree = _profile_points(x, y, profile)
    x, y = x[idx], y[idx]
    coef = np.polyfit(x, y, degree)
    if degree == 2:
        p2, p1, _ = coef
        if p2 <= 0:
            return None, None, [], "no positive curvature (loss not U-shaped in ln N)"
        xs = -p1 / (2 * p2)
    else:
        d1, d2 = np.polyder(coef), np.polyder(coef, 2)
        roots = [r.real for r in np.roots(d1) if abs(r.imag) < 1e-12 and np.polyval(d2, r.real) > 0]
        inside = [r for r in roots if x.min() <= r <= x.max()]
        if not inside:
            side = "smallest" if np.argmin(y) == 0 else "largest" if np.argmin(y) == len(y) - 1 else None
            return None, None, [], (f"minimum outside the sampled sizes (beyond the {side})" if side
                                    else "no positive curvature (loss not U-shaped in ln N)")
        xs = min(inside, key=lambda r: np.polyval(coef, r))
    if not (x_lo <= xs <= x_hi):
        side = "smallest" if xs < x_lo else "largest"
        return None, None, [], f"minimum outside the sampled sizes (beyond the {side})"
    return float(xs), float(np.polyval(coef, xs)), [float(c) for c in coef] + [float(x.min()), float(x.max())], ""


def budget_minima(lnN: np.ndarray, lnD: np.ndarray, L: np.ndarray, budgets: np.ndarray,
                  profile: str = "window",
                  shape: tuple[float, float] | None = None) -> tuple[list[BudgetMinimum],
                                                                     list[DroppedBudget]]:
    """Per-budget profile minima and the budgets without one (with the reason).  ``shape``: the
    (u, v) of the ``shape`` profile (default: fitted here over the budgets with 3+ sizes)."""
    minima, dropped = [], []
    if profile == "shape" and shape is None:
        groups = [_compress(lnN[budgets == C], L[budgets == C]) for C in np.unique(budgets)]
        groups = [g for g in groups if len(np.unique(g[0])) >= 3]
        shape = fit_shape(groups)[:2] if groups else (0.3, 0.3)
    for C in np.unique(budgets):
        m = budgets == C
        x, y, xd = lnN[m], L[m], lnD[m]
        order = np.argsort(x)
        used = choose_profile(x[order], y[order]) if profile == "auto" and len(np.unique(x)) >= 3 else profile
        points = _compress(x, y) if used == "shape" else (x, y)
        xs, loss, coef, reason = profile_minimum(*points, used, shape)
        if xs is None:
            dropped.append(DroppedBudget(budget_flops=float(C), reason=reason))
            continue
        se = math.nan
        if len(coef) == 5:  # a parabola: delta-method standard error of its minimum
            lo, hi = coef[3], coef[4]
            keep = (x >= lo - 1e-12) & (x <= hi + 1e-12)
            if keep.sum() > 3:
                fit = _parabola(x[keep], y[keep])
                se = _minimum_se(fit, fit.params["b"].value, fit.params["a"].value)
        slope, icpt = np.polyfit(x, xd, 1)
        minima.append(BudgetMinimum(budget_flops=float(C), n_opt=math.exp(xs),
                                    d_opt=math.exp(icpt + slope * xs),
                                    loss=loss, n_opt_ci=[math.exp(xs - 1.96 * se), math.exp(xs + 1.96 * se)]
                                    if math.isfinite(se) else None, coef=coef, num_points=int(m.sum()),
                                    profile=used))
    return minima, dropped


#: Past this many points a budget's shape profile is fitted to the mean loss of each size (its
#: vectorised search holds grid × points values: five million rows would need tens of GB).
COMPRESS_ABOVE = 2000


def _compress(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y), or past :data:`COMPRESS_ABOVE` points each distinct x with its mean y."""
    if len(x) <= COMPRESS_ABOVE:
        return x, y
    ux, inverse = np.unique(x, return_inverse=True)
    return ux, np.bincount(inverse, weights=y) / np.bincount(inverse)


def _minimum_se(fit, p1: float, p2: float) -> float:
    cov = fit.covar
    if cov is None:
        return math.nan
    names = list(fit.var_names)
    ia, ib = names.index("a"), names.index("b")
    g = np.zeros(len(names))
    g[ia], g[ib] = p1 / (2 * p2**2), -1 / (2 * p2)
    return float(math.sqrt(max(0.0, g @ cov @ g)))


def profile_residuals(lnN: np.ndarray, L: np.ndarray, budgets: np.ndarray, profile: str = "window",
                      min_points: int = 6) -> np.ndarray:
    """Deleted residual of each point from its budget's profile curve fitted without it (NaN outside
    the curve's range, or where a budget has fewer than ``min_points`` sizes)."""
    out = np.full(len(L), np.nan)
    for C in np.unique(budgets):
        m = np.flatnonzero(budgets == C)
        if len(np.unique(lnN[m])) < min_points:
            continue
        order = np.argsort(lnN[m])
        x, y = lnN[m][order], L[m][order]
        idx, degree = _profile_points(x, y, profile)
        X = np.vander(x[idx] - x[idx].mean(), degree + 1)
        coef, *_ = np.linalg.lstsq(X, y[idx], rcond=None)
        resid = y[idx] - X @ coef
        q, _ = np.linalg.qr(X)
        leverage = np.clip(np.sum(q**2, axis=1), 0.0, 0.999)
        deleted = resid / (1 - leverage)  # the residual of a fit without that point, in closed form
        deleted[[0, -1]] = resid[[0, -1]]  # the window's ends: a fit without them would extrapolate
        out[m[order][idx]] = deleted
    return out


def power_law(C: np.ndarray, Y: np.ndarray) -> PowerLaw:
    """OLS of ln Y on ln C: Y = coef·C^exponent, with a 95% t-interval, R² and what
    :meth:`PowerLaw.interval` needs (n, mean ln C, Sxx, residual standard deviation)."""
    x, y = np.log(C), np.log(Y)
    model = LinearModel()
    fit = model.fit(y, model.make_params(slope=0.5, intercept=float(y.mean() - 0.5 * x.mean())), x=x)
    slope, icpt = fit.params["slope"], fit.params["intercept"]
    dof = len(x) - 2
    half = stats.t.ppf(0.975, dof) * slope.stderr if dof > 0 and slope.stderr is not None else math.nan
    ss_res = float(np.sum(fit.residual**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    sd = math.sqrt(ss_res / dof) if dof > 0 else math.nan
    ci = [slope.value - half, slope.value + half]
    return PowerLaw(coef=math.exp(icpt.value), exponent=slope.value, exponent_ci=ci, exponent_t_ci=ci,
                    r2=1 - ss_res / ss_tot if ss_tot > 0 else math.nan, num_points=int(len(x)),
                    ols=OLS(n=int(len(x)), mean_x=float(x.mean()), sxx=float(np.sum((x - x.mean()) ** 2)),
                            resid_sd=sd))


def _loss_curve(C, E, k, gamma):
    return E + k * np.exp(-gamma * np.log(C))


def loss_law(C: np.ndarray, L: np.ndarray) -> LossLaw | None:
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
    return LossLaw(E=fit.params["E"].value, coef=fit.params["k"].value, exponent=fit.params["gamma"].value,
                   r2=1 - float(np.sum(fit.residual**2)) / ss_tot if ss_tot > 0 else math.nan)
