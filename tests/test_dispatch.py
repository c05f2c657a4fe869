"""Sweeps sent to a scheduler through submitit (real subprocess jobs of submitit's LocalExecutor;
Slurm itself through stand-in sbatch/srun/sacct), and leases that hold on shared filesystems."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flops_fit import Spec
from flops_fit.spec.launcher import LauncherSpec
from flops_fit.store.lease import LeaseInfo, acquire, holder
from flops_fit.store.store import Store, decide
from tests.conftest import write_toy_spec

submitit = pytest.importorskip("submitit")


def _spec(folder: Path, launcher: str, name: str = "toy", train: str = "", **kw) -> Path:
    """A toy spec with a [launcher] table, on CPU (jobs and the in-process reference alike)."""
    path = write_toy_spec(folder, name=name, train='device = "cpu"\n' + train, **kw)
    path.write_text(path.read_text() + "\n[launcher]\n" + launcher)
    return path


LOCAL = 'kind = "submitit-local"\ngpus_per_task = 0\nheartbeat_s = 0.5\n'


def _reference(spec: Spec, folder: Path) -> dict[str, float]:
    """The same plan trained in this process (``[launcher]`` is not hashed: the ids are the same)."""
    local = spec.model_copy(update={"launcher": LauncherSpec(), "runs_dir": str(folder)})
    local.run(report=False)
    store = Store(local.run_dir)
    return {e.id: store.read_result(e.id).loss for e in local.plan().experiments}


def _logs(run_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((run_dir / "launcher" / "logs").rglob("*_log.err")))


# -- leases -------------------------------------------------------------------------------
def test_a_lease_has_one_owner_and_a_dead_one_is_taken_over_once(tmp_path):
    folder = tmp_path / "exp"
    first = acquire(folder, interval_s=0.2)
    assert first is not None and acquire(folder, 0.2) is None  # live: nobody else gets it
    assert holder(folder).token == first.info.token and first.refresh()
    info = first.info.model_copy(update={"host": "node-a", "heartbeat": time.time() - 1.0})  # three beats missed
    first.path.write_text(info.model_dump_json())
    assert holder(folder) is None
    for round_ in range(30):  # eight takers of one dead lease, thirty times: exactly one wins each time
        won = []
        barrier = threading.Barrier(8)

        def take() -> None:
            barrier.wait()
            lease = acquire(folder, 0.2)
            if lease is not None:
                won.append(lease)
        threads = [threading.Thread(target=take) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(won) == 1 and won[0].generation == round_ + 1, (round_, [w.generation for w in won])
        if round_ == 0:
            assert not first.refresh()  # the old owner learns it lost the lease
            assert not first.path.exists()  # its file was removed by the new owner
        dead = won[0].info.model_copy(update={"host": "node-a", "heartbeat": 0.0})
        won[0].path.write_text(dead.model_dump_json())  # its owner dies too
    assert holder(folder) is None
    last = acquire(folder, 0.2)
    last.release()
    assert holder(folder) is None and not list(folder.glob("lease.*")) and acquire(folder, 0.2) is not None


def test_a_lease_of_this_host_whose_process_is_gone_is_dead_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    info = LeaseInfo(host=__import__("flops_fit.store.lease", fromlist=["x"]).host_name(), pid=dead.pid, token="t",
                     since=now, heartbeat=now, interval_s=30.0)
    (tmp_path / "lease.0").write_text(info.model_dump_json())
    assert holder(tmp_path) is None  # a killed local run is resumed at once, as with a file lock


def test_the_heartbeat_keeps_a_lease_and_reports_its_loss(tmp_path):
    lease = acquire(tmp_path, interval_s=0.1)
    lost = []
    lease.keep(on_lost=lost.append)
    time.sleep(0.5)
    assert holder(tmp_path) is not None and not lost  # five intervals later, still live
    stale = lease.info.model_copy(update={"host": "node-b", "heartbeat": 0.0})
    (tmp_path / "lease.1").write_text(stale.model_copy(update={"token": "other", "heartbeat": time.time()}).model_dump_json())
    time.sleep(0.4)
    assert lost and "taken over by node-b" in lost[0]
    lease.release()


def test_a_sigkilled_owners_lease_is_taken_over_after_its_expiry(in_tmp):
    """A worker on "node-a" is SIGKILLed mid-experiment: its lease stays until three heartbeats
    pass, then this process takes the experiment over and resumes it from the last checkpoint."""
    path = _spec(in_tmp, "heartbeat_s = 0.5\n", model="SlowMLP", sizes=(8, 16), budgets=(3e6,),
                 train="checkpoint_steps = 50\n")
    spec = Spec.load(path)
    plan = spec.plan()
    exp = next(e for e in plan.experiments if e.size == 8)
    store = Store(spec.run_dir)
    store.write_plan_json(plan.to_json())
    selection = json.dumps({"ids": [exp.id]})
    env = {**os.environ, "FLOPS_FIT_HOST": "node-a"}
    victim = subprocess.Popen([sys.executable, "-m", "flops_fit.execute.launch", str(spec.run_dir), selection], env=env,
                              stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while store.latest_checkpoint(exp.id) is None and time.time() < deadline:
        time.sleep(0.1)
    assert store.latest_checkpoint(exp.id) is not None
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    step = int(store.latest_checkpoint(exp.id).name.split("-")[1])
    owner = store.holder(exp.id)
    assert owner is not None and owner.host == "node-a"  # not expired yet
    assert decide(store, exp).reason.startswith(f"running on node-a:{victim.pid} since ")
    time.sleep(1.6)  # three heartbeats of 0.5 s
    assert store.holder(exp.id) is None
    decision = decide(store, exp)
    assert decision.action == "resume" and decision.checkpoint_step >= step > 0
    events = []
    spec.run(report=False, on_event=lambda e: events.append(e))
    record = store.read_result(exp.id)
    assert record.status == "ok" and record.steps == exp.steps
    assert any(e.kind == "decision" and e.experiment.id == exp.id and e.decision.action == "resume" for e in events)
    assert record.loss == pytest.approx(_reference(spec, in_tmp / "ref")[exp.id], rel=1e-6)


def test_an_owner_whose_lease_is_taken_over_stops_without_writing(in_tmp):
    """A newer lease appears mid-training (another node judged this one dead): the loop stops at its
    next step and nothing of the experiment is written by the old owner."""
    spec = Spec.load(_spec(in_tmp, "heartbeat_s = 0.2\n", model="SlowMLP", sizes=(8, 16), budgets=(3e6,)))
    exp = next(e for e in spec.plan().experiments if e.size == 8)
    store = Store(spec.run_dir)
    events = []

    def usurp(event) -> None:
        events.append(event)
        if event.kind == "log" and event.experiment.id == exp.id and not (store.exp_dir(exp.id) / "lease.9").exists():
            mine = store.holder(exp.id)
            other = mine.model_copy(update={"host": "node-b", "pid": 7, "token": "usurper", "heartbeat": time.time() + 60})
            (store.exp_dir(exp.id) / "lease.9").write_text(other.model_dump_json())
    spec.run(report=False, on_event=usurp)
    assert store.read_result(exp.id) is None and store.latest_checkpoint(exp.id) is None
    skipped = [e.decision.reason for e in events if e.kind == "decision" and e.experiment.id == exp.id]
    assert any("taken over by node-b:7" in r and "nothing written" in r for r in skipped), skipped
    other = next(e for e in spec.plan().experiments if e.size == 16)
    assert store.read_result(other.id).status == "ok"  # the sweep went on


# -- jobs ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_through_submitit_jobs_equals_the_in_process_run(in_tmp):
    spec = Spec.load(_spec(in_tmp, LOCAL + "array_parallelism = 2\n", sizes=(4, 8, 16), budgets=(1e6,)))
    result = spec.run()
    jobs = json.loads((spec.run_dir / "launcher" / "jobs.json").read_text())
    # one experiment per task, but the local executor starts every job at once: two tasks (2 + 1)
    assert len(jobs["submissions"]) == 1 and [len(j["experiments"]) for j in jobs["submissions"][0]["jobs"]] == [2, 1]
    store = Store(spec.run_dir)
    reference = _reference(spec, in_tmp / "ref")
    for exp_id, loss in reference.items():
        record = store.read_result(exp_id)
        assert record.status == "ok" and record.loss == pytest.approx(loss, rel=1e-9, abs=0)
    assert result.fits.num_points == 3
    assert spec.submit().jobs == []  # nothing left: nothing submitted
    states = {r.id: (r.state, r.job_state) for r in spec.status()}
    assert all(s == ("done", "COMPLETED") for s in states.values()), states


@pytest.mark.slow
def test_a_job_past_its_timeout_is_requeued_and_resumes_to_the_same_loss(in_tmp):
    """USR2 arrives 15 s after a job starts, before its experiment ends: the loop finishes the step,
    checkpoints, submitit requeues it, and the requeued job resumes at that step.  (submitit's local
    controller restarts a job at most 6 times: 8-s rounds ran out of them on a loaded machine.)"""
    launcher = LOCAL + "timeout_min = 1\nsignal_delay_s = 45\nmax_requeues = 30\n"
    spec = Spec.load(_spec(in_tmp, launcher, model="SlowMLP", sizes=(8, 16), budgets=(2e7,), train="checkpoint_seconds = 600\n"))
    exp = next(e for e in spec.plan().experiments if e.size == 8)
    spec.run(report=False)
    logs = _logs(spec.run_dir)
    resumed = [int(s) for s in re.findall(rf"resume {exp.id}: checkpoint at step (\d+)/", logs)]
    assert resumed and all(0 < s < exp.steps for s in resumed), logs[-3000:]
    assert "checkpoint written; requeueing" in logs
    record = Store(spec.run_dir).read_result(exp.id)
    assert record.status == "ok" and record.steps == exp.steps
    assert record.loss == pytest.approx(_reference(spec, in_tmp / "ref")[exp.id], rel=1e-6)


@pytest.mark.slow
def test_two_job_arrays_on_one_store_never_train_the_same_experiment(in_tmp):
    from flops_fit.execute.dispatch import wait_for
    from flops_fit.execute.submit import submit_plan

    spec = Spec.load(_spec(in_tmp, LOCAL, model="SlowMLP", sizes=(4, 8, 16), budgets=(3e6,)))  # 1-4 s each
    plan = spec.check()
    first, jobs_a = submit_plan(spec, plan)
    second, jobs_b = submit_plan(spec, plan)  # submitted before any finished: the same experiments
    assert {i for j in first.jobs for i in j.experiments} == {i for j in second.jobs for i in j.experiments}
    store = Store(spec.run_dir)
    assert wait_for(jobs_a + jobs_b, first.jobs + second.jobs, store, poll_s=0.5) == []
    logs = _logs(spec.run_dir)
    for exp in plan.experiments:
        assert len(re.findall(rf"^ok {exp.id}:", logs, re.M)) == 1, logs  # trained by exactly one job
        assert store.read_result(exp.id).status == "ok"
    assert "in other hands" in logs or "done earlier" in logs  # the other array's tasks saw it held or done


def test_a_failed_job_is_one_line_with_its_experiment_and_log(in_tmp):
    from typer.testing import CliRunner

    from flops_fit.cli import app
    from flops_fit.execute.dispatch import wait_for
    from flops_fit.execute.submit import submit_plan

    path = _spec(in_tmp, LOCAL, model="DiesInJobs", sizes=(4, 8, 16), budgets=(1e6,))
    spec = Spec.load(path)
    sub, jobs = submit_plan(spec, spec.check())
    failures = wait_for(jobs, sub.jobs, Store(spec.run_dir), poll_s=0.2)
    assert len(failures) == 3
    line = failures[0].line()
    assert "\n" not in line and failures[0].experiments[0] in line and line.endswith("_log.err")
    assert "without a result" in line and Path(failures[0].log).exists()
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 1 and res.stderr.count("error: job ") == 3 and "Traceback" not in res.stderr, res.stderr


# -- Slurm, through stand-ins for sbatch, srun and sacct ----------------------------------
SLURM = '''kind = "slurm"
partition = "gpu-long"
account = "scaling-lab"
gpus_per_task = 1
gpus_large = 4
cpus_per_gpu = 6
mem_gb = 64
timeout_min = 90
array_parallelism = 1
max_requeues = 2
signal_delay_s = 100
setup = ["module load cuda/12.4", "source ~/venvs/ff/bin/activate"]
additional = { constraint = "h100", qos = "high" }
'''


def _stand_ins(folder: Path) -> Path:
    """``sbatch`` printing a new job id per call (and keeping nothing else), ``srun``, and ``sacct``
    answering, for each array it is asked about, RUNNING for task 0 and PENDING for the rest."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\nn=$(cat "$0.count" 2>/dev/null || echo 4241)\nn=$((n+1))\n'
                                    'echo $n > "$0.count"\necho "Submitted batch job $n"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sacct").write_text('#!/bin/sh\necho "$@" >> "$0.calls"\necho "JobID|State|NodeList"\nwhile [ $# -gt 0 ]; do\n'  # the -j arrays asked
                                   '  if [ "$1" = "-j" ]; then j=$2; echo "${j}_0|RUNNING|gpu-node-1"\n'
                                   '    for i in 1 2 3 4 5; do echo "${j}_$i|PENDING|None"; done; fi\n  shift\ndone\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def test_slurm_submission_writes_the_launcher_settings_into_the_sbatch_scripts(in_tmp, monkeypatch):
    from typer.testing import CliRunner

    from flops_fit.cli import app

    monkeypatch.setenv("PATH", f"{_stand_ins(in_tmp)}{os.pathsep}{os.environ['PATH']}")
    path = _spec(in_tmp, SLURM, sizes=(4, 6, 8, 12, 16, 32), budgets=(1e6,),
                 train="workers_per_gpu = 2\ndata_parallel_min_params = 150\n")
    res = CliRunner().invoke(app, ["submit", str(path)])
    assert res.exit_code == 0, res.stderr
    spec = Spec.load(path)
    jobs = json.loads((spec.run_dir / "launcher" / "jobs.json").read_text())["submissions"][0]
    by_array = {}
    for job in jobs["jobs"]:
        by_array.setdefault(job["array"], []).append(job)
    big = {e.id for e in spec.plan().experiments if e.num_params >= 150}
    assert big and {i for j in by_array["data-parallel"] for i in j["experiments"]} == big
    n_one = len(by_array["one-gpu"])
    assert n_one >= 2 and [j["job_id"] for j in by_array["one-gpu"]] == [f"4242_{i}" for i in range(n_one)]
    assert all(len(j["experiments"]) <= 2 for j in by_array["one-gpu"])  # workers_per_gpu = 2 per task
    assert by_array["data-parallel"][0]["job_id"].startswith("4243_")
    assert "4242_0" in res.stdout and "one-gpu" in res.stdout
    one = (spec.run_dir / "launcher/logs/4242/4242_submission.sh").read_text()
    large = (spec.run_dir / "launcher/logs/4243/4243_submission.sh").read_text()
    for script in (one, large):
        for line in ("#SBATCH --partition=gpu-long", "#SBATCH --account=scaling-lab", "#SBATCH --time=90",
                     "#SBATCH --mem=64GB", "#SBATCH --signal=USR2@100", "#SBATCH --constraint=h100", "#SBATCH --qos=high",
                     "#SBATCH --job-name=flops-fit-toy", "module load cuda/12.4", "source ~/venvs/ff/bin/activate"):
            assert line in script, (line, script)
    assert f"#SBATCH --array=0-{n_one - 1}%1" in one and "#SBATCH --gpus-per-node=1" in one
    assert "#SBATCH --ntasks-per-node=2" in one and "#SBATCH --cpus-per-task=3" in one  # 2 workers share 6 cores
    assert "#SBATCH --gpus-per-node=4" in large and "#SBATCH --ntasks-per-node=4" in large
    assert "#SBATCH --cpus-per-task=6" in large
    # the scheduler's states come from sacct, asked by a fresh process (as a user's `status` is), in one call
    res = subprocess.run([sys.executable, "-m", "flops_fit", "status", str(path), "--json"], capture_output=True,
                         text=True, env=os.environ.copy(), timeout=120)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {r["job_state"] for r in rows} == {"RUNNING", "PENDING"} and {r["state"] for r in rows} == {"pending"}
    calls = (in_tmp / "bin" / "sacct.calls").read_text().splitlines()
    assert len(calls) == 1 and "-j 4242" in calls[0] and "-j 4243" in calls[0], calls
    res = CliRunner().invoke(app, ["status", str(path)])
    assert res.exit_code == 0 and "RUNNING" in res.stdout and "PENDING" in res.stdout, res.stdout


