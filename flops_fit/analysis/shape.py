"""The ``shape`` IsoFLOP profile: one profile shape shared by every budget, fitted jointly.

Along an IsoFLOP line of L = E + A/N^α + B/D^β with D = C/(c·N^p), in d = ln N − ln N*(C),

    L(d) = E + A·N*^−α·e^(−α·d) + B·D*^−β·e^(pβ·d),   and at the optimum  α·A·N*^−α = pβ·B·D*^−β = K_C,
    so  L(d) = E + K_C·g(d),   g(d) = e^(−u·d)/u + e^(v·d)/v,   u = α,  v = p·β:

every budget's profile has the same shape g, minimal at d = 0, up to its own level c_C and
scale K_C.  The shape is lopsided where u ≠ v (a parabola fitted to it puts the minimum off by a
constant in ln N: right slope, wrong level) and tends to a parabola as u, v → 0.  This profile
fits (u, v) jointly over all budgets and, per budget, x* = ln N* with (c, K) solved linearly
for each trial x*: every point of every budget informs the shape, each budget's points its own
minimum.  Budgets keep their own minima (no law is imposed on them): the power law through them
is fitted afterwards, as for every profile.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import least_squares

__all__ = ["shape_basis", "fit_shape", "shape_minimum", "shape_curve"]

#: Bounds of the shape's exponents u and v.
BOUNDS = (0.02, 4.0)


def shape_basis(x: np.ndarray, xs: float, u: float, v: float) -> np.ndarray:
    """g(x − x*) = e^(−u·d)/u + e^(v·d)/v."""
    d = np.asarray(x, float) - xs
    return np.exp(-u * d) / u + np.exp(v * d) / v


def _level_scale(x, y, xs, u, v) -> tuple[float, float, np.ndarray]:
    """Least-squares (c, K) of y ≈ c + K·g(x − x*) (a simple regression of y on g) and the residuals."""
    g = shape_basis(x, xs, u, v)
    gc = g - g.mean()
    sgg = float(gc @ gc)
    K = float(gc @ (y - y.mean())) / sgg if sgg > 0 else 0.0
    c = float(y.mean() - K * g.mean())
    return c, K, y - c - K * g


def _rss(x: np.ndarray, y: np.ndarray, xs: np.ndarray, u: float, v: float) -> tuple[np.ndarray, np.ndarray]:
    """Residual sum of squares of y ≈ c + K·g(x − x*) at each trial x* (vectorised simple
    regression of y on g) and the fitted K."""
    g = shape_basis(x[None, :], np.asarray(xs, float)[:, None], u, v)
    gc = g - g.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    sgg = np.sum(gc**2, axis=1)
    K = np.sum(gc * yc, axis=1) / np.where(sgg > 0, sgg, np.inf)
    return np.sum(yc**2) - K**2 * sgg, K


def shape_minimum(x: np.ndarray, y: np.ndarray, u: float, v: float) -> tuple[float, float, float, float]:
    """(x*, L*, c, K) of one budget's profile with the shape (u, v) fixed: x* over a grid of 101
    points across (and 0.5 beyond) the sampled ln N, refined by golden section; L* = c + K·g(0)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    grid = np.linspace(float(x.min()) - 0.5, float(x.max()) + 0.5, 101)
    i = int(np.argmin(_rss(x, y, grid, u, v)[0]))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, 100)]
    r = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        x1, x2 = b - r * (b - a), a + r * (b - a)
        f = _rss(x, y, np.array([x1, x2]), u, v)[0]
        a, b = (a, x2) if f[0] < f[1] else (x1, b)
    xs = 0.5 * (a + b)
    c, K, _ = _level_scale(x, y, xs, u, v)
    return xs, c + K * (1 / u + 1 / v), c, K


def shape_curve(params: list[float], x: np.ndarray) -> np.ndarray:
    """The fitted profile c + K·g(x − x*) of ``params`` = [u, v, c, K, x*]."""
    u, v, c, K, xs = params
    return c + K * shape_basis(x, xs, u, v)


def fit_shape(
    groups: list[tuple[np.ndarray, np.ndarray]], start: tuple[float, float] | None = None
) -> tuple[float, float, np.ndarray]:
    """The shared (u, v) over budgets ``groups`` = [(x, y), ...] (each with 3+ sizes): least squares
    over (u, v, x*_1 … x*_B), (c, K) of each budget solved linearly inside.  Starts from a
    near-parabola and from Chinchilla-like exponents (the lower residual wins), or from ``start``
    alone (a bootstrap resample, from the full fit's shape).  Returns (u, v, [x*_1 … x*_B])."""
    starts = [np.array([0.3, 0.3]), np.array([0.35, 0.3]), np.array([0.5, 0.25]), np.array([0.25, 0.5])]
    if start is not None:
        starts = [np.clip(np.array(start, dtype=float), BOUNDS[0] * 1.001, BOUNDS[1] * 0.999)]
    x0s = []
    for x, y in groups:
        p2, p1, _ = np.polyfit(x, y, 2)
        xs = -p1 / (2 * p2) if p2 > 0 else x[int(np.argmin(y))]
        x0s.append(float(np.clip(xs, x.min(), x.max())))
    # every budget's profile scaled to a unit range, so large-loss budgets do not outweigh the rest;
    # budgets padded into one (B, M) array with a mask: one vectorised residual for all of them
    M = max(len(x) for x, _ in groups)
    X = np.zeros((len(groups), M))
    Y = np.zeros((len(groups), M))
    W = np.zeros((len(groups), M))
    for i, (x, y) in enumerate(groups):
        X[i, : len(x)], Y[i, : len(y)], W[i, : len(x)] = x, (y - y.min()) / max(float(np.ptp(y)), 1e-12), 1.0
    count = W.sum(axis=1, keepdims=True)
    keep = W > 0
    Yc = (Y - (W * Y).sum(axis=1, keepdims=True) / count) * W

    def resid(theta):
        u, v = np.exp(theta[:2])
        g = shape_basis(X, theta[2:, None], u, v)
        gc = (g - (W * g).sum(axis=1, keepdims=True) / count) * W
        K = (gc * Yc).sum(axis=1, keepdims=True) / np.maximum((gc**2).sum(axis=1, keepdims=True), 1e-300)
        return (Yc - K * gc)[keep]

    lo = [math.log(BOUNDS[0])] * 2 + [float(x.min()) - 0.5 for x, _ in groups]
    hi = [math.log(BOUNDS[1])] * 2 + [float(x.max()) + 0.5 for x, _ in groups]
    best = None
    for uv in starts:
        theta0 = np.clip(np.concatenate([np.log(uv), x0s]), np.array(lo) + 1e-9, np.array(hi) - 1e-9)
        res = least_squares(
            resid, theta0, bounds=(lo, hi), x_scale="jac", max_nfev=400 if start is None else 60
        )
        if best is None or res.cost < best.cost:
            best = res
    u, v = np.exp(best.x[:2])
    return float(u), float(v), best.x[2:].copy()
