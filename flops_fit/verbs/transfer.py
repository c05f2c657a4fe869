"""Does one learning rate serve every size?  A coordinate check and a learning-rate sweep.

``transfer(spec)`` runs on the spec's own model, data and recipe:

* **coordinate check**: the smallest, a middle and the largest size train ``k`` steps (default
  5) with the spec's optimizer at its peak rate (no warmup) in the real loop; forward hooks on
  every leaf module record the mean |activation| of each training step.  For each module: the
  value per width at step 1 (init) and averaged over steps 2…k, the spread (max/min over
  widths after step 1) and the slope of ln(value) against ln(width).  A module is flagged when
  its activations grow with width through training: slope after step 1 > max(0.5, slope at
  step 1 + 0.5); one that already grows at init (slope at step 1 > 0.5) is listed as such;
* **learning-rate sweep**: the smallest and largest size (and a middle one with ``middle``) at
  the spec's rate × 2^k, k = −3…3, as ordinary hashed experiments in the spec's store (cached:
  a second call trains nothing) over one horizon for every size — the steps the largest swept
  size gets at the spec's smallest budget, clamped to [``sweep.min_steps``, ``max_steps``] (the
  best rate moves with the horizon: sizes compared at different horizons would disagree for
  that reason alone; with the example GPT, size 8 at 2000 steps against size 48 at 1500 gave
  WARN where equal horizons give PASS).  Around each size's lowest loss a
  least-squares parabola in log2(lr) over five rates gives the best rate and the loss at the
  spec's rate (one noisy run does not decide); the lowest loss must be interior to the grid; a
  size whose loss does not curve in the rate (scatter outweighs any trend) is ``flat``: no best
  rate, left out of the shift and the fitted exponent, the verdict at best WARN;
* **verdict**: PASS when the best rates of the smallest and largest size are within half an
  octave and the largest's loss at the spec's rate is within 0.5% of its minimum; WARN when
  they are 0.5–1 octave apart (or only the spec's rate is off); FAIL beyond an octave, with a
  minimum at the grid's edge, or when the spec's rate diverges.  On WARN/FAIL with three sizes
  the best rates are fitted as lr ∝ N^g and the ``[train] lr_scaling`` line to paste is given
  (g = −1/3 is OLMo's rule for standard parameterisation; μP should give g ≈ 0).

Outputs in ``<run_dir>/transfer/``: ``transfer.json``, ``transfer.png``, ``coordinates.csv``.
The recipe hash (what a verdict is about) is the smallest size's job identity without its
length, so ``estimate`` and ``run`` can tell whether the last verdict is for this recipe.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

from ..core.errors import Problem, SpecError
from ..core.frozen import Frozen
from ..core.hashing import content_hash
from ..plan.plan import Experiment, Plan, SizeInfo, compile_plan, plan_experiment
from ..spec.spec import SpecModel
from ..store.store import RunRecord, Store, atomic_write_text
from .transfer_outputs import coordinates_csv, figure

__all__ = ["CoordinateRow", "SweepPoint", "SizeOptimum", "Transfer", "transfer", "transfer_experiments",
           "recipe_hash", "last_verdict", "FACTORS", "factors"]

FACTORS = [2.0 ** k for k in range(-3, 4)]


def factors(octaves: int = 3) -> list[float]:
    """The grid of learning-rate factors 2^-octaves … 2^octaves, one per octave."""
    if octaves < 2:
        raise ValueError("the learning-rate grid needs at least 2 octaves each side "
                         "(five rates for the parabola)")
    return [2.0 ** k for k in range(-octaves, octaves + 1)]
#: A slope of ln|activation| against ln(width) above this is growth (0.5: ∝ √width).  Three widths
#: a few octaves apart over a few steps are noisy: smaller thresholds flag μP models by chance.
GROWTH = 0.5
TransferVerdict = Literal["PASS", "WARN", "FAIL"]  # the trust verdict of a fit is verdict.Verdict


class CoordinateRow(Frozen):
    """One leaf module: mean |activation| per width at step 1 and step k, and its trend with width."""

    module: str
    at_init: list[float]
    at_step: list[float]  # averaged over steps 2..k
    spread: float  # max/min over widths after step 1
    slope_init: float  # d ln(value) / d ln(width) at step 1
    slope: float  # the same after step 1
    flag: Literal["ok", "grows", "grows at init"]


class SweepPoint(Frozen):
    size: Any
    num_params: int
    factor: float
    learning_rate: float
    loss: Optional[float]  # None: diverged or failed
    status: Literal["ok", "failed", "diverged", "pending"]
    id: str


class SizeOptimum(Frozen):
    size: Any
    num_params: int
    best_lr: Optional[float]
    best_loss: Optional[float]
    edge: bool  # the lowest loss is at the grid's edge
    spec_lr_loss: Optional[float]  # measured at the spec's rate (None: diverged)
    spec_lr_fit: Optional[float] = None  # the parabola's value at the spec's rate
    flat: bool = False  # the loss does not curve in the rate (best_lr None): no best rate measured


class Transfer(Frozen):
    """``transfer.json``."""

    verdict: TransferVerdict
    reasons: list[str]
    recipe: str
    spec_lr: float
    widths: list[Any]
    best_lr: dict[str, Optional[float]]  # size -> best learning rate
    shift_octaves: Optional[float]
    spec_lr_gap: Optional[float]  # largest size: (loss at spec lr − its minimum) / minimum
    suggestion: Optional[str] = None  # the [train] lines to paste
    lr_exponent: Optional[float] = None
    optima: list[SizeOptimum]
    sweep: list[SweepPoint]
    coordinates: list[CoordinateRow]
    coordinate_widths: list[Any]  # the size parameter of the coordinate check's columns
    coordinate_steps: int
    written: str = ""

    def lines(self) -> list[str]:
        """The report as text lines (the CLI prints them)."""
        out = [f"transfer verdict: {self.verdict}"] + [f"  {r}" for r in self.reasons]
        for o in self.optima:
            best = f"{o.best_lr:.3g}" if o.best_lr else "–"
            where = " (at the grid's edge)" if o.edge else (" (not measured: flat)" if o.flat else "")
            out.append(f"  size {o.size} (N = {o.num_params:,}): best lr {best}{where}")
        flagged = [c for c in self.coordinates if c.flag != "ok"]
        for c in flagged:
            out.append(f"  coordinate check: {c.module} {c.flag} with width (slope {c.slope:+.2f}, at init {c.slope_init:+.2f})")
        if self.coordinates and not any(c.flag == "grows" for c in self.coordinates):
            out.append(f"  coordinate check: no module's activations grow with width after step 1 ({len(self.coordinates)} modules)")
        if self.suggestion:
            out += ["  paste into [train]:"] + [f"    {line}" for line in self.suggestion.splitlines()]
        return out


def recipe_hash(spec: SpecModel, sizes: list[SizeInfo]) -> str:
    """What a verdict is about: the smallest size's job identity without its length and warmup."""
    smallest = min(sizes, key=lambda s: s.num_params)
    job = plan_experiment(spec, 1.0, smallest, 1).job
    ident = job.identity_of_run()
    for key in ("steps", "warmup_steps"):
        ident.pop(key)
    ident["model"] = {k: v for k, v in ident["model"].items() if k != "size"}
    ident["optimizer"] = {k: v for k, v in ident["optimizer"].items() if k != "lr"}
    ident["lr"] = {"learning_rate": spec.train.learning_rate,
                   "scaling": spec.train.lr_scaling.model_dump() if spec.train.lr_scaling else None}
    return content_hash(ident)[:16]


