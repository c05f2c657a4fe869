"""Compile a Spec into an immutable, hashed IsoFLOP Plan.  Pure: no training, no writes.

For each budget C and size s the planner builds the model on the ``meta`` device (no
memory, no time) to get N, takes the FLOPs per sample f from the FLOP rule, and sets

    samples = C / f,   steps = round(samples / batch_size),   D = steps · batch_size · tokens_per_sample,

so the FLOPs actually executed, ``steps · batch_size · f``, sit next to the budget.  An
experiment with fewer than ``sweep.min_steps`` steps is infeasible and dropped with a
reason.  With ``sweep.sizes_per_budget = k`` the k feasible sizes nearest (in log space) to
the expected optimum D/N = ``sweep.tokens_per_param`` are kept, a contiguous window.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import Field

from ..core.errors import Problem, SpecError
from ..core.frozen import Frozen
from ..core.hashing import content_hash
from .job import NOT_HASHED, BranchPoint, Component, Job, Loop, Optim, Runtime, Schedule
from .sizing import SizeInfo, sample_batch, size_info, size_infos
from ..spec.spec import SpecModel

__all__ = ["Component", "Optim", "Schedule", "Loop", "Runtime", "NOT_HASHED", "BranchPoint", "runtime",
           "peak_lr", "Job",
           "Trunk", "Experiment", "Dropped", "SizeInfo", "Plan", "compile_plan", "size_info", "size_infos",
           "sample_batch", "experiment_id", "plan_experiment", "format_number"]



class Experiment(Frozen):
    """One (budget, size) point of the sweep."""

    id: str
    hash: str
    budget_flops: float
    size: Any
    num_params: int
    num_tokens: float
    num_samples: int
    steps: int
    flops: float
    job: Job


class Trunk(Experiment):
    """``reuse = "branch"``: one size's constant-LR trunk, trained to its last branch step
    (``steps``), writing a pinned checkpoint at each of ``branch_steps`` (the S_C of its branches)."""

    branch_steps: list[int]


class Dropped(Frozen):
    budget_flops: float
    size: Any
    num_params: int
    reason: str


class Plan(Frozen):
    """The compiled sweep: experiments, dropped (infeasible) points, and the size table."""

    name: str
    run_dir: str
    flop_rule: str
    size_param: str
    tokens_per_sample: float
    budgets: list[float]
    sizes: list[SizeInfo]
    experiments: list[Experiment]
    dropped: list[Dropped]
    approaches: list[str]
    predict: list[float]
    runtime: Runtime
    reuse: str = "none"
    trunks: list[Trunk] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # reuse = "branch": the cells that train standalone, and why

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.model_validate_json(text)

    def for_budget(self, budget_flops: float) -> list[Experiment]:
        return [e for e in self.experiments if e.budget_flops == budget_flops]

    def branches_of(self, trunk: Experiment) -> list[Experiment]:
        """The experiments branched off ``trunk``, by branch step."""
        found = [e for e in self.experiments if e.job.branch is not None and e.job.branch.trunk_id == trunk.id]
        return sorted(found, key=lambda e: e.job.branch.step)

    def units(self) -> list[Experiment]:
        """What a worker walks, in order: each trunk followed by its branches, then the other experiments."""
        out: list[Experiment] = []
        for trunk in self.trunks:
            out += [trunk, *self.branches_of(trunk)]
        return out + [e for e in self.experiments if e.job.branch is None]


def format_number(value: float) -> str:
    """``4e15``, ``1.5e13``, ``128``: short and file-name safe."""
    return _fmt_number(value)


def _fmt_number(value: float) -> str:
    text = f"{value:.3g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    return text


def experiment_id(budget_flops: float, size_param: str, size: Any, digest: str) -> str:
    """Readable prefix plus content hash, e.g. ``c1e13-d128-3f2a9c1b07de``."""
    return f"c{_fmt_number(budget_flops)}-{size_param[:1]}{_fmt_number(size) if isinstance(size, float) else size}-{digest}"


def _warmup_steps(spec: SpecModel, num_params: int, steps: int) -> int:
    t = spec.train
    if t.warmup_fraction is not None:
        return int(round(t.warmup_fraction * steps))
    tokens = t.warmup_tokens if t.warmup_tokens is not None else float(num_params)
    per_step = t.batch_size * spec.data.tokens_per_sample
    if spec.sweep.reuse == "branch":  # one warmup per size serves every length: not capped by the run's
        return int(math.ceil(tokens / per_step))
    return int(min(math.ceil(tokens / per_step), t.max_warmup_fraction * steps))


def _centred(candidates: list[tuple[SizeInfo, int]], budget: float, spec: SpecModel) -> set:
    """The k sizes whose D/N is nearest the expected optimum, as a contiguous window."""
    k = spec.sweep.sizes_per_budget
    if k is None or len(candidates) <= k:
        return {c[0].size for c in candidates}
    target = math.log(spec.sweep.tokens_per_param)

    def ratio(item: tuple[SizeInfo, int]) -> float:
        info, steps = item
        return abs(math.log(steps * spec.train.batch_size * spec.data.tokens_per_sample / info.num_params) - target)

    best = min(range(len(candidates)), key=lambda i: ratio(candidates[i]))
    start = min(max(0, best - k // 2), len(candidates) - k)
    return {c[0].size for c in candidates[start:start + k]}


def compile_plan(spec: SpecModel, sizes: list[SizeInfo] | None = None) -> Plan:
    """Compile ``spec`` into a :class:`Plan`; raises SpecError when a budget fits no size."""
    sizes = sizes if sizes is not None else size_infos(spec)
    experiments, dropped, problems = [], [], []
    for budget in spec.sweep.budgets:
        feasible = []
        for info in sizes:
            steps = int(round(budget / info.flops_per_sample / spec.train.batch_size))
            if steps < spec.sweep.min_steps:
                dropped.append(Dropped(budget_flops=budget, size=info.size, num_params=info.num_params,
                                       reason=f"{steps} steps < sweep.min_steps = {spec.sweep.min_steps}"))
            else:
                feasible.append((info, steps))
        keep = _centred(feasible, budget, spec)
        for info, steps in feasible:
            if info.size not in keep:
                dropped.append(Dropped(budget_flops=budget, size=info.size, num_params=info.num_params,
                                       reason=f"outside the {spec.sweep.sizes_per_budget} sizes centred on D/N = {spec.sweep.tokens_per_param:g}"))
                continue
            experiments.append(plan_experiment(spec, budget, info, steps))
        experiments += replicates(spec, budget, [(i, s) for i, s in feasible if i.size in keep])
        if not feasible:
            problems.append(Problem(f"budget {budget:.3g} FLOPs fits no size: even the smallest model "
                                    f"(N = {sizes[0].num_params:,}) gets fewer than {spec.sweep.min_steps} steps",
                                    key=f"sweep.budgets[{spec.sweep.budgets.index(budget)}]",
                                    file=spec.source,
                                    value=budget, has_value=True,
                                    hint="raise the budget, add smaller sizes, or lower train.batch_size / sweep.min_steps"))
    trunks: list[Trunk] = []
    notes: list[str] = []
    if spec.sweep.reuse == "branch" and not problems:
        experiments, trunks, problems, notes = branched(spec, experiments, sizes)
    if problems:
        raise SpecError(problems)
    return Plan(name=spec.name, run_dir=str(spec.run_dir), flop_rule=spec.flops.rule,
                size_param=spec.model.size_param,
                tokens_per_sample=spec.data.tokens_per_sample, budgets=list(spec.sweep.budgets), sizes=sizes,
                experiments=experiments, dropped=dropped, approaches=list(spec.analysis.approaches),
                predict=list(spec.analysis.predict), runtime=runtime(spec), reuse=spec.sweep.reuse,
                trunks=trunks,
                notes=notes)


def replicates(spec: SpecModel, budget: float, chosen: list[tuple[SizeInfo, int]]) -> list[Experiment]:
    """``[sweep] seeds``: the budget's experiments again with each seed but ``train.seed`` (already planned),
    at every budget or only those of ``seed_budgets``.

    ``replicate = "optimum"``: the 3 sizes whose D/N is nearest ``tokens_per_param`` (in ln); "all": every one.
    The seed is part of the job's identity, so each replicate is an ordinary experiment with its own id."""
    seeds = [s for s in spec.sweep.seeds if s != spec.train.seed]
    if spec.sweep.seed_budgets and budget not in spec.sweep.seed_budgets:
        return []
    if not seeds or not chosen:
        return []
    if spec.sweep.replicate == "optimum":
        def distance(item: tuple[SizeInfo, int]) -> float:
            info, steps = item
            ratio = steps * spec.train.batch_size * spec.data.tokens_per_sample / info.num_params
            return abs(math.log(ratio / spec.sweep.tokens_per_param))
        chosen = sorted(sorted(chosen, key=distance)[:3], key=lambda item: item[0].num_params)
    out = []
    for seed in seeds:
        seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
        for info, steps in chosen:
            e = plan_experiment(seeded, budget, info, steps)
            rid = f"{e.id[:-len(e.hash)]}s{seed}-{e.hash}"  # c1e11-d16-s1-3f2a9c1b07de
            out.append(e.model_copy(update={"id": rid,
                                            "job": e.job.model_copy(update={"experiment_id": rid})}))
    return out


