"""Calibration of the IsoFLOP intervals and the bias of each profile, by simulation.

    python -m benchmarks.interval_coverage [--sweeps 100] [--bootstrap 200] [--out docs/interval_coverage.md]

Synthetic sweeps of a known law L(N, D) = E + A/N^α + B/D^β under C = 6ND (``--law epoch``: the
Epoch refit of Chinchilla, α = 0.3478, β = 0.3658, a = β/(α+β) = 0.5126; ``--law skewed``:
α = 0.5, β = 0.25, a = 1/3, whose IsoFLOP profiles are lopsided in ln N) with noise in both places:

* within a budget: multiplicative noise on every loss (σ_w);
* between budgets: each budget's whole profile is shifted in ln N by u_C ~ Normal(0, σ_b), as a
  recipe that suits some budgets better than others moves their minima off the law.

Designs: sizes centred on the true optimum (±0.8 dex, 9 sizes), wide (±1.2 dex, 11), asymmetric
(−0.4 … +1.2 dex, 9), narrow (±0.4 dex, 5); 6 or 12 budgets over 3 decades.  For each profile it
reports the coverage of the nominal 95% interval of a (``exponent_ci``, the hull of the two-stage
bootstrap and the t-interval, and each part alone) and of N_opt at 4× the largest budget (the
Chinchilla table's interval), and the mean error of a.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

from flops_fit.analysis import Point, Points, fit_points
from flops_fit.analysis.laws import hull

LAWS = {"epoch": {"E": 1.82, "A": 482.0, "B": 2085.4, "alpha": 0.3478, "beta": 0.3658},
        "skewed": {"E": 2.5, "A": 1000.0, "B": 300.0, "alpha": 0.5, "beta": 0.25}}
TRUTH = dict(LAWS["epoch"])
DESIGNS = {"centred": (-0.8, 0.8, 9), "wide": (-1.2, 1.2, 11), "asymmetric": (-0.4, 1.2, 9), "narrow": (-0.4, 0.4, 5),
           "symmetric": (-0.6, 0.6, 9)}
PROFILES = ("window", "cubic", "parabola", "auto", "shape")


def n_opt(C: float) -> float:
    a, b = TRUTH["alpha"], TRUTH["beta"]
    G = (a * TRUTH["A"] / (b * TRUTH["B"])) ** (1 / (a + b))
    return G * (C / 6) ** (b / (a + b))


def true_a() -> float:
    return TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])


def sweep(design: str, budgets: int, sigma_w: float, sigma_b: float, seed: int) -> Points:
    """One synthetic IsoFLOP sweep (ids ``<C>-<k>``)."""
    rng = np.random.default_rng(seed)
    lo, hi, k = DESIGNS[design]
    pts = []
    for C in np.logspace(18, 21, budgets):
        shift = sigma_b * rng.standard_normal()
        centre = n_opt(C)
        for i, N in enumerate(centre * np.logspace(lo, hi, k)):
            D = C / (6 * N)
            Ne = N * math.exp(-shift)  # the profile moved by `shift` in ln N
            De = C / (6 * Ne)
            L = (TRUTH["E"] + TRUTH["A"] / Ne ** TRUTH["alpha"] + TRUTH["B"] / De ** TRUTH["beta"])
            L *= math.exp(sigma_w * rng.standard_normal())
            pts.append(Point(id=f"{C:.3g}-{i}", budget_flops=float(C), num_params=float(N), num_tokens=float(D),
                             flops=float(C), loss=float(L)))
    return Points(points=pts)


@dataclass
class Tally:
    fits: int = 0
    a_hull: int = 0
    a_boot: int = 0
    a_t: int = 0
    n_hull: int = 0
    n_boot: int = 0
    error: float = 0.0
    sq_error: float = 0.0
    widths: list = None

    def row(self) -> dict:
        f = max(1, self.fits)
        return {"fits": self.fits, "a (hull)": self.a_hull / f, "a (bootstrap)": self.a_boot / f,
                "a (t)": self.a_t / f, "N_opt 4x (hull)": self.n_hull / f, "N_opt 4x (bootstrap)": self.n_boot / f,
                "mean error of a": self.error / f, "rmse of a": math.sqrt(self.sq_error / f),
                "median width": float(np.median(self.widths)) if self.widths else math.nan}


def _inside(ci, v) -> bool:
    return ci is not None and ci[0] <= v <= ci[1]


def coverage(design: str, budgets: int, profile: str, sweeps: int, bootstrap: int, sigma_w: float = 0.005,
             sigma_b: float = 0.1, seed: int = 0) -> dict:
    """Coverage and bias over ``sweeps`` simulated sweeps (seeds ``seed`` … ``seed + sweeps − 1``)."""
    t = Tally(widths=[])
    a = true_a()
    for s in range(seed, seed + sweeps):
        pts = sweep(design, budgets, sigma_w, sigma_b, s)
        iso = fit_points(pts, ["isoflop"], bootstrap=bootstrap, seed=s, backtest=False, profile=profile).isoflop
        if iso is None:
            continue
        n = iso.n_opt
        C4 = 4 * max(p.budget_flops for p in pts.points)
        truth_n = n_opt(C4)
        samples = np.array(iso.samples)
        boot_n = None
        if len(samples) >= 10:
            vals = np.exp(samples[:, 0] + samples[:, 1] * math.log(C4))
            boot_n = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]
        t.fits += 1
        t.a_hull += _inside(n.exponent_ci, a)
        t.a_boot += _inside(n.exponent_boot_ci, a)
        t.a_t += _inside(n.exponent_t_ci, a)
        t.n_hull += _inside(hull(boot_n, n.interval(C4)), truth_n)
        t.n_boot += _inside(boot_n, truth_n)
        t.error += n.exponent - a
        t.sq_error += (n.exponent - a) ** 2
        if n.exponent_ci is not None:
            t.widths.append(n.exponent_ci[1] - n.exponent_ci[0])
    return t.row()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", type=int, default=100)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    parser.add_argument("--law", choices=sorted(LAWS), default="epoch")
    parser.add_argument("--designs", nargs="*", default=[d for d in DESIGNS if d != "symmetric"], choices=list(DESIGNS))
    parser.add_argument("--budgets", nargs="*", type=int, default=[6, 12])
    parser.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--sigma-w", type=float, default=0.005, help="within-budget noise (log-normal sd of the loss)")
    parser.add_argument("--sigma-b", type=float, default=0.1, help="between-budget shift of a profile in ln N (sd)")
    args = parser.parse_args()
    TRUTH.update(LAWS[args.law])
    lines = ["| design | budgets | σ_w | σ_b | profile | fits | a (hull) | a (bootstrap) | a (t) | N_opt 4× (hull) | "
             "N_opt 4× (bootstrap) | mean error of a | RMSE of a | median width of a's interval |", "|" + "---|" * 14]
    for design in args.designs:
        for budgets in args.budgets:
            for profile in args.profiles:
                r = coverage(design, budgets, profile, args.sweeps, args.bootstrap, args.sigma_w, args.sigma_b)
                line = (f"| {design} | {budgets} | {args.sigma_w:g} | {args.sigma_b:g} | {profile} | {r['fits']} | "
                        f"{r['a (hull)']:.0%} | {r['a (bootstrap)']:.0%} | "
                        f"{r['a (t)']:.0%} | {r['N_opt 4x (hull)']:.0%} | {r['N_opt 4x (bootstrap)']:.0%} | "
                        f"{r['mean error of a']:+.4f} | {r['rmse of a']:.4f} | {r['median width']:.3f} |")
                lines.append(line)
                print(line, flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
