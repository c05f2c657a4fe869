"""Faults a user's worst day brings: Ctrl-C while the command line imports, a report that cannot be
written (whatever the exception), extreme but finite CSV values.  Each a clean line, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from flops_fit.cli import app
from tests.conftest import ROOT, write_toy_spec


@pytest.mark.slow
def test_ctrl_c_while_importing_is_one_line_and_exit_130(tmp_path):
    spec = write_toy_spec(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outcomes = []
    # after the interpreter started (site imported), before the CLI is up, then while torch imports
    # (torch's import, interrupted, aborted the interpreter: SIGABRT from pybind11, or death by SIGINT)
    for verb, delay in [("validate", d) for d in (0.12, 0.3, 0.6, 0.8, 0.9, 1.0, 1.2)] + [("run", 1.0)]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flops_fit", verb, str(spec)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        outcomes.append(proc.returncode)
        if "init_import_site" in err and delay < 0.5:  # a loaded machine: the signal came while the
            continue  # interpreter imported its own site module, before any line of flops-fit ran
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        if proc.returncode == 130:
            # one line, or none when the signal came before any of flops-fit's code ran (a loaded
            # machine: the interpreter was still starting, and it exits 130 by itself, silently)
            assert err.count("interrupted") == 1 or not err.strip(), (delay, err)
            # validate trains nothing: its interrupt says nothing of experiments kept
            assert verb == "run" or "experiments are kept" not in err, (delay, err)
        else:
            assert proc.returncode == 0, (delay, proc.returncode, err)  # finished before the signal came
    assert outcomes[-1] == 130  # run is still importing at 1 s: stopped once its own code runs


def _isoflop_csv(path, edit=None):
    rows = []
    for C in np.logspace(18, 21, 5):
        for n in np.logspace(-0.6, 0.6, 7) * 0.3 * (C / 6) ** 0.5:
            d = C / 6 / n
            rows.append([float(n), float(d), float(1.7 + 406 / n**0.34 + 410 / d**0.28)])
    if edit:
        edit(rows)
    path.write_text("params,tokens,loss\n" + "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in rows))
    return path


@pytest.mark.parametrize("column", [0, 1])
def test_a_row_whose_compute_overflows_is_a_line_naming_it(tmp_path, column):
    def edit(rows):
        rows[3][column] = 1e308

    res = CliRunner().invoke(app, ["fit", str(_isoflop_csv(tmp_path / "x.csv", edit)), "--bootstrap", "0"])
    assert res.exit_code == 1 and res.exception is None or isinstance(res.exception, SystemExit)
    assert (
        res.stderr.count("error:") == 1 and "x.csv:5" in res.stderr and "overflows" in res.stderr
    ), res.stderr


def test_losses_of_1e308_are_notes_not_tracebacks(tmp_path):
    def edit(rows):
        for r in rows:
            r[2] = 1e308

    path = _isoflop_csv(tmp_path / "x.csv", edit)
    for profile in ("shape", "window"):  # the window's parabola fit raises inside lmfit: a note too
        res = CliRunner().invoke(app, ["fit", str(path), "--bootstrap", "10", "--profile", profile, "--json"])
        assert res.exception is None or isinstance(res.exception, SystemExit), res.stderr
        assert "Traceback" not in res.stderr
        notes = json.loads(res.stdout)["notes"]
        assert any("the loss is 1e+308 at every point" in n for n in notes)
        if profile == "window":
            assert any("cannot be fitted" in n for n in notes), notes


def test_a_failing_figure_of_any_type_is_one_line_and_analyze_rewrites_it(in_tmp, monkeypatch):
    """matplotlib's PDF writer, out of space, raises AttributeError while it handles ENOSPC."""
    from flops_fit import Spec

    spec_path = write_toy_spec(in_tmp, figures=("pdf",))
    runner = CliRunner()
    from matplotlib.figure import Figure

    real = Figure.savefig

    def full_disk(self, fname, *a, **k):
        if str(fname).endswith("contours.pdf"):
            open(fname, "wb").write(b"%PDF-1.4 partial")  # what the writer left before it failed
            try:
                raise OSError(28, "No space left on device")
            except OSError:
                raise AttributeError("'Stream' object has no attribute 'pos'")
        return real(self, fname, *a, **k)

    monkeypatch.setattr(Figure, "savefig", full_disk)
    res = runner.invoke(app, ["run", str(spec_path)])
    assert res.exit_code == 1, res.output
    assert res.stderr.count("error:") == 1 and "contours.pdf" in res.stderr and "No space left" in res.stderr
    assert "Traceback" not in res.stderr
    report = in_tmp / "runs/toy/report"
    assert not (report / "contours.pdf").exists()  # no half-written figure left behind
    plan = Spec.load(spec_path).plan()
    assert all((in_tmp / "runs/toy/experiments" / e.id / "result.json").exists() for e in plan.experiments)
    monkeypatch.setattr(Figure, "savefig", real)
    res = runner.invoke(app, ["analyze", str(spec_path)])
    assert res.exit_code == 0, res.output
    assert (report / "contours.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.multiprocess
def test_the_log_is_one_line_per_experiment_and_a_skip_summary(tmp_path):
    """Three CPU workers share a sweep: each experiment's result once, no line per experiment another
    worker holds (a summary instead); --verbose lists every decision, in the workers too."""
    spec = write_toy_spec(tmp_path, sizes=(4, 8, 16), budgets=(1e6,), train="workers_per_gpu = 3\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FLOPS_FIT_VERBOSE", None)
    run = [sys.executable, "-m", "flops_fit", "run", str(spec)]
    res = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 1) and "Traceback" not in res.stderr, res.stderr  # one budget: no fit
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    from flops_fit import Spec

    ids = [e.id for e in Spec.load(spec).plan().experiments]
    for i in ids:
        assert sum(line.startswith(f"ok {i}:") for line in lines) == 1, res.stderr
    assert not any(line.startswith(("skip ", "run ")) for line in lines), res.stderr
    assert any("skipped" in line and "(--verbose lists them)" in line for line in lines), res.stderr
    # results, one summary per worker, the bar, the report line, the no-fit line
    assert len(lines) <= len(ids) + 3 + 6, res.stderr
    again = subprocess.run(
        run + ["--verbose"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode in (0, 1) and "Traceback" not in again.stderr, again.stderr
    for i in ids:
        assert f"skip {i}: done" in again.stderr, again.stderr
