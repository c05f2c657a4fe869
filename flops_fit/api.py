"""The Python facade: ``Spec.load(path).run()``, ``find_optimal(...)``, ``fit(points)``.

This module sits on top of every stage (spec → plan → execute → store → analysis → report)
and is the only place that strings them together, with the CLI.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from typing import TYPE_CHECKING

from .core.errors import DataError, Problem, SpecError
from .verbs.estimate import Estimate, estimate_plan
from .core.imports import import_path_of, register
from .execute.placement import extra_plan, train as place_and_train, train_plan
from .plan.plan import Plan, compile_plan
from .spec.spec import SpecModel
from .store.store import Store
from .plan.validate import check

if TYPE_CHECKING:  # the training and fitting stacks load on first use, so `validate` starts fast
    from .analysis import Points
    from .verbs.confirm import Confirmation
    from .execute.dispatch import Submission
    from .verbs.status import ExperimentState
    from .execute.runner import RunEvent
    from .report.report import Result
    from .verbs.transfer import Transfer

__all__ = ["Spec", "find_optimal", "fit", "analyze_plan", "train_plan", "compare"]


class Spec(SpecModel):
    """A validated spec with the verbs of the pipeline (the one ``Spec`` users hold).

    ``Spec.load(path)`` → ``spec.check()`` (every pre-training check) → ``spec.plan()`` →
    ``spec.estimate()`` (dry run) → ``spec.run()`` (train what is pending, fit, report).
    """

    def check(self) -> Plan:
        """Every check that can fail before training (imports, signatures, smoke step); the Plan."""
        return check(self)

    def plan(self) -> Plan:
        """The immutable Plan (models built on the meta device only)."""
        return compile_plan(self)

    def estimate(self, retry_failed: bool = False) -> Estimate:
        """Dry run: per-experiment action and reason, FLOPs and wall-clock estimates, and the last
        learning-rate transfer verdict for this recipe.  Writes nothing."""
        from .verbs.transfer import last_verdict

        plan = check(self)
        verdict, _ = last_verdict(self, plan.sizes)
        return estimate_plan(self, plan, retry_failed).model_copy(update={"transfer": verdict})

    def transfer(self, middle: bool = False, max_steps: int = 2000, coordinate_steps: int = 5,
                 on_event: Callable[[RunEvent], None] | None = None, octaves: int = 3) -> "Transfer":
        """Does one learning rate serve every size?  The coordinate check and the learning-rate
        sweep of :mod:`flops_fit.verbs.transfer`, trained as cached experiments of this spec's store;
        writes ``<run_dir>/transfer/`` and returns the :class:`~flops_fit.verbs.transfer.Transfer`.
        ``octaves``: rates spec·2^-octaves … spec·2^octaves (3: seven rates; 2: five)."""
        from .verbs.transfer import transfer

        check(self)
        return transfer(self, self._trainer(False, on_event), middle, max_steps, coordinate_steps, octaves)

    def _trainer(self, retry_failed: bool, on_event) -> Callable:
        """``train(experiments, store, tag)``: experiments beside the sweep (a forward check, a transfer
        check), placed as ``run`` places the sweep's (:mod:`flops_fit.execute.placement`:
        ``[launcher]``, worker processes, or here), from ``<run_dir>/plans/<tag>.json``."""
        def train(experiments, store, tag: str | None = None) -> None:
            plan, plan_file = extra_plan(compile_plan(self), experiments, tag)
            place_and_train(self, plan, retry_failed, on_event, plan_file=plan_file)
        return train

    def run(self, retry_failed: bool = False, on_event: Callable[[RunEvent], None] | None = None,
            report: bool = True, executor: Any = None,
            on_progress: Callable[[int, int], None] | None = None,
            on_plan: Callable[[Plan], None] | None = None) -> Result | None:
        """Train every pending experiment (cached ones are reused), fit and report.

        Several GPUs or ``train.workers_per_gpu > 1`` spread the sweep over worker processes
        (see :mod:`flops_fit.execute.launch`), ``find_optimal`` included; objects registered under a
        ``cache_key`` exist only in this process, so such a sweep trains here.  Under
        ``accelerate launch`` only the main process fits and reports (the others return None).

        With ``[launcher] kind`` other than "local", or a submitit ``executor``: submit the
        pending experiments as jobs (:meth:`submit`), wait for them (``on_progress(finished,
        total)``), then fit and report; a failed job raises a RunError naming it and its log.
        """
        plan = check(self)
        _warn_transfer(self, plan)
        if not place_and_train(self, plan, retry_failed, on_event, on_progress, executor):
            return None
        return _report(self, plan, report, track=True)

    def submit(self, retry_failed: bool = False, executor: Any = None) -> Submission:
        """Submit the pending experiments as job arrays (``[launcher]``, or a submitit ``executor``)
        and return at once; ``<run_dir>/launcher/jobs.json`` records job ids ↔ experiment ids."""
        from .execute.submit import launcher_problem, submit_plan

        if executor is None and self.launcher.kind == "local":
            raise SpecError([launcher_problem(self, "`submit` sends experiments to a scheduler", hint=(
                "set [launcher] kind = 'slurm' (or 'submitit-local'), or use `flops-fit run`"))])
        plan = check(self)
        return submit_plan(self, plan, retry_failed, executor)[0]

    def status(self, scheduler: bool = True) -> list[ExperimentState]:
        """Each experiment's state from the store (done, running with its step, pending, failed with
        the reason) and, for submitted ones, its job's state from the scheduler."""
        from .verbs.status import sweep_status

        plan = compile_plan(self)
        return sweep_status(plan, Store(Path(plan.run_dir)), scheduler)

    def confirm(self, budget_flops: float, sizes: int = 3, approach: str | None = None,
                retry_failed: bool = False, on_event: Callable[[RunEvent], None] | None = None,
                predict_only: bool = False, bracket: bool = False) -> Confirmation:
        """The forward check at ``budget_flops`` (see :mod:`flops_fit.verbs.confirm`).

        Writes ``<run_dir>/confirm/<C>/prediction.json`` from the current fits before training,
        then trains the ``sizes`` sizes around the predicted N_opt and reports predicted against
        measured in ``confirm.json`` and ``confirm.png``.  ``predict_only`` returns the registered
        :class:`~flops_fit.verbs.confirm.Registration` without training.  A larger ``sizes`` than
        was registered adds sizes (registered before training); ``bracket`` trains the next size
        beyond an edge while the best measured size is at the edge.
        """
        from .verbs.confirm import confirm

        return confirm(self, float(budget_flops), sizes, approach, train=self._trainer(retry_failed, on_event), analyze=analyze_plan,
                       predict_only=predict_only, bracket=bracket)

    def analyze(self, report: bool = True) -> Result:
        """Fit and report from whatever the store holds now (nothing is trained)."""
        return _report(self, compile_plan(self), report, track=False)


