"""Against a real one-node Slurm cluster (slurmctld, slurmd, slurmdbd: ``tests/slurm_cluster.py``):
job arrays submitted by ``flops-fit``, their state read from the real ``sacct``, the losses those
jobs train equal to the in-process run's.  Skipped unless ``FLOPS_FIT_SLURM`` is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flops_fit import Spec
from flops_fit.launcher_spec import LauncherSpec
from flops_fit.store import Store
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
    print(f"3 experiments as a real array: {wall:.1f} s")
