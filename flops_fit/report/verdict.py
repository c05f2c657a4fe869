"""When not to believe the answer: a trust verdict over the fits, and advice a user can act on.

``assess(fits, points, budgets, predict)`` checks, each with its numbers:

* **budgets** — how many budgets have an interior IsoFLOP minimum; fewer than 3 is
  underdetermined (no exponent should be read as a law);
* **agreement** — Approaches 2 and 3 at every table budget: their N_opt intervals overlap
  (without intervals: within 1.5×);
* **E** — the parametric irreducible loss E must lie below every measured loss;
* **backtest** — refitted without the largest budget, each approach's N_opt interval must
  contain the measured optimum there (without an interval: within 1.5×), and the predicted
  loss must be within 2%;
* **extrapolation** — table budgets more than 10× past the largest fitted budget.

The verdict is ``"do not trust"`` when a check fails hard (underdetermined, E above the data),
``"caution"`` when any other check fails, else ``"trust"``.  Advice names the sizes to add
for budgets whose minimum lies beyond the sampled sizes and the budgets to add when there are
too few; ``suggest`` holds them as spec values (``analyze --suggest`` prints them as lines).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Literal

from ..core.frozen import Frozen

if TYPE_CHECKING:  # the verdict reads a fit; importing the fitting stack is the caller's business
    from ..analysis import Fits, Points

__all__ = ["Check", "Verdict", "assess"]


class Check(Frozen):
    name: str
    ok: bool
    severity: Literal["fail", "warn"] = "warn"
    message: str


class Verdict(Frozen):
    """The trust verdict of one analysis."""

    verdict: Literal["trust", "caution", "do not trust"]
    checks: list[Check]
    advice: list[str]
    suggest: dict[str, list[float]]

    def lines(self) -> list[str]:
        out = [f"trust verdict: {self.verdict}"]
        out += [f"  {'ok  ' if c.ok else ('FAIL' if c.severity == 'fail' else 'warn')} {c.name}: {c.message}"
                for c in self.checks]
        out += [f"  advice: {a}" for a in self.advice]
        return out


def _overlap(a, b) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _beyond(sizes: list[tuple[Any, float]], sampled: list[float], side: str, count: int = 2) -> list[float]:
    """``count`` size values past the edge of ``sampled`` (same geometric step as the grid's edge)."""
    s = sorted(float(v) for v in sampled)
    if len(s) < 2:
        return []
    edge, step = (s[0], s[0] / s[1]) if side == "smallest" else (s[-1], s[-1] / s[-2])
    known = sorted(float(v) for v, _ in sizes) if sizes else []
    out = []
    for k in range(1, count + 1):
        want = edge * step**k
        near = [v for v in known if (v < edge if side == "smallest" else v > edge)]
        pick = min(near, key=lambda v: abs(math.log(v / want))) if near else want
        value = float(f"{pick:.3g}") if not float(pick).is_integer() else float(int(round(pick)))
        if value not in out:
            out.append(value)
    return out


def assess(fits: "Fits", points: "Points", budgets: list[float], predict: Callable[[float], dict]) -> Verdict:
    """The verdict over ``fits`` (a Fits), ``points`` (Points) and the table ``budgets``: each
    check below in turn; any failed "fail" check → "do not trust", any other failed → "caution"."""
    usable = points.usable_index()
    fit_budgets = sorted({points.budget_flops[i] for i in usable})
    checks, advice, add_sizes, add_budgets = _design(fits, points, usable, fit_budgets)
    checks += _agreement(fits, budgets, predict)
    checks += _floor(fits, points, usable)
    checks += _backtest(fits)
    noise_checks, noise_advice = _noise(fits)
    checks += noise_checks
    advice += noise_advice
    checks += _extrapolation(budgets, fit_budgets)
    if any(not c.ok and c.severity == "fail" for c in checks):
        verdict = "do not trust"
    elif any(not c.ok for c in checks):
        verdict = "caution"
    else:
        verdict = "trust"
    return Verdict(verdict=verdict, checks=checks, advice=advice,
                   suggest={"sizes": sorted(add_sizes), "budgets": add_budgets})


def _design(fits: "Fits", points: "Points", usable: list, fit_budgets: list[float]):
    """Budgets with an interior minimum (3 needed), and the sizes or budgets to add where not."""
    checks: list[Check] = []
    advice: list[str] = []
    add_sizes: list[float] = []
    add_budgets: list[float] = []
    iso = fits.isoflop
    budget_of = [points.budget_flops[i] for i in usable]
    n_ok = len(iso.minima) if iso else 0
    if iso is None and not fit_budgets:
        checks.append(Check(name="budgets", ok=False, severity="fail", message="no usable points"))
    else:
        checks.append(Check(name="budgets", ok=n_ok >= 3, severity="fail",
                            message=f"{n_ok} of {len(fit_budgets)} budgets have an interior minimum"
                            + ("" if n_ok >= 3 else "; fewer than 3: the exponents are underdetermined")))
    for d in iso.dropped_budgets if iso else []:
        reason = d.reason
        side = "smallest" if "smallest" in reason else "largest" if "largest" in reason else None
        if side is None:
            advice.append(f"budget {d.budget_flops:.3g}: {reason}")
            continue
        mine = [points.point(int(i)) for i, b in zip(usable, budget_of) if b == d.budget_flops]
        by_size = [p.size for p in mine if p.size is not None]
        values = _beyond(points.sizes, by_size, side) if by_size else _beyond([], [p.num_params for p in mine], side)
        what = "sizes" if by_size else "N"
        advice.append(f"budget {d.budget_flops:.3g}: its minimum lies beyond the {side} sampled size; "
                      f"add {what} {', '.join(f'{v:g}' for v in values)}")
        add_sizes += [v for v in values if v not in add_sizes]
    if n_ok < 3 and fit_budgets:
        step = fit_budgets[-1] / fit_budgets[-2] if len(fit_budgets) >= 2 else 3.0
        step = step if step > 1.5 else 3.0
        need = [float(f"{fit_budgets[-1] * step**k:.3g}") for k in range(1, 4 - n_ok)]
        add_budgets += need
        advice.append(f"add budgets {', '.join(f'{b:.3g}' for b in need)} (3 or more with interior minima are needed)")
    return checks, advice, add_sizes, add_budgets


def _agreement(fits: "Fits", budgets: list[float], predict: Callable[[float], dict]) -> list[Check]:
    """Approaches 2 and 3 agree on N_opt at every table budget (their intervals overlap)."""
    if not (fits.isoflop and fits.parametric):
        return []
    worst, where = 1.0, None
    for C in budgets:
        row = predict(C)
        a, b = row.get("isoflop"), row.get("parametric")
        if not (a and b):
            continue
        ratio = max(a.num_params, b.num_params) / min(a.num_params, b.num_params)
        ci_a, ci_b = a.num_params_ci, b.num_params_ci
        agree = _overlap(ci_a, ci_b) if ci_a and ci_b else ratio <= 1.5
        if not agree and ratio > worst:
            worst, where = ratio, C
    return [Check(name="agreement", ok=where is None,
                  message="Approaches 2 and 3 agree on N_opt at every table budget" if where is None else
                  f"Approaches 2 and 3 disagree on N_opt by {worst:.2g}x at {where:.3g} FLOPs "
                  f"(their intervals do not overlap)")]


def _floor(fits: "Fits", points: "Points", usable: list) -> list[Check]:
    """The fitted irreducible loss E lies below every measured loss."""
    par = fits.parametric
    if not par:
        return []
    lowest = min(points.loss[i] for i in usable)
    return [Check(name="E", ok=par.E < lowest, severity="fail",
                  message=f"E = {par.E:.4g} " + ("below" if par.E < lowest else "ABOVE")
                  + f" the lowest measured loss {lowest:.4g}")]


def _backtest(fits: "Fits") -> list[Check]:
    """Refit without the largest budget: its measured N_opt inside each prediction's interval, its
    loss within 2%."""
    bt = fits.backtest
    if not (bt and bt.measured.num_params is not None):
        return []
    m = bt.measured
    problems = []
    for name, p in bt.predicted.items():
        ci, off = p.num_params_ci, max(p.num_params, m.num_params) / min(p.num_params, m.num_params)
        if ci and not (ci[0] <= m.num_params <= ci[1]):
            problems.append(f"{name} N_opt {p.num_params:.3g} (95% {ci[0]:.3g}–{ci[1]:.3g}) vs measured "
                            f"{m.num_params:.3g}")
        elif not ci and off > 1.5:
            problems.append(f"{name} N_opt {p.num_params:.3g} vs measured {m.num_params:.3g} "
                            f"({off:.2g}x off)")
        if p.loss is not None and m.loss is not None and abs(p.loss / m.loss - 1) > 0.02:
            problems.append(f"{name} loss {p.loss:.4g} vs measured {m.loss:.4g}")
    return [Check(name="backtest", ok=not problems,
                  message=f"refit without {bt.held_out_budget:.3g}: " +
                  ("predictions hold" if not problems else "; ".join(problems)))]


def _noise(fits: "Fits") -> tuple[list[Check], list[str]]:
    """Seeds: every budget's minimum stands above the seeds' noise floor."""
    noise = getattr(fits, "noise", None)
    if noise is None:
        return [], []
    gone = [f"{u.budget_flops:.3g}" for u in noise.unresolved]
    check = Check(name="noise", ok=not gone,
                  message=f"seed noise σ = {noise.std:.3g}: " + (
                      "every budget's minimum stands above it" if not gone
                      else f"the minimum of budget(s) {', '.join(gone)} is not resolved above it"))
    advice = [f"budget(s) {', '.join(gone)}: more seeds at the sizes around the minimum, "
              "or sizes further apart"]
    return [check], advice if gone else []


def _extrapolation(budgets: list[float], fit_budgets: list[float]) -> list[Check]:
    """The table reaches at most 10x the largest fitted budget."""
    if not fit_budgets:
        return []
    far = max(budgets or fit_budgets) / fit_budgets[-1]
    return [Check(name="extrapolation", ok=far <= 10,
                  message=f"the table reaches {far:.3g}x the largest fitted budget"
                  + ("" if far <= 10 else "; intervals there rest on the law's form, not on data"))]
