"""``[sweep] reuse = "branch"``: one constant-LR trunk per size, a wsd cooldown branch per budget.

A branch must be the same computation as a standalone wsd run of its (budget, size); a killed
trunk resumes to the same branch losses; a budget added later reuses the trunk; the FLOPs
``estimate`` counts are the steps the store says were trained; bad specs fail fast."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flops_fit import Spec
from flops_fit.core.errors import SpecError
from flops_fit.execute.schedule import lr_multiplier
from tests.conftest import write_toy_spec

WSD = 'schedule = "wsd"\nwarmup_tokens = 64\ncheckpoint_steps = 1000\n'


def _spec(folder: Path, reuse: str, name: str = "toy", budgets=(1e6, 2e6, 4e6), sizes=(4, 8, 16), train: str = WSD,
          model: str = "MLP", sweep: str = "") -> Path:
    path = write_toy_spec(folder, name=name, model=model, sizes=sizes, budgets=budgets, train=train,
                          extra_kwargs=", dropout = 0.1")  # dropout: the RNG state must carry over too
    text = path.read_text().replace("[sweep]\n", f'[sweep]\nreuse = "{reuse}"\nmin_cooldown_steps = 5\n{sweep}')
    path.write_text(text)
    return path


def _results(run_dir: Path) -> dict:
    out = {}
    for p in run_dir.glob("experiments/*/result.json"):
        r = json.loads(p.read_text())
        if r.get("reuse") != "trunk":
            out[(r["budget_flops"], r["size"])] = r
    return out


def test_a_branch_is_the_standalone_wsd_run(in_tmp):
    standalone = Spec.load(_spec(in_tmp, "none", name="none"))
    branched = Spec.load(_spec(in_tmp, "branch", name="branch"))
    plan = branched.plan()
    assert len(plan.trunks) == 3 and all(len(plan.branches_of(t)) == 3 for t in plan.trunks)
    standalone.run(report=False)
    branched.run(report=False)
    a, b = _results(in_tmp / "runs/none"), _results(in_tmp / "runs/branch")
    assert a.keys() == b.keys() and len(a) == 9
    for key in a:
        assert b[key]["loss"] == pytest.approx(a[key]["loss"], rel=1e-6), key
        assert b[key]["steps"] == a[key]["steps"] and b[key]["reuse"] == "branch"
        assert b[key]["trunk_id"].startswith("trunk-w") and math.isfinite(b[key]["pre_cooldown_loss"])
    # the branch's rates after its branch step are its own wsd schedule's, not the trunk's constant one
    exp = plan.experiments[-1]
    r = b[(exp.budget_flops, exp.size)]
    s = exp.job.schedule
    f = lr_multiplier("wsd", exp.steps, s.warmup_steps, s.min_lr_ratio, s.decay_fraction)
    for p in r["curve"]:
        assert p["lr"] == pytest.approx(exp.job.optim.learning_rate * f(p["step"]), rel=1e-9), p["step"]
    assert r["branch_step"] == exp.steps - round(0.2 * exp.steps)
    # one checkpoint per trunk is left (its latest: a larger budget continues from it)
    for t in plan.trunks:
        assert [p.name for p in (in_tmp / "runs/branch/experiments" / t.id / "pinned").iterdir()] == [f"step-{t.steps:08d}"]


def test_flops_accounting_matches_the_steps_trained(in_tmp):
    spec = Spec.load(_spec(in_tmp, "branch"))
    plan = spec.plan()
    est = spec.estimate()
    assert est.reuse == "branch" and {r.role for r in est.experiments} == {"trunk", "branch"}
    assert {r.action for r in est.experiments if r.role == "branch"} == {"wait"}
    spec.run(report=False)
    trained = 0.0
    for exp in plan.units():
        r = json.loads((in_tmp / "runs/toy/experiments" / exp.id / "result.json").read_text())
        trained += (r["steps"] - (r["branch_step"] or 0)) * r["batch_size"] * r["flops_per_sample"]
    assert trained == pytest.approx(est.remaining_flops, rel=1e-9) == pytest.approx(est.total_flops, rel=1e-9)
    assert est.saved_flops == pytest.approx(est.standalone_flops - est.total_flops)
    assert 0.2 < est.saved_flops / est.standalone_flops < 0.5
    again = spec.estimate()
    assert {r.action for r in again.experiments} == {"skip"} and again.remaining_flops == 0
    result = spec.analyze()
    rows = {r.id: r for r in result.runs}
    assert sum(r.role == "trunk" for r in rows.values()) == 3
    assert all(r.excluded for r in rows.values() if r.role == "trunk")
    assert all(r.train_seconds < json.loads((in_tmp / "runs/toy/experiments" / i / "result.json").read_text())["train_seconds"]
               for i, r in rows.items() if r.role == "branch")  # a branch's own cost is its cooldown


def test_adding_a_budget_reuses_the_trunk(in_tmp):
    Spec.load(_spec(in_tmp, "branch", budgets=(1e6, 2e6))).run(report=False)
    bigger = Spec.load(_spec(in_tmp, "branch", budgets=(1e6, 2e6, 4e6)))
    plan = bigger.plan()
    est = {r.id: r for r in bigger.estimate().experiments}
    for trunk in plan.trunks:
        old_end = max(b.job.branch.step for b in plan.branches_of(trunk) if b.budget_flops < 4e6)
        row = est[trunk.id]
        assert row.action == "resume" and f"pinned checkpoint at step {old_end}" in row.reason, row.reason
        for b in plan.branches_of(trunk):
            assert est[b.id].action == ("skip" if b.budget_flops < 4e6 else "wait")
    bigger.run(report=False)
    grown = _results(in_tmp / "runs/toy")
    shutil.rmtree(in_tmp / "runs")
    bigger.run(report=False)
    fresh = _results(in_tmp / "runs/toy")
    for key in fresh:
        assert grown[key]["loss"] == pytest.approx(fresh[key]["loss"], rel=1e-6), key


def test_sigkill_of_the_trunk_resumes_to_the_same_branch_losses(in_tmp):
    train = WSD.replace("checkpoint_steps = 1000", "checkpoint_steps = 20")
    path = _spec(in_tmp, "branch", sizes=(8, 16), budgets=(1e6, 2e6, 4e6), model="SlowMLP", train=train)
    _kill_when(path, "runs/toy/experiments/trunk-*/pinned/*/COMPLETE", in_tmp)
    trunk = Spec.load(path).plan().trunks[0]
    assert not (in_tmp / "runs/toy/experiments" / trunk.id / "result.json").exists(), "the trunk finished before the kill"
    row = {r.id: r for r in Spec.load(path).estimate().experiments}[trunk.id]
    assert row.action == "resume", row.reason
    Spec.load(path).run(report=False)
    _assert_a_clean_run_agrees(path, in_tmp)


def _assert_a_clean_run_agrees(path: Path, in_tmp: Path) -> None:
    """The store's six branch results against the same spec trained again from nothing."""
    resumed = _results(in_tmp / "runs/toy")
    shutil.rmtree(in_tmp / "runs")
    Spec.load(path).run(report=False)
    straight = _results(in_tmp / "runs/toy")
    assert resumed.keys() == straight.keys() and len(resumed) == 6
    for key in resumed:
        assert resumed[key]["status"] == "ok", resumed[key].get("reason")
        assert resumed[key]["loss"] == pytest.approx(straight[key]["loss"], rel=1e-6), key


