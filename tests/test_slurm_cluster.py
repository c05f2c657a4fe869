"""Against a real one-node Slurm cluster (slurmctld, slurmd, slurmdbd: ``tests/slurm_cluster.py``):
job arrays submitted by ``flops-fit``, their state read from the real ``sacct``, the losses those
jobs train equal to the in-process run's.  Skipped unless ``FLOPS_FIT_SLURM`` is set."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flops_fit import Spec
from flops_fit.spec.launcher import LauncherSpec
from flops_fit.store.store import Store
from tests.conftest import ROOT, write_toy_spec

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one cluster, on one worker
submitit = pytest.importorskip("submitit")


def _spec(folder: Path, launcher: str = "", name: str = "toy", **kw) -> Path:
    path = write_toy_spec(folder, name=name, train='device = "cpu"\n', analysis='approaches = ["envelope"]', **kw)
    path.write_text(path.read_text() + '\n[launcher]\nkind = "slurm"\npartition = "debug"\ntimeout_min = 10\n'
                    'cpus_per_gpu = 1\nheartbeat_s = 2\n' + launcher)
    return path


def _reference(spec: Spec, folder: Path) -> dict[str, float]:
    local = spec.model_copy(update={"launcher": LauncherSpec(), "runs_dir": str(folder)})
    local.run(report=False)
    store = Store(local.run_dir)
    return {e.id: store.read_result(e.id).loss for e in local.plan().experiments}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "flops_fit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_partition_without_gpus_is_one_line_naming_the_key(slurm_cluster, in_tmp):
    path = _spec(in_tmp, sizes=(4, 8), budgets=(1e6,))
    path.write_text(path.read_text().replace("cpus_per_gpu = 1\n", "cpus_per_gpu = 1\ngpus_per_task = 1\n"))
    res = _cli("run", str(path), cwd=in_tmp)
    assert res.returncode == 1, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "launcher.gpus_per_task" in errors[0], res.stderr
    assert "Invalid generic resource" in errors[0] and res.stderr.count("Invalid generic resource") == 1
    assert "gpus_per_task = 0" in res.stderr and "Traceback" not in res.stderr


def test_a_sweep_as_real_job_arrays_status_through_sacct_and_the_in_process_losses(slurm_cluster, in_tmp):
    path = _spec(in_tmp, "gpus_per_task = 0\n", sizes=(4, 8, 16), budgets=(1e6,))
    spec = Spec.load(path)
    started = time.time()
    res = _cli("run", str(path), cwd=in_tmp)
    wall = time.time() - started
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = json.loads((spec.run_dir / "launcher" / "jobs.json").read_text())["submissions"][0]["jobs"]
    assert jobs and all(j["job_id"] for j in jobs)
    status = _cli("status", str(path), "--json", cwd=in_tmp)
    assert status.returncode == 0, status.stderr[-2000:]
    rows = {r["id"]: r for r in json.loads(status.stdout)}
    assert all(r["state"] == "done" for r in rows.values()), rows
    deadline = time.time() + 30  # sacct completes a record 1-3 s after the job ends
    while time.time() < deadline and any(r["job_state"] != "COMPLETED" for r in rows.values()):
        time.sleep(1)
        rows = {r["id"]: r for r in json.loads(_cli("status", str(path), "--json", cwd=in_tmp).stdout)}
    assert {r["job_state"] for r in rows.values()} == {"COMPLETED"}, rows
    sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State"], capture_output=True, text=True)
    assert any(j["job_id"].split("_")[0] in sacct.stdout for j in jobs), sacct.stdout
    store = Store(spec.run_dir)
    reference = _reference(spec, in_tmp / "ref")
    for exp_id, loss in reference.items():
        assert store.read_result(exp_id).loss == pytest.approx(loss, rel=1e-6)
    # the overhead of training inside a task: its threads come from SLURM_CPUS_PER_TASK (with every
    # core's threads in each of two tasks on two cores, training took 3-20x as long as in process)
    local = Store(in_tmp / "ref" / spec.name)
    in_array = sum(store.read_result(i).train_seconds for i in reference)
    in_process = sum(local.read_result(i).train_seconds for i in reference)
    print(f"3 experiments as a real array: {wall:.1f} s; training {in_array:.2f} s in the tasks against "
          f"{in_process:.2f} s in process ({in_array / in_process:.2f}x)")
    assert in_array < 5 * in_process, (in_array, in_process)


def _run_in_background(path: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "flops_fit", "run", str(path)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _first_checkpoint(spec: Spec, timeout: float = 120.0) -> tuple[str, str]:
    """(experiment id, its job id) once one experiment has a complete checkpoint."""
    store, deadline = Store(spec.run_dir), time.time() + timeout
    while time.time() < deadline:
        for exp in spec.plan().experiments:
            if store.latest_checkpoint(exp.id) is not None:
                jobs = json.loads((spec.run_dir / "launcher" / "jobs.json").read_text())["submissions"][-1]["jobs"]
                return exp.id, next(j["job_id"] for j in jobs if exp.id in j["experiments"])
        time.sleep(0.2)
    raise AssertionError("no checkpoint came")


def _logs(spec: Spec) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((spec.run_dir / "launcher").rglob("*.err")))


def test_scontrol_requeue_of_a_running_task_resumes_to_the_in_process_loss(slurm_cluster, in_tmp):
    """A preemption: the running task is requeued by the scheduler (SIGTERM, then back to the
    queue); it checkpoints the step it reached and the requeued task resumes there."""
    path = _spec(in_tmp, "gpus_per_task = 0\n", model="SlowMLP", sizes=(8, 16), budgets=(3e6,))
    path.write_text(path.read_text().replace('device = "cpu"\n', 'device = "cpu"\ncheckpoint_steps = 20\n'))
    spec = Spec.load(path)
    run = _run_in_background(path, in_tmp)
    exp_id, job_id = _first_checkpoint(spec)
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    logs = _logs(spec)
    assert f"resume {exp_id}: checkpoint at step" in logs, logs[-3000:]
    store, reference = Store(spec.run_dir), _reference(spec, in_tmp / "ref")
    for eid, loss in reference.items():
        assert store.read_result(eid).loss == pytest.approx(loss, rel=1e-6)


def test_a_job_past_its_slurm_time_limit_checkpoints_on_usr2_and_resumes_after_its_requeue(slurm_cluster, in_tmp):
    """Slurm's own limit: ``--time=1 --signal=USR2@30`` (Slurm may send it up to 60 s early, so the
    test asks only for "before the limit").  The loop finishes its step and checkpoints, submitit
    requeues the job, the requeued task resumes at that step and ends with the loss trained in
    process (the sleep of SlowMLP changes the time a step takes, not what it computes)."""
    launcher = "gpus_per_task = 0\nsignal_delay_s = 30\nmax_requeues = 10\n"
    path = _spec(in_tmp, launcher, model="SlowMLP", sizes=(8, 16), budgets=(6e7,))
    path.write_text(path.read_text().replace("timeout_min = 10", "timeout_min = 1")
                    .replace('device = "cpu"\n', 'device = "cpu"\ncheckpoint_seconds = 600\n'))
    spec = Spec.load(path)
    exp = next(e for e in spec.plan().experiments if e.size == 8)  # ~50 s of steps: past the signal
    started = time.time()
    res = _cli("run", str(path), cwd=in_tmp)
    wall = time.time() - started
    assert res.returncode == 0, res.stderr[-3000:]
    logs = _logs(spec)
    assert "checkpoint written; requeueing" in logs, logs[-3000:]
    resumed = [int(s) for s in re.findall(rf"resume {exp.id}: checkpoint at step (\d+)/", logs)]
    assert resumed and all(0 < s < exp.steps for s in resumed), logs[-3000:]
    job_id = next(j["job_id"] for j in json.loads((spec.run_dir / "launcher" / "jobs.json").read_text())
                  ["submissions"][0]["jobs"] if exp.id in j["experiments"])
    history = subprocess.run(["sacct", "-n", "-X", "-P", "-D", "-j", job_id, "-o", "JobID,State"],
                             capture_output=True, text=True).stdout
    assert "REQUEUED" in history or history.count("\n") > 1, history  # it ran more than once
    record = Store(spec.run_dir).read_result(exp.id)
    assert record.status == "ok" and record.steps == exp.steps
    plain = Spec.load(path).model_copy(update={"model": spec.model.model_copy(update={"target": "tests.toy:MLP"})})
    twin = next(e for e in plain.plan().experiments if e.size == 8)
    assert record.loss == pytest.approx(_reference(plain, in_tmp / "ref")[twin.id], rel=1e-6)
    print(f"requeued past its limit and resumed: {wall:.1f} s, resumed at steps {resumed}, sacct: {history!r}")


def test_scancel_then_run_again_resumes_and_a_crashing_task_is_reported_with_its_log(slurm_cluster, in_tmp):
    path = _spec(in_tmp, "gpus_per_task = 0\n", model="SlowMLP", sizes=(8, 16), budgets=(3e6,))
    path.write_text(path.read_text().replace('device = "cpu"\n', 'device = "cpu"\ncheckpoint_steps = 20\n'))
    spec = Spec.load(path)
    run = _run_in_background(path, in_tmp)
    exp_id, job_id = _first_checkpoint(spec)
    subprocess.run(["scancel", job_id.split("_")[0]], check=True)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert "CANCELLED" in err or "cancelled" in err.lower(), err[-3000:]
    again = _cli("run", str(path), cwd=in_tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resume {exp_id}: checkpoint at step" in _logs(spec)
    store, reference = Store(spec.run_dir), _reference(spec, in_tmp / "ref")
    for eid, loss in reference.items():
        assert store.read_result(eid).loss == pytest.approx(loss, rel=1e-6)
    # a task that crashes (killed as by the OOM killer): its experiment and its log in one line
    crash = _spec(in_tmp, "gpus_per_task = 0\n", name="crash", model="DiesInJobs", sizes=(4, 8), budgets=(1e6,))
    res = _cli("run", str(crash), cwd=in_tmp)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: job ")]
    assert res.returncode == 1 and len(errors) == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert all(line.endswith("_log.err") and Path(line.rsplit("log: ", 1)[1]).exists() for line in errors), errors


def test_two_real_arrays_on_one_store_train_each_experiment_once(slurm_cluster, in_tmp):
    from flops_fit.execute.dispatch import wait_for
    from flops_fit.execute.submit import submit_plan

    spec = Spec.load(_spec(in_tmp, "gpus_per_task = 0\n", model="SlowMLP", sizes=(4, 8, 16), budgets=(1e6,)))
    plan = spec.check()
    first, jobs_a = submit_plan(spec, plan)
    second, jobs_b = submit_plan(spec, plan)  # before any finished: the same experiments
    assert {i for j in first.jobs for i in j.experiments} == {i for j in second.jobs for i in j.experiments}
    store = Store(spec.run_dir)
    assert wait_for(jobs_a + jobs_b, first.jobs + second.jobs, store, poll_s=0.5) == []
    logs = _logs(spec)
    for exp in plan.experiments:
        assert len(re.findall(rf"^ok {exp.id}:", logs, re.M)) == 1, logs[-3000:]  # trained by one job
        assert store.read_result(exp.id).status == "ok"


def test_confirm_and_transfer_train_on_the_cluster_and_show_in_status(slurm_cluster, in_tmp):
    """The forward check's and the transfer check's runs go where the sweep's go (job arrays, several
    experiments a worker), and ``status`` lists them under their part."""
    path = _spec(in_tmp, "gpus_per_task = 0\nexperiments_per_worker = 4\n", sizes=(4, 6, 8, 12, 16, 24, 32),
                 budgets=(1e6, 2e6, 4e6))
    text = path.read_text().replace('approaches = ["envelope"]', 'approaches = ["isoflop", "parametric"]')
    path.write_text(text
                    .replace("[sweep]\n", "[sweep]\nsizes_per_budget = 5\n"))
    spec = Spec.load(path)
    res = _cli("run", str(path), cwd=in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]

    def submissions():
        return json.loads((spec.run_dir / "launcher" / "jobs.json").read_text())["submissions"]

    first = submissions()
    assert len({j["job_id"] for j in first[0]["jobs"]}) < len(spec.plan().experiments)  # packed: fewer tasks
    res = _cli("confirm", str(path), "--budget", "8e6", "--sizes", "3", cwd=in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _cli("transfer", str(path), "--middle", "--max-steps", "40", cwd=in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    later = submissions()[len(first):]
    assert len(later) == 2 and all(s["kind"] == "slurm" for s in later), later
    rows = json.loads(_cli("status", str(path), "--json", cwd=in_tmp).stdout)
    parts = {}
    for r in rows:
        parts.setdefault(r["part"], []).append(r)
    assert set(parts) == {"sweep", "confirm-8e+06", "transfer"}, set(parts)
    assert len(parts["confirm-8e+06"]) == 3 and len(parts["transfer"]) == 21  # 3 widths x 7 rates
    for part, submission in zip(("confirm-8e+06", "transfer"), later):
        ids = {e for j in submission["jobs"] for e in j["experiments"]}
        assert ids == {r["id"] for r in parts[part]}
        assert all(r["state"] == "done" and r["job_id"] for r in parts[part]), parts[part]
    sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State"], capture_output=True, text=True)
    assert all(j["job_id"].split("_")[0] in sacct.stdout for s in later for j in s["jobs"]), sacct.stdout
