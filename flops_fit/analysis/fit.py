"""Fit every requested approach to Points, with outlier rules, bootstrap intervals and a backtest.

``fit_points(points, ...) -> Fits`` is pure.  Intervals are percentile bootstrap intervals
over points (seeded): the parametric fit resamples all points and refits from the
full-data optimum; the IsoFLOP fit resamples points within each budget and refits the
parabolas and the power law.  The backtest refits without the largest budget and compares
the prediction at that budget with what was measured there.
"""

from __future__ import annotations

import math

import numpy as np

from .envelope import envelope
from .isoflop import budget_minima, loss_law, power_law, profile_minimum, profile_residuals
from .shape import fit_shape
from .laws import FlopsPerUnit, IsoflopFit, ParametricFit, hull, percentile_interval
from .noise import cell_means, noise_floor, seed_draw
from .parametric import constrain, data_limit, fit_parametric, refit_constrained
from .points import Points
from .results import Backtest, BacktestMeasured, Exclusion, Fits

__all__ = ["Fits", "Exclusion", "Backtest", "fit_points", "flops_per_unit_law"]

#: What an optimiser raises on data no law describes (losses of 1e308, overflowing exponents):
#: the approach is left out with a note, never a traceback.
NUMERICAL = (ValueError, OverflowError, FloatingPointError, ZeroDivisionError, np.linalg.LinAlgError)


def flops_per_unit_law(N: np.ndarray, flops_per_token: np.ndarray) -> FlopsPerUnit:
    """FLOPs per data unit as a power law of N (exactly 6·N under the 6N rule)."""
    N, f = np.asarray(N, dtype=float), np.asarray(flops_per_token, dtype=float)
    if len(np.unique(N)) < 2:
        return FlopsPerUnit(coef=float(np.mean(f / N)), exponent=1.0)
    slope, icpt = np.polyfit(np.log(N), np.log(f), 1)
    return FlopsPerUnit(coef=float(math.exp(icpt)), exponent=float(slope))


def _exclusions(points: Points, keep_outliers: bool, outlier_z: float, profile: str,
                index: np.ndarray | None = None) -> tuple[np.ndarray, list[Exclusion]]:
    """Drop non-usable points, then points far off their budget's profile curve; the kept indices.

    z = deleted residual / scale with scale = max(1.4826·MAD of all profile residuals, 1% of the
    budget's median loss), computed only where the profile describes the points (the window
    profile's points around the minimum; every point for the cubic): far edges of a wide sweep
    are real measurements, not outliers.  Each round drops the worst point of a budget (if beyond
    ``outlier_z``) and judges the rest again without it, so one spike does not drag its
    neighbours out with it; at most five rounds.  Vectorised over points (a million rows in seconds).
    ``index``: only these points are considered.
    """
    among = np.arange(points.count()) if index is None else np.asarray(index, dtype=int)
    keep = np.intersect1d(points.usable_index(), among)
    unusable = np.setdiff1d(among, keep)
    excluded = [Exclusion(id=points.id[i],
                          reason=points.status[i] + (f": {points.reason[i]}" if points.reason[i] else ""))
                for i in unusable]
    if keep_outliers or len(keep) < 5:
        return keep, excluded
    for _ in range(5):  # rounds: the worst point of each budget, if it is off the curve, then judge again
        N, D, L, budgets, _ = points.arrays(keep)
        r = profile_residuals(np.log(N), L, budgets, profile, min_points=6)
        finite = np.isfinite(r)
        if finite.sum() < 8:
            break
        mad_scale = 1.4826 * float(np.median(np.abs(r[finite] - np.median(r[finite]))))
        uniq, group = np.unique(budgets, return_inverse=True)
        floor = np.array([0.01 * float(np.median(L[group == g])) for g in range(len(uniq))])[group]
        z = np.where(finite, r / np.maximum(mad_scale, floor), 0.0)
        drop = []
        for g in range(len(uniq)):
            idx = np.flatnonzero(group == g)
            worst = idx[int(np.argmax(np.abs(z[idx])))]
            if abs(z[worst]) > outlier_z:
                drop.append(worst)
        if not drop:
            break
        for i in drop:
            zi = z[i]
            excluded.append(Exclusion(id=points.id[keep[i]],
                                      reason=f"off its budget's {profile} profile (robust |z| = "
                                      f"{abs(zi):.1f} > {outlier_z:g}, {'above' if zi > 0 else 'below'} the curve)"))
        keep = np.delete(keep, drop)
    return keep, excluded


