"""Worker processes: their own entry point over plan.json, find_optimal launching them, errors capped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flops_fit import Spec, find_optimal
from flops_fit.core.errors import DataError, Problem
from flops_fit.execute.launch import Selection
from flops_fit.store.store import Store
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
    proc = subprocess.run([sys.executable, "-m", "flops_fit.execute.launch", plan.run_dir, selection], cwd=in_tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = {e.id for e in plan.experiments if store.read_result(e.id) is not None}
    assert done == {e.id for e in plan.experiments if e.num_params < threshold} and len(done) == 1
    assert proc.stdout == ""  # progress goes to stderr: a parent's --json stays clean
    bad = subprocess.run([sys.executable, "-m", "flops_fit.execute.launch"], env=env, capture_output=True, text=True)
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


@pytest.mark.parametrize("layout", ["one process", "two workers"])
def test_ctrl_c_checkpoints_the_step_reached_and_resumes_there(in_tmp, layout):
    import signal
    import time

    workers = "workers_per_gpu = 2\ndevice = \"cpu\"\n" if layout == "two workers" else ""
    path = write_toy_spec(in_tmp, model="SlowMLP", sizes=(8, 16), budgets=(3e6,), train=workers)  # no cadence set
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flops_fit", "run", str(path)], cwd=in_tmp, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    deadline = time.time() + 120
    while time.time() < deadline and not list(in_tmp.glob("runs/toy/experiments/*/metrics.jsonl")):
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.count("interrupted: finished experiments are kept") == 1, err[-2000:]
    marks = list(in_tmp.glob("runs/toy/experiments/*/checkpoints/*/COMPLETE"))
    assert marks, "no checkpoint written on Ctrl-C"  # the 600 s cadence never came: the signal wrote it
    est = Spec.load(path).estimate()
    resumed = [r for r in est.experiments if r.action == "resume"]
    assert resumed and all(int(r.reason.split()[3].split("/")[0]) > 0 for r in resumed), est.experiments
    assert _workers_of(in_tmp) == []  # no orphaned workers


def _workers_of(folder: Path) -> list[str]:
    """Command lines of live worker processes training under ``folder`` (from /proc; empty off Linux)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
            cwd = os.readlink(cmdline.parent / "cwd")
        except OSError:
            continue
        if "flops_fit.execute.launch" in args and cwd == str(folder):
            found.append(" ".join(args))
    return found


def test_workers_die_with_a_killed_parent(in_tmp):
    import signal
    import time

    path = write_toy_spec(in_tmp, model="SlowMLP", sizes=(8, 16), budgets=(1e8,),  # minutes of training
                          train="workers_per_gpu = 2\ndevice = \"cpu\"\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flops_fit", "run", str(path)], cwd=in_tmp, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(in_tmp.glob("runs/toy/experiments/*/metrics.jsonl"))) < 2:
        time.sleep(0.05)  # both workers are training
    assert len(_workers_of(in_tmp)) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and _workers_of(in_tmp):
        time.sleep(0.1)
    left = _workers_of(in_tmp)
    for line in left:  # do not leave them behind when the test fails
        subprocess.run(["pkill", "-f", line.split("\0")[0][-60:]], check=False)
    assert left == []
    assert list(in_tmp.glob("runs/toy/experiments/*/checkpoints/*/COMPLETE"))  # they checkpointed as they went
