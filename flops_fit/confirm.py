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
L(N, D) = E + A/N^α + B/D^β (Approach 3) at the experiment's planned D, its interval the 2.5
and 97.5 percentiles over the bootstrap fits.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional


from .errors import Problem, SpecError
from .frozen import Frozen
from .plan import Experiment, Plan, compile_plan, confirm_experiments, format_number
from .spec import SpecModel
from .store import RunRecord, Store, atomic_write_text

__all__ = ["PlannedSize", "Prediction", "MeasuredSize", "Confirmation", "confirm", "preregister", "confirm_dir"]


class PlannedSize(Frozen):
    """One size the check will train, with the loss the fit predicts for it."""

    id: str
    size: float | int
    num_params: int
    num_tokens: float
    loss: Optional[float]
    loss_ci: Optional[list[float]] = None


class Prediction(Frozen):
    """``prediction.json``: written before any confirmation run is trained."""

    budget_flops: float
    approach: str
    num_params: float
    num_tokens: float
    loss: Optional[float]
    loss_ci: Optional[list[float]] = None
    num_params_ci: Optional[list[float]] = None
    num_tokens_ci: Optional[list[float]] = None
    size: Optional[float] = None
    sizes: list[PlannedSize]
    fit: dict
    created: str


class MeasuredSize(Frozen):
    id: str
    size: float | int
    num_params: int
    num_tokens: float
    loss: Optional[float]
    status: str
    epochs: Optional[float] = None
    predicted_loss: Optional[float]
    predicted_loss_ci: Optional[list[float]] = None
    inside: Optional[bool] = None


class Confirmation(Frozen):
    """``confirm.json``: the pre-registered prediction against what was measured."""

    budget_flops: float
    predicted: Prediction
    measured: list[MeasuredSize]
    best_size: Optional[float | int]
    predicted_size: float | int
    best_is_predicted: bool
    best_is_adjacent: bool
    loss_error: Optional[float]
    loss_at_predicted_size_error: Optional[float]
    inside: int
    notes: list[str]

    def render(self) -> list:
        """What ``flops-fit confirm`` prints: the prediction, a rich table of predicted against
        measured loss per size (★ the best measured), the error of the best, the notes."""
        from rich.table import Table

        def ci(v) -> str:
            return f"[{v[0]:.3f}, {v[1]:.3f}]" if v and all(x is not None and math.isfinite(x) for x in v) else ""

        p = self.predicted
        out: list = [f"prediction ({p.approach}, registered {p.created}): N_opt {p.num_params:.3g}, "
                     f"D_opt {p.num_tokens:.3g}, loss {p.loss:.4g}"
                     + (f" (95% {p.loss_ci[0]:.4g}–{p.loss_ci[1]:.4g})" if p.loss_ci else "")
                     if p.loss is not None else
                     f"prediction ({p.approach}): N_opt {p.num_params:.3g}, D_opt {p.num_tokens:.3g}"]
        t = Table(title=f"Forward check at C = {self.budget_flops:.3g} FLOPs")
        for col in ("size", "N", "D", "epochs", "predicted loss", "95% interval", "measured", "inside"):
            t.add_column(col, justify="right")
        for m in self.measured:
            mark = " ★" if m.size == self.best_size else ""
            t.add_row(f"{m.size}{' (predicted)' if m.size == self.predicted_size else ''}", f"{m.num_params:,}",
                      f"{m.num_tokens:.3g}", "–" if m.epochs is None else f"{m.epochs:.2f}",
                      "–" if m.predicted_loss is None else f"{m.predicted_loss:.4f}",
                      ci(m.predicted_loss_ci), "–" if m.loss is None else f"{m.loss:.4f}{mark}",
                      "–" if m.inside is None else ("yes" if m.inside else "no"))
        out.append(t)
        if self.loss_error is not None:
            out.append(f"best measured loss vs predicted: {self.loss_error:+.2%}; best size is "
                       + ("the predicted one" if self.best_is_predicted else
                          "adjacent to the predicted one" if self.best_is_adjacent else "not the predicted one"))
        return out + [f"[yellow]note: {note}[/]" for note in self.notes]

    def summary(self) -> dict:
        """The ``confirm --json`` document."""
        return self.model_dump(mode="json")


