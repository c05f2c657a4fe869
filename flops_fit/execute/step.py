"""One step of the training loop: forward, backward, clip, optimizer — eager, or replayed from a CUDA graph.

Small models are launch-bound on a GPU: a 6-layer GPT at d_model = 64 spends ~9 ms a step
launching a few hundred kernels that compute for ~1 ms.  With ``[train] cuda_graphs`` on
("auto", the default, where it is safe) the forward, the backward, the gradient clip and the
loss accumulation are captured once in a CUDA graph (``torch.cuda.graph``) and replayed every
step: one launch instead of hundreds.  The optimizer step stays eager: fused AdamW is a
handful of launches, and keeping it outside the graph keeps its learning rate a Python float,
so a graphed run computes exactly what an eager one does (same kernels, same inputs, same
order) — the setting is not part of an experiment's identity.

The first ``WARMUP_STEPS`` steps run eagerly on a side stream (cuBLAS workspaces, the
optimizer's state and a compiled model's kernels are created there, as ``torch.cuda.graph``
requires); the next step is captured and replayed; every later step copies its batch into the
graph's static input tensors and replays.  A batch of another shape, or a capture that fails
(a model that reads a value back to the host, a data-dependent branch), runs eagerly, the
latter with a note in the result.  Graphs are used only where replay is the same computation:
on CUDA, one process (no data-parallel all-reduce), no gradient accumulation, no fp16 loss
scaler, and no forward/backward hooks on the model (a hook's Python does not run on replay).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Literal

import torch
from torch.utils import _pytree as pytree

from ..spec.components import call_model
from ..core.errors import RunError

__all__ = ["TrainStep", "graph_blocker", "WARMUP_STEPS"]

#: Eager steps before the capture (PyTorch's documented warm-up for whole-network capture).
WARMUP_STEPS = 3
GraphMode = Literal["auto", "on", "off"]


def graph_blocker(model: torch.nn.Module, device: torch.device, processes: int, accum: int,
                  scaled: bool, direct: bool) -> str | None:
    """Why the step cannot be captured in a CUDA graph, or None when it can."""
    if device.type != "cuda":
        return f"the device is {device.type}, not CUDA"
    if processes > 1:
        return "data-parallel (the all-reduce runs per step)"
    if accum > 1:
        return "gradient accumulation over micro-batches"
    if scaled or not direct:
        return "fp16 loss scaling"
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return "global module hooks are registered"
    for name, m in model.named_modules():
        hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                 getattr(m, "_backward_pre_hooks", None))
        if any(hooks):
            return f"module {name or 'model'} has hooks (their Python would not run on replay)"
    return None


class TrainStep:
    """Callable ``step(batches)``: one optimizer step over ``accum`` micro-batches from ``batches``,
    the mean loss added to ``acc`` on the device; ``.note`` says why graphs were given up, if they were.

    ``mode``: "off" always eager; "auto" graphs where :func:`graph_blocker` finds nothing; "on" the
    same, but a blocker is an error.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 accelerator, accum: int, grad_clip: float | None, direct: bool, acc: torch.Tensor,
                 mode: GraphMode = "auto"):
        self.model, self.loss_fn, self.optimizer, self.accelerator = model, loss_fn, optimizer, accelerator
        self.accum, self.grad_clip, self.direct, self.acc = accum, grad_clip, direct, acc
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.note: str | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[list[torch.Tensor], object, list[torch.Tensor], object] | None = None
        self._eager_steps = 0
        blocker = None if mode == "off" else graph_blocker(
            model, accelerator.device, accelerator.num_processes, accum, accelerator.scaler is not None,
            direct)
        if mode == "on" and blocker:
            raise RunError(f"train.cuda_graphs = 'on' but the step cannot be captured: {blocker}; "
                           "set cuda_graphs = 'auto' (eager where graphs cannot be used) or 'off'")
        self.graphs = mode != "off" and blocker is None

    def __call__(self, batches) -> None:
        if not self.graphs:
            return self._eager(batches)
        if self.graph is None and self._eager_steps < WARMUP_STEPS:
            self._eager_steps += 1
            return self._on_side_stream(lambda: self._eager(batches))
        inputs, targets = next(batches)
        if self.graph is None:
            if self._capture(inputs, targets):
                self.graph.replay()
                self._optimizer_step(zero=False)
            return
        if not self._fill(inputs, targets):  # another shape: this step eagerly, into the graph's gradients
            for p in self.params:
                if p.grad is not None:
                    p.grad.zero_()
            return self._eager(iter([(inputs, targets)]), zero=False)
        self.graph.replay()
        self._optimizer_step(zero=False)

    # -- eager ---------------------------------------------------------------------------------
    def _eager(self, batches, zero: bool = True) -> None:
        accelerator, model = self.accelerator, self.model
        for k in range(self.accum):
            inputs, targets = next(batches)
            last = k == self.accum - 1
            sync = not last and accelerator.num_processes > 1
            with accelerator.no_sync(model) if sync else contextlib.nullcontext():
                loss = self.loss_fn(call_model(model, inputs), targets)
                accelerator.backward(loss / self.accum if self.accum > 1 else loss)
            self.acc += loss.detach().float() / self.accum
        self._clip()
        self._optimizer_step(zero)

    def _clip(self) -> None:
        if self.grad_clip is None:
            return
        if self.direct:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        else:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip)

    def _optimizer_step(self, zero: bool) -> None:
        self.optimizer.step()
        if zero:
            self.optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _on_side_stream(fn: Callable[[], None]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)

    # -- graph ---------------------------------------------------------------------------------
    def _capture(self, inputs, targets) -> bool:
        """Capture forward, backward, clip and accumulation on static copies of this batch; False
        (and this step trained eagerly) when the capture fails."""
        in_leaves, in_spec = pytree.tree_flatten(inputs)
        tg_leaves, tg_spec = pytree.tree_flatten(targets)
        if not all(isinstance(t, torch.Tensor) for t in in_leaves + tg_leaves):
            return self._give_up("a batch holds values that are not tensors", inputs, targets)
        self._static = ([t.clone() for t in in_leaves], in_spec, [t.clone() for t in tg_leaves], tg_spec)
        static_in = pytree.tree_unflatten(self._static[0], in_spec)
        static_tg = pytree.tree_unflatten(self._static[2], tg_spec)
        self.optimizer.zero_grad(set_to_none=True)  # the backward inside the graph allocates them: static
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss = self.loss_fn(call_model(self.model, static_in), static_tg)
                loss.backward()
                self._clip()
                self.acc += loss.detach().float()
        except Exception as error:  # noqa: BLE001 - any failure to capture means: train eagerly
            torch.cuda.synchronize()
            said = str(error).splitlines()[0][:160] if str(error) else ""
            return self._give_up(f"capture failed ({type(error).__name__}: {said})", inputs, targets)
        self.graph = graph
        return True

    def _give_up(self, why: str, inputs, targets) -> bool:
        self.graphs, self.graph, self._static = False, None, None
        self.note = f"CUDA graphs off: {why}; trained eagerly"
        self.optimizer.zero_grad(set_to_none=True)
        self._eager(iter([(inputs, targets)]))
        return False

    def _fill(self, inputs, targets) -> bool:
        in_leaves, in_spec = pytree.tree_flatten(inputs)
        tg_leaves, tg_spec = pytree.tree_flatten(targets)
        static_in, s_in_spec, static_tg, s_tg_spec = self._static
        pairs = list(zip(in_leaves + tg_leaves, static_in + static_tg))
        if in_spec != s_in_spec or tg_spec != s_tg_spec or any(a.shape != b.shape or a.dtype != b.dtype
                                                               for a, b in pairs):
            return False
        for dst, src in zip(static_in + static_tg, in_leaves + tg_leaves):
            dst.copy_(src, non_blocking=True)
        return True
