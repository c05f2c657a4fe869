"""The CLI through typer's runner: exit codes, JSON documents, no traceback on user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flops_fit.cli import app
from tests.conftest import ROOT, write_toy_spec

runner = CliRunner()


def test_validate_ok_and_errors(in_tmp):
    ok = runner.invoke(app, ["validate", str(write_toy_spec(in_tmp))])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["validate", str(ROOT / "tests/fixtures/invalid/kwarg_typo.toml")])
    assert bad.exit_code == 1
    assert "model.kwargs.in_dimm" in bad.output and "Traceback" not in bad.output
    assert list(in_tmp.glob("runs")) == []


def test_usage_error_exit_2():
    assert runner.invoke(app, ["validate"]).exit_code == 2
    assert runner.invoke(app, ["nonsense"]).exit_code == 2


def test_estimate_json_shape(in_tmp):
    result = runner.invoke(app, ["estimate", str(write_toy_spec(in_tmp)), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"experiments", "total_flops", "est_seconds"} <= set(doc)
    row = doc["experiments"][0]
    assert set(row) >= {"id", "budget_flops", "size", "num_params", "num_tokens", "steps", "flops", "action", "reason"}
    assert row["action"] == "run" and doc["est_seconds"] > 0 and doc["flop_rule"] == "6N"
    assert not (in_tmp / "runs").exists()


def test_run_json_then_analyze(in_tmp):
    spec = str(write_toy_spec(in_tmp, sizes=(4, 8, 16, 32), budgets=(1e6, 2e6, 4e6)))
    result = runner.invoke(app, ["run", spec, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"points", "excluded", "fits", "table"} <= set(doc)
    again = runner.invoke(app, ["analyze", spec, "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["points"] == doc["points"]


def test_fit_csv(tmp_path):
    from tests.test_analysis import LAWS, synthetic

    pts = synthetic(*LAWS[0], noise=0.0, seed=0).points
    csv = tmp_path / "points.csv"
    csv.write_text("params,tokens,loss,flops\n" + "".join(f"{p.num_params},{p.num_tokens},{p.loss},{p.flops}\n" for p in pts))
    result = runner.invoke(app, ["fit", str(csv), "--json", "--bootstrap", "0", "--predict", "1e22"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert abs(doc["fits"]["parametric"]["alpha"] - 0.34) < 1e-3
    assert any(r["budget_flops"] == 1e22 for r in doc["table"])
    bad = runner.invoke(app, ["fit", str(tmp_path / "missing.csv")])
    assert bad.exit_code == 1 and "cannot read CSV" in bad.output


def test_batch_that_does_not_split_fails_validation_once(in_tmp, monkeypatch):
    from flops_fit import Spec
    from flops_fit.core.errors import SpecError
    from tests.conftest import write_toy_spec

    spec = Spec.load(write_toy_spec(in_tmp))  # batch_size 16
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SpecError) as err:
        spec.check()
    assert [p.key for p in err.value.problems] == ["train.batch_size"] and "3 processes" in str(err.value)
    assert not (in_tmp / "runs").exists()


def test_unfittable_plan_warns_at_validate_and_run_exits_1(in_tmp):
    from tests.conftest import write_toy_spec

    path = write_toy_spec(in_tmp, sizes=(4, 8), budgets=(1e6,))
    runner = CliRunner()
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 0 and "cannot give a fit" in res.output
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 1 and "no fit" in res.output and "Traceback" not in res.output
