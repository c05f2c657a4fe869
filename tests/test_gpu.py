"""On a GPU: nothing of an experiment outlives it in a process that trains several."""

from __future__ import annotations

import pytest
import torch

from flops_fit import Spec
from flops_fit.store.store import Store
from tests.conftest import write_toy_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _clear_cublas_workspaces() -> None:
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def _live_cuda_tensors() -> list:
    import gc

    return [(tuple(o.shape), o.dtype) for o in gc.get_objects() if torch.is_tensor(o) and o.is_cuda][:20]


@pytest.mark.parametrize("compile_", [False, True])
def test_gpu_memory_returns_to_baseline_after_each_experiment(in_tmp, compile_):
    from flops_fit.execute.runner import make_accelerator, run_experiments

    spec = Spec.load(write_toy_spec(in_tmp, sizes=(1024, 2048, 4096), budgets=(3e11,),
                                    extra_kwargs=", depth = 4", train=f'precision = "bf16"\ndivergence_factor = 100.0\ncompile = {str(compile_).lower()}\n',
                                    lr=3e-4))
    plan = spec.plan()
    assert len(plan.experiments) == 3
    accelerator = make_accelerator(plan.runtime, str(in_tmp / "tracking"))
    store = Store(in_tmp / "runs/toy")
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    peaks = []
    for exp in plan.experiments:  # smallest first, as a sweep runs them
        torch.cuda.reset_peak_memory_stats()
        [record] = run_experiments([exp], store, accelerator, runtime=plan.runtime)
        assert record.status != "failed", record.reason
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
        raw = torch.cuda.memory_allocated() - baseline
        _clear_cublas_workspaces()  # cuBLAS keeps its per-process workspace in PyTorch's allocator
        left = torch.cuda.memory_allocated() - baseline
        print(f"{exp.id}: peak {peaks[-1] / 2**20:.0f} MiB, after {raw / 2**20:.1f} MiB, "
              f"without cuBLAS workspaces {left / 2**20:.1f} MiB")
        assert left == 0, (exp.id, left, _live_cuda_tensors())
    assert peaks[-1] > peaks[0] + 100e6  # the experiments did use the GPU, the largest most
    assert record.provenance.precision == "bf16"


def _jobs_spec(folder, launcher: str, **kw):
    path = write_toy_spec(folder, **kw)
    path.write_text(path.read_text() + "\n[launcher]\n" + launcher)
    return Spec.load(path)


def _reference_losses(spec, folder) -> dict:
    from flops_fit.spec.launcher import LauncherSpec

    local = spec.model_copy(update={"launcher": LauncherSpec(), "runs_dir": str(folder)})
    local.run(report=False)
    store = Store(local.run_dir)
    return {e.id: store.read_result(e.id) for e in local.plan().experiments}


def test_submitit_jobs_on_gpus_pack_one_gpu_tasks_and_train_data_parallel_over_nccl(in_tmp):
    """Real submitit jobs on this machine's GPUs: a one-GPU array whose tasks pack two workers on
    a GPU, and (with two GPUs) a data-parallel array over NCCL from TorchDistributedEnvironment."""
    pytest.importorskip("submitit")
    gpus = torch.cuda.device_count()
    launcher = f'kind = "submitit-local"\ngpus_per_task = 1\ngpus_large = {min(gpus, 2)}\ntimeout_min = 10\n'
    spec = _jobs_spec(in_tmp, launcher, sizes=(64, 128, 256, 512), budgets=(3e9,), extra_kwargs=", depth = 2",
                      train="workers_per_gpu = 2\ndata_parallel_min_params = 1e5\n", lr=3e-3)
    spec.run(report=False)
    import json

    jobs = json.loads((spec.run_dir / "launcher" / "jobs.json").read_text())["submissions"][0]["jobs"]
    arrays = {j["array"] for j in jobs}
    assert arrays == ({"one-gpu", "data-parallel"} if gpus > 1 else {"one-gpu"})
    store = Store(spec.run_dir)
    reference = _reference_losses(spec, in_tmp / "ref")
    for exp_id, ref in reference.items():
        record = store.read_result(exp_id)
        assert record.status == "ok" and record.provenance.device_type == "cuda"
        big = record.num_params >= 1e5 and gpus > 1
        assert record.provenance.processes == (2 if big else 1)
        # one process: the same kernels as in-process; two: the gradient is averaged over ranks
        assert record.loss == pytest.approx(ref.loss, rel=1e-3 if big else 1e-6)


def test_a_data_parallel_job_past_its_timeout_checkpoints_on_every_rank_and_resumes(in_tmp):
    """USR2 reaches both ranks at their own step; they agree within 8 steps, write one checkpoint
    together, the job is requeued and resumes there, ending at the uninterrupted loss."""
    import re

    pytest.importorskip("submitit")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    launcher = 'kind = "submitit-local"\ngpus_per_task = 1\ngpus_large = 2\ntimeout_min = 0.75\nsignal_delay_s = 25\nmax_requeues = 6\n'
    spec = _jobs_spec(in_tmp, launcher, model="SlowMLP", sizes=(8, 16), budgets=(4e7,),
                      train='parallel = "data"\ncheckpoint_seconds = 600\n')
    exp = next(e for e in spec.plan().experiments if e.size == 8)
    spec.run(report=False)
    logs = "".join(p.read_text() for p in (spec.run_dir / "launcher" / "logs").rglob("*_log.err"))
    resumed = [int(s) for s in re.findall(rf"resume {exp.id}: checkpoint at step (\d+)/", logs)]
    assert resumed and all(0 < s < exp.steps for s in resumed), logs[-3000:]
    record = Store(spec.run_dir).read_result(exp.id)
    assert record.status == "ok" and record.steps == exp.steps and record.provenance.processes == 2
    assert record.loss == pytest.approx(_reference_losses(spec, in_tmp / "ref")[exp.id].loss, rel=1e-3)


