"""Typed fit objects: each evaluates itself (``.predict(budget_flops)``) and round-trips through JSON.

* :class:`PowerLaw` — Y = k·C^a (OLS of ln Y on ln C), with its t-interval of the mean at C;
* :class:`LossLaw` — L_opt(C) = E + k·C^(−γ);
* :class:`IsoflopFit` (Approach 2), :class:`ParametricFit` (Approach 3),
  :class:`EnvelopeFit` (Approach 1) — each ``.predict(C)`` gives a :class:`Prediction`:
  N_opt, D_opt, the loss and 95% intervals where they were bootstrapped.

The JSON of these objects is the ``fits`` part of the ``--json`` document (docs/DESIGN.md);
bootstrap ``samples`` are kept for intervals at any budget but left out of that document.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import numpy as np
from pydantic import Field
from scipy import stats

from ..core.frozen import Frozen

__all__ = ["OLS", "PowerLaw", "LossLaw", "BudgetMinimum", "DroppedBudget", "Prediction", "IsoflopFit",
           "FlopsPerUnit", "ParametricFit", "EnvelopePoint", "EnvelopeFit", "percentile_interval", "hull",
           "allocation_exponents"]

Interval = Optional[list[float]]


def percentile_interval(values) -> Interval:
    """The 95% percentile interval of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else None


def hull(*intervals) -> Interval:
    """The smallest interval containing every given one (None ones skipped)."""
    given = [i for i in intervals if i is not None and all(math.isfinite(v) for v in i)]
    return [float(min(i[0] for i in given)), float(max(i[1] for i in given))] if given else None


class Prediction(Frozen):
    """One approach's answer at one budget: N_opt, D_opt, loss, their 95% intervals, the size.

    Read as attributes (``p.num_params``) or, as in the first release, as a mapping (``p["num_params"]``).
    """

    approach: str
    budget_flops: float
    num_params: float
    num_params_ci: Interval = None
    num_tokens: float
    num_tokens_ci: Interval = None
    tokens_per_param: float
    loss: Optional[float] = None
    loss_ci: Interval = None
    size: Optional[float] = None
    unique_tokens: Optional[float] = None  # the data the allocation was made under (None: fresh data assumed)
    epochs: Optional[float] = None  # D_opt / unique_tokens: passes over the data at the optimum

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None) if key in type(self).model_fields else None
        return default if value is None else value


def _prediction(approach: str, C: float, n: float, d: float, loss: float | None = None,
                unique_tokens: float | None = None, **cis: Interval) -> Prediction:
    ratio = d / n if n > 0 and math.isfinite(d) else math.nan  # a degenerate fit can put N_opt at 0
    epochs = d / unique_tokens if unique_tokens and math.isfinite(d) else None
    return Prediction(approach=approach, budget_flops=C, num_params=n, num_tokens=d, tokens_per_param=ratio,
                      loss=loss, unique_tokens=unique_tokens, epochs=epochs, **cis)


class OLS(Frozen):
    """What the t-interval of a fitted line's mean needs: n, mean ln C, Sxx, residual sd."""

    n: int
    mean_x: float
    sxx: float
    resid_sd: float


class PowerLaw(Frozen):
    """Y = coef·C^exponent.  ``exponent_ci`` is the reported 95% interval (for the IsoFLOP law the
    hull of the OLS t-interval ``exponent_t_ci`` and the bootstrap ``exponent_boot_ci``)."""

    coef: float
    exponent: float
    exponent_ci: Interval = None
    exponent_t_ci: Interval = None
    exponent_boot_ci: Interval = None
    r2: float = math.nan
    num_points: int = 0
    ols: Optional[OLS] = None

    def predict(self, budget_flops: float) -> float:
        return self.coef * float(budget_flops) ** self.exponent

    def interval(self, budget_flops: float) -> Interval:
        """95% t-interval of the law's value at C (the OLS confidence interval of the mean of ln Y
        at ln C): exp(ŷ ± t_{n−2}·s·sqrt(1/n + (ln C − x̄)²/Sxx)).  It carries the scatter of the
        per-budget minima about the law, which a within-budget bootstrap does not."""
        o = self.ols
        if o is None or o.n < 3 or not math.isfinite(o.resid_sd) or o.sxx <= 0:
            return None
        x0 = math.log(budget_flops)
        y0 = math.log(self.coef) + self.exponent * x0
        half = stats.t.ppf(0.975, o.n - 2) * o.resid_sd * math.sqrt(1 / o.n + (x0 - o.mean_x) ** 2 / o.sxx)
        return [math.exp(y0 - half), math.exp(y0 + half)]