def _fit_isoflop(N, D, L, budgets, profile: str = "shape") -> tuple[IsoflopFit | None, str | None]:
    minima, dropped = budget_minima(np.log(N), np.log(D), L, budgets, profile)
    if len(minima) < 2:
        return None, f"isoflop: {len(minima)} budget(s) with a bracketed minimum (need 2): " + \
            "; ".join(f"{d.budget_flops:.3g}: {d.reason}" for d in dropped)
    C = np.array([m.budget_flops for m in minima])
    fit = IsoflopFit(n_opt=power_law(C, np.array([m.n_opt for m in minima])),
                     d_opt=power_law(C, np.array([m.d_opt for m in minima])),
                     loss_opt=loss_law(C, np.array([m.loss for m in minima])),
                     minima=minima, dropped_budgets=dropped, profile=profile)
    return fit, None


def _boot_isoflop(N, D, L, budgets, n: int, rng: np.random.Generator, profile: str = "shape",
                  use: set | None = None, draw=None, chosen: dict | None = None,
                  shape: tuple[float, float] | None = None) -> list[list[float]]:
    """Two-stage bootstrap of the IsoFLOP law; (ln k, a, ln k', b) per resample.

    Between budgets: the budgets (those in ``use``, which bracket a minimum) are resampled with
    replacement, so the scatter of the minima about the power law enters the interval.  Within a
    budget: its sizes are fixed by design, so it gets a smooth fit (cubic with 6+ sizes, else a
    parabola) plus resampled residuals (inflated for the fitted parameters) and its profile
    minimum is found again.  Then OLS of ln N* (and ln D*) on ln C.  ``draw(rng)``: each
    resample's cell means with their seeds resampled (seed replicates), smoothed afresh.
    ``chosen``: budget -> the profile the fit used there (``auto``: kept for every resample);
    ``shape``: the ``shape`` profile's (u, v), the start of its refit on every resample.
    """
    lnN, lnD = np.log(N), np.log(D)

    chosen = chosen or {}

    def smooth(L: np.ndarray) -> list:
        groups = []
        for C in np.unique(budgets):
            g = np.flatnonzero(budgets == C)
            if (use is not None and float(C) not in use) or len(np.unique(lnN[g])) < 3:
                continue
            x = lnN[g]
            degree = 3 if len(g) >= 6 else 2
            fitted = np.polyval(np.polyfit(x, L[g], degree), x)
            resid = (L[g] - fitted) * math.sqrt(len(g) / max(1, len(g) - degree - 1))
            s, c = np.polyfit(x, lnD[g], 1)
            groups.append((float(C), x, fitted, resid, s, c, chosen.get(float(C), profile)))
        return groups

    groups = smooth(L)
    samples = []
    if len(groups) < 2:
        return samples
    for _ in range(n):
        if draw is not None:
            groups = smooth(draw(rng))
        pick = rng.integers(0, len(groups), len(groups))
        drawn = [(groups[j], groups[j][2] + rng.choice(groups[j][3], size=len(groups[j][1]))) for j in pick]
        # the shape profile is refitted on every resample (its uncertainty is in the interval), and
        # its joint fit gives each drawn budget's minimum
        joint = fit_shape([(g[1], y) for g, y in drawn], start=shape)[2] if shape is not None else None
        Cs, xs, ds = [], [], []
        for k, ((C, x, fitted, resid, s, c, used), y) in enumerate(drawn):
            if joint is not None:
                xstar = joint[k] if x.min() <= joint[k] <= x.max() else None
            else:
                xstar, _, _, _ = profile_minimum(x, y, used)
            if xstar is not None:
                Cs.append(C), xs.append(xstar), ds.append(c + s * xstar)
        if len(set(Cs)) >= 2:
            lc = np.log(Cs)
            a, lk = np.polyfit(lc, xs, 1)
            b, lk2 = np.polyfit(lc, ds, 1)
            samples.append([float(lk), float(a), float(lk2), float(b)])
    return samples


def _boot_parametric(fit: ParametricFit, N, D, U, L, n: int, rng: np.random.Generator,
                     draw=None) -> list[list[float]]:
    """Points resampled with replacement (and, with ``draw``, each cell's mean from its resampled seeds).

    Past :data:`~flops_fit.analysis.parametric.SUBSAMPLE` points each resample draws only that many
    (m out of n) and its deviation from the full fit is shrunk by sqrt(m/n), the √n scaling of a
    smooth estimator: a million-row fit's 200 resamples cost what 5000-point ones do."""
    from .parametric import SUBSAMPLE

    lnN, lnD, lnL = np.log(N), np.log(D), np.log(L)
    lnU = np.log(U)
    m = min(len(L), SUBSAMPLE)
    shrink = math.sqrt(m / len(L))
    theta = np.asarray(fit.theta)
    out = []
    for _ in range(n):
        lnL_b = lnL if draw is None else np.log(draw(rng))
        idx = rng.integers(0, len(L), m)
        refit = refit_constrained(fit, lnN[idx], lnD[idx], lnU[idx], lnL_b[idx])
        out.append((theta + (refit - theta) * shrink).tolist() if m < len(L) else refit.tolist())
    return out