def _chosen(plan: Plan, middle: bool) -> list[SizeInfo]:
    ordered = sorted(plan.sizes, key=lambda s: s.num_params)
    picks = [ordered[0], ordered[len(ordered) // 2],
             ordered[-1]] if middle and len(ordered) >= 3 else [ordered[0], ordered[-1]]
    return list({s.num_params: s for s in picks}.values())


def transfer_experiments(spec: SpecModel, plan: Plan, middle: bool = False, max_steps: int = 2000,
                         octaves: int = 3) -> list[tuple[SizeInfo, float, Experiment]]:
    """The learning-rate sweep as ordinary experiments: (size, factor, experiment), factors
    2^-octaves … 2^octaves (:func:`factors`)."""
    _need_two(spec, plan)
    chosen = _chosen(plan, middle)
    largest = max(chosen, key=lambda s: s.num_params)
    steps = int(round(min(spec.sweep.budgets) / largest.flops_per_sample / spec.train.batch_size))
    steps = min(max(steps, spec.sweep.min_steps), max_steps)  # one horizon for every size
    out = []
    for info in chosen:
        for f in factors(octaves):
            varied = spec.model_copy(update={"train": spec.train.model_copy(update={"learning_rate": spec.train.learning_rate * f})})
            flops = steps * spec.train.batch_size * info.flops_per_sample
            out.append((info, f, plan_experiment(varied, flops, info, steps)))
    return out


def _need_two(spec: SpecModel, plan: Plan) -> None:
    if len(plan.sizes) < 2:
        raise SpecError([Problem("a transfer check needs at least two sizes", key="model.sizes",
                                 file=spec.source,
                                 value=[s.size for s in plan.sizes], has_value=True,
                                 hint="add sizes to model.sizes")])


def _check_widths(spec: SpecModel, infos: list[SizeInfo]) -> None:
    """The coordinate check compares the same modules across sizes: the size must be a width."""
    from ..spec.components import build_model

    names = []
    for info in infos:
        model = build_model(spec.model.target, spec.model.size_param, info.size, spec.model.kwargs,
                            [str(spec.folder)], device="meta")
        names.append([n for n, m in model.named_modules() if not list(m.children())])
    if any(n != names[0] for n in names[1:]):
        only = sorted(set(names[-1]) ^ set(names[0]))[:3]
        raise SpecError([Problem(f"model.size_param = {spec.model.size_param!r} is not a width: the sizes have different "
                                 f"modules ({', '.join(only)} exist at only some sizes), so activations cannot be compared "
                                 f"across sizes", key="model.size_param", file=spec.source,
                                 value=spec.model.size_param,
                                 has_value=True,
                                 hint="vary a width (d_model, hidden size) for the transfer check")])


def coordinate_check(spec: SpecModel, plan: Plan, steps: int = 5) -> tuple[list[Any], list[CoordinateRow]]:
    """Mean |activation| of every leaf module over the first ``steps`` steps at three sizes (the real loop)."""
    import torch

    from ..execute.session import Session

    infos = _chosen(plan, middle=True)
    _check_widths(spec, infos)
    session = Session(plan.runtime, trackers=False)
    table: dict[str, list[list[float]]] = {}
    for col, info in enumerate(infos):
        exp = plan_experiment(spec, 1.0, info, steps)
        job = exp.job.model_copy(update={
            "schedule": exp.job.schedule.model_copy(update={"kind": "constant", "warmup_steps": 0}),
            "loop": exp.job.loop.model_copy(update={"log_points": steps})})
        seen: dict[str, list[float]] = {}

        def hang(model: torch.nn.Module) -> None:
            for name, module in model.named_modules():
                if list(module.children()):
                    continue

                def hook(mod, args, output, name=name):
                    out = output[0] if isinstance(output, (tuple, list)) else output
                    if mod.training and isinstance(out, torch.Tensor) and out.is_floating_point():
                        seen.setdefault(name, []).append(float(out.detach().abs().mean()))
                module.register_forward_hook(hook)

        session.scratch(job, f"coord-{info.size}", inspect=hang)
        for name, values in seen.items():
            row = table.setdefault(name, [[math.nan] * len(infos), [math.nan] * len(infos)])
            row[0][col], row[1][col] = values[0], float(np.mean(values[1:steps] or values[:1]))
    widths = np.log([float(i.size) for i in infos])
    rows = []
    for name, (init, last) in table.items():
        def slope(v: list[float]) -> float:
            y = np.log(np.maximum(np.asarray(v, dtype=float), 1e-30))
            return float(np.polyfit(widths, y, 1)[0]) if np.all(np.isfinite(y)) else math.nan
        s0, s1 = slope(init), slope(last)
        flag = "grows" if s1 > max(GROWTH, s0 + GROWTH) else ("grows at init" if s0 > GROWTH else "ok")
        rows.append(CoordinateRow(module=name, at_init=init, at_step=last,
                                  spread=float(np.nanmax(last) / max(np.nanmin(last), 1e-30)),
                                  slope_init=s0, slope=s1, flag=flag))
    return [i.size for i in infos], rows


def _optimum(points: list[SweepPoint], spec_lr: float) -> SizeOptimum:
    """The best rate of one size: a least-squares parabola in log2(lr) over the (up to) five rates
    around the lowest loss, so that one noisy run does not decide; its value at the spec's rate
    gives the gap.  ``edge``: the lowest loss, or the parabola's vertex, is at or beyond the grid's end."""
    pts = sorted(points, key=lambda p: p.factor)
    spec_loss = next((p.loss for p in pts if p.factor == 1.0), None)
    base = dict(size=pts[0].size, num_params=pts[0].num_params, spec_lr_loss=spec_loss)
    ok = [p for p in pts if p.loss is not None]
    if not ok:
        return SizeOptimum(best_lr=None, best_loss=None, edge=True, **base)
    x = np.log2([p.learning_rate for p in ok])
    y = np.array([p.loss for p in ok])
    i = int(np.argmin(y))
    at_end = ok[i] is pts[0] or ok[i] is pts[-1]
    lo = max(0, min(i - 2, len(ok) - 5))
    xs, ys = x[lo:lo + 5], y[lo:lo + 5]
    c2, c1, c0 = np.polyfit(xs, ys, 2) if len(xs) >= 3 else (0.0, 0.0, 0.0)
    if not at_end and not _curves(xs, ys, c2):
        return SizeOptimum(best_lr=None, best_loss=float(y[i]), edge=False, flat=True, **base)
    if c2 <= 0 or at_end:
        return SizeOptimum(best_lr=ok[i].learning_rate, best_loss=float(y[i]), edge=at_end, **base)
    vertex = float(np.clip(-c1 / (2 * c2), x[0], x[-1]))
    fitted = float(np.polyval([c2, c1, c0], math.log2(spec_lr)))
    return SizeOptimum(best_lr=float(2 ** vertex), best_loss=float(np.polyval([c2, c1, c0], vertex)),
                       edge=vertex in (x[0], x[-1]), spec_lr_fit=fitted, **base)


def _curves(xs: np.ndarray, ys: np.ndarray, c2: float) -> bool:
    """Whether the loss curves in the rate: the parabola through the rates around the lowest loss
    opens upward.  A small model short of its plateau's escape scatters by ±0.1 whatever its rate
    (the gutenberg GPT at d = 48 over 600 steps: 5.30–5.49 across 2^±3, c2 = −0.002): its argmin
    is noise, not a best rate."""
    return len(xs) < 3 or c2 > 0


def judge(spec_lr: float, optima: list[SizeOptimum]
          ) -> tuple[TransferVerdict, list[str], Optional[float], Optional[float]]:
    """The verdict, its reasons, the shift in octaves and the largest size's gap at the spec's rate.
    A size whose loss does not curve in the rate (``flat``) has no best rate: it is named, left out of
    the shift, and the verdict is at best WARN; with fewer than two sizes measured there is no shift."""
    reasons, verdict = [], "PASS"
    for o in optima:
        if o.best_lr is None and not o.flat:
            return "FAIL", [f"every learning rate diverged at size {o.size}"], None, None
        if o.spec_lr_loss is None:
            verdict = "FAIL"
            reasons.append(f"the spec's learning rate {spec_lr:.3g} diverges at size {o.size}")
        if o.edge:
            verdict = "FAIL"
            reasons.append(f"size {o.size}: the lowest loss is at the grid's edge (lr {o.best_lr:.3g}): the optimum is "
                           f"outside spec lr × 2^±3")
        if o.flat:
            verdict = "WARN" if verdict == "PASS" else verdict
            reasons.append(f"size {o.size}: the loss does not curve in the rate (scatter outweighs any "
                           "trend): its best rate is not measured (train longer, or add seeds); "
                           "left out of the shift")
    measured = [o for o in optima if not o.flat]
    if len(measured) < 2:
        return verdict, reasons, None, None
    small, large = measured[0], measured[-1]
    shift = abs(math.log2(large.best_lr / small.best_lr))
    at_spec = large.spec_lr_fit if large.spec_lr_fit is not None else large.spec_lr_loss
    gap = max(0.0, at_spec - large.best_loss) / large.best_loss if at_spec is not None else None
    reasons.append(f"best rates {small.best_lr:.3g} (size {small.size}) and {large.best_lr:.3g} (size {large.size}): "
                   f"{shift:.2f} octave(s) apart")
    if gap is not None:
        reasons.append(f"size {large.size} at the spec's rate: {gap:+.2%} above its minimum")
    if verdict != "FAIL":
        if shift > 1:
            verdict = "FAIL"
        elif shift > 0.5 or (gap is not None and gap > 0.005):
            verdict = "WARN"
    return verdict, reasons, shift, gap


def _suggest(spec: SpecModel, optima: list[SizeOptimum]) -> tuple[Optional[float], Optional[str]]:
    """lr ∝ N^g through the best rates (three or more sizes) and the lines to paste."""
    usable = [o for o in optima if o.best_lr]
    if len(usable) < 3:
        return None, None
    g = float(np.polyfit(np.log([o.num_params for o in usable]), np.log([o.best_lr for o in usable]), 1)[0])
    ref = usable[0]
    return g, (f"learning_rate = {ref.best_lr:.3g}\nlr_scaling = {{ ref_params = {ref.num_params}, exponent = {g:.3f} }}")


def transfer(spec: SpecModel, train: Callable[[list[Experiment], Store, str], None], middle: bool = False,
             max_steps: int = 2000, coordinate_steps: int = 5, octaves: int = 3) -> Transfer:
    """The coordinate check and the learning-rate sweep; writes ``<run_dir>/transfer/``.  ``octaves``:
    the grid's reach each side of the spec's rate (3: seven rates; 2: five, when the rate is roughly
    known — the same experiments as the wider grid's middle five, so a wider check reuses them)."""
    factors(octaves)  # a grid too narrow for the parabola fails before anything trains
    plan = compile_plan(spec)
    _need_two(spec, plan)
    # also checks the size is a width, before training
    widths, coordinates = coordinate_check(spec, plan, coordinate_steps)
    planned = transfer_experiments(spec, plan, middle, max_steps, octaves)
    store = Store(Path(plan.run_dir))
    train([e for _, _, e in planned], store, "transfer")
    sweep = []
    for info, f, exp in planned:
        r: RunRecord | None = store.read_result(exp.id)
        ok = r is not None and r.status == "ok" and r.loss is not None and math.isfinite(r.loss)
        sweep.append(SweepPoint(size=info.size, num_params=info.num_params, factor=f,
                                learning_rate=exp.job.optim.learning_rate, loss=r.loss if ok else None,
                                status=r.status if r else "pending", id=exp.id))
    optima = [_optimum([p for p in sweep if p.num_params == info.num_params], spec.train.learning_rate)
              for info in _chosen(plan, middle)]
    verdict, reasons, shift, gap = judge(spec.train.learning_rate, optima)
    g, suggestion = _suggest(spec, optima) if verdict != "PASS" else (None, None)
    result = Transfer(verdict=verdict, reasons=reasons, recipe=recipe_hash(spec, plan.sizes),
                      spec_lr=spec.train.learning_rate,
                      widths=[o.size for o in optima], best_lr={str(o.size): o.best_lr for o in optima},
                      shift_octaves=shift, spec_lr_gap=gap, suggestion=suggestion, lr_exponent=g,
                      optima=optima,
                      sweep=sweep, coordinates=coordinates, coordinate_widths=widths,
                      coordinate_steps=coordinate_steps,
                      written=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    folder = Path(plan.run_dir) / "transfer"
    atomic_write_text(folder / "coordinates.csv", coordinates_csv(result))
    figure(result, folder / "transfer.png")
    atomic_write_text(folder / "transfer.json", result.model_dump_json(indent=2) + "\n")  # last: the verdict
    return result


def last_verdict(spec: SpecModel, sizes: list[SizeInfo]) -> tuple[Optional[str], Path]:
    """The verdict of the last transfer check of this recipe (None: none for this recipe)."""
    path = Path(spec.run_dir) / "transfer" / "transfer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, path
    return (data.get("verdict") if data.get("recipe") == recipe_hash(spec, sizes) else None), path
