"""[train] group: experiments of one shape stepped together (one batched forward and backward),
each still its own experiment — the same losses as one at a time, its own checkpoints and resume,
a fallback with a note where the model cannot be batched."""

from __future__ import annotations

import json
import os
import signal

import pytest

from flops_fit import Spec
from flops_fit.execute.group import group_key
from flops_fit.execute.signals import Interrupted
from tests.conftest import write_toy_spec


def _seeded(in_tmp, name: str, group: str, model: str = "MLP"):
    path = write_toy_spec(in_tmp, name=name, model=model, sizes=(4, 8, 16), budgets=(1e6,),
                          train=f'group = "{group}"\ndevice = "cpu"\n')
    path.write_text(path.read_text().replace("[sweep]\n", '[sweep]\nseeds = [0, 1, 2]\nreplicate = "all"\n'))
    return Spec.load(path)


def _losses(spec) -> dict[str, tuple[float, list[float]]]:
    out = {}
    for f in (spec.run_dir / "experiments").glob("*/result.json"):
        r = json.loads(f.read_text())
        out[r["id"]] = (r["loss"], [p["train_loss"] for p in r["curve"]], r["notes"])
    return out


def test_grouped_seeds_train_to_the_losses_of_one_at_a_time(in_tmp):
    alone, grouped = _seeded(in_tmp, "alone", "off"), _seeded(in_tmp, "grouped", "on")
    plan = grouped.plan()
    keys = {}
    for e in plan.experiments:
        keys.setdefault(group_key(e.job), []).append(e.size)
    assert sorted(len(v) for v in keys.values()) == [3, 3, 3]  # one group per size: the three seeds
    alone.run(report=False)
    events = []
    grouped.run(report=False, on_event=events.append)
    a, g = _losses(alone), _losses(grouped)
    assert set(a) == set(g) and len(g) == 9
    for exp_id, (loss, curve, notes) in g.items():
        assert loss == pytest.approx(a[exp_id][0], rel=1e-4), exp_id
        assert curve == pytest.approx(a[exp_id][1], rel=1e-4), exp_id
        assert any("stepped together with 2 other" in n for n in notes), notes
        assert not any("grouped training off" in n for n in notes), notes
        assert not any("stepped together" in n for n in a[exp_id][2])
    assert sum(e.kind == "result" for e in events) == 9
    assert {e.experiment.id for e in events if e.kind == "log"} == set(g)  # every member's curve is reported


def test_a_grouped_run_stopped_by_a_signal_checkpoints_every_member_and_resumes(in_tmp):
    whole = _seeded(in_tmp, "whole", "on")
    whole.run(report=False)
    spec = _seeded(in_tmp, "stopped", "on")
    seen = []

    def stop_midway(event):
        if event.kind == "log" and event.point.step >= 20 and not seen:
            seen.append(event.experiment.id)
            os.kill(os.getpid(), signal.SIGTERM)  # the loop notes it (xdist workers ignore SIGINT)

    with pytest.raises(Interrupted):
        spec.run(report=False, on_event=stop_midway)
    stopped = [d for d in (spec.run_dir / "experiments").iterdir() if (d / "checkpoints").exists()
               and any((d / "checkpoints").glob("*/COMPLETE"))]
    assert len(stopped) == 3  # the three seeds of the first size, each its own checkpoint
    events = []
    spec.run(report=False, on_event=events.append)
    resumed = [e for e in events if e.kind == "decision" and e.decision.action == "resume"]
    assert len(resumed) == 3
    w, s = _losses(whole), _losses(spec)
    assert {k: v[0] for k, v in s.items()} == pytest.approx({k: v[0] for k, v in w.items()}, rel=1e-6)


def test_a_model_vmap_cannot_run_trains_one_at_a_time_with_a_note(in_tmp):
    alone, grouped = _seeded(in_tmp, "alone", "off", "HostSync"), _seeded(in_tmp, "grouped", "on", "HostSync")
    alone.run(report=False)
    grouped.run(report=False)
    a, g = _losses(alone), _losses(grouped)
    for exp_id, (loss, curve, notes) in g.items():
        assert loss == a[exp_id][0] and curve == a[exp_id][1]  # one at a time: the very same computation
        assert any("grouped training off" in n for n in notes), notes


@pytest.mark.parametrize("model", ["OtherWhenBatched", "NaNWhenBatched"])
def test_a_batched_step_that_computes_something_else_is_caught_before_it_trains(in_tmp, model):
    """The first batched gradient is checked against the member's own: a wrong batching rule turns
    grouping off before any optimizer step, and every member trains as it would alone."""
    alone, grouped = _seeded(in_tmp, "alone", "off", model), _seeded(in_tmp, "grouped", "on", model)
    alone.run(report=False)
    grouped.run(report=False)
    a, g = _losses(alone), _losses(grouped)
    assert len(g) == 9
    for exp_id, (loss, curve, notes) in g.items():
        assert loss == a[exp_id][0] and curve == a[exp_id][1]
        [note] = [n for n in notes if "grouped training off" in n]
        assert "the batched gradient is not the member's own" in note, note


def test_group_auto_is_off_on_the_cpu_and_trunks_are_never_grouped(in_tmp):
    spec = _seeded(in_tmp, "auto", "auto")
    spec.run(report=False)
    assert not any("stepped together" in n for _, _, notes in _losses(spec).values() for n in notes)
    wsd = write_toy_spec(in_tmp, name="wsd", sizes=(4, 8), budgets=(1e6, 2e6),
                         train='schedule = "wsd"\nwarmup_tokens = 16\ndecay_fraction = 0.3\n')
    wsd.write_text(wsd.read_text().replace("[sweep]\n", '[sweep]\nreuse = "branch"\n'))
    plan = Spec.load(wsd).plan()
    assert all(group_key(e.job) is None for e in plan.units() if e.job.role == "trunk" or e.job.branch)


