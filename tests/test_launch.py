"""Worker processes: their own entry point over plan.json, find_optimal launching them, errors capped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flops_fit import Spec, find_optimal
from flops_fit.errors import DataError, Problem
from flops_fit.launch import Selection
from flops_fit.store import Store
from tests.conftest import ROOT, write_toy_spec


def test_a_worker_needs_only_plan_json_and_a_selection(in_tmp):
    spec = Spec.load(write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6,)))
    plan = spec.check()
    store = Store(Path(plan.run_dir))
    store.write_plan_json(plan.to_json())
    (in_tmp / "toy.toml").unlink()  # the spec is not read again
    threshold = sorted(e.num_params for e in plan.experiments)[1]
    selection = Selection(max_params=threshold).model_dump_json()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "flops_fit.launch", plan.run_dir, selection], cwd=in_tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = {e.id for e in plan.experiments if store.read_result(e.id) is not None}
    assert done == {e.id for e in plan.experiments if e.num_params < threshold} and len(done) == 1
    assert proc.stdout == ""  # progress goes to stderr: a parent's --json stays clean
    bad = subprocess.run([sys.executable, "-m", "flops_fit.launch"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_find_optimal_launches_workers_for_importable_objects(in_tmp):
    from tests import toy

    kw = dict(model_cls=toy.MLP, model_size_param="width", model_sizes=[4, 8, 16, 32], dataset=toy.regression,
              loss_fn=toy.mse, compute_budgets=[1e6, 3e6], dataset_kwargs={"n": 1024}, model_kwargs={"in_dim": 8},
              analysis={"bootstrap": 0})
    events = []
    result = find_optimal(**kw, train={"batch_size": 16, "learning_rate": 1e-2, "workers_per_gpu": 2, "device": "cpu"},
                          on_event=events.append)
    assert events == []  # trained by two worker processes, not in this one
    assert len(result.points.points) == 8 and result.fits.parametric is not None
    with pytest.warns(UserWarning, match="exist only in this process"):  # registered objects cannot travel
        find_optimal(**{**kw, "model_cls": lambda width, in_dim: toy.MLP(width, in_dim)}, name="registered",
                     cache_key="lambda-mlp", train={"batch_size": 16, "workers_per_gpu": 2, "device": "cpu"},
                     on_event=events.append)
    assert sum(e.kind == "result" for e in events) == 8  # so they trained here


def test_thousands_of_problems_print_twenty_lines_and_a_count(tmp_path):
    err = DataError([Problem("not a number", key="loss", line=i) for i in range(2, 3002)])
    lines = err.lines()
    assert len(lines) == 21 and lines[-1].startswith("... and 2980 more problems")
    csv = tmp_path / "bad.csv"
    csv.write_text("params,tokens,loss\n" + "x,1,1\n" * 3000)
    from typer.testing import CliRunner

    from flops_fit.cli import app

    out = CliRunner().invoke(app, ["fit", str(csv)])
    assert out.exit_code == 1 and out.stderr.count("error:") == 21 and "2980 more" in out.stderr