@pytest.mark.parametrize("train, sweep, key", [
    ('schedule = "cosine"\n', "", "train.schedule"),
    ('schedule = "wsd"\nwarmup_fraction = 0.1\n', "", "train.warmup_fraction"),
    ('schedule = "wsd"\nwarmup_tokens = 1e6\n', "", "sweep.reuse: sweep.reuse = 'branch': no cell of the sweep "
     "can branch (the size's shared warmup"),
    ('schedule = "wsd"\ndecay_fraction = 0.001\n', "", "sweep.reuse: sweep.reuse = 'branch': no cell of the sweep "
     "can branch (its cooldown would be"),
])
def test_bad_branch_specs_name_the_key(in_tmp, train, sweep, key):
    with pytest.raises(SpecError) as info:
        Spec.load(_spec(in_tmp, "branch", train=train, sweep=sweep)).plan()
    assert key in str(info.value), str(info.value)


def test_cells_that_cannot_branch_train_standalone_with_a_note(in_tmp):
    """A warmup that outlasts the smallest budget's branch steps: those cells train standalone (the
    reuse = "none" experiment, same id), the rest branch; estimate shows what is still saved."""
    spec = Spec.load(_spec(in_tmp, "branch", train='schedule = "wsd"\nwarmup_tokens = 5e3\n'))
    plan = spec.plan()
    alone = [e for e in plan.experiments if e.job.branch is None]
    branches = [e for e in plan.experiments if e.job.branch is not None]
    assert alone and branches and plan.trunks
    assert len(plan.notes) == len(alone) and all("trains standalone (wsd, no trunk)" in n for n in plan.notes)
    none = spec.model_copy(update={"sweep": spec.sweep.model_copy(update={"reuse": "none"})}).plan()
    assert {e.id for e in alone} <= {e.id for e in none.experiments}  # the identity of a reuse = "none" run
    assert all(e.job.schedule.kind == "wsd" for e in alone)
    est = spec.estimate()
    assert est.notes == plan.notes and 0 < est.saved_flops < est.standalone_flops


