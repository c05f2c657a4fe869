"""The spec: pydantic models of the TOML file, ``Spec.load`` and ``spec.save``.

Every model is frozen and forbids unknown keys.  ``Spec.load(path)`` reads TOML with
``tomllib`` and reports *every* problem at once as a :class:`~flops_fit.core.errors.SpecError`,
each naming the file, line, dotted key (``sweep.budgets[1]``), the bad value and what is
expected.  ``spec.save(path)`` writes it back with ``tomli-w``; the two round-trip.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
import os
import re
from typing import Annotated, Any, Literal, Optional

import tomli_w
from pydantic import (AfterValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from ..core.errors import Problem, SpecError
from .launcher import LauncherSpec
from .sections import AnalysisSpec, EstimateSpec
from .types import ImportPath, Kwargs, SizeValue, _Frozen, _check_import_path, _sorted_distinct, _tracker_name
from .problems import problem_of as _problem
from ..core.tomlpos import key_lines

__all__ = [
    "SpecModel", "ModelSpec", "DataSpec", "LossSpec", "SweepSpec", "FlopsSpec", "TrainSpec", "LrScaling",
    "AnalysisSpec", "EstimateSpec", "LauncherSpec", "ImportPath",
]


class ModelSpec(_Frozen):
    """``[model]``: the user's model class and the sizes to sweep."""

    target: ImportPath = Field(description="Import path of the model class or factory, 'module:attr'.")
    size_param: str = Field(min_length=1, description="Constructor argument that sets the model size.")
    sizes: list[SizeValue] = Field(
        min_length=2, description="Candidate values of size_param (positive, distinct; at least 2).")
    kwargs: Kwargs = Field(default_factory=dict, description="Other constructor arguments.")

    _v_target = field_validator("target")(_check_import_path)

    _v_sizes = field_validator("sizes")(lambda v: _sorted_distinct(v, "sizes"))


class DataSpec(_Frozen):
    """``[data]``: the dataset and how much data one sample counts for."""

    target: ImportPath = Field(description="Callable or class returning a Dataset, IterableDataset or "
                                           "DataLoader.")
    kwargs: Kwargs = Field(default_factory=dict, description="Arguments of the data target.")
    tokens_per_sample: float = Field(default=1.0, gt=0,
                                     description="Data units D in one sample (1 when D counts samples).")
    eval_target: Optional[ImportPath] = Field(default=None,
                                              description="Separate held-out dataset; default: split off "
                                                          "eval_fraction.")
    eval_kwargs: Kwargs = Field(default_factory=dict, description="Arguments of eval_target.")
    eval_fraction: float = Field(default=0.05, gt=0, lt=0.5,
                                 description="Share of a map-style dataset held out for the eval loss.")
    eval_batches: int = Field(default=8, ge=1,
                              description="Number of fixed held-out batches averaged for the final loss.")
    unique_tokens: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False,
                                           description="Unique data units in the training data (U of the "
                                                       "data-constrained law), for loaders that cannot tell "
                                                       "(an IterableDataset); map-style data sets give it "
                                                       "themselves. Never hashed: it changes the fit, not "
                                                       "the training.")

    _v_target = field_validator("target", "eval_target")(lambda v: v if v is None else _check_import_path(v))


class LossSpec(_Frozen):
    """``[loss]``: ``loss(outputs, targets) -> scalar tensor``."""

    target: ImportPath = Field(description="Import path of the loss function.")
    kwargs: Kwargs = Field(default_factory=dict, description="Keyword arguments bound to the loss function.")

    _v_target = field_validator("target")(_check_import_path)


