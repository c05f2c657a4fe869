"""Many models per kernel: one step for several experiments of one shape.

Seeds, learning-rate sweeps (``transfer``) and replicates of one size are the same computation
with different numbers.  Small models leave a GPU idle between kernel launches, so training K of
them one after another costs about K times one step; stacked, they cost about one.  A
:class:`GroupStep` stacks the lanes' parameters (``torch.stack``, so each lane's own parameters
get their gradients back through it), runs one forward and backward over all of them with
``torch.func.vmap`` over ``torch.func.functional_call`` of the first lane's module, each lane on
its own batch, and then gives each lane its own gradient clip and optimizer step.  Every member
stays an ordinary experiment: its own seed and initial weights, data order, learning rate and
schedule, curve, checkpoints, lease and result; members may stand at different steps and leave
the group when they finish or diverge.

Batched kernels add in another order than single ones, so a grouped loss equals the one-at-a-time
loss to float rounding, not bit for bit (``[train] group`` is not hashed, like ``compile``).  A
model the vmap cannot run (a buffer updated in place, a value read back to the host, an op
without a batching rule that fails) is trained one lane at a time from that step on, with a note.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils import _pytree as pytree

from ..core.hashing import content_hash
from ..plan.plan import Job
from .step import WARMUP_STEPS, GraphMode, TrainStep

__all__ = ["GroupStep", "group_key", "grouping", "group_sizes", "GroupMode", "MAX_GROUP"]

GroupMode = Literal["auto", "on", "off"]
#: The most experiments one group trains together.
MAX_GROUP = 8
#: How far the first member's batched gradient may stand from its own (relative, in norm): batched
#: kernels add in another order (bf16: about 1e-2).
TOLERANCE = 0.05
#: ``group = "auto"`` leaves experiments whose step costs more FLOPs than this to train alone: their
#: step is no longer launch-bound.  The gutenberg GPT (64 × 256 tokens, bf16, graphed, K = 7) on an
#: H100: grouped 1.20× faster at d = 48 (6.9e10 FLOPs a step), 0.93× at d = 512 (2.4e12).
AUTO_MAX_STEP_FLOPS = 1e12


def group_key(job: Job, mode: GroupMode = "on") -> str | None:
    """Experiments with equal keys can be stepped together: the same model, size, loss, data and
    batch; None for those that cannot (a trunk or a branch, gradient accumulation) and, with
    ``mode = "auto"``, for a step of more than :data:`AUTO_MAX_STEP_FLOPS` (no faster grouped)."""
    lp = job.loop
    accumulates = (lp.micro_batch_size or lp.batch_size) != lp.batch_size
    if job.role == "trunk" or job.branch is not None or accumulates:
        return None
    if mode == "auto" and job.flops_per_sample * lp.batch_size > AUTO_MAX_STEP_FLOPS:
        return None
    return content_hash({"model": job.model.model_dump(), "size_param": job.size_param, "size": job.size,
                         "loss": job.loss.model_dump(), "data": job.data.model_dump(),
                         "tokens_per_sample": job.tokens_per_sample, "batch_size": lp.batch_size,
                         "precision": job.precision})


def grouping(runtime, device_type: str, processes: int = 1, scaler: bool = False) -> tuple[bool, str]:
    """Whether experiments of one shape are stepped together here, and why (``runtime`` is the plan's
    :class:`~flops_fit.plan.job.Runtime`).  The runner and ``estimate`` both decide with this."""
    if runtime.group == "off":
        return False, "[train] group = 'off'"
    blocker = ("data-parallel processes" if processes > 1 else "compile = true" if runtime.compile else
               "trackers (one run at a time)" if runtime.log_with else
               "fp16 loss scaling" if scaler or runtime.precision == "fp16" else None)
    if blocker:
        return False, f"not grouped: {blocker}"
    if runtime.group == "auto" and device_type != "cuda":
        return False, f"'auto' groups on CUDA only (no faster on {device_type}); group = 'on' to force"
    return True, f"grouped ([train] group = '{runtime.group}' on {device_type})"


def group_sizes(jobs: list[Job], mode: GroupMode = "on") -> list[int]:
    """How many experiments each group of ``jobs`` holds (groups of one left out), as the runner forms
    them: same :func:`group_key`, up to MAX_GROUP."""
    counts: dict[str, int] = {}
    for job in jobs:
        key = group_key(job, mode)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    sizes = []
    for n in counts.values():
        sizes += [MAX_GROUP] * (n // MAX_GROUP) + ([n % MAX_GROUP] if n % MAX_GROUP else [])
    return sorted((s for s in sizes if s > 1), reverse=True)


class GroupStep:
    """Callable ``step(lanes) -> {position: exception}``: one optimizer step of every lane in
    ``lanes``, batched while the model allows it; the exceptions are those of lanes stepped one at
    a time (the user's code failed for that lane only).  ``.note`` says why grouping stopped."""

    def __init__(self, accelerator, graphs: GraphMode = "off"):
        self.accelerator = accelerator
        self.grouped = True
        self.verified = False  # the batched gradient checked against a member's own, once
        self.note: str | None = None
        self._eager: dict[int, TrainStep] = {}
        # CUDA graphs of the batched forward + backward + clips (the optimizers stay eager): captured
        # for one set of members after WARMUP_STEPS batched steps, captured again when the set changes
        self.graphs = graphs != "off" and accelerator.device.type == "cuda"
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_for: tuple[int, ...] = ()
        self._static: tuple | None = None
        self._warm = 0

    def __call__(self, lanes: list) -> dict[int, BaseException]:
        if self._graph is not None and tuple(id(lane) for lane in lanes) != self._graph_for:
            # a replay leaves its gradients in the members (the optimizers step on them): clear them
            # before any other kind of step accumulates into them, and capture again for the new set
            for lane in lanes:
                lane.step_optimizer.zero_grad(set_to_none=True)
            self._graph, self._static, self._graph_for = None, None, ()
        if len(lanes) > 1 and self.grouped:
            batches = [next(lane.batches) for lane in lanes]
            try:
                if not self.verified:
                    self._verify(lanes, batches)
                if self.graphs:
                    self._graphed(lanes, batches)
                else:
                    self._batched(lanes, batches)
                    self._optimizers(lanes)
                return {}
            except Exception as error:  # noqa: BLE001 - any failure: these lanes one at a time from now on
                said = str(error).splitlines()[0][:160] if str(error) else ""
                if self.graphs:
                    torch.cuda.synchronize()
                self.grouped, self.graphs, self._graph, self._static = False, False, None, None
                self.note = f"grouped training off: {type(error).__name__}: {said}; trained one at a time"
                for lane in lanes:
                    lane.optimizer.zero_grad(set_to_none=True)
                return self._one_at_a_time(lanes, [iter([b]) for b in batches])
        return self._one_at_a_time(lanes, [lane.batches for lane in lanes])

    def _graphed(self, lanes: list, batches: list) -> None:
        members = tuple(id(lane) for lane in lanes)
        if members != self._graph_for:  # another set of members: warm up again, then capture
            self._graph_for, self._warm = members, 0
        if self._graph is None and self._warm < WARMUP_STEPS:
            self._warm += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._batched(lanes, batches)
                self._optimizers(lanes)
            torch.cuda.current_stream().wait_stream(side)
            return
        inputs, targets = _stack([b[0] for b in batches]), _stack([b[1] for b in batches])
        if self._graph is None:
            for lane in lanes:  # the backward inside the graph allocates the gradients: static
                lane.step_optimizer.zero_grad(set_to_none=True)
            self._static = (inputs, targets)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._batched(lanes, None, stacked=self._static)
            self._graph = graph
        else:
            for dst, src in zip(pytree.tree_leaves(self._static), pytree.tree_leaves((inputs, targets))):
                if dst.shape != src.shape or dst.dtype != src.dtype:
                    raise ValueError("a batch of another shape than the captured one")
                dst.copy_(src, non_blocking=True)
        self._graph.replay()
        self._optimizers(lanes, zero=False)  # the graph's gradients are overwritten by the next replay

    def _one_at_a_time(self, lanes: list, batches: list) -> dict[int, BaseException]:
        failed = {}
        for k, (lane, source) in enumerate(zip(lanes, batches)):
            step = self._eager.get(id(lane))
            if step is None:
                step = self._eager[id(lane)] = TrainStep(
                    lane.model, lane.loss_fn, lane.step_optimizer, self.accelerator, lane.layout.accum,
                    lane.job.optim.grad_clip, lane.direct, lane.acc, "off")
            try:
                step(source)
            except Exception as error:  # noqa: BLE001 - the user's code failed for this lane
                failed[k] = error
        return failed

    def _verify(self, lanes: list, batches: list) -> None:
        """Before the first batched step: the first member's batched gradient against its own (one
        forward and backward alone on the same batch).  A batched kernel that computes something
        else (a backend's batching rule returning NaN) raises, and the lanes train one at a time.
        With dropout the two draw other masks: then only finiteness is compared."""
        lane = lanes[0]
        trained = [p for p in lane.raw_model.parameters() if p.requires_grad]
        self._batched(lanes, batches, finish=False)
        batched = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in trained]
        for other in lanes:
            other.step_optimizer.zero_grad(set_to_none=True)
        x, y = batches[0]
        args, kwargs = ((), x) if isinstance(x, dict) else ((x,), {})
        with self.accelerator.autocast():
            loss = lane.loss_fn(lane.raw_model(*args, **kwargs), y)
        loss.backward()
        alone = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in trained]
        lane.step_optimizer.zero_grad(set_to_none=True)
        self.verified = True
        own = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in alone]))
        diff = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm((a - b).float())
                                                     for a, b in zip(alone, batched)]))
        finite = all(bool(torch.isfinite(g).all()) for g in batched)
        random = any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training
                     for m in lane.raw_model.modules())
        if torch.isfinite(own) and (not finite or (not random and float(diff) > TOLERANCE * float(own))):
            raise ValueError(f"the batched gradient is not the member's own (relative difference "
                             f"{float(diff / own):.2g}{'' if finite else ', not finite'})")

    def _batched(self, lanes: list, batches: list | None, stacked: tuple | None = None,
                 finish: bool = True) -> None:
        """Forward and backward of every lane at once, each lane's clip and loss accumulation
        (``finish``; without: the gradients only)."""
        from torch.func import functional_call, vmap

        base = lanes[0].raw_model
        members = [dict(lane.raw_model.named_parameters()) for lane in lanes]
        buffers = [dict(lane.raw_model.named_buffers()) for lane in lanes]
        params = {name: torch.stack([m[name] for m in members]) for name in members[0]}
        stacked_buffers = {name: torch.stack([b[name] for b in buffers]) for name in buffers[0]}
        inputs, targets = stacked or (_stack([b[0] for b in batches]), _stack([b[1] for b in batches]))
        loss_fn = lanes[0].loss_fn

        def one(p, b, x, y):
            args, kwargs = ((), x) if isinstance(x, dict) else ((x,), None)
            out = functional_call(base, (p, b), args, kwargs)
            return loss_fn(out, y)

        with self.accelerator.autocast(), _attention(self.accelerator.device):
            losses = vmap(one, randomness="different")(params, stacked_buffers, inputs, targets)
        losses.sum().backward()  # members are independent: each gets the gradient of its own loss
        if not finish:
            return
        detached = losses.detach().float()
        for k, lane in enumerate(lanes):
            lane.acc += detached[k]
            clip = lane.job.optim.grad_clip
            if clip is not None:
                trained = [p for p in lane.raw_model.parameters() if p.requires_grad]
                torch.nn.utils.clip_grad_norm_(trained, clip)

    @staticmethod
    def _optimizers(lanes: list, zero: bool = True) -> None:
        for lane in lanes:
            lane.step_optimizer.step()
            if zero:
                lane.step_optimizer.zero_grad(set_to_none=True)


def _attention(device: torch.device):
    """On CUDA, the batched step's attention (``scaled_dot_product_attention``) runs as flash
    attention or the math backend: under vmap, cuDNN attention's backward returned NaN and the
    memory-efficient kernel refused the batched layout (measured on an H100, torch 2.11)."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


def _stack(values: list):
    """Stack the lanes' batches leaf by leaf (the same structure and shapes, or ValueError)."""
    flat = [pytree.tree_flatten(v) for v in values]
    spec = flat[0][1]
    if any(s != spec for _, s in flat):
        raise ValueError("the lanes' batches differ in structure")
    leaves = []
    for parts in zip(*(f for f, _ in flat)):
        if not all(isinstance(t, torch.Tensor) and t.shape == parts[0].shape for t in parts):
            raise ValueError("the lanes' batches differ in shape")
        leaves.append(torch.stack(parts))
    return pytree.tree_unflatten(leaves, spec)
