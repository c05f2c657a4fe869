"""The forward check: a pre-registered prediction at a budget the fit never saw, then the runs that test it.

``confirm(spec, budget_flops, k)``:

1. fits the sweep's points as ``analyze`` does and writes
   ``<run_dir>/confirm/<C>/prediction.json`` **before** anything is trained: N_opt, D_opt and
   the loss at C with their 95% bootstrap intervals, the approach and fit they came from, the
   ``k`` sizes it will train with each one's predicted loss and interval, and a timestamp.  An
   existing prediction is never rewritten (it was registered first); delete the folder to
   predict again;
2. trains the size of ``model.sizes`` nearest the predicted N_opt and its neighbours at C as
   ordinary cached experiments (ids like the sweep's; they are not in the plan's budgets, so
   they never enter the fit they test);
3. writes ``confirm.json`` and ``confirm.png``: measured against predicted loss, the error of
   the best measured loss, whether the best measured size is the predicted one, and whether
   each measured loss falls inside its predicted interval.

The loss predicted for a size with N parameters trained on D tokens is the parametric law
(Approach 3) at the experiment's planned D, its interval the 2.5 and 97.5 percentiles over the
bootstrap fits, whichever approach predicted N_opt.  Where the sweep knows its unique tokens U
the law is data-constrained (:mod:`flops_fit.analysis.constrained`): a size that repeats the
data is predicted worse, not flagged after the fact.  A measured loss outside its interval is
noted, below as well as above.

Sizes beyond the registered ones are *additions* (``additions.json``, each registered with its
predicted loss before it is trained): ``--sizes k`` larger than the registered count, and
``--bracket``, which adds the next size of ``model.sizes`` beyond the edge when the best measured
size is at the edge of what was trained.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable


from .confirmation import Additions, Confirmation, MeasuredSize, PlannedSize, Registration
from ..core.errors import Problem, SpecError
from ..plan.forward import confirm_experiments
from ..plan.plan import Experiment, Plan, compile_plan, format_number
from ..spec.spec import SpecModel
from ..store.store import RunRecord, Store, atomic_write_text

__all__ = ["PlannedSize", "Registration", "MeasuredSize", "Confirmation", "confirm", "preregister",
           "confirm_dir"]


def confirm_dir(spec: SpecModel, budget_flops: float, approach: str | None = None) -> Path:
    """``<run_dir>/confirm/<C>``, or ``<C>-<approach>`` for an approach other than the default (parametric)."""
    suffix = f"-{approach}" if approach not in (None, "parametric") else ""
    return spec.run_dir / "confirm" / (format_number(budget_flops) + suffix)


def _planned(fits, experiments: list[Experiment], created: str | None = None) -> list[PlannedSize]:
    """Each experiment with the parametric law's loss and band at its planned N and D (under the data's
    repetition where the law is data-constrained), and its epochs D/U where U is known."""
    out = []
    for e in experiments:
        loss = ci = None
        if fits.parametric:
            value, lo, hi = fits.parametric.band(e.num_params, e.num_tokens)
            loss, ci = float(value), None if lo is None else [float(lo), float(hi)]
        U = fits.unique_tokens
        out.append(PlannedSize(id=e.id, size=e.size, num_params=e.num_params, num_tokens=e.num_tokens,
                               loss=loss, loss_ci=ci, epochs=e.num_tokens / U if U else None,
                               created=created))
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_budget(spec: SpecModel, plan: Plan, budget_flops: float) -> None:
    if not (math.isfinite(budget_flops) and budget_flops > 0):
        raise SpecError([Problem("the budget must be a positive, finite number of FLOPs", key="--budget",
                                 value=budget_flops, has_value=True)])
    if any(math.isclose(budget_flops, b, rel_tol=1e-9) for b in plan.budgets):
        raise SpecError([Problem("this budget is one of the sweep's: a forward check needs a budget the fit never saw",
                                 key="--budget", value=budget_flops, has_value=True,
                                 hint=f"use a budget above {max(plan.budgets):.3g} (3-4x is a good test)")])


def preregister(spec: SpecModel, plan: Plan, result, budget_flops: float, k: int = 3,
                approach: str | None = None) -> tuple[Registration, list[Experiment]]:
    """The prediction at ``budget_flops`` from ``result``'s fits, and the experiments that will test it (pure)."""
    _check_budget(spec, plan, budget_flops)
    fits = result.fits
    available = [a for a in ("parametric", "isoflop") if getattr(fits, a)]
    approach = approach or (available[0] if available else None)
    if approach is None or approach not in available:
        raise SpecError([Problem(f"no {approach or 'parametric or isoflop'} fit to predict from "
                                 f"(fitted: {', '.join(available) or 'none'})", key="--approach",
                                 hint="run the sweep first (`flops-fit run SPEC`) and check `flops-fit analyze SPEC`")])
    row = result.predict(budget_flops)[approach]
    experiments = confirm_experiments(spec, plan.sizes, budget_flops, row.num_params, k)
    sizes = _planned(fits, experiments)
    fit_doc = {"approach": approach, "points": fits.num_points, "budgets": sorted(plan.budgets),
               "flop_rule": plan.flop_rule, "unique_tokens": fits.unique_tokens}
    if fits.parametric:
        fit_doc.update(fits.parametric.model_dump(include={"form", "form_reason", "r_star_d", "r_star_n"}))
    if approach == "parametric":
        fit_doc.update(fits.parametric.model_dump(include={"E", "A", "B", "alpha", "beta", "a", "b"}))
    else:
        fit_doc.update(fits.isoflop.model_dump(mode="json", include={"n_opt", "loss_opt"}))
    pred = Registration(budget_flops=budget_flops, approach=approach, num_params=row.num_params,
                      num_tokens=row.num_tokens, loss=row.loss, loss_ci=row.loss_ci,
                      num_params_ci=row.num_params_ci, num_tokens_ci=row.num_tokens_ci,
                      size=row.size, sizes=sizes, fit=fit_doc,
                      created=_now())
    return pred, experiments