@pytest.mark.parametrize("launcher, key, words", [
    ('kind = "submitit-local"\npartion = "gpu"\n', "launcher.partion", "did you mean 'partition'"),
    ('kind = "slurm"\n', "launcher.partition", "needs the partition"),
    ('kind = "submitit-local"\ntimeout_min = 0\n', "launcher.timeout_min", "greater than 0"),
])
def test_bad_launcher_tables_are_one_line_errors_and_nothing_is_written(in_tmp, launcher, key, words):
    from typer.testing import CliRunner

    from flops_fit.cli import app

    path = _spec(in_tmp, launcher, sizes=(4, 8, 16), budgets=(1e6,))
    for command in ("submit", "run", "validate"):
        res = CliRunner().invoke(app, [command, str(path)])
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert res.exit_code == 1 and len(errors) == 1 and key in errors[0] and words in errors[0], res.stderr
        assert f"{path.name}:" in errors[0] and "Traceback" not in res.stderr
    assert not (in_tmp / "runs").exists()


def test_a_launcher_without_submitit_says_how_to_install_it(in_tmp, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from flops_fit.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a))
    path = _spec(in_tmp, 'kind = "submitit-local"\n', sizes=(4, 8, 16), budgets=(1e6,))
    res = CliRunner().invoke(app, ["submit", str(path)])
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "launcher.kind" in errors[0], res.stderr
    assert "pip install 'flops-fit[slurm]'" in errors[0] and not (in_tmp / "runs").exists()