def _report(spec: SpecModel, plan: Plan, report: bool, track: bool) -> Result:
    """Collect and fit under the store's report lock (a concurrent run's results count), write the
    report, and after a run (``track``) log the trackers' summary run beside the experiments' runs."""
    run_dir = Path(plan.run_dir)
    with Store(run_dir).report_lock():
        result = analyze_plan(spec, plan)
        if report:
            result.save(run_dir / "report", spec.analysis.figures)
    if report and track and plan.runtime.log_with:
        from .execute.session import Session
        from .execute.tracking import log_summary

        accelerator = Session(plan.runtime, str(run_dir / "tracking")).accelerator
        scalars, tables = result.tracker_summary()
        log_summary(accelerator, plan.name, accelerator.logging_dir, scalars, tables, run_dir / "report",
                    {"points": result.fits.num_points, "flop_rule": result.flop_rule})
    return result


def _warn_transfer(spec: SpecModel, plan: Plan) -> None:
    """One warning (not a stop) when the last transfer check of this recipe failed."""
    from .verbs.transfer import last_verdict

    verdict, path = last_verdict(spec, plan.sizes)
    if verdict == "FAIL":
        warnings.warn(f"the last learning-rate transfer check of this recipe failed ({path}): the sizes may not "
                      f"share one learning rate; see `flops-fit transfer` and [train] lr_scaling",
                      stacklevel=3)