def test_group_auto_leaves_steps_too_large_to_gain_to_train_alone(in_tmp):
    """'auto' groups launch-bound steps only: a step over AUTO_MAX_STEP_FLOPS (the gutenberg GPT at
    d = 512 on an H100: grouped 0.93x) trains alone; 'on' still groups it."""
    from flops_fit.execute.group import AUTO_MAX_STEP_FLOPS, group_sizes

    jobs = [e.job for e in _seeded(in_tmp, "auto", "auto").plan().experiments]
    small = [j for j in jobs if j.size == jobs[0].size]
    per_sample = 1.01 * AUTO_MAX_STEP_FLOPS / small[0].loop.batch_size
    large = [j.model_copy(update={"flops_per_sample": per_sample}) for j in small]
    assert len(small) > 1 and group_sizes(small, "auto") == [len(small)]
    assert group_sizes(large, "auto") == [] and group_sizes(large, "on") == [len(small)]


def test_a_transfer_sweep_trains_each_sizes_rates_as_one_group(in_tmp):
    from tests.test_transfer import _mlp

    alone = _mlp(in_tmp, name="alone", sizes=(8, 64))
    grouped = _mlp(in_tmp, name="grouped", sizes=(8, 64))
    grouped = grouped.model_copy(update={"train": grouped.train.model_copy(update={"group": "on"})})
    a, g = alone.transfer(max_steps=150), grouped.transfer(max_steps=150)
    assert [p.loss for p in g.sweep] == pytest.approx([p.loss for p in a.sweep], rel=1e-4)
    assert [o.best_lr for o in g.optima] == pytest.approx([o.best_lr for o in a.optima], rel=1e-3)
    notes = [n for _, _, ns in _losses(grouped).values() for n in ns]
    assert sum("stepped together with 6 other" in n for n in notes) == 14  # 7 rates x 2 sizes, one group each


def test_estimate_says_which_experiments_group_and_why(in_tmp):
    on, auto = _seeded(in_tmp, "on", "on"), _seeded(in_tmp, "auto", "auto")
    on = on.model_copy(update={"cost": on.cost.model_copy(update={"calibrate": False})})
    auto = auto.model_copy(update={"cost": auto.cost.model_copy(update={"calibrate": False})})
    [note] = [n for n in on.estimate().notes if "groups of one shape" in n]
    assert note.startswith("9 experiments train in 3 groups of one shape (3, 3, 3)"), note
    assert not [n for n in auto.estimate().notes if "groups of one shape" in n]  # the CPU: no faster, no word
    traced = on.model_copy(update={"train": on.train.model_copy(update={"compile": True})})
    [note] = [n for n in traced.estimate().notes if "groups of one shape" in n]
    assert "could train in 3 groups" in note and "compile = true" in note, note
    on.run(report=False)
    assert not [n for n in on.estimate().notes if "groups of one shape" in n]  # nothing left to train


def test_members_that_diverge_leave_the_group_with_the_reason_of_a_run_alone(in_tmp):
    from tests.test_transfer import _mlp

    alone = _mlp(in_tmp, name="boom_alone", model="Exploding", sizes=(4, 8), extra="", lr=10.0)
    grouped = _mlp(in_tmp, name="boom_grouped", model="Exploding", sizes=(4, 8), extra="", lr=10.0)
    grouped = grouped.model_copy(update={"train": grouped.train.model_copy(update={"group": "on"})})
    a, g = alone.transfer(max_steps=150), grouped.transfer(max_steps=150)
    assert a.verdict == g.verdict == "FAIL"
    assert [(p.status, p.factor) for p in g.sweep] == [(p.status, p.factor) for p in a.sweep]
    reasons = {r["id"]: r["reason"] for r in map(lambda f: json.loads(f.read_text()),
                                                 (grouped.run_dir / "experiments").glob("*/result.json"))}
    assert len(reasons) == 14
    assert all("training loss" in why or "non-finite" in why for why in reasons.values()), reasons


@pytest.mark.parametrize("group", ["off", "on"])
def test_a_loss_that_is_not_a_number_is_stored_as_diverged_and_read_back(in_tmp, group):
    """NaN has no JSON: a run whose loss stops being a number (alone or in a group) keeps a readable
    record (the diverged step's train_loss is null), so a rerun skips it instead of training it again."""
    import warnings

    from flops_fit.core.errors import SpecError

    path = write_toy_spec(in_tmp, name=f"nan_{group}", model="GoesNaN", sizes=(4, 8), budgets=(1e6,), lr=10.0,
                          train=f'group = "{group}"\ndevice = "cpu"\nwarmup_tokens = 0\n')
    path.write_text(path.read_text().replace("[sweep]\n", '[sweep]\nseeds = [0, 1]\nreplicate = "all"\n'))
    spec = Spec.load(path)
    seen = []
    try:
        spec.run(on_event=seen.append, report=False)
    except SpecError:
        pass  # nothing finite to fit
    results = [e.result for e in seen if e.kind == "result"]
    assert len(results) == 4 and {r.reason for r in results} == {"non-finite training loss at step 2"}
    assert all(r.curve[-1].train_loss is None and r.curve[0].train_loss > 0 for r in results)
    if group == "on":
        assert all(any("stepped together" in n for n in r.notes) for r in results)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unreadable record warns as it is set aside
        again = Spec.load(path).estimate()
    assert [r.action for r in again.experiments] == ["skip"] * 4, [r.reason for r in again.experiments]
    assert not list(spec.run_dir.glob("experiments/*/result.json.corrupt"))