def branch_step(steps: int, decay_fraction: float) -> int:
    """S_C = T_C − round(f·T_C): where the wsd schedule of a T_C-step run starts its cooldown."""
    return steps - max(1, int(round(decay_fraction * steps)))


def branched(spec: SpecModel, experiments: list[Experiment],
             sizes: list[SizeInfo]) -> tuple[list[Experiment], list[Trunk], list[Problem], list[str]]:
    """``reuse = "branch"``: one trunk per size and, in place of each experiment that can branch, a
    branch of it; the rest train standalone (the same wsd schedule, the identity of a ``reuse =
    "none"`` experiment), each with a note.

    A branch keeps its (budget, size) prefix; its hash is (trunk hash, S_C, T_C, cooldown).  A cell
    cannot branch when its warmup does not end before its branch step or its cooldown is shorter
    than ``sweep.min_cooldown_steps``.  Problems (nothing is planned): a schedule that is not wsd, a
    warmup given as a fraction of the run, or no cell of the sweep that can branch."""
    problems = _branch_problems(spec)
    if problems:
        return experiments, [], problems, []
    standalone = spec.model_copy(update={"sweep": spec.sweep.model_copy(update={"reuse": "none"})})
    by_size = {info.size: info for info in sizes}
    trunks, out, notes, why_not = [], {}, [], []
    for size in dict.fromkeys(e.size for e in experiments):
        own = [e for e in experiments if e.size == size]
        points = {e.id: branch_step(e.steps, spec.train.decay_fraction) for e in own}
        can = []
        for e in own:
            reason = _cannot_branch(spec, e, points[e.id])
            if reason is None:
                can.append(e)
                continue
            alone = plan_experiment(standalone, e.budget_flops, by_size[size], e.steps)
            out[e.id] = alone
            notes.append(f"{alone.id} trains standalone (wsd, no trunk): {reason}")
            why_not.append(reason)
        if can:
            trunk = _trunk(spec, size, can, sorted({points[e.id] for e in can}))
            trunks.append(trunk)
            out.update({e.id: _branch(spec, e, trunk, points[e.id]) for e in can})
    if not trunks:
        more = f"; and {len(why_not) - 1} more" if len(why_not) > 1 else ""
        problem = Problem(f"sweep.reuse = 'branch': no cell of the sweep can branch ({why_not[0]}{more})",
                          key="sweep.reuse", file=spec.source, value="branch", has_value=True,
                          hint="lower train.warmup_tokens or sweep.min_cooldown_steps, raise "
                               "train.decay_fraction or the budgets, or set reuse = \"none\"")
        return experiments, [], [problem], []
    return [out[e.id] for e in experiments], trunks, [], notes