def score(prediction: Registration, results: dict[str, RunRecord | None], sweep_epochs: float = 1.0,
            added: list[PlannedSize] = (),
            beyond: dict[str, float | int | None] | None = None) -> Confirmation:
    """Predicted against measured (``results``: experiment id -> its run record, or None;
    ``sweep_epochs``: the most passes over the data of any sweep run, for the repetition note when the
    law assumed fresh data; ``added``: sizes registered after the prediction; ``beyond``: the next
    size of ``model.sizes`` below and above the trained ones, for the edge note)."""
    measured, notes = [], []
    fresh_law = prediction.fit.get("form", "chinchilla") != "data-constrained"
    planned = sorted([*prediction.sizes, *added], key=lambda s: s.num_params)
    for p in planned:
        r = results.get(p.id)
        loss = r.loss if r and r.status == "ok" else None
        inside = None if loss is None or p.loss_ci is None else bool(p.loss_ci[0] <= loss <= p.loss_ci[1])
        epochs = r.epochs if r else None
        measured.append(MeasuredSize(id=p.id, size=p.size, num_params=p.num_params, num_tokens=p.num_tokens,
                                     loss=loss, status=r.status if r else "missing", epochs=epochs,
                                     predicted_loss=p.loss, predicted_loss_ci=p.loss_ci, inside=inside))
        if inside is False:
            side = "below" if loss < p.loss_ci[0] else "above"
            notes.append(f"{p.id}: measured {loss:.4f} is {side} its interval [{p.loss_ci[0]:.4f}, {p.loss_ci[1]:.4f}]"
                         + (" (the law predicts it worse than it is)" if side == "below" else ""))
        if fresh_law and epochs is not None and epochs > sweep_epochs * 1.25 and epochs > 1:
            notes.append(f"{p.id} repeats its data {epochs:.1f} times (the sweep at most {sweep_epochs:.1f}): "
                         f"the law assumed fresh data (its unique tokens were not known), so its loss is likely above "
                         f"the prediction")
        if r and r.status != "ok":
            notes.append(f"{p.id}: {r.status} {r.reason}".strip())
    centre = min(prediction.sizes,
                 key=lambda s: abs(math.log(s.num_params) - math.log(prediction.num_params)))
    done = [m for m in measured if m.loss is not None]
    best = min(done, key=lambda m: m.loss) if done else None
    order = [s.size for s in planned]
    adjacent = best is not None and abs(order.index(best.size) - order.index(centre.size)) <= 1
    at_centre = next((m for m in measured if m.size == centre.size), None)
    error = best.loss / prediction.loss - 1 if best is not None and prediction.loss else None
    centre_error = (at_centre.loss / prediction.loss - 1) if at_centre and at_centre.loss and prediction.loss else None
    if best is not None and len(order) >= 3 and best.size in (order[0], order[-1]):
        side = "below" if best.size == order[0] else "above"
        nxt = (beyond or {}).get(side)
        notes.append("the best measured size is at the edge of the confirmation sizes: the true optimum may lie beyond "
                     "them; " + (f"add {nxt} (rerun with --bracket to train it)" if nxt is not None else
                                 f"model.sizes has no size {side} it: add one"))
    return Confirmation(budget_flops=prediction.budget_flops, predicted=prediction, measured=measured,
                        added=[a.size for a in added], best_size=best.size if best else None,
                        predicted_size=centre.size, best_is_adjacent=adjacent,
                        best_is_predicted=best is not None and best.size == centre.size,
                        loss_error=error, loss_at_predicted_size_error=centre_error,
                        inside=sum(1 for m in measured if m.inside), notes=notes)


