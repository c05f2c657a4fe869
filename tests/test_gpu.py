"""On a GPU: nothing of an experiment outlives it in a process that trains several."""

from __future__ import annotations

import pytest
import torch

from flops_fit import Spec
from flops_fit.store import Store
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
        [record] = run_experiments([exp], store, accelerator, compile=plan.runtime.compile)
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