def confirm_dir(spec: SpecModel, budget_flops: float, approach: str | None = None) -> Path:
    """``<run_dir>/confirm/<C>``, or ``<C>-<approach>`` for an approach other than the default (parametric)."""
    suffix = f"-{approach}" if approach not in (None, "parametric") else ""
    return spec.run_dir / "confirm" / (format_number(budget_flops) + suffix)


def _size_loss(fits, num_params: float, num_tokens: float) -> tuple[float | None, list[float] | None]:
    if not fits.parametric:
        return None, None
    loss, lo, hi = fits.parametric.band(num_params, num_tokens)
    return float(loss), None if lo is None else [float(lo), float(hi)]


def _check_budget(spec: SpecModel, plan: Plan, budget_flops: float) -> None:
    if not (math.isfinite(budget_flops) and budget_flops > 0):
        raise SpecError([Problem("the budget must be a positive, finite number of FLOPs", key="--budget",
                                 value=budget_flops, has_value=True)])
    if any(math.isclose(budget_flops, b, rel_tol=1e-9) for b in plan.budgets):
        raise SpecError([Problem("this budget is one of the sweep's: a forward check needs a budget the fit never saw",
                                 key="--budget", value=budget_flops, has_value=True,
                                 hint=f"use a budget above {max(plan.budgets):.3g} (3-4x is a good test)")])