def test_trunk_identity_leaves_out_its_length_and_branches_hash_their_point(in_tmp):
    a = Spec.load(_spec(in_tmp, "branch", budgets=(1e6, 2e6))).plan()
    b = Spec.load(_spec(in_tmp, "branch", budgets=(1e6, 2e6, 4e6))).plan()
    assert [t.id for t in a.trunks] == [t.id for t in b.trunks]
    assert {e.id for e in a.experiments} <= {e.id for e in b.experiments}
    c = Spec.load(_spec(in_tmp, "branch", budgets=(1e6, 2e6), train=WSD + "min_lr_ratio = 0.0\n")).plan()
    assert [t.id for t in a.trunks] == [t.id for t in c.trunks]  # the cooldown's floor is not the trunk's
    assert not {e.id for e in a.experiments} & {e.id for e in c.experiments}
    d = Spec.load(_spec(in_tmp, "branch", budgets=(1e6, 2e6), train=WSD + "decay_fraction = 0.3\n")).plan()
    assert [t.id for t in a.trunks] == [t.id for t in d.trunks]
    assert not {e.id for e in a.experiments} & {e.id for e in d.experiments}
    e = Spec.load(_spec(in_tmp, "branch", budgets=(1e6, 2e6), train=WSD + "seed = 3\n")).plan()
    assert not {t.id for t in a.trunks} & {t.id for t in e.trunks}


TEACHER = '''name = "{name}"
[model]
target = "tests.toy:MLP"
size_param = "width"
sizes = [2, 4, 8, 16, 32, 64, 128]
kwargs = {{ in_dim = 16, depth = 2 }}
[data]
target = "tests.toy:teacher"
kwargs = {{ n = 65536 }}
eval_batches = 16
[loss]
target = "tests.toy:mse"
[sweep]
budgets = [6e7, 1.2e8, 2.4e8]
sizes_per_budget = 5
min_steps = 100
reuse = "{reuse}"
min_cooldown_steps = 10
[train]
batch_size = 64
learning_rate = 1e-2
schedule = "{schedule}"
warmup_tokens = 512
[analysis]
approaches = ["isoflop", "parametric"]
bootstrap = 50
'''