def analyze_plan(spec: SpecModel, plan: Plan) -> Result:
    """Collect the plan's finished experiments from the store and fit them."""
    from .analysis import Points, fit_points
    from .report.report import Result

    store = Store(Path(plan.run_dir))
    records = store.collect(plan.experiments)
    if not records:
        raise SpecError([Problem(f"the store {plan.run_dir} holds no finished experiment of this plan",
                                 hint="run `flops-fit run` first")])
    points = Points.from_records(records, [(s.size, s.num_params) for s in plan.sizes], plan.flop_rule,
                                 plan.run_dir, unique_tokens=spec.data.unique_tokens)
    a = spec.analysis
    fits = fit_points(points, a.approaches, a.bootstrap, a.seed, a.keep_outliers, a.outlier_z,
                      profile=a.profile)
    from .report.runs_table import cost_of, run_rows

    runs = run_rows(plan, records + store.collect(plan.trunks), fits)  # the trunks' cost too
    return Result(fits=fits, points=points, budgets=plan.budgets, predict_budgets=a.predict,
                  size_param=plan.size_param, flop_rule=plan.flop_rule, runs=runs,
                  cost=cost_of(runs, spec.cost.usd_per_gpu_hour))


def fit(points: "Points | str | Path | Iterable[dict]", approaches: Iterable[str] = ("isoflop", "parametric"),
        bootstrap: int = 200, seed: int = 0, predict: Iterable[float] = (), keep_outliers: bool = False,
        profile: str = "shape", evaluate: "str | Path | None" = None) -> Result:
    """Fit measurements made elsewhere: a Points, a CSV path, or dicts with params, tokens, loss[, flops]
    (and optionally unique_tokens or epochs).  ``evaluate``: a CSV of (params, tokens[, unique_tokens][, loss])
    rows whose loss the parametric law predicts (``Result.evaluation``)."""
    import numpy as np

    from .analysis import Points, fit_points
    from .analysis.evaluate import evaluate as evaluate_rows, read_rows
    from .report.report import Result

    rows = read_rows(evaluate) if evaluate is not None else None  # a bad file fails before the fit

    if isinstance(points, (str, Path)):
        pts = Points.from_csv(points)
    elif isinstance(points, Points):
        pts = points
    else:
        pts = Points.from_rows(list(points))
    fits = fit_points(pts, list(approaches), bootstrap, seed, keep_outliers, profile=profile)
    budgets = sorted(set(np.array(pts.budget_flops)[pts.usable_index()].tolist()))
    evaluation = None
    if rows is not None:
        if fits.parametric is None:
            raise DataError([Problem("--evaluate needs the parametric fit (Approach 3), which was not made",
                                     key="--approach",
                                     hint="add --approach parametric, and at least 5 usable points")])
        evaluation = evaluate_rows(fits.parametric, rows, str(evaluate))
    return Result(fits=fits, points=pts, budgets=budgets, predict_budgets=list(predict),
                  flop_rule=pts.flop_rule, evaluation=evaluation)


def _path_or_key(obj: Any, key: str, cache_key: str | None, role: str) -> str:
    if isinstance(obj, str):
        return obj
    path = import_path_of(obj)
    if path is not None:
        return path
    if cache_key is None:
        raise SpecError([Problem(f"{role} {obj!r} has no stable import path (a lambda, a local, an instance or "
                                 f"something defined in __main__), so results cannot be cached by identity",
                                 key=key, hint="move it into an importable module, or pass cache_key='...' "
                                               "(change it whenever the object changes)")])
    return register(obj, f"{cache_key}.{role}")