class SweepSpec(_Frozen):
    """``[sweep]``: the IsoFLOP budgets."""

    budgets: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        min_length=1, description="Compute budgets in FLOPs (positive, distinct).")
    sizes_per_budget: Optional[int] = Field(default=None, ge=3,
                                            description="Sizes run per budget, centred on the expected "
                                                        "optimum; default: every feasible size.")
    min_steps: int = Field(default=20, ge=1,
                           description="An experiment with fewer optimizer steps is infeasible and dropped.")
    tokens_per_param: float = Field(default=20.0, gt=0,
                                    description="Expected optimal D/N used to centre sizes_per_budget "
                                                "(Chinchilla: 20).")
    reuse: Literal["none", "branch"] = Field(default="none",
                                             description="'none': every (budget, size) trained from scratch; "
                                                         "'branch': one constant-LR trunk per size, and per "
                                                         "budget a wsd cooldown branched off it (needs "
                                                         "train.schedule = 'wsd').")
    min_cooldown_steps: int = Field(default=20, ge=1,
                                    description="reuse = 'branch': a branch's cooldown (round(decay_fraction "
                                                "· T_C) steps) must be at least this long.")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list,
                                                     description="Seeds to replicate chosen experiments with "
                                                         "(each an ordinary hashed experiment; train.seed's "
                                                         "is the one already planned); fits use each cell's "
                                                         "mean and report the seeds' standard deviation as "
                                                         "the noise floor.")
    replicate: Literal["optimum", "all"] = Field(
        default="optimum",
        description="Which experiments the seeds replicate: 'optimum', the 3 sizes of each budget nearest "
                    "the planned optimum (D/N = tokens_per_param); 'all', every one.")
    seed_budgets: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=list, description="Budgets whose experiments the seeds replicate (each one of "
        "sweep.budgets); empty: every budget.  One small budget measures the noise floor at a fraction of "
        "the cost.")

    _v_budgets = field_validator("budgets")(lambda v: _sorted_distinct(v, "budgets"))
    _v_seeds = field_validator("seeds")(lambda v: _sorted_distinct(v, "seeds"))

    @model_validator(mode="after")
    def _seeds_need_scratch(self) -> "SweepSpec":
        missing = [b for b in self.seed_budgets if b not in self.budgets]
        if missing:
            raise ValueError(f"seed_budgets {missing} are not among sweep.budgets {self.budgets}: "
                             f"name budgets of the sweep")
        if self.seeds and self.reuse == "branch":
            raise ValueError("seeds replicate experiments trained from scratch: with reuse = 'branch' each "
                             "seed would "
                             "need its own trunks; set reuse = 'none' or remove seeds")
        return self


class FlopsSpec(_Frozen):
    """``[flops]``: how training FLOPs are counted."""

    rule: Literal["6N", "measured", "function"] = Field(
        default="6N",
        description="'6N': C = 6·N·D (Chinchilla); 'measured': torch.utils.flop_counter on one batch, "
                    "forward+backward; 'function': target(model, batch) -> FLOPs per sample.")
    target: Optional[ImportPath] = Field(default=None,
                                         description="Import path of fn(model, batch) -> FLOPs per sample; "
                                                     "required when rule = 'function'.")

    @model_validator(mode="after")
    def _needs_target(self) -> "FlopsSpec":
        if self.rule == "function" and not self.target:
            raise ValueError("rule = 'function' needs flops.target = 'module:fn'")
        if self.target is not None:
            _check_import_path(self.target)
        return self


class LrScaling(_Frozen):
    """``[train] lr_scaling``: the peak LR of a model with N parameters is learning_rate × (N/ref_params)^exponent."""

    ref_params: float = Field(gt=0, description="N0: the size whose peak LR is train.learning_rate.")
    exponent: float = Field(ge=-2, le=2,
                            description="g: OLMo's rule for standard parameterisation is -1/3; about 0 under "
                                        "muP.")


