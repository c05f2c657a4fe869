"""Behaviour the sweep relies on, asserted through the library's own code paths: what is hashed,
the size window, the learning rate the worker uses (schedule and per-group scale), gradient
accumulation, checkpoint pruning, the held-out target, Approach 1 and the find_optimal cache."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from flops_fit import Spec, find_optimal
from flops_fit.analysis import Point, Points, fit_points
from flops_fit.plan.plan import NOT_HASHED
from flops_fit.spec.spec import LrScaling, TrainSpec
from flops_fit.store.store import CurvePoint, Store
from tests.conftest import write_toy_spec

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "tests/fixtures/valid/toy.toml"

#: A value different from the toy spec's for every hashed [train] key.
HASHED_CHANGES = {
    "batch_size": 8, "learning_rate": 2e-2, "weight_decay": 0.0, "betas": (0.8, 0.9), "eps": 1e-6, "grad_clip": None,
    "optimizer": "torch.optim:SGD", "schedule": "wsd", "warmup_tokens": 16.0, "warmup_fraction": 0.5,
    "max_warmup_fraction": 0.01, "min_lr_ratio": 0.0, "decay_fraction": 0.5, "precision": "bf16", "seed": 1,
    "divergence_factor": 5.0, "lr_scaling": LrScaling(ref_params=1000.0, exponent=-0.5),
}
WARMUP_KEYS = {"warmup_tokens", "warmup_fraction", "max_warmup_fraction"}
#: A value different from the toy spec's for every key that must not change an id.
UNHASHED_CHANGES = {
    "device": "cpu", "compile": True, "log_with": ["tensorboard"], "log_points": 10, "eval_points": 1, "num_workers": 2,
    "checkpoint_seconds": 5.0, "checkpoint_steps": 3, "keep_checkpoints": 3, "parallel": "data", "workers_per_gpu": 2,
    "data_parallel_min_params": 10.0, "micro_batch_size": 8, "cuda_graphs": "off",
    "group": "off",
}


def _ids(**train) -> list[str]:
    spec = Spec.load(TOY)
    return [e.id for e in spec.model_copy(update={"train": spec.train.model_copy(update=train)}).plan().experiments]


def test_every_train_key_is_hashed_or_deliberately_not():
    fields = set(TrainSpec.model_fields)
    assert set(HASHED_CHANGES) | set(UNHASHED_CHANGES) == fields, fields ^ (set(HASHED_CHANGES) | set(UNHASHED_CHANGES))
    assert set(UNHASHED_CHANGES) == set(NOT_HASHED)  # each with its reason in the plan module
    base = _ids()
    for key, value in HASHED_CHANGES.items():
        changed = [a != b for a, b in zip(_ids(**{key: value}), base)]
        # warmup keys act through each experiment's warmup steps: hashed where they change them
        assert all(changed) or (key in WARMUP_KEYS and any(changed)), f"train.{key} changes the loss but not the id"
    for key, value in UNHASHED_CHANGES.items():
        assert _ids(**{key: value}) == base, f"train.{key} does not change the loss but changes the id"


def test_precision_has_one_source():
    spec = Spec.load(TOY)
    plan = spec.model_copy(update={"train": spec.train.model_copy(update={"precision": "bf16"})}).plan()
    assert plan.runtime.precision == "bf16" and {e.job.precision for e in plan.experiments} == {"bf16"}
    assert all(e.job.identity()["precision"] == "bf16" for e in plan.experiments)


def test_size_window_is_centred_on_the_expected_optimum():
    spec = Spec.load(TOY)
    for target, expect in ((20.0, None), (1e6, "smallest"), (1e-6, "largest")):
        sweep = spec.sweep.model_copy(update={"sizes_per_budget": 3, "tokens_per_param": target, "min_steps": 1})
        plan = spec.model_copy(update={"sweep": sweep}).plan()
        for budget in plan.budgets:
            exps = plan.for_budget(budget)
            sizes = [e.size for e in exps]
            assert len(sizes) == 3
            order = sorted(spec.model.sizes)
            assert sizes == order[order.index(sizes[0]):order.index(sizes[0]) + 3]  # contiguous
            ratios = {e.size: abs(math.log(e.num_tokens / e.num_params / target)) for e in exps}
            if expect == "smallest":  # D/N far above every size's: the smallest models (most tokens per parameter)
                assert sizes == order[:3]
            elif expect == "largest":
                assert sizes == order[-3:]
            else:  # the kept window holds the size nearest the target D/N
                every = {s.size: abs(math.log(budget / s.flops_per_sample * 1 / s.num_params / target))
                         for s in plan.sizes}
                assert min(every, key=every.get) in ratios


def _train(spec, exp, tmp: Path):
    from flops_fit.execute.runner import make_accelerator
    from flops_fit.execute.worker import train_experiment

    plan = spec.plan()
    return train_experiment(exp.job, Store(tmp), make_accelerator(plan.runtime, str(tmp)))


def _one(in_tmp, name="s", **kw):
    spec = Spec.load(write_toy_spec(in_tmp, name=name, **kw))
    return spec, spec.plan().experiments[0]


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_the_worker_follows_the_schedule(in_tmp, schedule):
    train = f'schedule = "{schedule}"\nwarmup_fraction = 0.2\nmin_lr_ratio = 0.1\ndecay_fraction = 0.25\nlog_points = 400\n'
    spec, exp = _one(in_tmp, sizes=(8, 16, 32), budgets=(1e6,), train=train, lr=1e-2)
    record = _train(spec, exp, in_tmp / "store")
    lr = {p.step: p.lr for p in record.curve}  # the rate of the step about to be taken after `step` steps
    S, W = exp.steps, exp.job.warmup_steps
    assert set(lr) == set(range(1, S + 1)) and W == round(0.2 * S)
    assert lr[1] == pytest.approx(1e-2 * 2 / W)  # linear warmup
    assert lr[W - 1] == pytest.approx(1e-2)  # peak reached at the end of warmup
    assert lr[S - 1] == pytest.approx(1e-3, rel=1e-6)  # min_lr_ratio at the last step
    if schedule == "cosine":
        mid = W + (S - 1 - W) // 2
        assert lr[mid] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (mid - W) / (S - 1 - W)))), rel=1e-6)
        assert all(lr[s] > lr[s + 1] for s in range(W, S - 1))
    else:
        start = S - round(0.25 * S)
        assert all(lr[s] == pytest.approx(1e-2) for s in range(W, start))  # stable
        assert lr[start] < 1e-2 and all(lr[s] >= lr[s + 1] for s in range(start, S - 1))  # cooldown


def test_the_worker_applies_each_groups_lr_scale(in_tmp):
    losses = {}
    for scale in (0.0, 1.0):
        for lr in (1e-2, 5e-2):
            spec, exp = _one(in_tmp, name=f"g{scale}-{lr}", model="ScaledMLP", sizes=(8, 16, 32), budgets=(1e6,),
                             extra_kwargs=f", lr_scale = {scale}", lr=lr)
            losses[scale, lr] = _train(spec, exp, in_tmp / f"store-{scale}-{lr}").loss
    assert losses[0.0, 1e-2] == losses[0.0, 5e-2]  # scale 0: the rate never reaches the weights
    assert losses[1.0, 1e-2] != losses[1.0, 5e-2] and losses[1.0, 1e-2] < losses[0.0, 1e-2]


def test_gradient_accumulation_matches_one_big_batch(in_tmp):
    spec, exp = _one(in_tmp, name="whole", sizes=(8, 16, 32), budgets=(1e6,))
    whole = _train(spec, exp, in_tmp / "a")
    spec2, exp2 = _one(in_tmp, name="micro", sizes=(8, 16, 32), budgets=(1e6,), train="micro_batch_size = 4\n")
    assert exp2.id == exp.id  # same experiment
    micro = _train(spec2, exp2, in_tmp / "b")
    assert micro.loss == pytest.approx(whole.loss, rel=1e-4)
    assert [p.train_loss for p in micro.curve] == pytest.approx([p.train_loss for p in whole.curve], rel=1e-4)
    spec3, exp3 = _one(in_tmp, name="other", sizes=(8, 16, 32), budgets=(1e6,), lr=1.1e-2)
    assert _train(spec3, exp3, in_tmp / "c").loss != pytest.approx(whole.loss, rel=1e-4)  # the comparison can fail


def test_checkpoints_are_pruned_to_keep(in_tmp):
    store = Store(in_tmp / "st")
    for step in (2, 4, 6, 8):
        store.mark_complete(store.new_checkpoint_dir("e", step), keep=2)
    partial = store.new_checkpoint_dir("e", 9)  # a crash left this without its marker
    store.mark_complete(store.new_checkpoint_dir("e", 10), keep=2)
    assert [p.name for p in store.complete_checkpoints("e")] == ["step-00000008", "step-00000010"]
    assert not partial.exists()
    spec, exp = _one(in_tmp, sizes=(8, 16, 32), budgets=(1e6,), train="checkpoint_steps = 2\nkeep_checkpoints = 2\n")
    seen = []
    live = Store(in_tmp / "live")

    def watch(point):
        seen.append(len(live.complete_checkpoints(exp.id)))
    from flops_fit.execute.runner import make_accelerator
    from flops_fit.execute.worker import train_experiment

    train_experiment(exp.job, live, make_accelerator(spec.plan().runtime, str(in_tmp)), on_log=watch)
    assert max(seen) == 2 and exp.steps > 10  # many checkpoints were written, two kept


def test_eval_target_is_the_held_out_loss(in_tmp):
    spec, exp = _one(in_tmp, name="split", sizes=(8, 16, 32), budgets=(1e6,))
    base = _train(spec, exp, in_tmp / "a")
    path = write_toy_spec(in_tmp, name="held", sizes=(8, 16, 32), budgets=(1e6,))
    path.write_text(path.read_text().replace('eval_batches = 2\n', 'eval_batches = 2\neval_target = "tests.toy:regression"\n'
                                             'eval_kwargs = { n = 256, seed = 1, shift = 10.0 }\n'))
    spec2 = Spec.load(path)
    exp2 = spec2.plan().experiments[0]
    assert exp2.id != exp.id
    shifted = _train(spec2, exp2, in_tmp / "b")
    assert base.loss < 2 and shifted.loss > 50  # targets shifted by 10: squared error near 100


def test_envelope_recovers_a_known_allocation_exponent():
    E, A, B, alpha, beta = 1.8, 400.0, 400.0, 0.34, 0.34  # a = beta / (alpha + beta) = 0.5
    pts = []
    for i, N in enumerate(np.logspace(6, 9, 16)):
        D = N * np.logspace(-2, math.log10(5), 120)  # each run passes the optimum D = N (G = 1 here)
        curve = [CurvePoint(step=k + 1, tokens=float(d), flops=float(6 * N * d), train_loss=float(E + A / N**alpha + B / d**beta),
                            lr=1e-3) for k, d in enumerate(D)]
        pts.append(Point(id=str(i), budget_flops=6 * N * D[-1], num_params=N, num_tokens=D[-1], flops=6 * N * D[-1],
                         loss=curve[-1].train_loss, curve=curve))
    env = fit_points(Points(points=pts), ["envelope"], bootstrap=0, backtest=False).envelope
    assert env is not None and env.n_opt.exponent == pytest.approx(0.5, abs=0.06)
    for p in env.points:  # each bin's lowest loss: within 2% of the law's minimum at that compute
        n = math.sqrt(p.flops / 6)  # N_opt = D_opt = sqrt(C / 6) for this law
        assert p.loss <= 1.02 * (E + A / n**alpha + B / n**beta), p
    assert env.predict(1e20).num_params == pytest.approx(env.n_opt.coef * 1e20**env.n_opt.exponent)


def test_find_optimal_reuses_its_cache(in_tmp):
    from tests import toy

    kw = dict(model_cls=toy.MLP, model_size_param="width", model_sizes=[4, 8, 16, 32], dataset=toy.regression,
              loss_fn=toy.mse, compute_budgets=[1e6, 3e6], dataset_kwargs={"n": 1024}, model_kwargs={"in_dim": 8},
              train={"batch_size": 16, "learning_rate": 1e-2}, analysis={"bootstrap": 0})
    first_events, again_events = [], []
    first = find_optimal(**kw, on_event=first_events.append)
    again = find_optimal(**kw, on_event=again_events.append)
    assert sum(e.kind == "result" for e in first_events) == 8
    assert [e for e in again_events if e.kind == "result"] == []  # nothing trained twice
    assert all(e.decision.action == "skip" for e in again_events if e.kind == "decision")
    assert [p.loss for p in again.points.points] == [p.loss for p in first.points.points]


def test_a_failed_experiment_has_the_same_record_shape(in_tmp):
    from flops_fit.execute.runner import make_accelerator, run_experiments
    from flops_fit.store.store import RunRecord

    spec = Spec.load(write_toy_spec(in_tmp, model="FailsLater", sizes=(8, 16, 32), budgets=(1e6,)))
    plan = spec.plan()
    store = Store(in_tmp / "runs/toy")
    [record] = run_experiments(plan.experiments[:1], store, make_accelerator(plan.runtime, str(in_tmp)))
    exp = plan.experiments[0]
    assert record.status == "failed" and "bug in the user's forward" in record.reason and record.traceback
    assert record.budget_flops == exp.budget_flops and record.hash == exp.hash and record.provenance is not None
    assert store.read_result(exp.id) == record and isinstance(record, RunRecord)


def test_one_spec_class():
    import flops_fit
    import flops_fit.spec.spec

    assert not hasattr(flops_fit.spec.spec, "Spec") and flops_fit.Spec.__mro__[1] is flops_fit.spec.spec.SpecModel


def test_lr_scaling_sets_each_sizes_rate_and_its_id(in_tmp):
    train = 'lr_scaling = { ref_params = 500, exponent = -0.5 }\nschedule = "constant"\nwarmup_fraction = 0.1\nlog_points = 400\n'
    spec, _ = _one(in_tmp, sizes=(8, 16, 32), budgets=(1e6,), train=train, lr=1e-2)
    plain = Spec.load(write_toy_spec(in_tmp, name="plain", sizes=(8, 16, 32), budgets=(1e6,), lr=1e-2)).plan()
    plan = spec.plan()
    assert {e.id for e in plan.experiments}.isdisjoint({e.id for e in plain.experiments})
    for exp in plan.experiments[:2]:
        want = 1e-2 * (exp.num_params / 500) ** -0.5
        record = _train(spec, exp, in_tmp / exp.id)
        assert record.curve[-1].lr == pytest.approx(want, rel=1e-9)  # the rate the worker used, after warmup
    same = Spec.load(write_toy_spec(in_tmp, name="g0", sizes=(8, 16, 32), budgets=(1e6,), lr=1e-2,
                                    train="lr_scaling = { ref_params = 500, exponent = 0.0 }\n")).plan()
    assert [e.id for e in same.experiments] == [e.id for e in plain.experiments]  # g = 0: the same rate, the same id


def test_nothing_of_an_experiment_outlives_it_on_the_cpu(in_tmp):
    """The Accelerator lets go of the model it prepared (no full collection is run on the CPU: the
    cycle left behind is an ordinary one, gone at the next collection)."""
    import gc
    import weakref

    from flops_fit.execute.runner import make_accelerator
    from flops_fit.execute.worker import train_experiment

    spec, exp = _one(in_tmp, sizes=(4, 8), budgets=(1e6,))
    accelerator = make_accelerator(spec.plan().runtime, str(in_tmp))
    built = []
    train_experiment(exp.job, Store(in_tmp), accelerator, inspect=lambda m: built.append(weakref.ref(m)))
    assert accelerator._models == [] and accelerator._optimizers == [] and accelerator.step == 0
    gc.collect()
    assert built and built[0]() is None