def test_a_branched_regression_sweep_costs_at_most_three_quarters_and_agrees_with_cosine(in_tmp):
    """A student MLP learning a fixed teacher network, 3 budgets x up to 5 widths: the branched
    wsd sweep trains at most 75% of the samples and its exponent a agrees with the cosine sweep's."""
    specs = {}
    for name, reuse, schedule in (("cosine", "none", "cosine"), ("branch", "branch", "wsd")):
        (in_tmp / f"{name}.toml").write_text(TEACHER.format(name=name, reuse=reuse, schedule=schedule))
        specs[name] = Spec.load(in_tmp / f"{name}.toml")
    results = {name: spec.run(report=False) for name, spec in specs.items()}
    plan = specs["branch"].plan()
    trained = 0
    for exp in plan.units():
        r = json.loads((in_tmp / "runs/branch/experiments" / exp.id / "result.json").read_text())
        trained += (r["steps"] - (r["branch_step"] or 0)) * r["batch_size"]
    scratch = sum(e.num_samples for e in specs["cosine"].plan().experiments)
    assert trained <= 0.75 * scratch, trained / scratch
    (a_c, lo_c, hi_c), (a_b, lo_b, hi_b) = [(r.fits.parametric.a, *r.fits.parametric.ci["a"]) for r in results.values()]
    assert hi_c - lo_c < 0.6 and hi_b - lo_b < 0.6  # resolved fits: an overlap of vague intervals would prove nothing
    assert max(lo_c, lo_b) <= min(hi_c, hi_b), ((a_c, lo_c, hi_c), (a_b, lo_b, hi_b))


def test_makespan_waits_for_the_trunk_to_reach_each_branch_point():
    """A branch cannot start before its trunk is pinned: workers take other work meanwhile, and wait
    only when nothing else is ready (as the runner does)."""
    from flops_fit.verbs.estimate import makespan

    assert makespan([100, 20, 20], 2) == 100  # as if independent: both branches beside the trunk
    assert makespan([100, 20, 20], 2, [None, (0, 80.0), (0, 80.0)]) == 120
    assert makespan([100, 20, 20, 50], 2, [None, (0, 80.0), (0, 90.0), None]) == 120  # the 50 s job fills the wait
    assert makespan([0, 20, 20], 2, [None, (0, 80.0), (0, 80.0)]) == 20  # a finished trunk: ready at once
    assert makespan([10, 30, 30], 1, [None, (0, 5.0), (0, 9.0)]) == 70


def _kill_when(path: Path, pattern: str, in_tmp: Path) -> None:
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flops_fit", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(in_tmp.glob(pattern)):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(in_tmp.glob(pattern)), "the moment to kill never came"


@pytest.mark.slow
def test_sigkill_mid_cooldown_and_a_truncated_pin_end_in_the_clean_losses(in_tmp):
    """A branch killed mid-cooldown resumes from its own checkpoint; a pinned checkpoint truncated
    while its branches wait is moved aside and its trunk retrains to that step: the losses are a
    clean run's."""
    train = WSD.replace("checkpoint_steps = 1000", "checkpoint_steps = 5")
    path = _spec(in_tmp, "branch", sizes=(8, 16), budgets=(1e6, 2e6, 4e6), model="SlowMLP", train=train)
    plan = Spec.load(path).plan()
    exps = in_tmp / "runs/toy/experiments"
    _kill_when(path, "runs/toy/experiments/[!t]*/checkpoints/*/COMPLETE", in_tmp)  # a branch mid-cooldown
    killed = {p.parts[-4] for p in exps.glob("[!t]*/checkpoints/*/COMPLETE")}
    assert killed <= {e.id for e in plan.experiments if e.job.branch is not None}
    waiting = [e for e in plan.experiments if e.job.branch is not None and e.id not in killed
               and not (exps / e.id / "result.json").exists()
               and (exps / e.job.branch.trunk_id / "pinned" / f"step-{e.job.branch.step:08d}" / "COMPLETE").exists()]
    assert waiting, "no branch waits on a pin"
    pin = exps / waiting[0].job.branch.trunk_id / "pinned" / f"step-{waiting[0].job.branch.step:08d}"
    (pin / "state.pt").write_bytes((pin / "state.pt").read_bytes()[:100])  # truncated under its COMPLETE marker
    events = []
    Spec.load(path).run(report=False, on_event=events.append)
    assert any(e.kind == "decision" and "unreadable" in e.decision.reason for e in events)
    assert list((exps / waiting[0].job.branch.trunk_id / "corrupt").iterdir())  # moved aside, kept to look at
    _assert_a_clean_run_agrees(path, in_tmp)