class TrainSpec(_Frozen):
    """``[train]``: the training recipe; every key optional."""

    batch_size: int = Field(default=32, ge=1, description="Global batch size in samples.")
    micro_batch_size: Optional[int] = Field(default=None, ge=1,
                                            description="Per-process micro-batch; gradients are accumulated "
                                                        "to batch_size.")
    learning_rate: float = Field(default=3e-3, gt=0, le=10, description="Peak learning rate.")
    lr_scaling: Optional[LrScaling] = Field(default=None,
                                            description="Peak LR as a power of N: learning_rate × "
                                                        "(N/ref_params)^exponent; unset: one LR for every "
                                                        "size.")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW weight decay (matrices only).")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW betas.")
    eps: float = Field(default=1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: Optional[float] = Field(default=1.0, gt=0,
                                       description="Clip the global gradient norm; unset to disable.")
    optimizer: Optional[ImportPath] = Field(default=None,
                                            description="Import path of factory(params, lr) -> optimizer; "
                                                        "default AdamW.")
    schedule: Literal["cosine", "constant", "wsd"] = Field(
        default="cosine",
        description="Warmup then cosine to min_lr_ratio, constant, or warmup-stable-decay.")
    warmup_tokens: Optional[float] = Field(default=None, ge=0,
                                           description="Warmup length in data units; default N (the model's "
                                                       "parameter count).")
    warmup_fraction: Optional[float] = Field(default=None, ge=0, lt=1,
                                             description="Warmup as a fraction of the run; overrides "
                                                         "warmup_tokens.")
    max_warmup_fraction: float = Field(default=0.25, gt=0, le=1,
                                       description="Cap on warmup as a fraction of the run.")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="Final LR / peak LR for cosine and wsd.")
    decay_fraction: float = Field(default=0.2, gt=0, le=1,
                                  description="Cooldown share of the run for wsd (1-sqrt shape).")
    precision: Literal["fp32", "bf16", "fp16"] = Field(default="fp32",
                                                       description="Mixed precision through accelerate.")
    seed: int = Field(default=0, ge=0, description="Seed of python, numpy, torch and the data order.")
    compile: bool = Field(default=False, description="torch.compile the model.")
    cuda_graphs: Literal["auto", "on", "off"] = Field(default="auto", description=(
        "Replay forward, backward and clip from a CUDA graph (small models are launch-bound): 'auto' "
        "where replay is exact (CUDA, one process, no accumulation, no fp16 scaler, no hooks), 'on' (an "
        "error where it cannot), 'off'."))
    group: Literal["auto", "on", "off"] = Field(default="auto", description=(
        "Step experiments of one shape (seeds, learning rates, replicates of a size) together, up to 8: "
        "their parameters stacked, one batched forward and backward (torch.func.vmap), each its own "
        "optimizer, curve, checkpoints and result. 'auto': on CUDA (one process, no compile, no fp16 "
        "scaler, no trackers); 'on': also on the CPU (no faster there); 'off'."))
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto",
                                                   description="'auto': CUDA when present, else CPU.")
    log_with: list[Annotated[str, AfterValidator(_tracker_name)]] = Field(
        default_factory=list,
        description="Trackers, by accelerate's names (tensorboard, wandb, mlflow, aim, comet_ml, clearml, "
                    "dvclive, swanlab, trackio, ...): one run per experiment grouped by the spec's name, and "
                    "a summary run; metrics.jsonl is always written.")
    log_points: int = Field(default=40, ge=4,
                            description="Points of the loss curve, spaced in FLOPs (half geometric, half "
                                        "linear).")
    eval_points: int = Field(default=4, ge=0,
                             description="Held-out evaluations during training, besides the final one.")
    num_workers: int = Field(default=0, ge=0,
                             description="DataLoader worker processes for map-style datasets that are not "
                                         "tensors (0: load in the training process).")
    checkpoint_seconds: float = Field(default=600.0, gt=0,
                                      description="Checkpoint at most this often (seconds).")
    checkpoint_steps: Optional[int] = Field(default=None, ge=1,
                                            description="Also checkpoint every this many steps.")
    keep_checkpoints: int = Field(default=1, ge=1, description="Complete checkpoints kept per experiment.")
    parallel: Literal["auto", "data", "experiment"] = Field(
        default="auto",
        description="Several GPUs/processes: 'data' trains each experiment data-parallel over all GPUs; "
                    "'experiment' gives whole experiments to worker processes; 'auto': experiment-parallel "
                    "below data_parallel_min_params, data-parallel above.")
    workers_per_gpu: int = Field(default=1, ge=1, le=16,
                                 description="Worker processes per GPU for experiment-parallel runs (packs "
                                             "small models onto one GPU); on CPU, worker processes.")
    data_parallel_min_params: float = Field(default=5e7, gt=0,
                                            description="With parallel = 'auto', models at least this large "
                                                        "are trained data-parallel.")
    divergence_factor: float = Field(default=3.0, gt=1,
                                     description="Loss above this times its initial value is divergence.")

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("betas must lie in [0, 1)")
        return betas

    @model_validator(mode="after")
    def _micro(self) -> "TrainSpec":
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")
        return self


