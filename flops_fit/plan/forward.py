"""The experiments of a forward check: the sizes of ``model.sizes`` around a predicted N_opt, at a
budget the sweep never trained (``flops-fit confirm``)."""

from __future__ import annotations

import math

from ..core.errors import Problem, SpecError
from ..spec.spec import SpecModel
from .plan import Experiment, plan_experiment
from .sizing import SizeInfo

__all__ = ["confirm_experiments"]


def confirm_experiments(spec: SpecModel, sizes: list[SizeInfo], budget_flops: float, num_params: float,
                        k: int = 3) -> list[Experiment]:
    """The ``k`` sizes of ``model.sizes`` around a predicted N_opt, as ordinary experiments at
    ``budget_flops``.

    The size nearest ``num_params`` (in ln N) is the centre, with ``k // 2`` sizes either side
    (one more above for even k).  Raises SpecError when the centre has no neighbour on a side
    or a size gets fewer than ``sweep.min_steps`` steps: a forward check needs the predicted
    size bracketed.
    """
    ordered = sorted(sizes, key=lambda s: s.num_params)
    best = min(range(len(ordered)), key=lambda i: abs(math.log(ordered[i].num_params) - math.log(num_params)))
    lo, hi = best - k // 2, best + (k - 1 - k // 2)
    problems = []
    if lo < 0 or hi >= len(ordered):
        side = "smaller" if lo < 0 else "larger"
        centre = ordered[best]
        problems.append(Problem(f"the predicted N_opt = {num_params:.3g} needs {k // 2 or 1} {side} size(s) "
                                f"beside {spec.model.size_param} = {centre.size} (N = {centre.num_params:,}) "
                                f"to bracket it", key="model.sizes", file=spec.source,
                                value=[s.size for s in ordered],
                                has_value=True,
                                hint=f"add {side} values of {spec.model.size_param} to model.sizes "
                                                     f"(the sweep does not use sizes outside its window)"))
    chosen = ordered[max(0, lo):hi + 1]
    out = []
    for info in chosen:
        steps = int(round(budget_flops / info.flops_per_sample / spec.train.batch_size))
        if steps < spec.sweep.min_steps:
            problems.append(Problem(f"{spec.model.size_param} = {info.size} gets {steps} steps at "
                                    f"{budget_flops:.3g} FLOPs (< sweep.min_steps = {spec.sweep.min_steps})",
                                    key="sweep.min_steps", file=spec.source, hint="confirm a larger budget"))
            continue
        out.append(plan_experiment(spec, budget_flops, info, steps))
    if problems:
        raise SpecError(problems)
    return out