def _register(path: Path, prediction: Registration) -> Registration:
    """Write ``prediction.json`` unless one exists (atomic: a hard link never replaces a file)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".prediction.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(prediction.model_dump_json(indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:  # another process registered first: theirs stands
        return Registration.model_validate_json(path.read_text(encoding="utf-8"))
    finally:
        Path(tmp).unlink(missing_ok=True)
    return prediction


def _read_additions(folder: Path) -> list[PlannedSize]:
    path = folder / "additions.json"
    return Additions.model_validate_json(path.read_text(encoding="utf-8")).sizes if path.exists() else []


def _add(folder: Path, new: list[PlannedSize]) -> list[PlannedSize]:
    """Append ``new`` sizes to ``additions.json`` (under a file lock: two confirms add once)."""
    from filelock import FileLock

    with FileLock(str(folder / ".additions.lock")):
        have = _read_additions(folder)
        known = {p.id for p in have}
        sizes = have + [p for p in new if p.id not in known]
        atomic_write_text(folder / "additions.json", Additions(sizes=sizes).model_dump_json(indent=2) + "\n")
    return sizes


def _beyond(plan: Plan, trained: list[PlannedSize]) -> dict[str, float | int | None]:
    """The sizes of ``model.sizes`` just below and just above the trained ones (None at an end)."""
    ordered = sorted(plan.sizes, key=lambda s: s.num_params)
    lo, hi = min(p.num_params for p in trained), max(p.num_params for p in trained)
    below = [s.size for s in ordered if s.num_params < lo]
    above = [s.size for s in ordered if s.num_params > hi]
    return {"below": below[-1] if below else None, "above": above[0] if above else None}


def _extra(spec: SpecModel, plan: Plan, prediction: Registration, folder: Path, k: int,
           messages: list[str]) -> list[Experiment]:
    """``--sizes k`` beyond the registered count: the new sizes around the registered N_opt, as additions."""
    registered = len(prediction.sizes)
    if k == registered:
        return []
    if k < registered:
        messages.append(f"the prediction at {prediction.budget_flops:.3g} FLOPs registered {registered} sizes; "
                        f"--sizes {k} changes nothing (delete {folder} to predict again)")
        return []
    wanted = confirm_experiments(spec, plan.sizes, prediction.budget_flops, prediction.num_params, k)
    have = {p.id for p in prediction.sizes} | {p.id for p in _read_additions(folder)}
    new = [e for e in wanted if e.id not in have]
    if new:
        messages.append(f"registered {len(new)} more size(s) as an addition ({', '.join(str(e.size) for e in new)}): "
                        f"the prediction itself is unchanged")
    return new


def confirm(spec: SpecModel, budget_flops: float, k: int = 3, approach: str | None = None,
            train: Callable[[list[Experiment], Store, str], None] | None = None,
            analyze: Callable | None = None,
            predict_only: bool = False, bracket: bool = False) -> Confirmation | Registration:
    """Pre-register a prediction at ``budget_flops``, train the ``k`` sizes around it, compare.

    ``analyze(spec, plan) -> Result`` fits the sweep; ``train(experiments, store)`` trains what
    is pending (both supplied by the facade, which owns the pipeline).  A rerun trains nothing.
    ``predict_only`` registers the prediction and returns it without training.  Several
    processes may confirm the same budget at once: they share the registered prediction and
    the store's locks give each experiment to one of them; each waits for the runs the
    others train, so every one reports the whole check.  A rerun with a larger ``k`` registers
    the extra sizes as additions; ``bracket`` adds (and trains) the next size beyond an edge
    while the best measured size is at the edge.  ``Confirmation.messages`` says what was done.
    """
    plan = compile_plan(spec)
    folder = confirm_dir(spec, budget_flops, approach)
    messages: list[str] = []
    prediction, experiments, result = _prediction(spec, plan, folder, budget_flops, k, approach, analyze,
                                                  messages)
    if predict_only:
        return prediction
    confirmation, result = _train_and_score(spec, plan, folder, budget_flops, prediction, experiments, result,
                                            train, analyze, bracket, messages)
    confirmation = confirmation.model_copy(update={"messages": messages})
    atomic_write_text(folder / "confirm.json", json.dumps(confirmation.summary(), indent=2) + "\n")
    if analyze is not None and confirmation.measured:
        _figure(confirmation, result if result is not None else analyze(spec, plan), folder / "confirm.png")
    return confirmation


def _prediction(spec: SpecModel, plan, folder: Path, budget_flops: float, k: int, approach: str | None,
                analyze: Callable | None, messages: list[str]):
    """The registered prediction and its experiments: registered now from the current fits (before
    any training; the first registration wins), or read back and checked against the spec, with
    sizes added when ``k`` asks for more.  Returns (prediction, experiments, the fit if one was made)."""
    path = folder / "prediction.json"
    if not path.exists():
        result = analyze(spec, plan)
        prediction, experiments = preregister(spec, plan, result, budget_flops, k, approach)
        return _register(path, prediction), experiments, result
    by_size = {s.size: s for s in plan.sizes}
    prediction = Registration.model_validate_json(path.read_text(encoding="utf-8"))
    _check_budget(spec, plan, budget_flops)
    missing = [p.size for p in prediction.sizes if p.size not in by_size]
    if missing:
        raise SpecError([Problem(f"sizes {missing} of the registered prediction are no longer in model.sizes",
                                 key="model.sizes", file=spec.source,
                                 hint=f"restore them or delete {folder}")])
    experiments = confirm_experiments(spec, [by_size[p.size] for p in prediction.sizes], budget_flops,
                                      prediction.num_params, len(prediction.sizes))
    if [e.id for e in experiments] != [p.id for p in prediction.sizes]:
        raise SpecError([Problem(f"the spec changed since {path} was registered (experiment ids differ)",
                                 file=spec.source,
                                 hint=f"restore the spec or delete {folder} to predict again")])
    result = None
    extra = _extra(spec, plan, prediction, folder, k, messages)
    if extra:
        result = analyze(spec, plan)
        _add(folder, _planned(result.fits, extra, _now()))
    return prediction, experiments, result


def _train_and_score(spec: SpecModel, plan, folder: Path, budget_flops: float, prediction: Registration,
                     experiments: list[Experiment], result, train, analyze, bracket: bool,
                     messages: list[str]):
    """Train the registered sizes and the additions (waiting for other processes' runs), score them;
    with ``bracket``, register and train the next size while the best is at an edge.  Returns
    (confirmation, the fit if one was made)."""
    store = Store(Path(plan.run_dir))
    by_size = {s.size: s for s in plan.sizes}
    sweep_epochs = max([r.epochs or 0.0 for r in store.collect(plan.experiments)] or [0.0])
    while True:
        added = _read_additions(folder)
        every = experiments + [plan_experiment_for(spec, by_size[p.size], budget_flops) for p in added]
        if train is not None:
            train(every, store, f"confirm-{budget_flops:.4g}")
            _wait_for_others(every, store)
        beyond = _beyond(plan, [*prediction.sizes, *added])
        results = {e.id: store.read_result(e.id) for e in every}
        confirmation = score(prediction, results, sweep_epochs, added, beyond)
        edge = _edge_size(confirmation, beyond)
        if not (bracket and edge is not None and train is not None):
            return confirmation, result
        result = result if result is not None else analyze(spec, plan)
        new = confirm_experiments(spec, [by_size[edge]], budget_flops, by_size[edge].num_params, 1)
        _add(folder, _planned(result.fits, new, _now()))
        messages.append(f"--bracket: the best size is at the edge; registered and trained "
                        f"{spec.model.size_param} = {edge}")


def _edge_size(confirmation: Confirmation, beyond: dict) -> float | int | None:
    """The size of ``model.sizes`` beyond the edge where the best measured size sits, if any."""
    order = [m.size for m in confirmation.measured]
    if confirmation.best_size is None or len(order) < 3:
        return None
    if confirmation.best_size == order[0]:
        return beyond.get("below")
    if confirmation.best_size == order[-1]:
        return beyond.get("above")
    return None


def plan_experiment_for(spec: SpecModel, info, budget_flops: float) -> Experiment:
    """The confirmation experiment of one size at ``budget_flops`` (ids as :func:`confirm_experiments` makes them)."""
    return confirm_experiments(spec, [info], budget_flops, info.num_params, 1)[0]


#: How often a confirm whose runs another process trains looks for their results.
WAIT_SECONDS = 1.0


def _wait_for_others(experiments: list, store: Store) -> None:
    """Wait while another process (a second ``confirm`` of the same budget, a job) holds a live
    lease on a run this check needs; a dead holder's lease expires, so the wait ends."""
    while any(store.read_result(e.id) is None and store.holder(e.id) is not None for e in experiments):
        time.sleep(WAIT_SECONDS)


def _figure(confirmation: Confirmation, result, path: Path) -> None:
    import os
    import warnings

    from ..report.plots import confirm_figure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = confirm_figure(result, confirmation)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.png")  # two confirms of one budget: no torn figure
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
