"""What a training run leaves: ``result.json`` (:class:`RunRecord`), its curve points and provenance.

A leaf of the training side: the analysis reads records without importing the store, the
executor or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field

from ..core.frozen import Frozen

if TYPE_CHECKING:
    from ..plan.job import Job

__all__ = ["CurvePoint", "Provenance", "RunRecord"]


class CurvePoint(Frozen):
    """One logged point of a training curve (a line of ``metrics.jsonl``).  ``train_loss`` is None
    where it was not finite (the step a run diverged at: JSON has no NaN)."""

    step: int
    tokens: float
    flops: float
    train_loss: Optional[float]
    lr: float
    seconds: float = 0.0
    eval_loss: Optional[float] = None


class Provenance(Frozen):
    """Where and with what a result was trained."""

    flops_fit: str
    torch: str
    python: str
    device: str
    processes: int
    precision: str  # the Accelerator's mixed_precision ("no", "bf16", "fp16")
    device_type: Optional[str] = None  # "cuda" or "cpu" (records written before it say nothing)
    host: str
    finished: str
    sources: dict[str, str] = Field(default_factory=dict)  # module -> sha256 of its source file


class RunRecord(Frozen):
    """``result.json``: one experiment's outcome, written by the worker (or the runner when the
    user's code raised) exactly once, last and atomically.  Every field is set when it is made."""

    id: str
    hash: str
    budget_flops: float
    status: Literal["ok", "failed", "diverged"]
    reason: str = ""
    loss: Optional[float] = None
    train_loss: Optional[float] = None
    initial_loss: Optional[float] = None
    size: Any = None
    num_params: int
    num_tokens: float
    num_samples: int = 0
    flops: float
    flops_per_sample: float = 0.0
    steps: int = 0
    planned_steps: int = 0
    warmup_steps: int = 0
    batch_size: int = 0
    seed: Optional[int] = None  # the loop's seed (replicates of a cell differ only in it)
    train_seconds: float = 0.0
    epochs: Optional[float] = None
    notes: list[str] = Field(default_factory=list)
    curve: list[CurvePoint] = Field(default_factory=list)
    # "branch": a cooldown branched off a trunk; "trunk": a trunk
    reuse: Literal["none", "branch", "trunk"] = "none"
    trunk_id: Optional[str] = None
    # S_C: the trunk step the branch started from (its own steps are the rest)
    branch_step: Optional[int] = None
    # the trunk's held-out loss at S_C (constant LR: above the branch's)
    pre_cooldown_loss: Optional[float] = None
    # of train_seconds, the trunk's up to S_C (train_seconds is a standalone run's)
    trunk_seconds: float = 0.0
    provenance: Optional[Provenance] = None
    traceback: Optional[str] = None

    @property
    def own_steps(self) -> int:
        """Steps this record's process trained (a branch: after its branch step)."""
        return self.steps - (self.branch_step or 0)

    @property
    def own_seconds(self) -> float:
        """Seconds this record's process trained (a branch: its cooldown only)."""
        return self.train_seconds - self.trunk_seconds

    @classmethod
    def failed(cls, job: Job, reason: str, traceback: str | None = None,
               provenance: Provenance | None = None) -> "RunRecord":
        """The record of an experiment whose code raised (D and FLOPs are the planned ones)."""
        samples = job.steps * job.loop.batch_size
        return cls(id=job.experiment_id, hash=job.hash, budget_flops=job.budget_flops, status="failed",
                   reason=reason, size=job.size, num_params=job.num_params,
                   num_tokens=samples * job.tokens_per_sample, flops=samples * job.flops_per_sample,
                   flops_per_sample=job.flops_per_sample, planned_steps=job.steps,
                   warmup_steps=job.warmup_steps, batch_size=job.loop.batch_size, seed=job.loop.seed,
                   traceback=traceback, provenance=provenance)
