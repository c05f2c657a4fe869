"""The engine and the store: end to end, caching, SIGKILL resume, concurrent runs, divergence, 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flops_fit import Spec, find_optimal
from flops_fit.core.errors import SpecError
from flops_fit.store.store import Store
from tests.conftest import ROOT, write_toy_spec


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250", "OMP_NUM_THREADS": "1"}


def _events(spec: Spec, **kw):
    seen = []
    result = spec.run(on_event=seen.append, **kw)
    return result, seen


def test_end_to_end_and_second_run_launches_nothing(in_tmp):
    spec = Spec.load(write_toy_spec(in_tmp, figures=("png",)))
    result, events = _events(spec)
    plan = spec.plan()
    trained = [e for e in events if e.kind == "result"]
    assert len(trained) == len(plan.experiments)
    store = in_tmp / "runs/toy/experiments"
    assert sorted(p.name for p in store.iterdir()) == sorted(e.id for e in plan.experiments)
    report = in_tmp / "runs/toy/report"
    for name in ("fits.json", "chinchilla_table.md", "chinchilla_table.csv", "isoflop.png", "scaling.png"):
        assert (report / name).exists(), name
    assert not list(report.glob("*.pdf"))  # [analysis] figures = ["png"]
    assert result.summary()["points"] + len(result.fits.excluded) == len(plan.experiments)

    _, again = _events(Spec.load(in_tmp / "toy.toml"))
    assert [e for e in again if e.kind == "result"] == []
    assert all(e.decision.action == "skip" and e.decision.reason.startswith("done") for e in again if e.kind == "decision")


def test_result_json_contents(in_tmp):
    spec = Spec.load(write_toy_spec(in_tmp, sizes=(4, 8), budgets=(1e6,)))
    spec.run(report=False)
    exp = spec.plan().experiments[0]
    record = json.loads((in_tmp / "runs/toy/experiments" / exp.id / "result.json").read_text())
    for key in ("id", "status", "loss", "num_params", "num_tokens", "flops", "steps", "train_seconds", "curve", "provenance"):
        assert key in record, key
    assert record["status"] == "ok" and record["steps"] == exp.steps and record["num_params"] == exp.num_params
    assert record["curve"][-1]["step"] == exp.steps and "eval_loss" in record["curve"][-1]
    flops = [p["flops"] for p in record["curve"]]
    assert flops == sorted(flops) and flops[0] < flops[-1] / 10  # FLOP-spaced, early points included
    assert record["provenance"]["torch"] and record["provenance"]["device"]
    assert record["provenance"]["precision"] == "no"  # the Accelerator's mixed_precision, for fp32
    assert record["budget_flops"] == 1e6 and record["hash"] == exp.hash
    assert not (in_tmp / "runs/toy/experiments" / exp.id / "checkpoints").exists()
    lines = (in_tmp / "runs/toy/experiments" / exp.id / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(record["curve"])


def _losses(run_dir: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["loss"] for p in run_dir.glob("experiments/*/result.json")}


def test_sigkill_resumes_to_same_losses(in_tmp):
    train = "checkpoint_steps = 25\n"
    kw = dict(model="SlowMLP", sizes=(8, 16), budgets=(3e6,), train=train, extra_kwargs=", dropout = 0.1")
    spec_path = write_toy_spec(in_tmp, **kw)
    proc = subprocess.Popen([sys.executable, "-m", "flops_fit", "run", str(spec_path)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(in_tmp.glob("runs/toy/experiments/*/checkpoints/*/COMPLETE")):
        time.sleep(0.05)
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(in_tmp.glob("runs/toy/experiments/*/checkpoints/*/COMPLETE")), "no checkpoint before the kill"
    est = Spec.load(spec_path).estimate()
    assert "resume" in {r.action for r in est.experiments}
    Spec.load(spec_path).run(report=False)
    resumed = _losses(in_tmp / "runs/toy")

    shutil.rmtree(in_tmp / "runs")
    Spec.load(spec_path).run(report=False)
    straight = _losses(in_tmp / "runs/toy")
    assert resumed.keys() == straight.keys() and len(resumed) == 2
    for key in resumed:
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key


def test_two_concurrent_runs_train_each_experiment_once(in_tmp):
    spec_path = write_toy_spec(in_tmp, model="SlowMLP", sizes=(4, 8, 16), budgets=(1e6, 2e6))
    procs = [subprocess.Popen([sys.executable, "-m", "flops_fit", "run", str(spec_path)], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trained = [line.split()[1].rstrip(":") for log in logs for line in log.splitlines()
               if line.startswith(("ok ", "diverged "))]
    n = len(Spec.load(spec_path).plan().experiments)
    assert len(trained) == n and len(set(trained)) == n, logs


def test_divergence_is_marked_and_sweep_completes(in_tmp):
    spec = Spec.load(write_toy_spec(in_tmp, model="Exploding", sizes=(4, 8, 16), budgets=(1e6,),
                                    lr=1.0))
    seen = []
    try:
        spec.run(on_event=seen.append, report=False)
    except SpecError:
        pass  # nothing usable to fit is fine: every run diverged
    results = [e.result for e in seen if e.kind == "result"]
    assert len(results) == 3 and {r.status for r in results} == {"diverged"}
    assert all(r.reason for r in results)
    again = Spec.load(in_tmp / "toy.toml").estimate()
    assert all(r.action == "skip" and "diverged" in r.reason for r in again.experiments)
    assert all(r.action == "run" for r in Spec.load(in_tmp / "toy.toml").estimate(retry_failed=True).experiments)


@pytest.mark.multiprocess
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_processes_data_parallel(in_tmp):
    # the envelope fits two runs' curves, so the run ends with a fit (no fit at all exits 1)
    spec_path = write_toy_spec(in_tmp, sizes=(4, 8), budgets=(1e6,), analysis='approaches = ["envelope"]')
    single = subprocess.run([sys.executable, "-m", "flops_fit", "run", str(spec_path)], env=_env(), capture_output=True)
    assert single.returncode == 0, single.stderr
    one = _losses(in_tmp / "runs/toy")
    shutil.rmtree(in_tmp / "runs")
    multi = subprocess.run(["torchrun", "--nproc_per_node", "2", "-m", "flops_fit", "run", str(spec_path)], env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    two = _losses(in_tmp / "runs/toy")
    assert one.keys() == two.keys()
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-4)
    records = [json.loads(p.read_text()) for p in (in_tmp / "runs/toy").glob("experiments/*/result.json")]
    assert {r["provenance"]["processes"] for r in records} == {2}


def test_find_optimal_with_python_objects(in_tmp):
    from tests.toy import MLP, mse, regression

    result = find_optimal(model_cls=MLP, model_size_param="width", model_sizes=[4, 8, 16, 32], model_kwargs={"in_dim": 8},
                          dataset=regression, dataset_kwargs={"n": 1024}, loss_fn=mse, compute_budgets=[1e6, 3e6],
                          train={"batch_size": 16, "learning_rate": 1e-2}, analysis={"bootstrap": 10})
    spec_result = Spec.load(write_toy_spec(in_tmp, name="find_optimal")).run(report=False)
    assert result.summary()["fits"].keys() == spec_result.summary()["fits"].keys()
    with pytest.raises(SpecError, match="cache_key"):
        find_optimal(model_cls=lambda width: MLP(width), model_size_param="width", model_sizes=[4, 8], dataset=regression,
                     loss_fn=mse, compute_budgets=[1e6])


def test_worker_processes_share_the_sweep(in_tmp):
    """train.workers_per_gpu = 2 on CPU: two worker processes claim experiments through the locks."""
    spec_path = write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6, 2e6), train="workers_per_gpu = 2\n")
    proc = subprocess.run([sys.executable, "-m", "flops_fit", "run", str(spec_path), "--json"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = [line.split()[1].rstrip(":") for line in proc.stderr.splitlines() if line.startswith(("ok ", "diverged "))]
    n = len(Spec.load(spec_path).plan().experiments)
    assert sorted(trained) == sorted(set(trained)) and len(trained) == n
    assert json.loads(proc.stdout)["points"] + len(json.loads(proc.stdout)["excluded"]) == n
    from flops_fit.execute.launch import launch_plan

    layout = launch_plan(Spec.load(spec_path), gpus=0)
    assert layout.workers == 2 and not layout.data_parallel
    auto = Spec.load(write_toy_spec(in_tmp, name="auto", train="workers_per_gpu = 2\n"))
    split = launch_plan(auto, gpus=4)
    assert split.workers == 8 and split.data_parallel and split.threshold == 5e7


def test_estimate_models_worker_processes_within_2x_of_a_measured_run(in_tmp):
    """Two CPU workers: the estimate is the makespan over them (not the sum), within 2x of the wall-clock."""
    path = write_toy_spec(in_tmp, model="SlowMLP", sizes=(4, 8, 16), budgets=(2e5, 4e5),
                          train="workers_per_gpu = 2\ndevice = \"cpu\"\n")
    spec = Spec.load(path)
    est = spec.estimate()
    summed = sum(r.est_seconds for r in est.experiments)
    assert est.est_seconds - est.calibration["worker_start_seconds"] < 0.8 * summed  # two processes share the work
    from flops_fit.api import train_plan

    plan = spec.check()
    t0 = time.perf_counter()
    train_plan(spec, plan)
    measured = time.perf_counter() - t0
    assert est.est_seconds <= measured * 2, (est.est_seconds, measured, summed)
    # The lower bound holds only on cores this test has to itself: under xdist the other test
    # process on the same two cores slowed the run 3x past any estimate (CI: 10.3 s measured
    # against 3.4 s estimated, load average above the core count); the makespan is asserted above.
    if os.getloadavg()[0] < (os.cpu_count() or 1):
        assert measured / 3 <= est.est_seconds, (est.est_seconds, measured, summed)


def test_corrupt_result_is_quarantined_and_ok_results_are_never_overwritten(in_tmp):
    from flops_fit.store.store import Store

    from flops_fit.store.store import RunRecord

    store = Store(in_tmp / "runs" / "s")
    ok = RunRecord(id="e1", hash="h", budget_flops=1e6, status="ok", loss=1.0, num_params=10, num_tokens=1e3, flops=1e6)
    store.write_result(ok)
    with pytest.warns(UserWarning, match="kept the finished ok result"):
        store.write_result(ok.model_copy(update={"status": "failed", "reason": "late duplicate", "loss": None}))
    assert store.read_result("e1") == ok
    store.result_path("e2").parent.mkdir(parents=True)
    store.result_path("e2").write_bytes(b"\xff\xfe{not json")
    with pytest.warns(UserWarning, match="result.json.corrupt"):
        assert store.read_result("e2") is None
    assert (store.exp_dir("e2") / "result.json.corrupt").exists() and not store.result_path("e2").exists()
    spec = Spec.load(write_toy_spec(in_tmp, sizes=(4, 8), budgets=(1e6,)))
    spec.run(report=False)
    first = spec.plan().experiments[0]
    path = in_tmp / "runs/toy/experiments" / first.id / "result.json"
    path.write_text("{truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        est = spec.estimate()
    assert next(r for r in est.experiments if r.id == first.id).action == "run"
    assert path.read_text() == "{truncated"  # the dry run moved nothing
    with pytest.warns(UserWarning, match="moved to result.json.corrupt"):
        spec.run(report=False)  # quarantined, trained again
    assert json.loads(path.read_text())["status"] == "ok"


def test_edited_model_source_is_flagged_on_cached_results(in_tmp):

    (in_tmp / "mymodel.py").write_text((ROOT / "tests/toy.py").read_text())
    path = write_toy_spec(in_tmp, sizes=(4, 8), budgets=(1e6,))
    path.write_text(path.read_text().replace('target = "tests.toy:MLP"', 'target = "mymodel:MLP"'))
    spec = Spec.load(path)
    spec.run(report=False)
    _, events = _events(Spec.load(path), report=False)
    assert all("WARNING" not in e.decision.reason for e in events if e.kind == "decision")
    (in_tmp / "mymodel.py").write_text((in_tmp / "mymodel.py").read_text().replace("nn.GELU()", "nn.ReLU()"))
    est = Spec.load(path).estimate()
    assert all(r.action == "skip" and "mymodel changed since it was trained" in r.reason for r in est.experiments)


def test_a_packed_worker_out_of_device_memory_gives_way_and_a_later_round_trains_it(in_tmp, monkeypatch):
    """Out of memory beside another worker is the packing's fault, not the experiment's: no failed
    record, the worker steps aside, the next round (one worker fewer) trains it to the loss a lone
    run gets.  Alone, out of memory is the experiment's own failure."""
    from flops_fit.execute.memory import PACKED_ENV, gives_way

    flag = in_tmp / "oom-once"
    flag.write_text("")
    kwargs = f', oom_width = 8, flag = "{flag}"'
    spec_path = write_toy_spec(in_tmp, model="OutOfMemoryBeside",
                               extra_kwargs=kwargs, train="workers_per_gpu = 2\n")
    proc = subprocess.run([sys.executable, "-m", "flops_fit", "run", str(spec_path), "--json"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not flag.exists() and "gave way: out of device memory beside 1 experiment(s)" in proc.stderr

    def results(name: str) -> dict:
        return {r["id"]: r for r in (json.loads(p.read_text())
                                     for p in (in_tmp / "runs" / name).glob("experiments/*/result.json"))}

    packed = results("toy")
    assert len(packed) == 8 and all(r["status"] == "ok" for r in packed.values()), proc.stderr[-3000:]
    alone = write_toy_spec(in_tmp, name="alone", model="OutOfMemoryBeside",
                           extra_kwargs=kwargs)
    Spec.load(alone).run()
    lone = {i: r["loss"] for i, r in results("alone").items()}
    assert {i: r["loss"] for i, r in packed.items()} == pytest.approx(lone, rel=1e-6)

    import torch

    monkeypatch.setenv(PACKED_ENV, "1")
    oom = torch.OutOfMemoryError("CUDA out of memory")
    assert gives_way(oom, Store(in_tmp / "runs" / "alone"), "x") is None  # nobody beside it: a failure
    assert gives_way(ValueError("out of memory in the user's code"), Store(in_tmp), "x") is None
