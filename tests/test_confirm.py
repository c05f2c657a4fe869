"""`flops-fit confirm`: a pre-registered prediction, written before training, checked by runs outside the fit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from flops_fit import Spec
from flops_fit.cli import app
from flops_fit.core.errors import SpecError
from tests.conftest import ROOT, write_toy_spec

pytestmark = pytest.mark.xdist_group("confirm")  # one worker builds the shared store once

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


def test_score_of_the_check_notes_data_repetition():
    from flops_fit.verbs.confirm import PlannedSize, Registration, score

    sizes = [PlannedSize(id=f"e{s}", size=s, num_params=n, num_tokens=1e6, loss=2.0, loss_ci=[1.9, 2.1])
             for s, n in ((16, 1000), (24, 2000), (32, 4000))]
    pred = Registration(budget_flops=1e12, approach="parametric", num_params=2000, num_tokens=1e6, loss=2.0,
                      loss_ci=[1.9, 2.1], sizes=sizes, fit={}, created="t")
    from flops_fit.store.store import RunRecord

    def record(i, loss, epochs):
        return RunRecord(id=i, hash="h", budget_flops=1e12, status="ok", loss=loss, epochs=epochs, num_params=1,
                         num_tokens=1e6, flops=1e12)
    results = {"e16": record("e16", 2.3, 6.0), "e24": record("e24", 2.05, 3.0), "e32": record("e32", 2.02, 1.5)}
    c = score(pred, results, sweep_epochs=2.0)
    assert c.best_size == 32 and c.predicted_size == 24 and not c.best_is_predicted and c.best_is_adjacent
    assert c.loss_error == pytest.approx(2.02 / 2.0 - 1) and c.inside == 2
    assert [m.inside for m in c.measured] == [False, True, True]
    assert any("e16 repeats its data 6.0 times" in n for n in c.notes)
    assert not any("e32 repeats" in n for n in c.notes)
    assert any("edge of the confirmation sizes" in n for n in c.notes)


def test_score_notes_losses_below_their_interval_and_names_the_size_to_add():
    from flops_fit.verbs.confirm import PlannedSize, Registration, score
    from flops_fit.store.store import RunRecord

    sizes = [PlannedSize(id=f"e{s}", size=s, num_params=n, num_tokens=1e6, loss=2.0, loss_ci=[1.9, 2.1])
             for s, n in ((16, 1000), (24, 2000), (32, 4000))]
    pred = Registration(budget_flops=1e12, approach="parametric", num_params=2000, num_tokens=1e6, loss=2.0,
                      loss_ci=[1.9, 2.1], sizes=sizes, fit={"form": "data-constrained"}, created="t")

    def record(i, loss, epochs=6.0):
        return RunRecord(id=i, hash="h", budget_flops=1e12, status="ok", loss=loss, epochs=epochs, num_params=1,
                         num_tokens=1e6, flops=1e12)
    c = score(pred, {"e16": record("e16", 1.8), "e24": record("e24", 2.0), "e32": record("e32", 2.2)},
                sweep_epochs=1.0, beyond={"below": 12, "above": 48})
    assert any("e16: measured 1.8000 is below its interval" in n for n in c.notes)
    assert any("e32: measured 2.2000 is above its interval" in n for n in c.notes)
    assert any("add 12 (rerun with --bracket" in n for n in c.notes)
    # the law already modelled the repetition: no after-the-fact repetition note
    assert not any("repeats its data" in n for n in c.notes)
    # an added size enters the table, in order, marked as added
    extra = PlannedSize(id="e12", size=12, num_params=500, num_tokens=1e6, loss=2.1, loss_ci=[2.0, 2.2], created="t2")
    c2 = score(pred, {"e12": record("e12", 1.95), "e16": record("e16", 1.8)}, added=[extra],
                 beyond={"below": 8, "above": 48})
    assert [m.size for m in c2.measured] == [12, 16, 24, 32] and c2.added == [12] and c2.best_size == 16


def test_confirm_more_sizes_are_an_addition_fewer_change_nothing(swept):
    spec = Spec.load(swept)
    first = spec.confirm(8e6, sizes=3)
    folder = spec.run_dir / "confirm" / "8e6"
    registered = (folder / "prediction.json").read_text()
    fewer = spec.confirm(8e6, sizes=2)
    assert any("registered 3 sizes; --sizes 2 changes nothing" in m for m in fewer.messages)
    assert [m.size for m in fewer.measured] == [m.size for m in first.measured]
    trained = []
    more = spec.confirm(8e6, sizes=5, on_event=trained.append)
    assert (folder / "prediction.json").read_text() == registered  # the prediction is never rewritten
    added = json.loads((folder / "additions.json").read_text())["sizes"]
    assert len(added) == 2 and all(a["created"] and a["loss"] is not None for a in added)
    assert any("registered 2 more size(s) as an addition" in m for m in more.messages)
    assert len(more.measured) == 5 and sorted(more.added) == sorted(a["size"] for a in added)
    assert len([e for e in trained if e.kind == "result"]) == 2  # only the additions trained
    again = spec.confirm(8e6, sizes=5)
    assert not any("more size" in m for m in again.messages) and len(again.measured) == 5


def _confirm(swept, budget: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "flops_fit", "confirm", str(swept), "--budget", budget, "--json"],
                            cwd=swept.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_confirm_killed_after_registering_keeps_its_prediction_and_a_rerun_trains(swept):
    folder = Spec.load(swept).run_dir / "confirm" / "9e6"
    proc = _confirm(swept, "9e6")
    deadline = time.time() + 120
    while not (folder / "prediction.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    registered = (folder / "prediction.json").read_bytes()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "confirm.json").exists()
    again = _confirm(swept, "9e6")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert (folder / "prediction.json").read_bytes() == registered  # not registered again
    assert json.loads(out)["predicted"]["created"] == json.loads(registered)["created"]
    assert len(json.loads((folder / "confirm.json").read_text())["measured"]) == 3


@pytest.mark.slow
def test_two_confirms_at_once_share_one_prediction_and_train_each_run_once(swept):
    first, second = _confirm(swept, "7e6"), _confirm(swept, "7e6")
    (out1, err1), (out2, err2) = first.communicate(timeout=300), second.communicate(timeout=300)
    assert first.returncode == second.returncode == 0, err1[-1500:] + err2[-1500:]
    one, two = json.loads(out1), json.loads(out2)
    assert one["predicted"] == two["predicted"] and one["measured"] == two["measured"]
    finished = [line.split()[1].rstrip(":") for line in (err1 + err2).splitlines() if line.startswith("ok ")]
    assert sorted(finished) == sorted({m["id"] for m in one["measured"]})  # each trained by one of them
