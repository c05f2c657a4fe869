"""The second round's law (fitted on 20M unique tokens) against the first round's runs (the same
recipe on all 41M tokens, docs/gutenberg_gpu/points.csv): a check of the data-constrained law's
dependence on U that costs no training.

    python -m examples.gutenberg.across_u [--json OUT]

Needs the second round's store (``tar xzf docs/gutenberg_gpu_v2/store.tgz``), not the corpus: the
fit is made with the plan the store holds (``plan.json``), as the GPU made it.  Prints, per budget of
the first round, the law's loss against the measured one and the best size of each, and the law's
N_opt at 1.2e15, 2e15 and 4e15 FLOPs for U = 20M and U = 41M.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from flops_fit import Spec
from flops_fit.api import analyze_plan
from flops_fit.plan.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
FIRST = ROOT / "docs/gutenberg_gpu/points.csv"
U_FIRST = 41_099_776.0  # the whole training text, vocabulary 8192


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    spec = Spec.load(ROOT / "specs/gutenberg_gpu_v2.toml")
    plan = Plan.from_json((Path(spec.run_dir) / "plan.json").read_text())
    fits = analyze_plan(spec, plan).fits
    rows = list(csv.DictReader(FIRST.open()))
    N, D, L, C = (np.array([float(r[k]) for r in rows])
                  for k in ("num_params", "num_tokens", "loss", "budget_flops"))
    pred, lo, hi = fits.parametric.band(N, D, np.full_like(N, U_FIRST))
    err = (pred - L) / L
    out = {"mape": float(np.mean(np.abs(err))), "max_error": float(np.max(np.abs(err))),
           "inside_band": int(np.sum((L >= lo) & (L <= hi))), "runs": len(L), "budgets": [], "optima": []}
    print(f"{len(L)} runs of the first round: MAPE {out['mape']:.2%}, largest {out['max_error']:.2%}, "
          f"{out['inside_band']} inside the law's 95% band")
    for b in sorted(set(C)):
        m = C == b
        best, law_best = N[m][np.argmin(L[m])], N[m][np.argmin(pred[m])]
        out["budgets"].append({"budget_flops": b, "mean_error": float(np.mean(err[m])),
                               "measured_best_num_params": best, "law_best_num_params": law_best})
        print(f"  {b:.2g}: law − measured {np.mean(err[m]):+.2%} on average; best N measured {best:.3g}, "
              f"by the law {law_best:.3g}")
    for budget in (1.2e15, 2e15, 4e15):
        for U in (fits.unique_tokens, U_FIRST):
            q = fits.predict(budget, unique_tokens=U)["parametric"]
            out["optima"].append({"budget_flops": budget, "unique_tokens": U, "num_params": q.num_params,
                                  "num_params_ci": q.num_params_ci, "loss": q.loss})
            print(f"  N_opt at {budget:.2g} with U = {U:.3g}: {q.num_params:.3g} "
                  f"({q.num_params_ci[0]:.3g}–{q.num_params_ci[1]:.3g}), loss {q.loss:.4f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
