"""A lease's worst day: its owner paused past expiry and resumed after a takeover, its file deleted
while the owner trains, a folder where no lease can be written.  Nothing of a lost claim reaches
the store; the experiment is trained to the loss of a clean run."""

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
from flops_fit.store.lease import LeaseInfo, LeaseLost, acquire
from flops_fit.store.store import Store
from tests.conftest import ROOT, write_toy_spec


def _spec(folder, train: str = "", **kw):
    path = write_toy_spec(folder, model="SlowMLP", sizes=(8, 16), budgets=(3e6,),
                          train='device = "cpu"\ncheckpoint_steps = 25\n' + train,
                          analysis='approaches = ["envelope"]', **kw)  # two runs' curves: a fit, exit 0
    path.write_text(path.read_text() + '\n[launcher]\nheartbeat_s = 0.5\n')
    return path


def _reference(spec: Spec, folder) -> dict[str, float]:
    local = spec.model_copy(update={"runs_dir": str(folder)})
    local.run(report=False)
    store = Store(local.run_dir)
    return {e.id: store.read_result(e.id).loss for e in local.plan().experiments}


def _take_over(folder) -> None:
    """What another process's claim leaves: the next generation of the lease, live."""
    now = time.time()
    taker = LeaseInfo(host="node-b", pid=1, token="taker", since=now, heartbeat=now, interval_s=30.0)
    (folder / "lease.1").write_text(taker.model_dump_json())


def test_an_overtaken_owner_writes_no_checkpoint_before_its_heartbeat_notices(in_tmp):
    """An owner paused past its lease's expiry resumes with a stale view: its heartbeat thread has
    not run yet.  Its next checkpoint must renew the lease first, find it taken, and stop."""
    from flops_fit.execute.runner import make_accelerator
    from flops_fit.execute.worker import train_experiment

    spec = Spec.load(_spec(in_tmp))
    exp = spec.plan().experiments[0]
    store = Store(spec.run_dir)
    lease = store.acquire(exp.id, 30.0)  # no heartbeat thread: what a paused owner looks like on waking
    _take_over(store.root / "experiments" / exp.id)
    with pytest.raises(LeaseLost, match="taken over by node-b"):
        train_experiment(exp.job, store, make_accelerator(spec.plan().runtime, str(in_tmp)), lease=lease)
    assert store.latest_checkpoint(exp.id) is None and store.read_result(exp.id) is None


def test_a_deleted_lease_is_a_lost_claim(tmp_path):
    lease = acquire(tmp_path / "exp", interval_s=30.0)
    lease.check()  # held: renewed
    (tmp_path / "exp" / "lease.0").unlink()
    with pytest.raises(LeaseLost, match="deleted"):
        lease.check()


def test_a_lease_deleted_after_the_owners_check_stays_deleted(tmp_path, monkeypatch):
    """The heartbeat checks that it still holds the lease, then writes: a deletion between the two
    must not be undone by the write (the owner would train on, never told)."""
    lease = acquire(tmp_path / "exp", interval_s=30.0)
    path = tmp_path / "exp" / "lease.0"
    held = lease.held

    def held_then_deleted() -> bool:
        ok = held()
        path.unlink()
        return ok

    monkeypatch.setattr(lease, "held", held_then_deleted)
    assert lease.refresh() is False and not path.exists()
    monkeypatch.undo()
    with pytest.raises(LeaseLost, match="deleted"):
        lease.check()