def find_optimal(model_cls: Any, model_size_param: str, model_sizes: list, dataset: Any, loss_fn: Any,
                 compute_budgets: list[float], model_kwargs: dict | None = None,
                 dataset_kwargs: dict | None = None,
                 tokens_per_sample: float = 1.0, name: str = "find_optimal", runs_dir: str = "runs",
                 cache_key: str | None = None, retry_failed: bool = False,
                 on_event: Callable[[RunEvent], None] | None = None, progress: bool = True,
                 **options: Any) -> Result:
    """Plan, train, fit and report from Python objects; returns the same Result as ``Spec.run``.

    Objects are identified in the content hash by their import path; one without (a lambda,
    an instance, something defined in ``__main__``) needs ``cache_key``.  ``options`` are the
    spec's tables: ``train={...}``, ``sweep={...}``, ``analysis={...}``, ``flops={...}``.
    ``progress``: the CLI's live progress on stderr (worker processes print a line per experiment).
    """
    data = {
        "name": name, "runs_dir": runs_dir,
        "model": {"target": _path_or_key(model_cls, "model_cls", cache_key, "model"),
                  "size_param": model_size_param, "sizes": list(model_sizes),
                  "kwargs": dict(model_kwargs or {})},
        "data": {"target": _path_or_key(dataset, "dataset", cache_key, "data"),
                 "kwargs": dict(dataset_kwargs or {}), "tokens_per_sample": tokens_per_sample},
        "loss": {"target": _path_or_key(loss_fn, "loss_fn", cache_key, "loss")},
        "sweep": {"budgets": list(compute_budgets), **options.pop("sweep", {})},
    }
    data.update(options)
    spec = Spec.from_dict(data)
    if not progress:
        return spec.run(retry_failed=retry_failed, on_event=on_event)
    from rich.console import Console

    from .report.progress import progress_handler

    bar, show = progress_handler(Console(stderr=True))

    def both(event: RunEvent) -> None:
        show(event)
        if on_event is not None:
            on_event(event)
    try:
        return spec.run(retry_failed=retry_failed, on_event=both)
    finally:
        bar.stop()


def compare(a: "Spec | str | Path", b: "Spec | str | Path", approach: str = "parametric",
            retry_failed: bool = False, on_event: Callable[[RunEvent], None] | None = None,
            budgets: list[float] | None = None):
    """Recipe ``b`` against recipe ``a`` at equal compute (see :mod:`flops_fit.verbs.compare`).

    Trains what either sweep has pending (specs may share a store: nothing is trained twice), fits
    both, and writes ``compare.json`` and ``compare.png`` under ``<a's runs_dir>/compare/<a>-vs-<b>/``.
    Returns the :class:`~flops_fit.verbs.compare.Comparison`.
    """
    from .verbs.compare import compare_results
    from .report.plots import compare_figure
    from .store.store import atomic_write_text

    specs = [s if isinstance(s, Spec) else Spec.load(s) for s in (a, b)]
    results = [s.run(retry_failed=retry_failed, on_event=on_event) for s in specs]
    try:
        comparison = compare_results(*results, budgets=budgets, approach=approach, names=(specs[0].name, specs[1].name))
    except ValueError as exc:
        raise SpecError([Problem(str(exc), key="--approach",
                                 hint="compare with the approach both sweeps fitted")]) from None
    folder = specs[0].run_dir / "compare" / f"{specs[0].name}-vs-{specs[1].name}"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "compare.json", comparison.model_dump_json(indent=2) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = compare_figure(results[0], results[1], comparison)
        fig.savefig(folder / "compare.png", dpi=110)
        fig.savefig(folder / "compare.pdf")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return comparison