class LossLaw(Frozen):
    """L_opt(C) = E + coef·C^(−exponent)."""

    E: float
    coef: float
    exponent: float
    r2: float = math.nan

    def predict(self, budget_flops: float) -> float:
        return self.E + self.coef * float(budget_flops) ** -self.exponent


class BudgetMinimum(Frozen):
    """The minimum of one budget's IsoFLOP profile; ``coef``: the fitted polynomial (highest power
    first) and the ln N range it covers; ``n_opt_ci``: delta-method interval (parabolas only)."""

    budget_flops: float
    n_opt: float
    d_opt: float
    loss: float
    n_opt_ci: Interval = None
    coef: list[float] = Field(default_factory=list)
    num_points: int = 0
    profile: str = ""  # the profile that found it (with profile "auto", each budget's choice)

    def curve(self, x) -> np.ndarray:
        """The fitted profile's loss at x = ln N (polynomial, or the ``shape`` profile's c + K·g(x − x*))."""
        if self.profile == "shape":
            from .shape import shape_curve

            return shape_curve(self.coef[:5], np.asarray(x, dtype=float))
        return np.polyval(self.coef[:-2], np.asarray(x, dtype=float))


class DroppedBudget(Frozen):
    budget_flops: float
    reason: str


class IsoflopFit(Frozen):
    """Chinchilla Approach 2: N_opt = k·C^a and D_opt = k'·C^b through the per-budget minima.

    ``samples``: bootstrap draws (ln k, a, ln k', b) for intervals at any budget."""

    n_opt: PowerLaw
    d_opt: PowerLaw
    loss_opt: Optional[LossLaw] = None
    minima: list[BudgetMinimum] = Field(default_factory=list)
    dropped_budgets: list[DroppedBudget] = Field(default_factory=list)
    profile: str = "window"
    samples: list[list[float]] = Field(default_factory=list)

    def predict(self, budget_flops: float) -> Prediction:
        """N_opt and D_opt from the laws, the loss from L_opt; each interval is the hull of the
        bootstrap percentile interval and the law's t-interval at C."""
        C = float(budget_flops)
        boot_n = boot_d = None
        if len(self.samples) >= 10:
            s = np.array(self.samples)
            boot_n = percentile_interval(np.exp(s[:, 0] + s[:, 1] * math.log(C)))
            boot_d = percentile_interval(np.exp(s[:, 2] + s[:, 3] * math.log(C)))
        return _prediction("isoflop", C, self.n_opt.predict(C), self.d_opt.predict(C),
                           self.loss_opt.predict(C) if self.loss_opt else None,
                           num_params_ci=hull(boot_n, self.n_opt.interval(C)),
                           num_tokens_ci=hull(boot_d, self.d_opt.interval(C)))


class FlopsPerUnit(Frozen):
    """FLOPs per data unit = coef·N^exponent (exactly 6·N under the 6N rule)."""

    coef: float = 6.0
    exponent: float = 1.0


def allocation_exponents(alpha: float, beta: float, fpu: FlopsPerUnit) -> tuple[float, float]:
    """(a, b) of N_opt ∝ C^a and D_opt ∝ C^b under C = c·N^p·D: a = β/(α+pβ), b = 1 − p·a
    (Chinchilla's β/(α+β) and α/(α+β) when p = 1, the 6N rule)."""
    a = beta / (alpha + fpu.exponent * beta)
    return a, 1 - fpu.exponent * a


