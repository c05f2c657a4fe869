"""How the CLI shows a fit: the report of a Result, the runs table, intervals (rich)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .progress import format_seconds

__all__ = ["print_result", "runs_table", "no_fit", "ci_text"]


def no_fit(result, err: Console) -> bool:
    """True (after printing why) when no approach produced a fit: the command then exits 1."""
    f = result.fits
    if f.isoflop or f.parametric or f.envelope:
        return False
    err.print("[bold red]error:[/] no fit: " + ("; ".join(f.notes) or "no usable points"), highlight=False)
    return True


def print_result(result, out: Console) -> None:
    """The human report of a Result: the Chinchilla table, the laws, notes, backtest, cost and trust verdict."""
    from ..plan.flops import RULE_DESCRIPTIONS

    f = result.fits
    underdetermined = len(f.isoflop.minima if f.isoflop else []) < 3

    out.print(result.chinchilla_table())
    if f.parametric:
        p = f.parametric
        primes = ("'", "'") if p.form == "data-constrained" else ("", "")
        out.print(f"parametric: L = {p.E:.4g} + {p.A:.4g}/N{primes[0]}^{p.alpha:.4f} + {p.B:.4g}/D{primes[1]}^{p.beta:.4f};"
                  f" a = {p.a:.3f} {ci_text(p.ci.get('a'))}, b = {p.b:.3f} {ci_text(p.ci.get('b'))}")
    for name, law in (("isoflop", f.isoflop), ("envelope", f.envelope)):
        if law is not None:
            what = "underdetermined (fewer than 3 budgets), not a law: " if name == "isoflop" and underdetermined else ""
            out.print(f"{name}: {what}N_opt ∝ C^{law.n_opt.exponent:.3f} {ci_text(law.n_opt.exponent_ci)}, "
                      f"D_opt ∝ C^{law.d_opt.exponent:.3f}, R² {law.n_opt.r2:.3f}")
    for e in f.excluded:
        out.print(f"[yellow]excluded {e.id}: {e.reason}[/]")
    verdict_lines = result.trust().lines()
    for note in result.summary()["notes"]:
        if not note.startswith("trust verdict") and not any(note in line for line in verdict_lines):
            out.print(f"[yellow]note: {escape(note)}[/]")
    bt = f.backtest
    if bt:
        m = bt.measured
        for name, p in bt.predicted.items():
            loss = f"{p.loss:.4g}" if p.loss is not None else "–"
            measured_loss = m.loss if m.loss is not None else m.loss_min
            measured_n = m.num_params if m.num_params is not None else m.num_params_at_min
            out.print(f"backtest ({name}, fit without C={bt.held_out_budget:.2g}): predicted loss {loss} vs measured "
                      f"{measured_loss:.4g}; N_opt {p.num_params:.3g} vs {measured_n:.3g}")
    out.print(f"FLOP rule: {RULE_DESCRIPTIONS.get(result.flop_rule, result.flop_rule)}")
    if result.evaluation is not None:
        out.print(evaluation_table(result.evaluation))
        out.print(result.evaluation.line())
    if result.cost is not None:
        c = result.cost
        out.print(f"cost: {format_seconds(c.train_seconds)} of training, {c.gpu_hours:.3g} GPU-hours"
                  + (f", ${c.usd:,.2f}" if c.usd is not None else ""))
    color = {"trust": "green", "caution": "yellow", "do not trust": "red"}[result.trust().verdict]
    for i, line in enumerate(verdict_lines):
        out.print(f"[{color}]{line}[/]" if i == 0 else line, highlight=False)


def evaluation_table(ev) -> Table:
    """`fit --evaluate`: each row's measured and predicted loss (first 50 rows)."""
    t = Table(title=f"Parametric law at the rows of {ev.source}")
    for col in ("params", "tokens", "unique tokens", "loss", "predicted", "95% band"):
        t.add_column(col, justify="right")
    for r in ev.rows[:50]:
        t.add_row(f"{r.params:.4g}", f"{r.tokens:.4g}",
                  "–" if r.unique_tokens is None else f"{r.unique_tokens:.4g}",
                  "–" if r.loss is None else f"{r.loss:.4f}", f"{r.predicted:.4f}", ci_text(r.predicted_ci))
    return t


def runs_table(rows) -> Table:
    t = Table(title="Experiments (planned → achieved)")
    for col in ("id", "C", "size", "N", "D", "FLOPs", "status", "loss", "epochs", "steps", "peak lr", "time",
                "GPU-h", "device"):
        t.add_column(col, justify="left" if col in ("id", "status", "device") else "right")

    def g(v, fmt="{:.3g}"):
        return "–" if v is None else fmt.format(v)
    for r in rows:
        status = r.status if not r.excluded or r.status != "ok" else f"excluded: {r.excluded}"
        d = g(r.planned_num_tokens) + ("" if r.num_tokens in (None, r.planned_num_tokens)
                                       else f" → {g(r.num_tokens)}")
        f = g(r.planned_flops) + ("" if r.flops in (None, r.planned_flops) else f" → {g(r.flops)}")
        n = g(r.num_params or r.planned_num_params, "{:,.0f}")
        t.add_row(r.id, g(r.budget_flops, "{:.2g}"), str(r.size), n, d, f,
                  status, g(r.loss, "{:.4f}"), g(r.epochs, "{:.2f}"), g(r.steps, "{:d}"), g(r.peak_lr),
                  format_seconds(r.train_seconds), g(r.gpu_hours, "{:.3f}"), r.device or "–")
    return t


def ci_text(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and all(v is not None and math.isfinite(v) for v in ci) else ""