def _branch_problems(spec: SpecModel) -> list[Problem]:
    """What rules branching out for the whole sweep: a schedule other than wsd, a fractional warmup."""
    t = spec.train
    if t.schedule != "wsd":
        return [Problem("sweep.reuse = 'branch' needs the warmup-stable-decay schedule (branches are its "
                        "cooldowns)", key="train.schedule", file=spec.source, value=t.schedule,
                        has_value=True, hint='set train.schedule = "wsd"')]
    if t.warmup_fraction is not None:
        return [Problem("sweep.reuse = 'branch' shares one warmup between every length of a size; a warmup "
                        "as a fraction of the run cannot be shared", key="train.warmup_fraction",
                        file=spec.source, value=t.warmup_fraction, has_value=True,
                        hint="remove it and set train.warmup_tokens")]
    return []


def _cannot_branch(spec: SpecModel, e: Experiment, point: int) -> str | None:
    """Why a cell cannot branch at step ``point`` (None: it can): its cooldown is too short, or the
    size's shared warmup does not end before the branch step."""
    cool, warm = e.steps - point, e.job.warmup_steps
    if cool < spec.sweep.min_cooldown_steps:
        return (f"its cooldown would be {cool} steps (decay_fraction {spec.train.decay_fraction:g} of "
                f"{e.steps}), fewer than sweep.min_cooldown_steps = {spec.sweep.min_cooldown_steps}")
    if warm >= point:
        return f"the size's shared warmup ({warm} steps) does not end before its branch step {point}"
    return None


def _trunk(spec: SpecModel, size: Any, can: list[Experiment], pins: list[int]) -> Trunk:
    """A size's constant-rate trunk, trained to its last pin, writing a checkpoint at every pin."""
    first = can[0]
    constant = first.job.schedule.model_copy(update={"kind": "constant"})
    budget = max(e.budget_flops for e in can)
    job = first.job.model_copy(update={"role": "trunk", "steps": pins[-1], "pins": pins, "experiment_id": "",
                                       "budget_flops": budget, "schedule": constant})
    digest = content_hash(job.identity())
    shown = _fmt_number(size) if isinstance(size, float) else size
    trunk_id = f"trunk-{spec.model.size_param[:1]}{shown}-{digest}"
    job = job.model_copy(update={"hash": digest, "experiment_id": trunk_id})
    samples = pins[-1] * spec.train.batch_size
    return Trunk(id=trunk_id, hash=digest, budget_flops=job.budget_flops, size=size,
                 num_params=first.num_params, num_tokens=samples * spec.data.tokens_per_sample,
                 num_samples=samples, steps=pins[-1], flops=samples * first.job.flops_per_sample, job=job,
                 branch_steps=pins)


