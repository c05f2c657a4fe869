"""What a worker trains: one job's model, data, loss, optimizer, schedule and loop, and its identity.

A :class:`Job` is the narrow value a worker gets (never the Spec).  Its :meth:`Job.identity`
is exactly what changes the loss; its hash is the experiment id's suffix.  With
``[sweep] reuse = "branch"`` a size's **trunk** (``role = "trunk"``: warmup then a constant
learning rate, its length left out of the identity so that a longer trunk is the same
trunk) writes pinned checkpoints at each branch step S_C, and a **branch** (``branch`` set)
continues from one of them with the wsd cooldown to T_C: the same computation as a
standalone ``wsd`` run of T_C steps, identified by (trunk hash, S_C, T_C, cooldown shape,
min_lr_ratio).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from ..core.frozen import Frozen
from ..core.hashing import HASH_VERSION

__all__ = ["Component", "Optim", "Schedule", "Loop", "Runtime", "NOT_HASHED", "BranchPoint", "Job"]


class Component(Frozen):
    """A user object named by import path, with its keyword arguments."""

    target: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Optim(Frozen):
    """The optimizer of one experiment (``[train]`` optimizer keys)."""

    target: Optional[str] = None  # import path of factory(params, lr); None: AdamW
    learning_rate: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    grad_clip: Optional[float]


class Schedule(Frozen):
    """The learning-rate schedule of one experiment, in optimizer steps."""

    kind: Literal["cosine", "constant", "wsd"]
    warmup_steps: int
    min_lr_ratio: float
    decay_fraction: float


class Loop(Frozen):
    """How the loop walks the data: batch split, seed, logging, checkpoints, divergence rule."""

    batch_size: int
    micro_batch_size: Optional[int] = None
    seed: int
    divergence_factor: float
    log_points: int
    eval_points: int
    num_workers: int
    checkpoint_seconds: float
    checkpoint_steps: Optional[int] = None
    keep_checkpoints: int


class Runtime(Frozen):
    """Run-level settings the runner builds its one Accelerator from (``make_accelerator``)."""

    precision: Literal["fp32", "bf16", "fp16"]
    device: Literal["auto", "cpu", "cuda"]
    compile: bool
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    group: Literal["auto", "on", "off"] = "auto"
    log_with: list[str] = Field(default_factory=list)
    heartbeat_s: float = 30.0  # [launcher] heartbeat_s: how often a held lease is refreshed


#: ``[train]`` keys that do not change an experiment's loss, with why (the rest are hashed).
NOT_HASHED: dict[str, str] = {
    "device": "where it runs, not what it computes",
    "compile": "same computation, compiled",
    "cuda_graphs": "the same kernels on the same inputs, replayed from a graph (the optimizer stays eager)",
    "group": "each member's own loss and gradients, batched (equal to float rounding, as compiled)",
    "log_with": "trackers only observe",
    "log_points": "when the loss is read, not the loss",
    "eval_points": "held-out evaluations during training do not touch the weights",
    "num_workers": "DataLoader processes load the same samples in the same order",
    "checkpoint_seconds": "checkpoints resume exactly",
    "checkpoint_steps": "checkpoints resume exactly",
    "keep_checkpoints": "checkpoints resume exactly",
    "parallel": "the process layout (each experiment is seeded by its job)",
    "workers_per_gpu": "the process layout",
    "data_parallel_min_params": "the process layout",
    "micro_batch_size": "gradient accumulation sums to the same batch gradient",
}


class BranchPoint(Frozen):
    """Where a branch starts: its trunk (id and hash) and the trunk step S_C it continues from."""

    trunk_id: str
    trunk_hash: str
    step: int


class Job(Frozen):
    """Everything a worker needs to train one experiment (and nothing of the Spec).

    Its identity (:meth:`identity`, the content hash) is exactly what changes the loss;
    ``experiment_id``, ``budget_flops``, ``hash``, ``search_path`` and the loop's bookkeeping
    keys (:data:`NOT_HASHED`) are not part of it.
    """

    experiment_id: str
    hash: str = ""
    budget_flops: float
    model: Component
    size_param: str
    size: Any
    data: Component
    eval_data: Optional[Component] = None
    eval_fraction: float
    eval_batches: int
    loss: Component
    tokens_per_sample: float
    steps: int
    num_params: int
    flops_per_sample: float
    optim: Optim
    schedule: Schedule
    loop: Loop
    precision: Literal["fp32", "bf16", "fp16"]
    search_path: list[str] = Field(default_factory=list)
    role: Literal["experiment", "trunk"] = "experiment"
    pins: list[int] = Field(default_factory=list)  # trunk: steps S_C where pinned checkpoints are written
    branch: Optional[BranchPoint] = None  # a branch: continues from this trunk checkpoint

    @property
    def warmup_steps(self) -> int:
        return self.schedule.warmup_steps

    @property
    def targets(self) -> list[str]:
        """The import paths of the user's code this job runs (model, data, held-out data, loss, optimizer)."""
        found = [self.model.target, self.data.target, self.eval_data.target if self.eval_data else None,
                 self.loss.target, self.optim.target]
        return [t for t in found if t]

    def identity(self) -> dict:
        """Exactly what changes the experiment's loss (docs/DESIGN.md, "Identity"); its hash is the id's
        suffix.

        A trunk's identity leaves out its length and the cooldown keys (it is a constant-rate
        prefix: a longer trunk is the same trunk, continued); a branch's is its trunk's hash, the
        branch step S_C, its length T_C and the cooldown (shape, min_lr_ratio)."""
        if self.branch is not None:
            return {"version": HASH_VERSION, "trunk": self.branch.trunk_hash, "branch_step": self.branch.step,
                    "steps": self.steps, "cooldown": "1-sqrt", "min_lr_ratio": self.schedule.min_lr_ratio}
        if self.role == "trunk":
            full = self.identity_of_run()
            del full["steps"]
            full["schedule"] = {"kind": "constant"}
            return {**full, "role": "trunk"}
        return self.identity_of_run()

    def identity_of_run(self) -> dict:
        """The identity of a run from scratch to ``steps`` (every hashed key)."""
        o, sc, lp = self.optim, self.schedule, self.loop
        ev = self.eval_data
        return {
            "version": HASH_VERSION,
            "model": {"target": self.model.target, "kwargs": self.model.kwargs, "size_param": self.size_param,
                      "size": self.size},
            "data": {"target": self.data.target, "kwargs": self.data.kwargs,
                     "tokens_per_sample": self.tokens_per_sample,
                     "eval_target": ev.target if ev else None, "eval_kwargs": ev.kwargs if ev else {},
                     "eval_fraction": self.eval_fraction, "eval_batches": self.eval_batches},
            "loss": {"target": self.loss.target, "kwargs": self.loss.kwargs},
            "steps": self.steps, "batch_size": lp.batch_size, "warmup_steps": sc.warmup_steps,
            "optimizer": {"target": o.target, "lr": o.learning_rate, "weight_decay": o.weight_decay,
                          "betas": list(o.betas), "eps": o.eps, "grad_clip": o.grad_clip},
            "schedule": {"kind": sc.kind, "min_lr_ratio": sc.min_lr_ratio,
                         "decay_fraction": sc.decay_fraction},
            "seed": lp.seed, "precision": self.precision, "divergence_factor": lp.divergence_factor,
        }


