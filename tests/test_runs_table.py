"""Every experiment as a row: report/points.csv, Result.to_pandas(), analyze --points."""

from __future__ import annotations

import csv
import sys

import pytest
from typer.testing import CliRunner

from flops_fit import Spec
from flops_fit.cli import app
from flops_fit.report.runs_table import COLUMNS
from tests.conftest import write_toy_spec


def test_points_csv_dataframe_and_pending_rows(in_tmp):
    path = write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6, 2e6, 4e6), figures=("png", "pdf"))
    spec = Spec.load(path)
    result = spec.run()
    plan = spec.plan()
    rows = list(csv.DictReader(open(in_tmp / "runs/toy/report/points.csv")))
    assert [r["id"] for r in rows] == [e.id for e in plan.experiments] and list(rows[0]) == list(COLUMNS)
    for row, exp in zip(result.runs, plan.experiments):
        assert row.status == "ok" and row.planned_num_tokens == exp.num_tokens == row.num_tokens
        assert row.planned_flops == exp.flops and row.steps == exp.steps and row.peak_lr == 1e-2
        assert row.gpu_hours == 0.0 and row.device and row.train_seconds > 0 and row.loss is not None
    report = in_tmp / "runs/toy/report"
    for name in ("isoflop", "scaling", "backtest", "lr_schedule"):  # PNG and vector PDF of each
        assert (report / f"{name}.png").stat().st_size > 5000, name
        assert (report / f"{name}.pdf").read_bytes()[:5] == b"%PDF-", name
    figures = result.plot()
    assert all(any("FLOP rule: C = 6·N·D" in t.get_text() for t in f.texts) for f in figures.values())
    lr = figures["lr_schedule"].axes[0].lines
    assert len(lr) == 3 and max(lr[0].get_ydata()) == pytest.approx(1e-2)  # one line per size, peaking at the spec LR
    import matplotlib.pyplot as plt

    for f in figures.values():
        plt.close(f)
    frame = result.to_pandas()
    assert frame.shape == (len(plan.experiments), len(COLUMNS)) and frame["loss"].notna().all()
    # a budget added later: its experiments are listed as pending until trained
    path.write_text(path.read_text().replace("budgets = [1000000.0, 2000000.0, 4000000.0]",
                                             "budgets = [1000000.0, 2000000.0, 4000000.0, 8000000.0]")
                    .replace('figures = ["png", "pdf"]', "figures = []"))  # drawn and checked above
    res = CliRunner().invoke(app, ["analyze", str(path), "--points"])
    assert res.exit_code == 0, res.stderr
    again = Spec.load(path).analyze(report=False)
    pending = [r for r in again.runs if r.status == "pending"]
    assert pending and all(r.budget_flops == 8e6 and r.loss is None and r.planned_flops for r in pending)
    assert "pending" in res.stdout and plan.experiments[0].id in res.stdout


def test_to_pandas_says_how_to_install_it(monkeypatch):
    from flops_fit.report.report import Result

    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    result = Result.model_construct(runs=[])
    with pytest.raises(ImportError, match="pip install pandas"):
        result.to_pandas()


def test_cost_in_gpu_hours_and_dollars(in_tmp):
    from flops_fit.plan.flops import PEAK_FLOPS

    path = write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6, 2e6, 4e6),
                          analysis="\n[estimate]\ncalibrate = false\nusd_per_gpu_hour = 2.5\ngpu = \"A100\"\nmfu = 0.5\n")
    spec = Spec.load(path)
    est = spec.estimate()
    rate = PEAK_FLOPS["A100"]["fp32"] * 0.5
    for row in est.experiments:
        assert row.gpu_hours == pytest.approx(row.flops / rate / 3600) and row.usd == pytest.approx(2.5 * row.gpu_hours)
    assert est.gpu_hours == pytest.approx(sum(r.gpu_hours for r in est.experiments)) and est.usd == pytest.approx(2.5 * est.gpu_hours)
    res = CliRunner().invoke(app, ["estimate", str(path)])
    assert "GPU-hours, $" in res.stderr, res.stderr
    result = spec.run(report=False)
    assert result.cost.train_seconds == pytest.approx(sum(r.train_seconds for r in result.runs))
    assert result.cost.gpu_hours == 0.0 and result.cost.usd == 0.0  # trained on CPU
    assert result.summary()["cost"]["train_seconds"] > 0
    assert Spec.load(path).estimate().gpu_hours == 0.0  # nothing left to train
