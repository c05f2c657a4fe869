"""[train] log_with: accelerate's trackers, a run per experiment grouped by the spec, a summary run."""

from __future__ import annotations

import importlib.util

import pytest
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

from flops_fit import Spec
from flops_fit.core.errors import SpecError
from flops_fit.execute.runner import run_plan
from flops_fit.execute.tracking import log_summary
from flops_fit.store.store import Store
from tests.conftest import write_toy_spec


def test_tracker_names_are_accelerates_with_did_you_mean(in_tmp):
    with pytest.raises(SpecError) as info:
        Spec.load(write_toy_spec(in_tmp, train='log_with = ["tensorbord", "mlflow", "wandbb"]'))
    problems = info.value.problems
    assert [p.key for p in problems] == ["train.log_with[0]", "train.log_with[2]"]
    assert "did you mean 'tensorboard'?" in problems[0].message and "did you mean 'wandb'?" in problems[1].message
    assert "swanlab" in problems[0].message  # the known names come from the installed accelerate
    assert Spec.load(write_toy_spec(in_tmp, train='log_with = ["aim", "comet_ml", "dvclive"]')).train.log_with


class Memory(GeneralTracker):
    """An in-memory tracker: every run's configuration, logged values, tables and images."""

    name, requires_logging_directory, main_process_only = "memory", False, True
    runs: list = []

    def __init__(self):
        super().__init__()

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        self.runs.append({"config": values, "logged": [], "tables": {}, "images": {}, "finished": False})

    def log(self, values, step=None, **kwargs):
        self.runs[-1]["logged"].append((step, values))

    def log_table(self, table_name, columns=None, data=None, dataframe=None, step=None, **kwargs):
        self.runs[-1]["tables"][table_name] = (columns, data)

    def log_images(self, values, step=None, **kwargs):
        self.runs[-1]["images"].update(values)

    def finish(self):
        self.runs[-1]["finished"] = True


def test_runs_grouped_by_spec_tagged_and_a_summary_run(in_tmp):
    Memory.runs.clear()
    spec = Spec.load(write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6, 2e6, 4e6)))
    plan = spec.plan()
    accelerator = Accelerator(cpu=True, log_with=[Memory()])
    run_plan(plan, Store(in_tmp / "runs/toy"), accelerator)
    assert len(Memory.runs) == len(plan.experiments) and all(r["finished"] for r in Memory.runs)
    assert all(len(r["logged"]) > 5 and "train_loss" in r["logged"][-1][1] for r in Memory.runs)  # the curve points
    by_id = {r["config"]["id"]: r["config"] for r in Memory.runs}
    for e in plan.experiments:
        c = by_id[e.id]
        assert (c["spec"], c["budget_flops"], c["size"], c["num_params"], c["num_tokens"]) == \
            ("toy", e.budget_flops, e.size, e.num_params, e.num_tokens)
    result = spec.analyze()
    result.save(in_tmp / "runs/toy/report")
    scalars, tables = result.tracker_summary()
    log_summary(accelerator, "toy", in_tmp / "tracking", scalars, tables, in_tmp / "runs/toy/report", {"points": 9})
    summary = Memory.runs[-1]
    assert summary["config"]["id"] == "summary" and summary["config"]["spec"] == "toy" and summary["finished"]
    columns, rows = summary["tables"]["points"]
    assert [r[columns.index("id")] for r in rows] == [r.id for r in result.runs]
    assert summary["tables"]["chinchilla_table"][1] and {"isoflop", "scaling"} <= set(summary["images"])
    scalars = summary["logged"][0][1]
    assert scalars["parametric/a"] == result.fits.parametric.a


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_writes_a_folder_per_experiment_and_the_summary(in_tmp):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = Spec.load(write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6, 2e6, 4e6), train='log_with = ["tensorboard"]',
                                    figures=("png",)))  # the summary carries the report's PNGs
    spec.run()
    root = in_tmp / "runs/toy/tracking/toy"
    assert {p.name for p in root.iterdir()} == {e.id for e in spec.plan().experiments} | {"summary"}
    one = EventAccumulator(str(root / spec.plan().experiments[0].id))
    one.Reload()
    assert "train_loss" in one.Tags()["scalars"]
    summary = EventAccumulator(str(root / "summary"), size_guidance={"images": 0, "tensors": 0})
    summary.Reload()
    tags = summary.Tags()
    assert "parametric/a" in tags["scalars"] and {"points_csv", "chinchilla_table_csv"} <= {t.split("/")[0] for t in tags["tensors"]}
    assert "isoflop" in tags["images"]