def _env(host: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if host:
        env["FLOPS_FIT_HOST"] = host
    return env


def _wait(cond, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline:
        time.sleep(0.05)
    assert cond()


@pytest.mark.slow
def test_sigstop_past_expiry_then_sigcont_after_a_takeover_writes_nothing(in_tmp):
    """The owner (on "node-a") is stopped for longer than three heartbeats; this process takes the
    experiment over and finishes it; the owner, continued, stops without writing: the taker's
    result stands, no checkpoint of the old owner appears."""
    spec = Spec.load(_spec(in_tmp))
    plan = spec.plan()
    exp = next(e for e in plan.experiments if e.size == 16)
    store = Store(spec.run_dir)
    store.write_plan_json(plan.to_json())
    owner = subprocess.Popen([sys.executable, "-m", "flops_fit.execute.launch", str(spec.run_dir),
                              json.dumps({"ids": [exp.id]})], env=_env("node-a"), stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: store.latest_checkpoint(exp.id) is not None)
        owner.send_signal(signal.SIGSTOP)
        time.sleep(2.0)  # three heartbeats of 0.5 s and more
        assert store.holder(exp.id) is None
        _run_one(spec, exp)
        record = store.read_result(exp.id)
        assert record is not None and record.status == "ok"
        written = (store.root / "experiments" / exp.id / "result.json").read_bytes()
        owner.send_signal(signal.SIGCONT)
        _, err = owner.communicate(timeout=120)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert "taken over" in err or "deleted" in err, err[-2000:]
    assert (store.root / "experiments" / exp.id / "result.json").read_bytes() == written
    assert store.latest_checkpoint(exp.id) is None  # the taker cleared them; the owner wrote none back
    assert record.loss == pytest.approx(_reference(spec, in_tmp / "ref")[exp.id], rel=1e-6)


def _run_one(spec: Spec, exp) -> None:
    from flops_fit.execute.runner import make_accelerator, run_experiments

    plan = spec.plan()
    store = Store(spec.run_dir)
    trained = run_experiments([exp], store, make_accelerator(plan.runtime, str(spec.run_dir)),
                              runtime=plan.runtime)
    assert [r.id for r in trained] == [exp.id]


def _run_deleting_a_lease(in_tmp, path, store: Store, exp_id: str) -> str:
    """``flops-fit run`` in a subprocess; once ``exp_id`` has a checkpoint, its lease file is deleted
    under it.  Returns the run's stderr."""
    run = subprocess.Popen([sys.executable, "-m", "flops_fit", "run", str(path)], cwd=in_tmp, env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    folder = store.root / "experiments" / exp_id
    _wait(lambda: store.latest_checkpoint(exp_id) is not None and list(folder.glob("lease.*")))
    for lease in folder.glob("lease.*"):
        lease.unlink()
    return run.communicate(timeout=300)[1]


def _rerun_and_reference(in_tmp, path, spec: Spec) -> dict[str, float]:
    """Run again (it must finish every experiment), then the in-process reference losses."""
    rerun = subprocess.run([sys.executable, "-m", "flops_fit", "run", str(path)], cwd=in_tmp, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    store = Store(spec.run_dir)
    missing = [e.id for e in spec.plan().experiments if store.read_result(e.id) is None]
    assert not missing, f"no result for {missing} after the rerun:\n{rerun.stderr[-3000:]}"
    return _reference(spec, in_tmp / "ref")


@pytest.mark.slow
def test_a_lease_deleted_while_its_owner_trains_stops_it_and_a_rerun_finishes(in_tmp):
    path = _spec(in_tmp)
    spec = Spec.load(path)
    store = Store(spec.run_dir)
    first = spec.plan().experiments[0]
    err = _run_deleting_a_lease(in_tmp, path, store, first.id)
    assert "deleted" in err, err[-2000:]
    assert "Traceback" not in err
    reference = _rerun_and_reference(in_tmp, path, spec)
    assert {e.id: store.read_result(e.id).loss for e in spec.plan().experiments} == pytest.approx(reference, rel=1e-6)


def test_a_folder_where_no_lease_can_be_written_is_one_line(in_tmp, monkeypatch):
    """A read-only experiments folder (or a full disk): one error line naming the file, exit 1."""
    import flops_fit.store.lease as lease_mod
    from flops_fit.cli import app

    path = write_toy_spec(in_tmp, sizes=(4, 8), budgets=(1e6,))

    def read_only(target, info):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(lease_mod, "_write_new", read_only)
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 1, res.output
    assert res.stderr.count("error:") == 1 and "lease.0" in res.stderr and "Permission denied" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_a_grouped_members_lease_deleted_stops_that_member_only(in_tmp):
    """[train] group = "on", two seeds a size: the member whose lease is deleted stops with nothing
    written, its group-mate trains on to its result, and a rerun finishes the stopped one."""
    path = _spec(in_tmp, train='group = "on"\n')
    path.write_text(path.read_text().replace("[sweep]\n", '[sweep]\nseeds = [0, 1]\nreplicate = "all"\n'))
    spec = Spec.load(path)
    store = Store(spec.run_dir)
    first = spec.plan().experiments[0]
    err = _run_deleting_a_lease(in_tmp, path, store, first.id)
    assert "deleted" in err and "Traceback" not in err, err[-2000:]
    assert store.read_result(first.id) is None  # nothing of the lost claim was written
    mates = [e for e in spec.plan().experiments if e.size == first.size and e.id != first.id]
    assert mates and all(store.read_result(e.id).status == "ok" for e in mates)  # the group went on
    assert any("stepped together" in n for e in mates for n in store.read_result(e.id).notes)
    reference = _rerun_and_reference(in_tmp, path, spec)
    losses = {e.id: store.read_result(e.id).loss for e in spec.plan().experiments}
    assert losses == pytest.approx(reference, rel=1e-4)  # grouped kernels: float rounding
