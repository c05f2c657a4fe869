"""Two recipes at equal compute: the effective compute multiplier, against a known truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from flops_fit import fit
from flops_fit.analysis.laws import ParametricFit
from flops_fit.cli import app
from flops_fit.verbs.compare import compare_results
from tests.conftest import write_toy_spec

E, A, B, ALPHA, BETA = 1.82, 482.0, 2085.4, 0.3478, 0.3658


def _sweep(k: float, seed: int, noise: float = 0.003):
    """IsoFLOP points of a law whose optimal loss at C equals the base law's at k·C: A and B
    scaled by k^(−αβ/(α+β)) (then a·α = b·β = αβ/(α+β), so L_opt(C) = L_opt,base(k·C))."""
    s = k ** (-ALPHA * BETA / (ALPHA + BETA))
    law = ParametricFit.from_theta([math.log(A * s), math.log(B * s), math.log(E), ALPHA, BETA])
    rng = np.random.default_rng(seed)
    rows = []
    for C in np.logspace(18, 20, 5):
        n_opt = law.allocate(C)[0]
        for N in n_opt * np.logspace(-0.6, 0.6, 7):
            D = C / (6 * N)
            rows.append({"params": N, "tokens": D, "flops": C,
                         "loss": float(law.loss(N, D)) * math.exp(noise * rng.standard_normal())})
    return fit(rows, bootstrap=60, seed=seed)


def test_a_known_multiplier_is_recovered_at_every_budget():
    a, b = _sweep(1.0, 1), _sweep(2.0, 2)
    c = compare_results(a, b, names=("base", "twice"))
    assert len(c.rows) == 5
    for row in c.rows:
        assert row.multiplier == pytest.approx(2.0, rel=0.15)
        assert row.multiplier_ci[0] <= 2.0 <= row.multiplier_ci[1] and row.resolved
        assert row.loss_b < row.loss_a
    same = compare_results(a, _sweep(1.0, 3), names=("base", "again"))
    assert all(r.multiplier == pytest.approx(1.0, rel=0.15) and not r.resolved for r in same.rows)
    back = compare_results(b, a)
    assert all(r.multiplier == pytest.approx(0.5, rel=0.15) for r in back.rows)
    iso = compare_results(a, b, approach="isoflop")
    assert all(r.multiplier == pytest.approx(2.0, rel=0.3) and r.multiplier_ci is None for r in iso.rows)


def test_compare_cli_writes_its_report_and_trains_nothing_twice(in_tmp):
    a = write_toy_spec(in_tmp, name="a", sizes=(4, 8, 16), budgets=(1e6, 2e6, 4e6))
    b = write_toy_spec(in_tmp, name="b", sizes=(4, 8, 16), budgets=(1e6, 2e6, 4e6), lr=2e-2)
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["a"]["name"] == "a" and len(doc["rows"]) == 3 and all(r["multiplier"] > 0 for r in doc["rows"])
    folder = in_tmp / "runs/a/compare/a-vs-b"
    assert json.loads((folder / "compare.json").read_text()) == doc and (folder / "compare.png").stat().st_size > 10_000
    again = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert again.exit_code == 0 and "ok " not in again.stderr and "multiplier" in again.stdout  # nothing retrained
    bad = CliRunner().invoke(app, ["compare", str(a), str(b), "--approach", "envelope"])
    assert bad.exit_code == 2
