"""``[launcher]``: where the sweep's experiments run (never part of an experiment's hash).

``kind = "local"`` (the default) trains in this process or its workers; ``"slurm"`` submits
job arrays through submitit; ``"submitit-local"`` runs the same jobs as real subprocesses of
this machine (submitit's LocalExecutor: tests, laptops).  Key names follow submitit's.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, Optional

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from ..core.frozen import Frozen

__all__ = ["LauncherSpec", "INSTALL_SLURM"]

INSTALL_SLURM = "pip install 'flops-fit[slurm]'"


class LauncherSpec(Frozen):
    """``[launcher]``: local processes, or Slurm job arrays through submitit."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

    kind: Literal["local", "slurm", "submitit-local"] = Field(
        default="local",
        description="'local': this machine, as `run` always did; 'slurm': job arrays through submitit; "
                    "'submitit-local': the same jobs as subprocesses of this machine (submitit's "
                    "LocalExecutor).")
    partition: Optional[str] = Field(default=None, min_length=1,
                                     description="Slurm partition (required with kind = 'slurm').")
    account: Optional[str] = Field(default=None, min_length=1, description="Slurm account to charge.")
    gpus_per_task: int = Field(default=1, ge=0,
                               description="GPUs of an array task training one-GPU experiments; it runs "
                                           "gpus_per_task x train.workers_per_gpu workers (0: CPU only).")
    gpus_large: int = Field(default=8, ge=1,
                            description="GPUs (processes) of a task training one experiment data-parallel: "
                                        "those with N >= train.data_parallel_min_params (train.parallel = "
                                        "'auto'), or every one (parallel = 'data').")
    cpus_per_gpu: int = Field(default=8, ge=1,
                              description="CPU cores per GPU (shared by the workers packed on it).")
    mem_gb: Optional[float] = Field(default=None, gt=0,
                                    description="Memory of a task in GB (default: the partition's).")
    timeout_min: float = Field(default=240, gt=0,
                               description="Wall-clock limit of a job in minutes (Slurm: rounded up to whole "
                                           "minutes); before it the job checkpoints and is requeued.")
    array_parallelism: int = Field(default=64, ge=1, description="Array tasks running at once.")
    experiments_per_worker: int = Field(default=1, ge=1, description=(
        "Experiments (a trunk with its branches counts as one) each worker of an array task trains in turn: "
        "pack short experiments so that a task's start (a Python process importing torch, seconds) is paid "
        "once for several."))
    max_requeues: int = Field(default=3, ge=0,
                              description="Timeouts a job may be requeued after (preemptions requeue without "
                                          "limit).")
    signal_delay_s: int = Field(default=120, ge=1,
                                description="Seconds before the limit at which the checkpoint signal (USR2) "
                                            "is sent.")
    setup: list[str] = Field(default_factory=list,
                             description="Shell lines run before each job (module loads, environment "
                                         "activation).")
    additional: dict[str, Any] = Field(default_factory=dict,
                                       description="Extra sbatch parameters, e.g. {constraint = 'h100', qos "
                                                   "= 'high'}.")
    heartbeat_s: float = Field(default=30.0, gt=0,
                               description="Seconds between refreshes of an experiment's lease; a lease "
                                           "three heartbeats old may be taken over.")

    @field_validator("kind")
    @classmethod
    def _submitit_installed(cls, kind: str) -> str:
        if kind != "local" and importlib.util.find_spec("submitit") is None:
            raise ValueError(f"kind = '{kind}' needs submitit, which is not installed: {INSTALL_SLURM}")
        return kind

    @field_validator("partition")
    @classmethod
    def _partition_for_slurm(cls, partition: Optional[str], info: ValidationInfo) -> Optional[str]:
        if partition is None and info.data.get("kind") == "slurm":
            raise ValueError("kind = 'slurm' needs the partition to submit to: add partition = '...' to the "
                             "launcher table")
        return partition