def test_submit_with_the_local_launcher_is_refused(in_tmp):
    from typer.testing import CliRunner

    from flops_fit.cli import app

    path = write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6,))
    res = CliRunner().invoke(app, ["submit", str(path)])
    assert res.exit_code == 1 and "launcher.kind" in res.stderr and "flops-fit run" in res.stderr
    assert not (in_tmp / "runs").exists()


def test_no_launcher_key_changes_an_experiment_id(in_tmp):
    path = write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6, 3e6))
    spec = Spec.load(path)
    base = [e.id for e in spec.plan().experiments]
    changes = {"kind": "submitit-local", "partition": "p", "account": "a", "gpus_per_task": 2, "gpus_large": 2,
               "cpus_per_gpu": 1, "mem_gb": 8.0, "timeout_min": 5.0, "array_parallelism": 2, "max_requeues": 0,
               "signal_delay_s": 5, "setup": ["true"], "additional": {"qos": "x"}, "heartbeat_s": 1.0,
               "experiments_per_worker": 3}
    assert set(changes) == set(LauncherSpec.model_fields)
    for key, value in changes.items():
        changed = spec.model_copy(update={"launcher": LauncherSpec(**{key: value})})
        assert [e.id for e in changed.plan().experiments] == base, key


@pytest.mark.slow
@pytest.mark.multiprocess
def test_data_parallel_tasks_get_torch_distributed_from_submitit(in_tmp):
    """train.parallel = "data", gpus_large = 2: each task is two processes (gloo on CPU) whose
    rank, world size and master address come from submitit's TorchDistributedEnvironment."""
    launcher = 'kind = "submitit-local"\ngpus_per_task = 0\ngpus_large = 2\n'
    spec = Spec.load(_spec(in_tmp, launcher, sizes=(4, 8), budgets=(1e6,), train='parallel = "data"\n',
                           analysis='approaches = ["envelope"]'))
    spec.run(report=False)
    jobs = json.loads((spec.run_dir / "launcher" / "jobs.json").read_text())["submissions"][0]["jobs"]
    assert {j["array"] for j in jobs} == {"data-parallel"}
    store = Store(spec.run_dir)
    reference = _reference(spec, in_tmp / "ref")
    for exp_id, loss in reference.items():
        record = store.read_result(exp_id)
        assert record.provenance.processes == 2 and record.loss == pytest.approx(loss, rel=1e-4)