class SpecModel(_Frozen):
    """A flops-fit spec: everything needed to plan, train and fit an IsoFLOP sweep."""

    model_config = ConfigDict(title="Spec")

    name: str = Field(max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Names the run directory <runs_dir>/<name>.")
    runs_dir: str = Field(default="runs", min_length=1,
                          description="Folder of run directories, relative to the working directory.")
    model: ModelSpec = Field(description="The model class and sizes.")
    data: DataSpec = Field(description="The dataset.")
    loss: LossSpec = Field(description="The loss function.")
    sweep: SweepSpec = Field(description="The compute budgets.")
    flops: FlopsSpec = Field(default_factory=FlopsSpec, description="The FLOP counting rule.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="The training recipe.")
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="The fits.")
    cost: EstimateSpec = Field(default_factory=EstimateSpec, alias="estimate",
                               description="[estimate]: the dry-run cost model.")
    launcher: LauncherSpec = Field(default_factory=LauncherSpec,
                                   description="Where experiments run: local processes or Slurm job arrays "
                                               "(never hashed).")
    _source: Optional[str] = PrivateAttr(default=None)  # the file it was read from; not a TOML key

    @property
    def source(self) -> str | None:
        """The spec file this was read from (None when built in Python)."""
        return self._source

    @property
    def folder(self) -> Path:
        """The spec file's folder (import paths resolve from it), else the working directory."""
        return Path(self.source).parent if self.source else Path.cwd()

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None, text: str | None = None):
        """Validate a dict; every problem is raised at once, with lines when ``text`` is given."""
        lines = key_lines(text) if text else {}
        try:
            spec = cls.model_validate(data)
        except ValidationError as exc:
            problems = {}
            for err in exc.errors():  # one problem per key (union branches repeat it)
                p = _problem(err, cls, source, lines)
                problems.setdefault(p.key, p)
            raise SpecError(list(problems.values())) from None
        spec._source = source
        return spec

    @classmethod
    def load(cls, path: str | Path):
        """Read and validate a TOML spec file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError([Problem(f"cannot read spec: {exc.strerror}", file=str(path))]) from None
        except UnicodeDecodeError as exc:
            raise SpecError([Problem(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                                     file=str(path), hint="a spec is a TOML text file")]) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            found = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))  # lineno/colno are 3.14+
            line, col = (int(found.group(1)), int(found.group(2))) if found else (None, None)
            msg = str(exc).split(" (at line")[0]
            raise SpecError([Problem(f"TOML syntax error: {msg}", file=str(path), line=line, column=col,
                                     hint="fix the TOML syntax")]) from None
        return cls.from_dict(data, source=str(path), text=text)

    def to_toml_dict(self) -> dict:
        """The spec as TOML-ready data (no nulls: TOML has none)."""
        return _drop_none(self.model_dump(mode="json", by_alias=True))

    def save(self, path: str | Path) -> Path:
        """Write the spec as TOML; ``Spec.load`` reads it back equal.

        In a checkout the file starts with a ``#:schema`` line pointing at ``schemas/spec.schema.json``.
        """
        path = Path(path)
        schema = Path(__file__).resolve().parent.parent / "schemas" / "spec.schema.json"
        header = f"#:schema {os.path.relpath(schema, path.resolve().parent)}\n" if schema.exists() else ""
        path.write_text(header + tomli_w.dumps(self.to_toml_dict()), encoding="utf-8")
        return path


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