def preregister(spec: SpecModel, plan: Plan, result, budget_flops: float, k: int = 3,
                approach: str | None = None) -> tuple[Prediction, list[Experiment]]:
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
    sizes = []
    for e in experiments:
        loss, ci = _size_loss(fits, e.num_params, e.num_tokens)
        sizes.append(PlannedSize(id=e.id, size=e.size, num_params=e.num_params, num_tokens=e.num_tokens, loss=loss,
                                 loss_ci=ci))
    fit_doc = {"approach": approach, "points": fits.num_points, "budgets": sorted(plan.budgets),
               "flop_rule": plan.flop_rule}
    if approach == "parametric":
        fit_doc.update(fits.parametric.model_dump(include={"E", "A", "B", "alpha", "beta", "a", "b"}))
    else:
        fit_doc.update(fits.isoflop.model_dump(mode="json", include={"n_opt", "loss_opt"}))
    pred = Prediction(budget_flops=budget_flops, approach=approach, num_params=row.num_params,
                      num_tokens=row.num_tokens, loss=row.loss, loss_ci=row.loss_ci,
                      num_params_ci=row.num_params_ci, num_tokens_ci=row.num_tokens_ci,
                      size=row.size, sizes=sizes, fit=fit_doc,
                      created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return pred, experiments


def compare(prediction: Prediction, results: dict[str, RunRecord | None], sweep_epochs: float = 1.0) -> Confirmation:
    """Predicted against measured (``results``: experiment id -> its run record, or None;
    ``sweep_epochs``: the most passes over the data of any sweep run, for the repetition note)."""
    measured, notes = [], []
    for p in prediction.sizes:
        r = results.get(p.id)
        loss = r.loss if r and r.status == "ok" else None
        inside = None if loss is None or p.loss_ci is None else bool(p.loss_ci[0] <= loss <= p.loss_ci[1])
        epochs = r.epochs if r else None
        measured.append(MeasuredSize(id=p.id, size=p.size, num_params=p.num_params, num_tokens=p.num_tokens, loss=loss,
                                     status=r.status if r else "missing", epochs=epochs,
                                     predicted_loss=p.loss, predicted_loss_ci=p.loss_ci, inside=inside))
        if epochs is not None and epochs > sweep_epochs * 1.25 and epochs > 1:
            notes.append(f"{p.id} repeats its data {epochs:.1f} times (the sweep at most {sweep_epochs:.1f}): "
                         f"the law assumes fresh data, so its loss is likely above the prediction")
        if r and r.status != "ok":
            notes.append(f"{p.id}: {r.status} {r.reason}".strip())
    centre = min(prediction.sizes, key=lambda s: abs(math.log(s.num_params) - math.log(prediction.num_params)))
    done = [m for m in measured if m.loss is not None]
    best = min(done, key=lambda m: m.loss) if done else None
    order = [s.size for s in prediction.sizes]
    adjacent = best is not None and abs(order.index(best.size) - order.index(centre.size)) <= 1
    at_centre = next((m for m in measured if m.size == centre.size), None)
    error = best.loss / prediction.loss - 1 if best is not None and prediction.loss else None
    centre_error = (at_centre.loss / prediction.loss - 1) if at_centre and at_centre.loss and prediction.loss else None
    if best is not None and len(order) >= 3 and best.size in (order[0], order[-1]):
        notes.append("the best measured size is at the edge of the confirmation sizes: the true optimum may lie beyond them")
    return Confirmation(budget_flops=prediction.budget_flops, predicted=prediction, measured=measured,
                        best_size=best.size if best else None, predicted_size=centre.size,
                        best_is_predicted=best is not None and best.size == centre.size, best_is_adjacent=adjacent,
                        loss_error=error, loss_at_predicted_size_error=centre_error,
                        inside=sum(1 for m in measured if m.inside), notes=notes)


def _register(path: Path, prediction: Prediction) -> Prediction:
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
        return Prediction.model_validate_json(path.read_text(encoding="utf-8"))
    finally:
        Path(tmp).unlink(missing_ok=True)
    return prediction


def confirm(spec: SpecModel, budget_flops: float, k: int = 3, approach: str | None = None,
            train: Callable[[list[Experiment], Store], None] | None = None, analyze: Callable | None = None,
            predict_only: bool = False) -> Confirmation | Prediction:
    """Pre-register a prediction at ``budget_flops``, train the ``k`` sizes around it, compare.

    ``analyze(spec, plan) -> Result`` fits the sweep; ``train(experiments, store)`` trains what
    is pending (both supplied by the facade, which owns the pipeline).  A rerun trains nothing.
    ``predict_only`` registers the prediction and returns it without training.  Several
    processes may confirm the same budget at once: they share the registered prediction and
    the store's locks give each experiment to one of them.
    """
    plan = compile_plan(spec)
    folder = confirm_dir(spec, budget_flops, approach)
    path = folder / "prediction.json"
    store = Store(Path(plan.run_dir))
    result = None
    if path.exists():
        prediction = Prediction.model_validate_json(path.read_text(encoding="utf-8"))
        _check_budget(spec, plan, budget_flops)
        by_size = {s.size: s for s in plan.sizes}
        missing = [p.size for p in prediction.sizes if p.size not in by_size]
        if missing:
            raise SpecError([Problem(f"sizes {missing} of the registered prediction are no longer in model.sizes",
                                     key="model.sizes", file=spec.source, hint=f"restore them or delete {folder}")])
        experiments = confirm_experiments(spec, [by_size[p.size] for p in prediction.sizes], budget_flops,
                                          prediction.num_params, len(prediction.sizes))
        if [e.id for e in experiments] != [p.id for p in prediction.sizes]:
            raise SpecError([Problem(f"the spec changed since {path} was registered (experiment ids differ)",
                                     file=spec.source, hint=f"restore the spec or delete {folder} to predict again")])
    else:
        result = analyze(spec, plan)
        prediction, experiments = preregister(spec, plan, result, budget_flops, k, approach)
        prediction = _register(path, prediction)  # before any training; the first registration wins
    if predict_only:
        return prediction
    if train is not None:
        train(experiments, store)
    sweep_epochs = max([r.epochs or 0.0 for r in store.collect(plan.experiments)] or [0.0])
    confirmation = compare(prediction, {e.id: store.read_result(e.id) for e in experiments}, sweep_epochs)
    atomic_write_text(folder / "confirm.json", json.dumps(confirmation.summary(), indent=2) + "\n")
    if analyze is not None and confirmation.measured:
        _figure(confirmation, result if result is not None else analyze(spec, plan), folder / "confirm.png")
    return confirmation


def _figure(confirmation: Confirmation, result, path: Path) -> None:
    import warnings

    from .plots import confirm_figure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = confirm_figure(result, confirmation)
        fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