@pytest.mark.slow
def test_run_accepts_a_submitit_executor(in_tmp):
    spec = Spec.load(write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6,), train='device = "cpu"\n'))  # launcher: local
    executor = submitit.LocalExecutor(folder=in_tmp / "jobs" / "%j")
    executor.update_parameters(timeout_min=5)
    spec.run(executor=executor, report=False)
    sub = json.loads((spec.run_dir / "launcher" / "jobs.json").read_text())["submissions"][0]
    assert sub["kind"] == "submitit-local" and len(sub["jobs"]) == 3
    assert all(Path(j["stderr"]).is_relative_to(in_tmp / "jobs") for j in sub["jobs"])
    store = Store(spec.run_dir)
    for exp_id, loss in _reference(spec, in_tmp / "ref").items():
        assert store.read_result(exp_id).loss == loss


def test_slurm_refusals_are_one_line_errors(in_tmp, monkeypatch):
    from typer.testing import CliRunner

    from flops_fit.cli import app

    path = _spec(in_tmp, SLURM, sizes=(4, 8, 16), budgets=(1e6,))
    monkeypatch.setenv("PATH", str(in_tmp / "nothing"))  # not a login node: no sbatch
    res = CliRunner().invoke(app, ["submit", str(path)])
    assert res.exit_code == 1 and "launcher.kind" in res.stderr and "sbatch or srun is not on" in res.stderr, res.stderr
    assert not (in_tmp / "runs" / "toy" / "launcher").exists()
    bin_dir = _stand_ins(in_tmp)
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: gpu-long" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin:/bin")
    res = CliRunner().invoke(app, ["submit", str(path)])
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "invalid partition specified: gpu-long" in errors[0], res.stderr
    assert "Traceback" not in res.stderr and not (in_tmp / "runs" / "toy" / "launcher" / "jobs.json").exists()


