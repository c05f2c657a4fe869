"""The data-constrained law: recovery of a known R*, the published default, allocation under a data
cap against closed forms, unique tokens from CSVs and records, and `fit --evaluate`."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from flops_fit.analysis import Points, fit_points
from flops_fit.analysis.constrained import R_STAR_D, R_STAR_N, allocate_capped, log_pred
from flops_fit.analysis.laws import ParametricFit
from flops_fit.cli import app

#: Chinchilla's published law, with a repetition constant unlike the paper's.
TRUE = [math.log(406.4), math.log(410.7), math.log(1.69), 0.34, 0.28, math.log(4.0), math.log(R_STAR_N)]


def _design(U: float, budgets, spread: float = 0.6, per: int = 9):
    """IsoFLOP rows: ``per`` sizes over ±spread decades around Chinchilla's optimum at each budget."""
    a, b, _, alpha, beta = TRUE[:5]
    G = (alpha * math.exp(a) / (beta * math.exp(b))) ** (1 / (alpha + beta))
    N, D = [], []
    for C in budgets:
        centre = G * (C / 6) ** (beta / (alpha + beta))  # Chinchilla's optimum with fresh data
        for n in centre * np.logspace(-spread, spread, per):
            N.append(n), D.append(C / (6 * n))
    return np.array(N), np.array(D), np.full(len(N), U)


def _points(N, D, U, L) -> Points:
    n = len(N)
    return Points(
        id=[f"p{i}" for i in range(n)],
        budget_flops=list(6 * N * D),
        size=[None] * n,
        num_params=list(N),
        num_tokens=list(D),
        flops=list(6 * N * D),
        loss=list(L),
        status=["ok"] * n,
        reason=[""] * n,
        seed=[None] * n,
        unique_tokens=[None if not math.isfinite(u) else float(u) for u in U],
    )


