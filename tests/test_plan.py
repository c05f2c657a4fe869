"""Plan compilation: golden ids, meta-device parameter counts, steps and FLOPs, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from flops_fit import Spec
from flops_fit.spec.components import build_model
from flops_fit.plan.flops import count_params
from flops_fit.core.hashing import canonical_json, content_hash
from flops_fit.plan.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "tests/fixtures/valid/toy.toml"

GOLDEN_IDS = ['c2e6-w4-b529d4b2b5d4', 'c2e6-w8-eb1555c2cab7', 'c2e6-w16-ee63fa6cad14', 'c2e6-w32-801ad2669b61',
              'c2e6-w64-cbb675119bf1', 'c6e6-w4-6d816c6d4a67', 'c6e6-w8-1d8f02779dcd', 'c6e6-w16-1623125facc9',
              'c6e6-w32-82b7c08a6a83', 'c6e6-w64-c3e25493f18e']


def test_golden_ids():
    """Ids pin the hash: a change here changes every user's cache. Bump HASH_VERSION if intended."""
    assert [e.id for e in Spec.load(TOY).plan().experiments] == GOLDEN_IDS


def _variant(**train) -> list[str]:
    spec = Spec.load(TOY)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update=train)})
    return [e.id for e in spec.plan().experiments]


def test_hash_ignores_what_does_not_change_loss():
    assert _variant(log_points=10, compile=True, checkpoint_seconds=5, log_with=[], micro_batch_size=8) == GOLDEN_IDS


@pytest.mark.parametrize("change", [{"learning_rate": 2e-2}, {"seed": 1}, {"precision": "bf16"}, {"schedule": "wsd"},
                                    {"weight_decay": 0.0}])
def test_hash_changes_with_what_changes_loss(change):
    assert set(_variant(**change)).isdisjoint(GOLDEN_IDS)


def test_meta_param_counts_equal_real():
    plan = Spec.load(TOY).plan()
    for info in plan.sizes:
        real = build_model("tests.toy:MLP", "width", info.size, {"in_dim": 8})
        assert count_params(real) == info.num_params


def test_steps_tokens_and_flops():
    plan = Spec.load(TOY).plan()
    for e in plan.experiments:
        assert e.num_tokens == e.steps * 16  # batch 16, one unit per sample
        assert e.flops == pytest.approx(6 * e.num_params * e.num_tokens)
        assert abs(e.flops / e.budget_flops - 1) < 0.5 / e.steps + 1e-9 + 16 * 6 * e.num_params / e.budget_flops


def test_plan_json_round_trip():
    plan = Spec.load(TOY).plan()
    assert Plan.from_json(plan.to_json()) == plan


def test_sizes_per_budget_centred_and_min_steps(tmp_path):
    spec = Spec.load(TOY)
    spec = spec.model_copy(update={"sweep": spec.sweep.model_copy(update={"sizes_per_budget": 3, "min_steps": 40})})
    plan = spec.plan()
    for budget in plan.budgets:
        exps = plan.for_budget(budget)
        assert len(exps) <= 3 and all(e.steps >= 40 for e in exps)
    reasons = {d.reason.split(" ")[1] for d in plan.dropped}
    assert any("steps" in d.reason for d in plan.dropped) or reasons


def test_measured_flop_rule_counts_matmuls(tmp_path):
    spec = Spec.load(TOY)
    spec = spec.model_copy(update={"flops": spec.flops.model_copy(update={"rule": "measured"})})
    plan = spec.plan()
    for info in plan.sizes:
        w = info.size
        forward = 2 * (8 * w + w * 1)  # the two Linear layers, per sample
        backward = 2 * forward - 2 * 8 * w  # weight and input gradients; none for the data input
        assert info.flops_per_sample == forward + backward


def test_canonical_json_is_strict_and_normalised():
    assert canonical_json({"b": 1.0, "a": [32, 0.5]}) == '{"a":[32,0.5],"b":1}'
    assert content_hash({"x": 32}) == content_hash({"x": 32.0})
    with pytest.raises(TypeError, match=r"\$.x"):
        canonical_json({"x": {1, 2}})
    with pytest.raises(TypeError):
        canonical_json({"x": float("nan")})