class ParametricFit(Frozen):
    """Chinchilla Approach 3: L(N, D) = E + A/N^α + B/D^β, or with ``form = "data-constrained"``
    the same law on effective parameters and data when U unique tokens repeat
    (:mod:`~flops_fit.analysis.constrained`): L(N, D, U) = E + A/N'^α + B/D'^β.

    ``theta`` = (ln A, ln B, ln E, α, β[, ln R*_D, ln R*_N]), the fitted vector; ``samples``:
    bootstrap thetas; ``ci``: 95% percentile intervals of E, A, B, alpha, beta, a, b (and r_star_d,
    r_star_n where fitted).  ``unique_tokens``: the U predictions assume unless given one;
    ``form_reason``: why this form, and which R* were fitted or taken from the paper."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    a: float
    b: float
    objective: float = math.nan
    theta: list[float]
    num_points: int = 0
    ci: dict[str, Interval] = Field(default_factory=dict)
    samples: list[list[float]] = Field(default_factory=list)
    flops_per_unit: FlopsPerUnit = Field(default_factory=FlopsPerUnit)
    form: Literal["chinchilla", "data-constrained"] = "chinchilla"
    form_reason: str = ""
    r_star_d: Optional[float] = None
    r_star_n: Optional[float] = None
    fitted_r_star: list[Literal["D", "N"]] = Field(default_factory=list)
    unique_tokens: Optional[float] = None

    @classmethod
    def from_theta(cls, theta, fpu: FlopsPerUnit | None = None, **extra: Any) -> "ParametricFit":
        fpu = fpu or FlopsPerUnit()
        theta = [float(v) for v in theta]
        la, lb, le, alpha, beta = theta[:5]
        a, b = allocation_exponents(alpha, beta, fpu)
        with np.errstate(over="ignore"):  # a degenerate bootstrap fit overflows to inf, never raises
            E, A, B = (float(np.exp(v)) for v in (le, la, lb))
        if len(theta) == 7:
            extra = {"form": "data-constrained", "r_star_d": math.exp(theta[5]),
                     "r_star_n": math.exp(theta[6]),
                     **extra}
        return cls(E=E, A=A, B=B, alpha=alpha, beta=beta, a=a, b=b, theta=theta, flops_per_unit=fpu, **extra)

    def _with(self, theta) -> "ParametricFit":
        """The same law with another theta (a bootstrap sample), keeping U and the FLOP rule."""
        return ParametricFit.from_theta(theta, self.flops_per_unit, unique_tokens=self.unique_tokens)

    def _unique(self, unique_tokens) -> Any:
        return self.unique_tokens if unique_tokens is None else unique_tokens

    def loss(self, N, D, unique_tokens=None) -> np.ndarray:
        """L(N, D) = E + A/N^α + B/D^β, elementwise; data-constrained: on N', D' of ``unique_tokens``
        (default the fit's U; an array gives each point its own; NaN: fresh data)."""
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        U = self._unique(unique_tokens)
        if self.form == "chinchilla" or U is None:
            return self.E + self.A / N ** self.alpha + self.B / D ** self.beta
        from .constrained import log_pred

        with np.errstate(divide="ignore", invalid="ignore"):
            lnU = np.log(np.asarray(U, dtype=float))
        return np.exp(log_pred(self.theta, np.log(N), np.log(D), lnU, self.flops_per_unit.exponent))

    def band(self, N, D, unique_tokens=None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """L(N, D[, U]) and its 95% band (2.5/97.5 percentiles over the bootstrap samples; None
        without 10 of them), elementwise."""
        loss = self.loss(N, D, unique_tokens)
        if len(self.samples) < 10:
            return loss, None, None
        U = self._unique(unique_tokens)
        with np.errstate(all="ignore"):
            if self.form == "data-constrained" and U is not None:  # every sample at once: (S, points)
                from .constrained import log_pred

                lnN, lnD, lnU = (np.log(np.asarray(v, dtype=float)) for v in (N, D, U))
                boot = np.exp(log_pred(np.array(self.samples), lnN.reshape(-1), lnD.reshape(-1),
                                       lnU.reshape(-1)
                                       if lnU.ndim else lnU, self.flops_per_unit.exponent))
                boot = boot.reshape((len(self.samples),) + np.shape(loss))
            else:
                boot = np.array([self._with(t).loss(N, D, U) for t in self.samples])
        return loss, np.nanpercentile(boot, 2.5, axis=0), np.nanpercentile(boot, 97.5, axis=0)

    def allocate(self, budget_flops: float, unique_tokens: float | None = None) -> tuple[float, float, float]:
        """Minimise L(N, D) subject to C = c·N^p·D (FLOPs per data unit c·N^p; 6N: c = 6, p = 1).

        Substituting D = C/(c·N^p) and setting dL/dN = 0 gives the closed form

            N_opt = (α·A / (p·β·B·c^β))^(1/(α+pβ)) · C^(β/(α+pβ)),   D_opt = C / (c·N_opt^p),

        which reduces to Chinchilla's G·(C/6)^a with a = β/(α+β) when c = 6, p = 1.  The
        data-constrained law with U unique tokens is minimised numerically over N
        (:func:`~flops_fit.analysis.constrained.allocate_capped`).
        """
        U = self._unique(unique_tokens)
        c, p = float(self.flops_per_unit.coef), float(self.flops_per_unit.exponent)
        if self.form == "data-constrained" and U:
            from .constrained import allocate_capped

            with np.errstate(all="ignore"):
                return allocate_capped(self.theta, budget_flops, float(U), c, p)
        alpha, beta, A, B = (np.float64(v) for v in (self.alpha, self.beta, self.A, self.B))
        c, p = np.float64(c), np.float64(p)
        with np.errstate(all="ignore"):  # a degenerate bootstrap fit gives inf/NaN, not an exception
            a = beta / (alpha + p * beta)
            N = (alpha * A / (p * beta * B * c**beta)) ** (1 / (alpha + p * beta)) * np.float64(budget_flops) ** a
            D = np.float64(budget_flops) / (c * N**p)
            loss = float(self.E + A / N**alpha + B / D**beta)
        return float(N), float(D), loss

    def predict(self, budget_flops: float, unique_tokens: float | None = None) -> Prediction:
        """The optimum at C (under the data's repetition when the law is data-constrained) with 95%
        percentile intervals over the bootstrap fits."""
        C = float(budget_flops)
        U = self._unique(unique_tokens) if self.form == "data-constrained" else None
        n, d, loss = self.allocate(C, U)
        cis: dict[str, Interval] = {}
        if len(self.samples) >= 10:
            with np.errstate(all="ignore"):
                if self.form == "data-constrained" and U:
                    from .constrained import allocate_capped

                    f = self.flops_per_unit
                    boot = np.stack(allocate_capped(np.array(self.samples), C, float(U), f.coef, f.exponent),
                                    axis=1)
                else:
                    boot = np.array([self._with(t).allocate(C, U) for t in self.samples])
            cis = dict(num_params_ci=percentile_interval(boot[:, 0]),
                       num_tokens_ci=percentile_interval(boot[:, 1]),
                       loss_ci=percentile_interval(boot[:, 2]))
        return _prediction("parametric", C, n, d, loss, unique_tokens=self._unique(unique_tokens), **cis)


class EnvelopePoint(Frozen):
    flops: float
    loss: float
    num_params: float
    num_tokens: float


class EnvelopeFit(Frozen):
    """Chinchilla Approach 1: power laws through the lower envelope of the training curves."""

    n_opt: PowerLaw
    d_opt: PowerLaw
    points: list[EnvelopePoint] = Field(default_factory=list)

    def predict(self, budget_flops: float) -> Prediction:
        C = float(budget_flops)
        return _prediction("envelope", C, self.n_opt.predict(C), self.d_opt.predict(C))