def fit_points(points: Points, approaches: list[str] = ("isoflop", "parametric"), bootstrap: int = 200,
               seed: int = 0,
               keep_outliers: bool = False, outlier_z: float = 3.5, backtest: bool = True,
               profile: str = "shape") -> Fits:
    """Fit the requested approaches; pure function of its inputs (see :func:`_fit_points`).

    Numerical warnings of the optimisers (overflow in a degenerate resample, a singular
    covariance) never reach stderr; they become one note when they matter (an interval is missing).
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        fits = _fit_points(points, approaches, bootstrap, seed, keep_outliers, outlier_z, backtest, profile)
    kinds = sorted({str(w.message).split(" in ")[0] for w in caught if issubclass(w.category, RuntimeWarning)})
    par, iso = fits.parametric, fits.isoflop
    missing = bootstrap and ((par is not None and any(v is None for v in par.ci.values())) or
                             (iso is not None and iso.n_opt.exponent_ci is None))
    if kinds and missing:  # they matter: an interval could not be computed
        note = (f"numerical warnings while fitting ({len(caught)}: {'; '.join(kinds[:3])}) and an interval is "
                f"missing: the data do not constrain every parameter")
        fits = fits.model_copy(update={"notes": [*fits.notes, note]})
    return fits


def _fit_points(points: Points, approaches, bootstrap: int, seed: int, keep_outliers: bool, outlier_z: float,
                backtest: bool, profile: str, index: np.ndarray | None = None) -> Fits:
    """Fit the requested approaches; pure function of its inputs.

    ``profile`` is the IsoFLOP profile estimator (see :func:`~flops_fit.analysis.isoflop.profile_minimum`).
    The IsoFLOP ``exponent_ci`` is the hull of the two-stage bootstrap interval and the OLS
    t-interval over the per-budget minima (``exponent_boot_ci``, ``exponent_t_ci``).
    ``index``: fit only these points (the backtest's budgets, without copying the columns).
    """
    rng = np.random.default_rng(seed)
    usable, excluded = _exclusions(points, keep_outliers, outlier_z, profile, index)
    notes: list[str] = []
    if not len(usable):
        return Fits(excluded=excluded, notes=["no usable points"], num_points=0)
    N, D, L, budgets, F = points.arrays(usable)
    U = points.unique(usable)
    noise = draw = None
    if points.grouping:
        notes.append(points.grouping)
    if _seeded(points, usable):  # trained by flops-fit: replicates are cells
        raw, seeds = L, [points.seed[i] for i in usable]
        (N, D, L, budgets, F), groups = cell_means((N, D, L, budgets, F))
        U = U[[g[0] for g in groups]]
        noise = noise_floor(raw, groups, (N, D, L, budgets, F), seeds)
        if noise is not None:
            draw = seed_draw(raw, groups, L)
            notes += [noise.line()] + [u.message for u in noise.unresolved]
    notes += degenerate_notes(N, D, L)
    fpu = flops_per_unit_law(N, F / D)
    iso = par = env = None
    if "isoflop" in approaches:
        try:
            iso, why = _fit_isoflop(N, D, L, budgets, profile)
            if iso is not None and bootstrap:
                iso = _with_isoflop_intervals(iso, N, D, L, budgets, bootstrap, rng, profile, draw)
        except NUMERICAL as exc:
            iso, why = None, f"isoflop: the data cannot be fitted ({type(exc).__name__}: {str(exc)[:120]})"
        if why:
            notes.append(why)
    if "parametric" in approaches:
        try:
            par = _parametric(N, D, L, U, bootstrap, rng, notes, fpu, draw)
        except NUMERICAL as exc:
            par = None
            notes.append(f"parametric: the data cannot be fitted ({type(exc).__name__}: {str(exc)[:120]})")
    if "envelope" in approaches:
        env = envelope([(points.num_params[i], points.curve[i]) for i in usable] if points.curve else [])
        if env is None:
            notes.append("envelope: too few logged curve points (Approach 1 needs training curves)")
    try:
        shape = next((tuple(m.coef[:2]) for m in iso.minima if m.profile == "shape"), None) if iso else None
        bt = _backtest(points, usable, approaches, profile, shape) if backtest else None
    except NUMERICAL as exc:
        bt = None
        notes.append(f"backtest: the held-out budget cannot be fitted ({type(exc).__name__}: {str(exc)[:120]})")
    known = U[np.isfinite(U)]
    unique = float(np.median(known)) if len(known) else None
    limit = data_limit(par, sorted(set(budgets.tolist()))) if par is not None else None
    return Fits(isoflop=iso, parametric=par, envelope=env, excluded=excluded, notes=notes, flops_per_unit=fpu,
                backtest=bt, num_points=len(L), noise=noise, unique_tokens=unique, data_limit=limit)


def _seeded(points: Points, index: np.ndarray) -> bool:
    """Whether the points at ``index`` know their training seed (then (budget, N, D) cells are fitted)."""
    return any(points.seed[i] is not None for i in index)


def degenerate_notes(N: np.ndarray, D: np.ndarray, L: np.ndarray) -> list[str]:
    """Notes on data that cannot show scaling: repeated (N, D) rows, one size, a constant loss."""
    notes = []
    pairs = len(np.unique(np.stack([N, D], 1), axis=0)) if len(N) else 0
    if pairs < len(N):
        notes.append(f"{len(N) - pairs} of {len(N)} points repeat another point's (params, tokens): duplicates "
                     f"or seed replicates, each weighted as a separate measurement")
    if len(np.unique(N)) < 2:
        notes.append("every point has the same number of parameters: nothing constrains how loss scales with N")
    if len(L) > 1 and float(np.ptp(L)) <= 1e-9 * max(1.0, float(np.max(np.abs(L)))):
        notes.append(f"the loss is {float(L[0]):.6g} at every point: the data show no scaling, and no fit means anything")
    return notes


def _with_isoflop_intervals(iso: IsoflopFit, N, D, L, budgets, bootstrap: int, rng, profile: str,
                            draw=None) -> IsoflopFit:
    """The two-stage bootstrap's samples, and each exponent's interval widened to the hull of
    its OLS t-interval and the bootstrap percentile interval."""
    shape = next((tuple(m.coef[:2]) for m in iso.minima if m.profile == "shape"), None)
    samples = _boot_isoflop(N, D, L, budgets, bootstrap, rng, profile, {m.budget_flops for m in iso.minima},
                            draw,
                            {m.budget_flops: m.profile for m in iso.minima}, shape)
    update: dict = {"samples": samples}
    if len(samples) >= 10:
        s = np.array(samples)
        for key, col in (("n_opt", 1), ("d_opt", 3)):
            law = getattr(iso, key)
            boot = percentile_interval(s[:, col])
            update[key] = law.model_copy(update={"exponent_boot_ci": boot,
                                                 "exponent_ci": hull(law.exponent_t_ci, boot)})
    return iso.model_copy(update=update)


def _parametric(N, D, L, U, bootstrap: int, rng, notes: list[str], fpu: FlopsPerUnit,
                draw=None) -> ParametricFit | None:
    """Approach 3, data-constrained where the points know their unique tokens (``form_reason`` says
    which form and why; it is also a note)."""
    if len(L) < 5:
        notes.append(f"parametric: {len(L)} points (need 5)")
        return None
    fit = constrain(fit_parametric(N, D, L, fpu=fpu), N, D, U, L)
    notes.append(f"parametric: {fit.form_reason}")
    if not bootstrap:
        return fit
    samples = _boot_parametric(fit, N, D, U, L, bootstrap, rng, draw)
    boot = [ParametricFit.from_theta(t, fpu) for t in samples]
    keys = ["E", "A", "B", "alpha", "beta", "a", "b"] + [f"r_star_{k.lower()}" for k in fit.fitted_r_star]
    ci = {k: percentile_interval(np.array([getattr(q, k) for q in boot], dtype=float)) for k in keys}
    return fit.model_copy(update={"ci": ci, "samples": samples})


def _backtest(points: Points, usable: np.ndarray, approaches, profile: str = "shape",
              shape: tuple[float, float] | None = None) -> Backtest | None:
    """Refit without the largest budget; compare the prediction there with the measurement (its
    profile minimum; with the shape profile, under the shape of the whole sweep, ``shape``)."""
    B = np.array(points.budget_flops, dtype=float)[usable]
    budgets = sorted(set(B.tolist()))
    if len(budgets) < 3:
        return None
    held = budgets[-1]
    sub = _fit_points(points, approaches, bootstrap=0, seed=0, keep_outliers=True, outlier_z=0.0,
                      backtest=False,
                      profile=profile, index=usable[B < held])
    test = usable[B == held]
    arrays = points.arrays(test)
    if _seeded(points, test):
        arrays, _ = cell_means(arrays)
    N, D, L, B, _ = arrays
    minima, _ = budget_minima(np.log(N), np.log(D), L, B, profile, shape)
    measured = BacktestMeasured(loss_min=float(L.min()), num_params_at_min=float(N[np.argmin(L)]),
                                loss=minima[0].loss if minima else None,
                                num_params=minima[0].n_opt if minima else None)
    predicted = {k: v for k, v in sub.predict(held).items() if k != "envelope"}
    return Backtest(held_out_budget=held, fit_budgets=budgets[:-1], measured=measured, predicted=predicted)
