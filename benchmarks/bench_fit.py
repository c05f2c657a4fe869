"""Timings of the analysis on this machine (a benchmark, never a timed test).

    python -m benchmarks.bench_fit [--rows 1000000]

* the parametric bootstrap on Epoch's 240 Chinchilla points (1000 resamples);
* 200 parametric resamples on 132 ill-conditioned points whose E runs to 0 (synthetic: E = 0.02,
  wide sweep, 2% noise), the case that used to crawl;
* ``fit`` of a CSV with ``--rows`` rows (reading, grouping budgets, both approaches, no bootstrap),
  in a fresh process (imports included), with that process's peak resident memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(label: str, fn) -> None:
    t0 = time.perf_counter()
    fn()
    print(f"{label}: {time.perf_counter() - t0:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    from flops_fit.analysis import fit_points
    from tests.test_analysis import epoch_points

    from . import interval_coverage as ic

    pts = epoch_points()
    _timed("Epoch 240 points, 1000 parametric resamples", lambda: fit_points(pts, ["parametric"], bootstrap=1000, backtest=False))
    ic.TRUTH.update({"E": 0.02, "A": 300.0, "B": 800.0, "alpha": 0.3, "beta": 0.32})
    ill = ic.sweep("wide", 12, 0.02, 0.1, seed=1)
    _timed(f"{len(ill.points)} ill-conditioned points, 200 parametric resamples",
           lambda: fit_points(ill, ["parametric"], bootstrap=200, backtest=False))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        C = 1e18 * 10 ** (rng.integers(0, 13, args.rows) / 4)
        N = 10 ** rng.uniform(7, 10, args.rows)
        D = C / (6 * N)
        L = 1.82 + 482 / N**0.348 + 2085 / D**0.366
        np.savetxt(path, np.stack([N, D, L], 1), delimiter=",", header="params,tokens,loss", comments="")
        child = (f"import resource, time; t0 = time.perf_counter(); from flops_fit import fit; "
                 f"r = fit({str(path)!r}, bootstrap=0); print(f'fit of a {args.rows:,}-row CSV, no bootstrap: "
                 f"{{time.perf_counter() - t0:.2f}} s (a = {{r.fits.parametric.a:.4f}}); peak memory "
                 f"{{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}} MB')")
        subprocess.run([sys.executable, "-c", child], check=True)


if __name__ == "__main__":
    main()