def _losses(spec_path, graphs: str, folder):
    spec = Spec.load(spec_path)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"cuda_graphs": graphs})})
    from flops_fit.execute.runner import make_accelerator, run_experiments

    plan = spec.plan()
    records = run_experiments(plan.experiments, Store(folder), make_accelerator(plan.runtime, str(folder)),
                              runtime=plan.runtime)
    return {r.id: ([p.train_loss for p in r.curve], r.loss, r.notes) for r in records}


@pytest.mark.parametrize("model, precision", [("MLP", "bf16"), ("MLP", "fp32"), ("HostSync", "bf16")])
def test_cuda_graphs_train_exactly_what_eager_trains(in_tmp, model, precision):
    """Replayed steps are the eager steps: every logged loss equal to the last bit; a model that reads a
    value back to the host cannot be captured and trains eagerly with a note."""
    path = write_toy_spec(in_tmp, model=model, sizes=(64, 256), budgets=(3e8,), extra_kwargs=", depth = 3",
                          train=f'precision = "{precision}"\ngrad_clip = 0.5\n')
    eager = _losses(path, "off", in_tmp / "eager")
    graphed = _losses(path, "auto", in_tmp / "graphs")
    assert eager.keys() == graphed.keys() and len(eager) >= 2
    for exp_id, (curve, final, notes) in graphed.items():
        assert len(curve) > 5
        assert (curve, final) == eager[exp_id][:2], exp_id
        assert any("CUDA graphs off: capture failed" in n for n in notes) == (model == "HostSync"), notes
    if model == "MLP" and precision == "fp32":  # 'on' where it cannot: the experiment fails with the reason
        spec = Spec.load(path)
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"cuda_graphs": "on",
                                                                             "micro_batch_size": 8})})
        from flops_fit.execute.runner import make_accelerator, run_experiments

        plan = spec.plan()
        [record] = run_experiments(plan.experiments[:1], Store(in_tmp / "on"),
                                   make_accelerator(plan.runtime, str(in_tmp)), runtime=plan.runtime)
        assert record.status == "failed" and "gradient accumulation" in record.reason, record.reason


@pytest.mark.parametrize("graphs", ["off", "auto"])
def test_grouped_seeds_on_a_gpu_match_one_at_a_time(in_tmp, graphs):
    """[train] group = "auto" groups on CUDA, eager or replayed from a CUDA graph: each member's
    losses equal its one-at-a-time losses to float rounding, and every member says it was grouped.
    Two budgets: a size's members differ in length, so the group shrinks (and is captured again)."""
    path = write_toy_spec(in_tmp, sizes=(64, 256), budgets=(3e8, 6e8), extra_kwargs=", depth = 3",
                          train=f'precision = "bf16"\ngrad_clip = 0.5\ncuda_graphs = "{graphs}"\n')
    path.write_text(path.read_text().replace("[sweep]\n", '[sweep]\nseeds = [0, 1, 2]\nreplicate = "all"\n'))
    from flops_fit.execute.runner import make_accelerator, run_experiments

    results = {}
    for group in ("off", "auto"):
        spec = Spec.load(path)
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"group": group})})
        plan = spec.plan()
        records = run_experiments(plan.experiments, Store(in_tmp / group),
                                  make_accelerator(plan.runtime, str(in_tmp)), runtime=plan.runtime)
        results[group] = {r.id: r for r in records}
    assert results["off"].keys() == results["auto"].keys() and len(results["auto"]) >= 6
    for exp_id, r in results["auto"].items():
        assert any("stepped together with" in n for n in r.notes), r.notes
        assert r.loss == pytest.approx(results["off"][exp_id].loss, rel=2e-2)  # bf16, batched kernels


@pytest.mark.parametrize("width", [48, 128])
def test_a_grouped_gpt_steps_like_its_members_alone(width):
    """The gutenberg recipe's GPT (bf16, 64 x 256 tokens, head_dim 16), 4 members: the grouped
    step (attention under vmap) gives each member the gradient and the losses it gets alone; on an
    H100 cuDNN attention's batched backward returned NaN until the group ran flash attention."""
    from accelerate import Accelerator

    from benchmarks.bench_group import _members
    from flops_fit.execute.group import GroupStep
    from flops_fit.execute.step import TrainStep

    accelerator = Accelerator(mixed_precision="bf16")
    shape = (64, 256, 8192, 2, 16)
    grouped, alone = _members(width, 4, accelerator, *shape), _members(width, 4, accelerator, *shape)
    step = GroupStep(accelerator, "auto")
    lone = [TrainStep(m.model, m.loss_fn, m.step_optimizer, accelerator, 1, 1.0, True, m.acc, "off")
            for m in alone]
    for _ in range(6):
        step(grouped)
        for s, m in zip(lone, alone):
            s(m.batches)
    assert step.grouped and step.note is None, step.note
    got, want = [float(m.acc) for m in grouped], [float(m.acc) for m in alone]
    assert all(torch.isfinite(torch.tensor(got))) and got == pytest.approx(want, rel=2e-2)