@pytest.mark.slow
def test_the_submitting_process_killed_mid_sweep_loses_nothing_and_trains_nothing_twice(in_tmp):
    """`run` with the local submitit launcher is SIGKILLed while its jobs train; `status` answers
    (one line per experiment, no traceback), and `run` again finishes the sweep: every experiment
    trained exactly once over both runs' jobs, losses equal to the in-process run."""
    path = _spec(in_tmp, LOCAL, model="SlowMLP", sizes=(4, 8), budgets=(2e6,), analysis='approaches = ["envelope"]',
                 train="checkpoint_steps = 20\n")
    spec = Spec.load(path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "flops_fit"]
    first = subprocess.Popen(cli + ["run", str(path)], cwd=in_tmp, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(spec.run_dir.glob("experiments/*/checkpoints/*")) and time.time() < deadline:
        time.sleep(0.05)
    assert not list(spec.run_dir.glob("experiments/*/result.json")), "killed after the sweep, not during it"
    first.send_signal(signal.SIGKILL)
    first.wait()
    status = subprocess.run(cli + ["status", str(path), "--json"], cwd=in_tmp, env=env, capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr[-2000:]
    assert {r["id"] for r in json.loads(status.stdout)} == {e.id for e in spec.plan().experiments}
    again = subprocess.run(cli + ["run", str(path)], cwd=in_tmp, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    deadline = time.time() + 60  # jobs of the killed run may still be finishing what they hold
    while time.time() < deadline and any(Store(spec.run_dir).holder(e.id) for e in spec.plan().experiments):
        time.sleep(0.2)
    logs = _logs(spec.run_dir)
    store = Store(spec.run_dir)
    reference = _reference(spec, in_tmp / "ref")
    for exp in spec.plan().experiments:
        assert len(re.findall(rf"^ok {exp.id}:", logs, re.M)) == 1, logs[-3000:]  # trained by exactly one job
        assert store.read_result(exp.id).loss == pytest.approx(reference[exp.id], rel=1e-6)
