"""The ``flops-fit`` command line (typer + rich).

Exit codes: 0 success; 1 a user error (bad spec, bad CSV, contract violation, failed run),
printed one problem per line without a traceback (``--verbose`` shows it); 2 usage.
With ``--json`` stdout holds only the JSON document; everything else goes to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .core.errors import FlopsFitError, Problem

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Plan, train and fit compute-optimal scaling laws for your model and data.")

from .cli_common import (  # noqa: E402
    JsonOpt, Approach, Profile, RetryOpt, SpecArg, VerboseOpt, _budgets, _emit_json, _guard, _load, err, out,
)
from .report.progress import (  # noqa: E402
    JobsProgress as _jobs_progress, format_seconds as _fmt_seconds, progress_handler as _progress_handler)
from .report.render import ci_text, no_fit, print_result, runs_table  # noqa: E402


@app.command()
def validate(spec: str = SpecArg, verbose: bool = VerboseOpt) -> None:
    """Check everything that can fail before training; writes nothing."""
    def go() -> None:
        t0 = time.perf_counter()
        from .plan.validate import fit_problems

        plan = _load(spec).check()
        err.print(f"[green]ok[/] {spec}: {len(plan.experiments)} experiments over {len(plan.budgets)} budgets, "
                  f"{len(plan.dropped)} dropped, FLOP rule {plan.flop_rule} ({time.perf_counter() - t0:.2f} s)")
        for why in fit_problems(plan):
            err.print(f"[yellow]warning: this plan cannot give a fit: {why}; add budgets or sizes[/]")
        _print_plan_notes(plan)
    _guard(go, verbose, trains=False)


def _print_plan_notes(plan) -> None:
    for note in plan.notes:
        err.print(f"[yellow]note: {escape(note)}[/]", highlight=False, soft_wrap=True)


@app.command()
def estimate(spec: str = SpecArg, as_json: bool = JsonOpt, retry_failed: bool = RetryOpt,
             verbose: bool = VerboseOpt) -> None:
    """Dry run: experiments, FLOPs, time estimate, and run/skip/resume with the reason."""
    def go() -> None:
        est = _load(spec).estimate(retry_failed)
        if as_json:
            _emit_json(est.model_dump_json(indent=2))
            return
        t = Table(title=f"Plan of {spec}  (FLOP rule: {est.flop_rule_description})")
        for col in ("id", "C", "size", "N", "D", "steps", "FLOPs", "time", "GPU-h", "action", "reason"):
            t.add_column(col, justify="right" if col not in ("id", "action", "reason") else "left")
        for r in est.experiments:
            t.add_row(r.id, f"{r.budget_flops:.2g}", str(r.size), f"{r.num_params:,}", f"{r.num_tokens:.3g}",
                      str(r.steps), f"{r.flops:.3g}", _fmt_seconds(r.est_seconds), f"{r.gpu_hours:.3g}",
                      r.action, r.reason)
        err.print(t)
        for d in est.dropped:
            err.print(f"[dim]dropped C={d.budget_flops:.2g} size={d.size}: {d.reason}[/]")
        for note in est.notes:
            err.print(f"[yellow]note: {escape(note)}[/]", highlight=False, soft_wrap=True)
        err.print(f"total {est.total_flops:.3g} FLOPs, {est.remaining_flops:.3g} to train; "
                  f"~{_fmt_seconds(est.est_seconds)} on {est.device}; "
                  f"~{_fmt_seconds(est.gpu_est_seconds)} on one {est.gpu} at {est.gpu_mfu:.0%} MFU "
                  f"({est.gpu_hours:.3g} GPU-hours" + (f", ${est.usd:,.2f}" if est.usd is not None else "") + ")")
        err.print(f"learning-rate transfer check for this recipe: {est.transfer}" if est.transfer else
                  "no learning-rate transfer check for this recipe (flops-fit transfer SPEC)")
        if est.reuse == "branch":
            err.print(f"reuse = branch: {est.total_flops:.3g} FLOPs for the sweep against {est.standalone_flops:.3g} with "
                      f"reuse = none, saving {est.saved_flops:.3g} ({est.saved_flops / est.standalone_flops:.0%})"
                      + (f", ~{_fmt_seconds(est.saved_seconds)} here" if est.saved_seconds is not None else ""))
    _guard(go, verbose, as_json, trains=False)


def _print_result(result, as_json: bool) -> None:
    if as_json:
        _emit_json(json.dumps(result.summary(), indent=2, default=float))
    else:
        print_result(result, out)


def _no_fit(result) -> bool:
    return no_fit(result, err)


@app.command()
def run(spec: str = SpecArg, as_json: bool = JsonOpt,
        retry_failed: bool = RetryOpt,
        verbose: bool = VerboseOpt) -> None:
    """Train what is pending (cached results are reused), fit and report."""
    def go() -> None:
        s = _load(spec)
        progress, handle = _progress_handler(err)
        jobs = _jobs_progress(err, "jobs" if s.launcher.kind != "local" else "sweep")
        try:
            result = s.run(retry_failed=retry_failed, on_event=handle, on_progress=jobs,
                           on_plan=_print_plan_notes)
        finally:
            progress.stop()
            if jobs is not None:
                jobs.stop()
        if result is None:  # a non-main process of a distributed launch: the main one reports
            return
        _print_result(result, as_json)
        err.print(f"report: {s.run_dir / 'report'}")
        if _no_fit(result):
            raise typer.Exit(1)
        failed = [i for i, status in zip(result.points.id, result.points.status) if status == "failed"]
        if failed:
            err.print(f"[red]{len(failed)} experiment(s) failed; see their result.json; --retry-failed trains them again[/]")
            raise typer.Exit(1)
    _guard(go, verbose, as_json)


@app.command()
def submit(spec: str = SpecArg, as_json: bool = JsonOpt,
           retry_failed: bool = RetryOpt,
           verbose: bool = VerboseOpt) -> None:
    """Submit the pending experiments as job arrays (the launcher table) and return the job ids."""
    def go() -> None:
        s = _load(spec)
        sub = s.submit(retry_failed=retry_failed)
        if as_json:
            _emit_json(sub.model_dump_json(indent=2))
            return
        if not sub.jobs:
            err.print("nothing to submit: every experiment is done, failed (--retry-failed) or running")
            return
        t = Table(title=f"Submitted to {sub.kind} ({s.run_dir / 'launcher' / 'jobs.json'})")
        for col in ("job", "array", "experiments", "log"):
            t.add_column(col)
        for j in sub.jobs:
            t.add_row(j.job_id, j.array, "\n".join(j.experiments), j.stderr)
        out.print(t)
        err.print(f"{len(sub.jobs)} job(s), {sum(len(j.experiments) for j in sub.jobs)} experiment(s); "
                  f"`flops-fit status {spec}` follows them")
    _guard(go, verbose, as_json)


@app.command()
def status(spec: str = SpecArg, as_json: bool = JsonOpt,
           no_scheduler: bool = typer.Option(False, "--no-scheduler",
                                             help="Only the store: do not ask the scheduler."),
           verbose: bool = VerboseOpt) -> None:
    """Each experiment's state (done, running with its step, pending, failed with the reason) and its job's."""
    def go() -> None:
        rows = _load(spec).status(scheduler=not no_scheduler)
        if as_json:
            _emit_json(json.dumps([r.model_dump() for r in rows], indent=2))
            return
        t = Table(title=f"Status of {spec}")
        parts = any(r.part != "sweep" for r in rows)
        for col in ("id", "C", "size", "state", "step", "detail", "job", "job state") + ("part",) * parts:
            t.add_column(col, justify="right" if col in ("C", "size", "step") else "left")
        for r in rows:
            t.add_row(r.id, f"{r.budget_flops:.2g}", str(r.size), r.state, f"{r.step or 0}/{r.steps}",
                      r.detail, r.job_id or "–", r.job_state or "–", *(r.part,) * parts)
        out.print(t)
        states = ("done", "running", "pending", "failed", "diverged")
        counts = {k: sum(r.state == k for r in rows) for k in states}
        err.print(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no experiments")
    _guard(go, verbose, as_json, trains=False)


@app.command()
def analyze(spec: str = SpecArg, as_json: bool = JsonOpt,
            suggest: bool = typer.Option(False, "--suggest",
                                         help="Print the spec lines the trust advice asks for."),
            points: bool = typer.Option(False, "--points",
                                        help="Also print every experiment: planned and achieved "
                                             "N, D, FLOPs, status, loss, cost."),
            verbose: bool = VerboseOpt) -> None:
    """Fit and report from whatever the store holds now."""
    def go() -> None:
        s = _load(spec)
        result = s.analyze()
        if points and not as_json:
            out.print(runs_table(result.run_rows()))
        _print_result(result, as_json)
        if _no_fit(result):
            raise typer.Exit(1)
        if suggest:
            advice = result.trust().suggest
            if advice["sizes"]:
                sizes = sorted(set(float(v) for v in s.model.sizes) | set(advice["sizes"]))
                print("# [model]\nsizes = [" + ", ".join(f"{v:g}" for v in sizes) + "]",
                      file=sys.stderr if as_json else sys.stdout)
            if advice["budgets"]:
                budgets = sorted(set(s.sweep.budgets) | set(advice["budgets"]))
                print("# [sweep]\nbudgets = [" + ", ".join(f"{v:.3g}" for v in budgets) + "]",
                      file=sys.stderr if as_json else sys.stdout)
            if not (advice["sizes"] or advice["budgets"]):
                err.print("nothing to add: every budget has an interior minimum and there are enough budgets")
        err.print(f"report: {s.run_dir / 'report'}")
    _guard(go, verbose, as_json, trains=False)


@app.command("fit")
def fit_cmd(points: str = typer.Argument(..., help="CSV with columns params,tokens,loss[,flops]"
                                                   "[,unique_tokens or epochs][,budget]."),
            as_json: bool = JsonOpt,
            predict: Optional[List[float]] = typer.Option(None, "--predict",
                                                          help="Budgets (FLOPs) to predict.",
                                                          callback=lambda v: _budgets(v, "--predict")),
            approach: Optional[List[Approach]] = typer.Option(
                None, "--approach", help="isoflop, parametric, envelope (default the first two)."),
            bootstrap: int = typer.Option(200, min=0, help="Bootstrap resamples (0: no intervals)."),
            profile: Profile = typer.Option(Profile.shape, "--profile", help="IsoFLOP profile estimator."),
            keep_outliers: bool = typer.Option(False, "--keep-outliers",
                                               help="Keep points the outlier rule would exclude."),
            report: Optional[str] = typer.Option(None, help="Folder for fits.json, tables and plots."),
            evaluate: Optional[str] = typer.Option(None, "--evaluate",
                                                   help="CSV of params,tokens[,unique_tokens][,loss] rows "
                                                        "whose loss the parametric law predicts."),
            verbose: bool = VerboseOpt) -> None:
    """Fit measurements made elsewhere."""
    def go() -> None:
        from .api import fit

        if report and Path(report).exists() and not Path(report).is_dir():
            raise FlopsFitError([Problem("is a file; the report is a folder of files", key="--report",
                                         value=report, has_value=True, hint="give a new or existing folder")])
        chosen = [a.value for a in approach] if approach else ("isoflop", "parametric")
        result = fit(points, approaches=chosen, bootstrap=bootstrap, predict=predict or (),
                     keep_outliers=keep_outliers, profile=profile.value, evaluate=evaluate)
        _print_result(result, as_json)
        if report:
            result.save(Path(report))
        if _no_fit(result):
            raise typer.Exit(1)
    _guard(go, verbose, as_json, trains=False)


@app.command()
def compare(a: str = typer.Argument(..., help="Spec of the reference recipe A."),
            b: str = typer.Argument(..., help="Spec of the recipe B compared with A."),
            approach: str = typer.Option("parametric", "--approach",
                                         help="parametric or isoflop (the loss law used)."),
            as_json: bool = JsonOpt, verbose: bool = VerboseOpt) -> None:
    """B against A at equal compute: the effective compute multiplier at each budget (trains what is pending)."""
    def go() -> None:
        from .api import compare as run_compare

        if approach not in ("parametric", "isoflop"):
            raise typer.BadParameter(f"{approach!r}: choose parametric or isoflop", param_hint="--approach")
        progress, handle = _progress_handler(err, label="compare")
        try:
            c = run_compare(_load(a), _load(b), approach=approach, on_event=handle)
        finally:
            progress.stop()
        if as_json:
            _emit_json(c.model_dump_json(indent=2))
            return
        t = Table(title=f"{c.b.name} over {c.a.name} at equal compute ({c.approach} fits)")
        for col in ("C (FLOPs)", f"L_opt {c.a.name}", f"L_opt {c.b.name}", "multiplier", "95% CI",
                    "resolved"):
            t.add_column(col, justify="right")
        for r in c.rows:
            ci = f"{r.multiplier_ci[0]:.3g}–{r.multiplier_ci[1]:.3g}" if r.multiplier_ci else "–"
            t.add_row(f"{r.budget_flops:.3g}", f"{r.loss_a:.4g}", f"{r.loss_b:.4g}", f"{r.multiplier:.3g}x",
                      ci, {None: "–", True: "yes", False: "no"}[r.resolved])
        out.print(t)
        for law in (c.a, c.b):
            out.print(f"{law.name}: a = {law.a:.3f} {ci_text(law.a_ci)}" + (f", E = {law.E:.4g}" if law.E is not None else ""))
        for note in c.notes:
            out.print(f"[yellow]note: {note}[/]")
    _guard(go, verbose, as_json)


@app.command()
def confirm(spec: str = SpecArg,
            budget: float = typer.Option(..., "--budget",
                                         help="The budget (FLOPs) to predict and check, beyond the sweep's."),
            sizes: int = typer.Option(3, "--sizes", min=1, help="Sizes to train around the predicted N_opt."),
            approach: Optional[str] = typer.Option(None, "--approach",
                                                   help="parametric (default) or isoflop."),
            predict_only: bool = typer.Option(False, "--predict-only",
                                              help="Register the prediction; train nothing."),
            bracket: bool = typer.Option(False, "--bracket",
                                         help="While the best size is at an edge of those trained, "
                                              "register and train the next size beyond it."),
            as_json: bool = JsonOpt, verbose: bool = VerboseOpt) -> None:
    """Pre-register a prediction at a larger budget, train the sizes around it, report predicted vs measured."""
    def go() -> None:
        s = _load(spec)
        progress, handle = _progress_handler(err, label="confirm")
        try:
            c = s.confirm(budget, sizes=sizes, approach=approach, on_event=handle, predict_only=predict_only,
                          bracket=bracket)
        finally:
            progress.stop()
        if predict_only:
            if as_json:
                _emit_json(c.model_dump_json(indent=2))
            else:
                err.print(f"registered {s.run_dir / 'confirm'}: N_opt {c.num_params:.3g}, D_opt {c.num_tokens:.3g}, "
                          f"loss {c.loss}, sizes {[p.size for p in c.sizes]}")
            return
        if as_json:
            _emit_json(json.dumps(c.summary(), indent=2))
            return
        for item in c.render():
            err.print(item)
        err.print(f"report: {s.run_dir / 'confirm'}")
    _guard(go, verbose, as_json)


@app.command()
def transfer(spec: str = SpecArg,
             middle: bool = typer.Option(False, "--middle",
                                         help="Also sweep a middle size (three sizes: the lr_scaling fit)."),
             max_steps: int = typer.Option(2000, "--max-steps", min=1, help="Cap on each sweep run's steps."),
             octaves: int = typer.Option(3, "--octaves", min=2, max=6,
                                         help="Rates spec x 2^-k .. 2^k (3: seven rates; 2: five)."),
             as_json: bool = JsonOpt, verbose: bool = VerboseOpt) -> None:
    """Does one learning rate serve every size?  Coordinate check and learning-rate sweep; PASS / WARN / FAIL."""
    def go() -> None:
        s = _load(spec)
        progress, handle = _progress_handler(err, label="transfer")
        try:
            t = s.transfer(middle=middle, max_steps=max_steps, on_event=handle, octaves=octaves)
        finally:
            progress.stop()
        if as_json:
            _emit_json(t.model_dump_json(indent=2))
            return
        colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}[t.verdict]
        for i, line in enumerate(t.lines()):
            err.print(f"[bold {colour}]{line}[/]" if i == 0 else line, highlight=False)
        err.print(f"report: {s.run_dir / 'transfer'}")
    _guard(go, verbose, as_json)


@app.command()
def schema(output: str = typer.Option("schemas/spec.schema.json",
                                      help="Where to write the JSON Schema.")) -> None:
    """Write the JSON Schema of the spec (for editors and CI)."""
    from .spec.schema import spec_schema

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(spec_schema(), indent=2) + "\n")
    err.print(f"wrote {output}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # before a command's own handler is in place (start-up, imports)
        err.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