def _branch(spec: SpecModel, e: Experiment, trunk: Trunk, point: int) -> Experiment:
    """The cell ``e`` as a branch of ``trunk`` at step ``point``: hashed by (trunk, S_C, T_C, cooldown)."""
    at = BranchPoint(trunk_id=trunk.id, trunk_hash=trunk.hash, step=point)
    bjob = e.job.model_copy(update={"branch": at})
    h = content_hash(bjob.identity())
    eid = experiment_id(e.budget_flops, spec.model.size_param, e.size, h)
    job = bjob.model_copy(update={"hash": h, "experiment_id": eid})
    return e.model_copy(update={"id": eid, "hash": h, "job": job})


def runtime(spec: SpecModel) -> Runtime:
    """The run-level part of ``[train]`` (precision, device, compile, trackers) and the lease heartbeat."""
    t = spec.train
    return Runtime(precision=t.precision, device=t.device, compile=t.compile, cuda_graphs=t.cuda_graphs,
                   group=t.group,
                   log_with=list(t.log_with),
                   heartbeat_s=spec.launcher.heartbeat_s)


def peak_lr(spec: SpecModel, num_params: int) -> float:
    """``learning_rate × (N / ref_params)^exponent`` with ``[train] lr_scaling``, else ``learning_rate``.
    The job's optimizer gets this rate, so the id hashes the rate each size actually trains with."""
    t = spec.train
    if t.lr_scaling is None:
        return t.learning_rate
    return t.learning_rate * (num_params / t.lr_scaling.ref_params) ** t.lr_scaling.exponent


def _job(spec: SpecModel, budget: float, info: SizeInfo, steps: int) -> Job:
    """The narrow job of one (budget, size); its id is the readable prefix plus the hash of its identity."""
    t, d = spec.train, spec.data
    job = Job(experiment_id="", budget_flops=budget, model=Component(target=spec.model.target,
                                                                     kwargs=spec.model.kwargs),
              size_param=spec.model.size_param, size=info.size, data=Component(target=d.target, kwargs=d.kwargs),
              eval_data=Component(target=d.eval_target, kwargs=d.eval_kwargs) if d.eval_target else None,
              eval_fraction=d.eval_fraction, eval_batches=d.eval_batches,
              loss=Component(target=spec.loss.target, kwargs=spec.loss.kwargs),
              tokens_per_sample=d.tokens_per_sample,
              steps=steps, num_params=info.num_params, flops_per_sample=info.flops_per_sample,
              optim=Optim(target=t.optimizer, learning_rate=peak_lr(spec, info.num_params),
                          weight_decay=t.weight_decay,
                          betas=t.betas, eps=t.eps, grad_clip=t.grad_clip),
              schedule=Schedule(kind=t.schedule, warmup_steps=_warmup_steps(spec, info.num_params, steps),
                                min_lr_ratio=t.min_lr_ratio, decay_fraction=t.decay_fraction),
              loop=Loop(batch_size=t.batch_size, micro_batch_size=t.micro_batch_size, seed=t.seed,
                        divergence_factor=t.divergence_factor, log_points=t.log_points,
                        eval_points=t.eval_points,
                        num_workers=t.num_workers, checkpoint_seconds=t.checkpoint_seconds,
                        checkpoint_steps=t.checkpoint_steps, keep_checkpoints=t.keep_checkpoints),
              precision=t.precision, search_path=[str(Path(spec.folder).resolve())])
    digest = content_hash(job.identity())
    return job.model_copy(update={"hash": digest,
                                  "experiment_id": experiment_id(budget, spec.model.size_param, info.size,
                                                                 digest)})


def plan_experiment(spec: SpecModel, budget: float, info: SizeInfo, steps: int) -> Experiment:
    """One standalone experiment of ``spec`` at ``budget`` with ``steps`` steps (the sweep's, the forward
    check's and the transfer check's experiments are all made here)."""
    job = _job(spec, budget, info, steps)
    samples = steps * spec.train.batch_size
    return Experiment(id=job.experiment_id, hash=job.hash, budget_flops=budget, size=info.size,
                      num_params=info.num_params, num_tokens=samples * spec.data.tokens_per_sample,
                      num_samples=samples, steps=steps, flops=samples * info.flops_per_sample, job=job)
