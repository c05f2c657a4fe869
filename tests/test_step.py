"""The training step: where CUDA graphs may replay it, and that eager is what runs elsewhere."""

from __future__ import annotations

import pytest
import torch

from flops_fit import Spec
from flops_fit.core.errors import RunError
from flops_fit.execute.step import TrainStep, graph_blocker
from tests.conftest import write_toy_spec
from tests.toy import MLP

CUDA = torch.device("cuda")


def test_graph_blockers_name_each_reason():
    model = MLP(8)
    assert graph_blocker(model, CUDA, 1, 1, False, True) is None
    assert "cpu" in graph_blocker(model, torch.device("cpu"), 1, 1, False, True)
    assert "data-parallel" in graph_blocker(model, CUDA, 2, 1, False, True)
    assert "accumulation" in graph_blocker(model, CUDA, 1, 4, False, True)
    assert "fp16" in graph_blocker(model, CUDA, 1, 1, True, False)
    handle = model.net[0].register_forward_hook(lambda *a: None)
    assert "net.0 has hooks" in graph_blocker(model, CUDA, 1, 1, False, True)
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert "global" in graph_blocker(model, CUDA, 1, 1, False, True)
    finally:
        handle.remove()


class _Accelerator:  # what TrainStep reads of accelerate's Accelerator
    def __init__(self, device):
        self.device, self.num_processes, self.scaler = torch.device(device), 1, None


def test_cuda_graphs_on_where_they_cannot_run_is_an_error_with_the_reason_and_the_fix():
    model = MLP(8)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(RunError, match=r"cuda_graphs = 'on'.*the device is cpu.*'auto'"):
        TrainStep(model, torch.nn.functional.mse_loss, opt, _Accelerator("cpu"), 1, 1.0, True,
                  torch.zeros(()), "on")
    assert not TrainStep(model, torch.nn.functional.mse_loss, opt, _Accelerator("cpu"), 1, 1.0, True,
                         torch.zeros(()), "auto").graphs


def test_cuda_graphs_setting_reaches_the_runtime_and_the_failed_record(in_tmp):
    from flops_fit.execute.runner import make_accelerator, run_experiments
    from flops_fit.store.store import Store

    path = write_toy_spec(in_tmp, sizes=(4, 8), budgets=(1e6,), train='cuda_graphs = "on"\n')
    plan = Spec.load(path).plan()
    assert plan.runtime.cuda_graphs == "on"
    [record] = run_experiments(plan.experiments[:1], Store(in_tmp / "runs"),
                               make_accelerator(plan.runtime, str(in_tmp)), runtime=plan.runtime)
    assert record.status == "failed" and "the device is cpu" in record.reason, record.reason
