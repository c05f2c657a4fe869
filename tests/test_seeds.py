"""[sweep] seeds: replicated experiments, per-cell means, the noise floor and unresolved budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flops_fit import Point, Points, Spec
from flops_fit.analysis import fit_points
from flops_fit.analysis.laws import ParametricFit
from flops_fit.analysis.noise import cell_means, noise_floor
from flops_fit.core.errors import SpecError
from flops_fit.store.store import Store
from tests.conftest import write_toy_spec


def _seeded(path, seeds="[0, 1, 2]", replicate=None):
    text = path.read_text().replace("[sweep]\n", f"[sweep]\nseeds = {seeds}\n" +
                                    (f'replicate = "{replicate}"\n' if replicate else ""))
    path.write_text(text)
    return path


def test_replicates_are_hashed_experiments_around_the_optimum(in_tmp):
    def centred(path):  # D/N = 1 puts the planned optimum among the middle sizes
        path.write_text(path.read_text().replace("[sweep]\n", "[sweep]\ntokens_per_param = 1\n"))
        return path

    sizes = (4, 8, 16, 32, 64, 128)
    plain = Spec.load(centred(write_toy_spec(in_tmp, name="toy", sizes=sizes, budgets=(1e6, 3e6)))).plan()
    seeded = Spec.load(_seeded(centred(write_toy_spec(in_tmp, name="toy", sizes=sizes, budgets=(1e6, 3e6))))).plan()
    base = {e.id for e in plain.experiments}
    assert base <= {e.id for e in seeded.experiments}  # train.seed = 0 is one of the seeds: nothing retrained
    extra = [e for e in seeded.experiments if e.id not in base]
    assert len(extra) == 2 * 2 * 3  # 2 budgets x seeds 1, 2 x the 3 sizes nearest D/N = 20
    assert {e.job.loop.seed for e in extra} == {1, 2} and all(f"-s{e.job.loop.seed}-" in e.id for e in extra)
    assert len({e.hash for e in seeded.experiments}) == len(seeded.experiments)
    for C in (1e6, 3e6):
        plain_c = [e for e in plain.experiments if e.budget_flops == C]
        nearest = sorted(plain_c, key=lambda e: abs(math.log(e.num_tokens / e.num_params)))[:3]
        assert {e.size for e in extra if e.budget_flops == C} == {e.size for e in nearest}
        assert min(e.size for e in nearest) > min(e.size for e in plain_c)  # not simply the first three
    every = Spec.load(_seeded(write_toy_spec(in_tmp, name="all", sizes=sizes, budgets=(1e6, 3e6)),
                              replicate="all")).plan()
    assert len(every.experiments) == 3 * len(plain.experiments)


def test_seed_budgets_replicate_only_the_budgets_named(in_tmp):
    sizes = (4, 8, 16, 32, 64, 128)
    path = _seeded(write_toy_spec(in_tmp, name="one", sizes=sizes, budgets=(1e6, 3e6)))
    path.write_text(path.read_text().replace("[sweep]\n", "[sweep]\nseed_budgets = [1e6]\n"))
    plan = Spec.load(path).plan()
    seeded = [e for e in plan.experiments if e.job.loop.seed != 0]
    assert len(seeded) == 2 * 3 and {e.budget_flops for e in seeded} == {1e6}
    path.write_text(path.read_text().replace("seed_budgets = [1e6]", "seed_budgets = [2e6]"))
    with pytest.raises(SpecError, match=r"seed_budgets \[2000000.0\] are not among sweep.budgets"):
        Spec.load(path)


def test_seeds_with_branching_are_refused(in_tmp):
    path = _seeded(write_toy_spec(in_tmp, train='schedule = "wsd"\nwarmup_tokens = 16'))
    path.write_text(path.read_text().replace("[sweep]\n", '[sweep]\nreuse = "branch"\n'))
    with pytest.raises(SpecError, match="seeds replicate experiments trained from scratch"):
        Spec.load(path)


def test_noise_floor_is_the_replicates_sample_std_and_fits_use_cell_means(in_tmp):
    spec = Spec.load(_seeded(write_toy_spec(in_tmp, sizes=(4, 8, 16, 32), budgets=(1e6, 2e6, 4e6)), seeds="[0, 3]"))
    result = spec.run()
    cells: dict = {}
    for r in Store(spec.run_dir).collect(spec.plan().experiments):
        cells.setdefault((r.budget_flops, r.num_params), []).append(r.loss)
    reps = [v for v in cells.values() if len(v) > 1]
    assert len(reps) == 9 and all(len(v) == 2 for v in reps)
    pooled = math.sqrt(sum(np.var(v, ddof=1) for v in reps) / len(reps))  # equal k: the mean of the variances
    noise = result.fits.noise
    assert noise.std == pytest.approx(pooled, rel=1e-12) and noise.dof == 9
    assert sorted(c.std for c in noise.cells) == pytest.approx(sorted(np.std(v, ddof=1) for v in reps), rel=1e-12)
    assert result.fits.num_points == len(cells)  # one value per (budget, size): the cell mean
    summary = result.summary()
    assert summary["noise"]["std"] == noise.std and any(n.startswith("noise floor: σ") for n in summary["notes"])
    assert any(c.name == "noise" for c in result.trust().checks)
    frame = result.to_pandas()
    assert sorted(set(frame["seed"])) == [0, 3]


def test_one_replicated_cell_gives_its_sample_std():
    N, D, B = np.array([1e6, 1e6, 1e6, 2e6]), np.array([1e7, 1e7, 1e7, 5e6]), np.full(4, 6e13)
    L = np.array([3.0, 3.1, 2.95, 3.2])
    arrays, groups = cell_means((N, D, L, B, B))
    assert arrays[2][0] == pytest.approx(np.mean(L[:3])) and len(groups) == 2
    floor = noise_floor(L, groups, arrays, [0, 1, 2, 0])
    assert floor.std == pytest.approx(np.std(L[:3], ddof=1), rel=1e-12) and floor.dof == 2
    assert noise_floor(L[:2], [np.array([0]), np.array([1])], (N[:2], D[:2], L[:2], B[:2], B[:2]), [0, 0]) is None


def _replicated(noise: float, seeds: int, depth: float = 1.0, seed: int = 0) -> Points:
    """Three budgets of a known law, 7 sizes each, every cell trained with ``seeds`` seeds."""
    rng = np.random.default_rng(seed)
    E, A, B, alpha, beta = 1.82, 482.0, 2085.4, 0.3478, 0.3658
    truth = ParametricFit.from_theta([math.log(A), math.log(B), math.log(E), alpha, beta])
    pts = []
    for C in (1e18, 1e19, 1e20):
        n_opt, _, _ = truth.allocate(C)
        for k, N in enumerate(n_opt * np.logspace(-0.6 * depth, 0.6 * depth, 7)):
            D = C / (6 * N)
            for s in range(seeds):
                L = E + A / N**alpha + B / D**beta + noise * rng.standard_normal()
                pts.append(Point(id=f"{C:.0e}-{k}-{s}", budget_flops=C, num_params=N, num_tokens=D, flops=C,
                                 loss=L, seed=s))
    return Points(points=pts)


def test_unresolved_budgets_are_flagged_and_intervals_carry_seed_noise():
    deep = fit_points(_replicated(0.002, 3), ["isoflop", "parametric"], bootstrap=0, backtest=False)
    assert deep.noise.std == pytest.approx(0.002, rel=0.35) and deep.noise.unresolved == []
    flat = fit_points(_replicated(0.05, 3, depth=0.15), ["isoflop", "parametric"], bootstrap=0, backtest=False)
    assert len(flat.noise.unresolved) >= 2 and all("not resolved" in u.message for u in flat.noise.unresolved)
    assert all(u.margin < u.threshold for u in flat.noise.unresolved)
    noisy = _replicated(0.03, 4, seed=1)
    with_seeds = fit_points(noisy, ["parametric"], bootstrap=100, backtest=False).parametric
    (N, D, L, B, F), _ = cell_means(noisy.arrays())
    means_only = Points(points=[Point(id=str(i), budget_flops=B[i], num_params=N[i], num_tokens=D[i], flops=F[i],
                                      loss=L[i]) for i in range(len(L))])
    without = fit_points(means_only, ["parametric"], bootstrap=100, backtest=False).parametric
    assert with_seeds.a == pytest.approx(without.a, rel=1e-9)  # the same cell means are fitted
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(with_seeds.ci["a"]) > 1.2 * width(without.ci["a"])
