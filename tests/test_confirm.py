"""`flops-fit confirm`: a pre-registered prediction, written before training, checked by runs outside the fit."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from flops_fit import Spec
from flops_fit.cli import app
from flops_fit.errors import SpecError
from tests.conftest import write_toy_spec

SIZES = (4, 6, 8, 12, 16, 24, 32, 48, 64)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One swept toy store shared by this module's tests (run from its folder)."""
    folder = tmp_path_factory.mktemp("confirm")
    old = os.getcwd()
    os.chdir(folder)
    path = write_toy_spec(folder, sizes=SIZES, budgets=(1e6, 2e6, 4e6),
                          analysis="approaches = [\"isoflop\", \"parametric\"]\n")
    path.write_text(path.read_text().replace("[sweep]\n", "[sweep]\nsizes_per_budget = 5\n"))
    Spec.load(path).run(report=False)
    yield path
    os.chdir(old)


def test_prediction_written_before_training_and_kept_out_of_the_fit(swept):
    spec = Spec.load(swept)
    before = spec.analyze(report=False)
    seen = []

    def on_event(event):
        if event.kind == "decision" and event.decision.action != "skip":
            folder = spec.run_dir / "confirm" / "1.2e7"
            seen.append((folder / "prediction.json").exists())  # registered before the first step

    c = spec.confirm(1.2e7, on_event=on_event)
    assert seen and all(seen)
    folder = spec.run_dir / "confirm" / "1.2e7"
    doc = json.loads((folder / "confirm.json").read_text())
    for key in ("budget_flops", "predicted", "measured", "loss_error", "best_is_predicted"):
        assert key in doc
    for key in ("num_params", "num_tokens", "loss", "loss_ci", "approach"):
        assert key in doc["predicted"]
    assert len(doc["measured"]) == 3 and all({"size", "num_params", "loss"} <= set(m) for m in doc["measured"])
    best = min(m["loss"] for m in doc["measured"])
    assert doc["loss_error"] == pytest.approx(best / doc["predicted"]["loss"] - 1)
    sizes = [m["size"] for m in doc["measured"]]
    centre = min(sizes, key=lambda s: abs(c.measured[sizes.index(s)].num_params - c.predicted.num_params))
    assert sizes.index(centre) == 1  # the size nearest N_opt, one either side
    assert (folder / "confirm.png").read_bytes()[:4] == b"\x89PNG"
    # what the CLI prints: the prediction, the table (★ on the best measured), the error of the best
    from rich.console import Console

    console = Console(record=True, width=200)
    for item in c.render():
        console.print(item)
    text = console.export_text()
    assert f"N_opt {c.predicted.num_params:.3g}" in text and "Forward check at C = 1.2e+07 FLOPs" in text
    assert "★" in text and f"best measured loss vs predicted: {c.loss_error:+.2%}" in text
    # the confirmation runs never enter the fit they test
    after = spec.analyze(report=False)
    assert after.fits.num_points == before.fits.num_points
    assert {p.id for p in after.points.points}.isdisjoint(m["id"] for m in doc["measured"])
    # a rerun trains nothing and keeps the registered prediction
    created = c.predicted.created
    again = []
    c2 = spec.confirm(1.2e7, on_event=again.append)
    assert [e for e in again if e.kind == "result"] == []
    assert c2.predicted.created == created and c2.measured == c.measured


def test_confirm_errors(swept):
    spec = Spec.load(swept)
    with pytest.raises(SpecError, match="one of the sweep's"):
        spec.confirm(2e6)
    with pytest.raises(SpecError, match="positive, finite"):
        spec.confirm(float("nan"))
    with pytest.raises(SpecError, match="larger size"):
        spec.confirm(1e12)  # N_opt far beyond the largest size: nothing brackets it
    assert not (spec.run_dir / "confirm" / "1e12" / "confirm.json").exists()
    fresh = Spec.load(write_toy_spec(swept.parent, name="empty", sizes=SIZES, budgets=(1e6, 2e6, 4e6)))
    with pytest.raises(SpecError, match="holds no finished experiment"):
        fresh.confirm(1.2e7)
    assert not (fresh.run_dir / "confirm").exists()


def test_confirm_cli(swept):
    runner = CliRunner()
    res = runner.invoke(app, ["confirm", str(swept), "--budget", "1.2e7", "--json"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["budget_flops"] == 1.2e7 and len(doc["measured"]) == 3
    bad = runner.invoke(app, ["confirm", str(swept), "--budget", "2e6"])
    assert bad.exit_code == 1 and "one of the sweep's" in bad.output and "Traceback" not in bad.output


def test_compare_scores_the_check_and_notes_data_repetition():
    from flops_fit.confirm import PlannedSize, Prediction, compare

    sizes = [PlannedSize(id=f"e{s}", size=s, num_params=n, num_tokens=1e6, loss=2.0, loss_ci=[1.9, 2.1])
             for s, n in ((16, 1000), (24, 2000), (32, 4000))]
    pred = Prediction(budget_flops=1e12, approach="parametric", num_params=2000, num_tokens=1e6, loss=2.0,
                      loss_ci=[1.9, 2.1], sizes=sizes, fit={}, created="t")
    from flops_fit.store import RunRecord

    def record(i, loss, epochs):
        return RunRecord(id=i, hash="h", budget_flops=1e12, status="ok", loss=loss, epochs=epochs, num_params=1,
                         num_tokens=1e6, flops=1e12)
    results = {"e16": record("e16", 2.3, 6.0), "e24": record("e24", 2.05, 3.0), "e32": record("e32", 2.02, 1.5)}
    c = compare(pred, results, sweep_epochs=2.0)
    assert c.best_size == 32 and c.predicted_size == 24 and not c.best_is_predicted and c.best_is_adjacent
    assert c.loss_error == pytest.approx(2.02 / 2.0 - 1) and c.inside == 2
    assert [m.inside for m in c.measured] == [False, True, True]
    assert any("e16 repeats its data 6.0 times" in n for n in c.notes)
    assert not any("e32 repeats" in n for n in c.notes)
    assert any("edge of the confirmation sizes" in n for n in c.notes)