def _law(N, D, U, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.exp(log_pred(TRUE, np.log(N), np.log(D), np.log(U))) * np.exp(rng.normal(0, noise, len(N)))


def test_recovers_a_known_repetition_constant():
    # U = 5e8 tokens; budgets 1e17-1e20 put the optimum from under one epoch to dozens
    N, D, U = _design(5e8, np.logspace(17, 20, 6))
    fits = fit_points(_points(N, D, U, _law(N, D, U, 0.001)), ["parametric"], bootstrap=20, backtest=False)
    p = fits.parametric
    assert p.form == "data-constrained" and "D" in p.fitted_r_star
    assert p.r_star_d == pytest.approx(4.0, rel=0.25)
    assert p.alpha == pytest.approx(0.34, abs=0.05) and p.beta == pytest.approx(0.28, abs=0.05)
    lo, hi = p.ci["r_star_d"]
    assert lo < 4.0 < hi and hi / lo < 10
    assert "R*_D = " in p.form_reason and "fitted" in p.form_reason
    assert any(n.startswith("parametric: data-constrained law") for n in fits.notes)
    # the fresh-data law, fitted to the same points, misses the repeated ones the constrained law predicts
    fresh = fit_points(
        _points(N, D, np.full(len(N), np.nan), _law(N, D, U, 0.002)),
        ["parametric"],
        bootstrap=0,
        backtest=False,
    ).parametric
    assert fresh.form == "chinchilla" and "not known" in fresh.form_reason
    rep = D / U > 8
    truth = np.exp(log_pred(TRUE, np.log(N[rep]), np.log(D[rep]), np.log(U[rep])))
    err_c = np.abs(p.loss(N[rep], D[rep]) / truth - 1).max()
    err_f = np.abs(fresh.loss(N[rep], D[rep]) / truth - 1).max()
    assert err_c < 0.01 < err_f


def test_too_little_repetition_uses_the_published_constants_and_says_so():
    # a few points past one epoch, none at two: R*_D cannot be pinned
    N, D, _ = _design(1.0, np.logspace(17, 20, 6))
    U = np.full(len(N), D.max() / 1.5)
    assert 1 < (D / U).max() < 2
    fits = fit_points(_points(N, D, U, _law(N, D, U, 0.003)), ["parametric"], bootstrap=0, backtest=False)
    p = fits.parametric
    assert p.form == "data-constrained" and "D" not in p.fitted_r_star
    assert p.r_star_d == pytest.approx(R_STAR_D)
    assert f"R*_D = {R_STAR_D} published (0 points with 2+ epochs" in p.form_reason
    # no repetition at all, and too few points: both constants are the paper's
    small = fit_points(
        _points(N[:12], D[:12], np.full(12, 1e13), _law(N[:12], D[:12], np.full(12, 1e13), 0.003)),
        ["parametric"],
        bootstrap=0,
        backtest=False,
    ).parametric
    assert small.fitted_r_star == [] and small.r_star_n == pytest.approx(R_STAR_N)
    assert f"R*_N = {R_STAR_N} published" in small.form_reason
    # where the data run out, and what it does to N_opt
    assert fits.data_limit is not None
    one = next(t for t in fits.data_limit.thresholds if t.epochs == 1)
    assert p.allocate(one.budget_flops * 0.99)[1] / U[0] < 1 < p.allocate(one.budget_flops * 1.01)[1] / U[0]
    assert any(line.startswith("beyond C ≈") for line in fits.data_limit.lines())


@pytest.mark.parametrize("C", [1e18, 1e20, 1e22])
def test_allocation_under_a_data_cap_against_closed_forms(C):
    a, b, e, alpha, beta = TRUE[:5]
    A, B = math.exp(a), math.exp(b)
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    n_chin = G * (C / 6) ** (beta / (alpha + beta))
    U = 1e9
    # R* → ∞: repeated data are as good as fresh, and extra parameters lose nothing: Chinchilla's closed form
    inf = [a, b, e, alpha, beta, math.log(1e9), math.log(1e9)]
    n, d, _ = allocate_capped(inf, C, U)
    assert n == pytest.approx(n_chin, rel=1e-4) and d == pytest.approx(C / (6 * n_chin), rel=1e-4)
    # R*_D → 0: epochs beyond the first are worth nothing, so the optimum never trains past U:
    # N_opt = max(Chinchilla's N_opt, C/(6U))
    zero = [a, b, e, alpha, beta, math.log(1e-9), math.log(1e9)]
    n, d, loss = allocate_capped(zero, C, U)
    expect = max(n_chin, C / (6 * U))
    assert n == pytest.approx(expect, rel=1e-3)
    fit = ParametricFit.from_theta(zero, unique_tokens=U)
    assert fit.predict(C).num_params == pytest.approx(expect, rel=1e-3)
    assert fit.predict(C).epochs == pytest.approx(min(C / (6 * n_chin), U) / U, rel=1e-3)
    # the fresh-data form ignores U
    assert ParametricFit.from_theta(TRUE[:5]).allocate(C)[0] == pytest.approx(n_chin, rel=1e-9)
    # the kink at D = U lies between the coarse grid's points: the zoom places it to ~1e-7
    assert allocate_capped(zero, C, U)[0] == pytest.approx(expect, rel=1e-6)


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_unique_tokens_epochs_budget_column_and_measured_flops(tmp_path):
    N, D, U = _design(1e13, np.logspace(17, 20, 6))  # fresh data: every budget U-shaped
    L = _law(N, D, U, 0.002)
    a = Points.from_csv(
        _write(tmp_path / "u.csv", ["params", "tokens", "loss", "unique_tokens"], zip(N, D, L, U))
    )
    b = Points.from_csv(
        _write(tmp_path / "e.csv", ["params", "tokens", "loss", "epochs"], zip(N, D, L, D / U))
    )
    assert np.allclose(a.unique(), U) and np.allclose(b.unique(), U)
    # measured FLOPs scatter a few percent around six nominal budgets: grouped, and said
    rng = np.random.default_rng(1)
    flops = 6 * N * D * rng.uniform(0.97, 1.03, len(N))
    m = Points.from_csv(
        _write(tmp_path / "f.csv", ["params", "tokens", "loss", "flops"], zip(N, D, L, flops))
    )
    assert len(set(m.budget_flops)) == 6 and "grouped into 6 budgets" in m.grouping
    fits = fit_points(m, ["isoflop"], bootstrap=0, backtest=False)
    assert len(fits.isoflop.minima) == 6 and any("grouped into 6 budgets" in n for n in fits.notes)
    nominal = np.repeat(np.logspace(17, 20, 6), 9)
    c = Points.from_csv(
        _write(
            tmp_path / "b.csv", ["params", "tokens", "loss", "flops", "budget"], zip(N, D, L, flops, nominal)
        )
    )
    assert sorted(set(c.budget_flops)) == pytest.approx(list(np.logspace(17, 20, 6)))


def test_fit_evaluate_on_a_synthetic_split(tmp_path):
    N, D, U = _design(5e8, np.logspace(17, 20, 6))
    L = _law(N, D, U, 0.002)
    fit_csv = _write(tmp_path / "fit.csv", ["params", "tokens", "loss", "unique_tokens"], zip(N, D, L, U))
    M, E, V = _design(5e8, [3e20], spread=1.0, per=5)  # a budget the fit never saw
    truth = _law(M, E, V, 0.0)
    other = _write(tmp_path / "other.csv", ["params", "tokens", "unique_tokens", "loss"], zip(M, E, V, truth))
    res = CliRunner().invoke(
        app, ["fit", str(fit_csv), "--evaluate", str(other), "--bootstrap", "20", "--json"]
    )
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)["evaluation"]
    assert len(ev["rows"]) == 5 and ev["mape"] < 0.01 and ev["r2"] > 0.9
    for row, want in zip(ev["rows"], truth):
        assert set(row) == {"params", "tokens", "unique_tokens", "loss", "predicted", "predicted_ci"}
        assert row["loss"] == pytest.approx(want) and row["predicted"] == pytest.approx(want, rel=0.01)
        assert row["predicted_ci"][0] <= row["predicted"] <= row["predicted_ci"][1]
    # rows without a loss are predicted, not scored; a bad cell names its line
    bare = _write(tmp_path / "bare.csv", ["params", "tokens"], zip(M, E))
    res = CliRunner().invoke(app, ["fit", str(fit_csv), "--evaluate", str(bare), "--bootstrap", "0"])
    assert res.exit_code == 0 and "nothing to score" in res.output
    bad = _write(tmp_path / "bad.csv", ["params", "tokens"], [(1e6, 1e9), ("x", 1e9)])
    res = CliRunner().invoke(app, ["fit", str(fit_csv), "--evaluate", str(bad)])
    assert res.exit_code == 1 and "bad.csv:3" in res.output and "Traceback" not in res.output
