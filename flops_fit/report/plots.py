"""Figures of a Result (matplotlib, Agg backend): IsoFLOP curves, scaling laws, iso-loss contours."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..analysis import Fits, Points
    from .runs_table import RunRow


class Result(Protocol):
    """What the figures read of a :class:`flops_fit.report.report.Result` (this module sits below
    the report)."""

    fits: "Fits"
    points: "Points"
    budgets: list[float]
    predict_budgets: list[float]
    flop_rule: str
    runs: "list[RunRow]"

    def predict(self, budget_flops: float) -> dict[str, Any]: ...


class Confirmation(Protocol):
    """What the forward check's figure reads of a :class:`flops_fit.verbs.confirmation.Confirmation`."""

    budget_flops: float
    predicted: Any
    measured: list


class Comparison(Protocol):
    """What the comparison figure reads of a :class:`flops_fit.verbs.compare.Comparison`."""

    approach: str
    rows: list
    a: Any  # each recipe's law
    b: Any

__all__ = ["make_figures", "confirm_figure", "compare_figure"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _axes(ax, xlabel: str, ylabel: str | None, title: str, logy: bool = True) -> None:
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def _isoflop(result: Result, plt):
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = result.points.usable()
    budgets = sorted({p.budget_flops for p in pts})
    cmap = plt.get_cmap("viridis")
    iso = result.fits.isoflop
    minima = {m.budget_flops: m for m in (iso.minima if iso else [])}
    for i, C in enumerate(budgets):
        color = cmap(i / max(1, len(budgets) - 1))
        mine = sorted((p.num_params, p.loss) for p in pts if p.budget_flops == C)
        ax.scatter([m[0] for m in mine], [m[1] for m in mine], color=color, label=f"C = {C:.2g}", zorder=3)
        if C in minima:
            lo, hi = minima[C].coef[-2:]  # the ln N range the fitted profile covers
            x = np.linspace(lo, hi, 100)
            ax.plot(np.exp(x), minima[C].curve(x), color=color, lw=1)
            ax.scatter([minima[C].n_opt], [minima[C].loss], marker="*", s=160, color=color, edgecolor="k",
                       zorder=4)
    excluded = {e.id for e in result.fits.excluded}
    bad = [p for p in result.points.points if p.id in excluded and p.loss is not None]
    if bad:
        ax.scatter([p.num_params for p in bad], [p.loss for p in bad], marker="x", color="red",
                   label="excluded")
    _axes(ax, "parameters N", "final held-out loss",
          f"IsoFLOP profiles (Approach 2, {iso.profile if iso else 'parabola'} profile in ln N), "
          "minima starred",
          logy=False)
    fig.tight_layout()
    return fig


def _scaling(result: Result, plt):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    budgets = sorted(set(result.budgets) | set(result.predict_budgets)) or sorted({p.budget_flops for p in result.points.usable()})
    grid = np.logspace(math.log10(min(budgets)) - 0.3, math.log10(max(budgets)) + 0.3, 40)
    preds = [result.predict(C) for C in grid]
    colors = {"isoflop": "C0", "parametric": "C1", "envelope": "C2"}
    for ax, key, label in zip(axes, ("num_params", "num_tokens", "loss"), ("N_opt", "D_opt", "L_opt")):
        for approach in colors:
            ys = [getattr(p[approach], key) if approach in p else None for p in preds]
            if all(y is None for y in ys):
                continue
            ax.plot(grid, [np.nan if y is None else y for y in ys], color=colors[approach], label=approach)
            cis = [getattr(p[approach], f"{key}_ci") if approach in p else None for p in preds]
            if all(c is not None for c in cis):
                ax.fill_between(grid, [c[0] for c in cis], [c[1] for c in cis], color=colors[approach],
                                alpha=0.2)
        minima = result.fits.isoflop.minima if result.fits.isoflop else []
        mkey = {"num_params": "n_opt", "num_tokens": "d_opt", "loss": "loss"}[key]
        if minima:
            ax.scatter([m.budget_flops for m in minima], [getattr(m, mkey) for m in minima], color="k",
                       zorder=3,
                       label="IsoFLOP minima")
        _axes(ax, "compute C (FLOPs)", None, f"{label} vs C (95% bands)")
    fig.tight_layout()
    return fig


def _contours(result: Result, plt):
    par = result.fits.parametric
    if not par:
        return None
    pts = result.points.usable()
    N = np.array([p.num_params for p in pts])
    D = np.array([p.num_tokens for p in pts])
    n_grid = np.logspace(math.log10(N.min()) - 0.5, math.log10(N.max()) + 0.5, 200)
    d_grid = np.logspace(math.log10(D.min()) - 0.5, math.log10(D.max()) + 0.5, 200)
    NN, DD = np.meshgrid(n_grid, d_grid)
    LL = par.loss(NN, DD)
    fig, ax = plt.subplots(figsize=(7, 5.5))
    cs = ax.contour(NN, DD, LL, levels=15, cmap="viridis")
    ax.clabel(cs, fontsize=7, fmt="%.2f")
    Cs = np.logspace(math.log10(min(p.flops for p in pts)) - 0.5,
                     math.log10(max(p.flops for p in pts)) + 0.5, 30)
    frontier = np.array([par.allocate(C)[:2] for C in Cs])
    ax.plot(frontier[:, 0], frontier[:, 1], "r-", lw=2, label="efficient frontier")
    sc = ax.scatter(N, D, c=[p.loss for p in pts], cmap="viridis", edgecolor="k", zorder=3, label="runs")
    fig.colorbar(sc, ax=ax, label="measured loss")
    _axes(ax, "parameters N", "data D",
          f"Iso-loss contours of L(N,D) = E + A/N^α + B/D^β (α={par.alpha:.3f}, β={par.beta:.3f})")
    fig.tight_layout()
    return fig


def _envelope(result: Result, plt):
    env = result.fits.envelope
    pts = [p for p in result.points.usable() if p.curve]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    norm = plt.Normalize(math.log10(min(p.num_params for p in pts)),
                         math.log10(max(p.num_params for p in pts)))
    for p in pts:
        losses = [math.nan if c.train_loss is None else c.train_loss for c in p.curve]
        ax.plot([c.flops for c in p.curve], losses, color=plt.cm.viridis(norm(math.log10(p.num_params))),
                lw=0.8, alpha=0.7)
    if env:
        ax.plot([e.flops for e in env.points], [e.loss for e in env.points], "r.-", label="lower envelope")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs so far")
    ax.set_ylabel("training loss")
    ax.set_title("Training curves and their lower envelope (Approach 1)")
    fig.tight_layout()
    return fig


#: One look for every figure: sizes that read in a paper column, no top/right spines.
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "savefig.bbox": "tight",
         "pdf.fonttype": 42}


def _footer(fig, result: Result) -> None:
    """The FLOP rule and what N counts, on the figure itself (a figure travels without its caption)."""
    from ..plan.flops import RULE_DESCRIPTIONS

    rule = RULE_DESCRIPTIONS.get(result.flop_rule, result.flop_rule)
    fig.text(0.005, 0.002, f"flops-fit · FLOP rule: {rule} · D in data units (tokens_per_sample per sample)",
             fontsize=6, color="0.4", ha="left", va="bottom")


def make_figures(result: Result, path: str | Path | None = None, format: str | tuple = "png") -> dict:
    """Build every figure the fits support; save ``<name>.<format>`` under ``path`` if given.

    ``format``: "png", "pdf" (vector, fonts embedded as TrueType) or several, e.g. ("png", "pdf")."""
    plt = _plt()
    formats = (format,) if isinstance(format, str) else tuple(format)
    with plt.rc_context(STYLE):
        figures = {"isoflop": _isoflop(result, plt), "scaling": _scaling(result, plt)}
        for name, fn in (("contours", _contours), ("envelope", _envelope), ("backtest", _backtest),
                         ("lr_schedule", _lr_schedule)):
            fig = fn(result, plt)
            if fig is not None:
                figures[name] = fig
        for fig in figures.values():
            _footer(fig, result)
        if path is not None:
            folder = Path(path)
            folder.mkdir(parents=True, exist_ok=True)
            try:
                for name, fig in figures.items():
                    for fmt in formats:
                        _save(fig, folder / f"{name}.{fmt}", dpi=110 if fmt == "png" else None)
            except BaseException:
                for fig in figures.values():
                    plt.close(fig)
                raise
    return figures


def _save(fig, target: Path, **kw) -> None:
    """``fig.savefig(target)``; any failure (a full disk surfaces from matplotlib's PDF writer as an
    AttributeError raised while it handles ENOSPC) becomes an OSError naming the file, whose
    partial content is removed."""
    try:
        fig.savefig(target, **kw)
    except Exception as exc:
        Path(target).unlink(missing_ok=True)
        cause = exc if isinstance(exc, OSError) else exc.__context__ if isinstance(exc.__context__, OSError) else None
        why = (cause.strerror or str(cause)) if cause is not None else f"{type(exc).__name__}: {exc}"
        raise OSError(getattr(cause, "errno", None) or 5, f"cannot write the figure ({why}); the results are "
                      f"kept: `flops-fit analyze SPEC` writes the report again", str(target)) from exc


def _backtest(result: Result, plt):
    """The fits without the largest budget, predicting it: N_opt and loss with their intervals
    against what the held-out budget measured."""
    bt = result.fits.backtest
    if bt is None or not bt.predicted:
        return None
    m = bt.measured
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(bt.predicted)
    for ax, key, ci_key, measured, label in (
            (left, "num_params", "num_params_ci", m.num_params or m.num_params_at_min, "N_opt (parameters)"),
            (right, "loss", "loss_ci", m.loss or m.loss_min, "loss at the optimum")):
        for i, name in enumerate(names):
            p = bt.predicted[name]
            value, ci = getattr(p, key), getattr(p, ci_key)
            if value is None:
                continue
            yerr = None if ci is None else [[value - ci[0]], [ci[1] - value]]
            ax.errorbar([i], [value], yerr=yerr, fmt="o", capsize=4, color=f"C{i}",
                        label=f"{name} (predicted)")
        ax.axhline(measured, color="k", ls="--", lw=1, label="measured at the held-out budget")
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
        if key == "num_params":
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"Backtest: fit on {', '.join(f'{b:.2g}' for b in bt.fit_budgets)} FLOPs, predict "
                 f"{bt.held_out_budget:.2g} FLOPs")
    fig.tight_layout()
    return fig


def _lr_schedule(result: Result, plt):
    """The learning rate each size trained with, against tokens, at the largest budget it ran at."""
    largest = {}
    for p in result.points.points:
        if p.curve and (p.num_params not in largest or p.budget_flops > largest[p.num_params].budget_flops):
            largest[p.num_params] = p
    if not largest:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sizes = sorted(largest)
    norm = plt.Normalize(math.log10(sizes[0]), math.log10(sizes[-1]) + 1e-9)
    for n in sizes:
        p = largest[n]
        color = plt.cm.viridis(norm(math.log10(n)))
        ax.plot([c.tokens for c in p.curve], [c.lr for c in p.curve], color=color,
                label=f"N = {n:.3g} (C = {p.budget_flops:.2g})")
        # reuse = "branch": where each budget's cooldown leaves this size's trunk
        branches = [r for r in result.runs if r.role == "branch" and r.planned_num_params == n and r.planned_steps]
        ax.scatter([r.branch_step * r.planned_num_tokens / r.planned_steps for r in branches],
                   [max(c.lr for c in p.curve)] * len(branches), marker="v", color=color, zorder=3,
                   label="branch points (a cooldown starts)" if branches and n == sizes[0] else None)
    ax.set_xscale("log")
    ax.set_xlabel("data seen D (data units)")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedule per size (at its largest budget)")
    ax.legend(ncol=2)
    fig.tight_layout()
    return fig


def confirm_figure(result: Result, confirmation: Confirmation):
    """The forward check: L_opt(C) with its band, the sweep's minima, and the measured losses at
    the confirmation budget (left); loss against N at that budget, predicted and measured (right)."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    pred = confirmation.predicted
    C = confirmation.budget_flops
    approach = pred.approach
    budgets = sorted(set(result.budgets) | {C})
    grid = np.logspace(math.log10(min(budgets)) - 0.2, math.log10(max(budgets)) + 0.2, 40)
    rows = [result.fits.predict(c).get(approach) for c in grid]
    if all(r is not None and r.loss is not None for r in rows):
        left.plot(grid, [r.loss for r in rows], color="C1", label=f"L_opt ({approach} fit)")
        cis = [r.loss_ci for r in rows]
        if all(ci is not None for ci in cis):
            left.fill_between(grid, [c[0] for c in cis], [c[1] for c in cis], color="C1", alpha=0.2,
                              label="95% band")
    best_per_budget = {}
    for p in result.points.usable():
        if p.budget_flops not in best_per_budget or p.loss < best_per_budget[p.budget_flops]:
            best_per_budget[p.budget_flops] = p.loss
    left.scatter(list(best_per_budget), list(best_per_budget.values()), color="k", zorder=3,
                 label="sweep: best run per budget")
    if pred.loss is not None:
        yerr = None if pred.loss_ci is None else [[pred.loss - pred.loss_ci[0]],
                                                  [pred.loss_ci[1] - pred.loss]]
        left.errorbar([C], [pred.loss], yerr=yerr, fmt="D", color="C1", mfc="white", capsize=4, zorder=4,
                      label="pre-registered prediction")
    done = [m for m in confirmation.measured if m.loss is not None]
    if done:
        left.scatter([C] * len(done), [m.loss for m in done], marker="x", color="C3", zorder=5,
                     label="measured at C")
    _axes(left, "compute C (FLOPs)", "final held-out loss", f"Forward check at C = {C:.3g}", logy=False)

    sizes = pred.sizes
    n_lo, n_hi = min(s.num_params for s in sizes) / 1.5, max(s.num_params for s in sizes) * 1.5
    n_grid = np.logspace(math.log10(n_lo), math.log10(n_hi), 40)
    par = result.fits.parametric
    if par:
        fpu = par.flops_per_unit
        loss, lo, hi = par.band(n_grid, C / (fpu.coef * n_grid ** fpu.exponent))
        right.plot(n_grid, loss, color="C1", label="predicted L(N, D = C / FLOPs per unit)")
        if lo is not None:
            right.fill_between(n_grid, lo, hi, color="C1", alpha=0.2, label="95% band")
    for s in sizes:
        if s.loss_ci is not None:
            right.errorbar([s.num_params], [s.loss], yerr=[[s.loss - s.loss_ci[0]], [s.loss_ci[1] - s.loss]],
                           fmt="D",
                           color="C1", mfc="white", capsize=3)
    if done:
        right.scatter([m.num_params for m in done], [m.loss for m in done], marker="x", s=60, color="C3",
                      zorder=5,
                      label="measured")
    right.axvline(pred.num_params, color="C1", ls="--", lw=1,
                  label=f"predicted N_opt = {pred.num_params:.3g}")
    _axes(right, "parameters N", None, f"Loss against N at C = {C:.3g}", logy=False)
    fig.tight_layout()
    return fig


def compare_figure(a: Result, b: Result, comparison: Comparison):
    """Two recipes: both IsoFLOP profiles (left), both N_opt frontiers (middle), both L_opt with the
    measured best run per budget and the effective compute multiplier (right)."""
    plt = _plt()
    names = (comparison.a.name, comparison.b.name)
    with plt.rc_context(STYLE):
        fig, (prof, front, loss) = plt.subplots(1, 3, figsize=(14, 4.2))
        budgets = sorted(set(a.budgets) | set(b.budgets))
        grid = np.logspace(math.log10(min(budgets)) - 0.2, math.log10(max(budgets)) + 0.2, 40)
        for k, (r, name, marker) in enumerate(((a, names[0], "o"), (b, names[1], "s"))):
            pts = r.points.usable()
            prof.scatter([p.num_params for p in pts], [p.loss for p in pts], marker=marker, s=14,
                         color=f"C{k}",
                         label=name, alpha=0.8)
            preds = [r.fits.predict(c).get(comparison.approach) for c in grid]
            front.plot(grid, [p.num_params if p else np.nan for p in preds], color=f"C{k}", label=name)
            loss.plot(grid, [p.loss if p and p.loss is not None else np.nan for p in preds], color=f"C{k}",
                      label=name)
            best = {}
            for p in pts:
                best[p.budget_flops] = min(best.get(p.budget_flops, math.inf), p.loss)
            loss.scatter(list(best), list(best.values()), marker=marker, color=f"C{k}", zorder=3)
        _axes(prof, "parameters N", "final held-out loss", "IsoFLOP profiles", logy=False)
        _axes(front, "compute C (FLOPs)", "N_opt (parameters)",
              f"Compute-optimal N ({comparison.approach} fit)")
        _axes(loss, "compute C (FLOPs)", "L_opt", "Optimal loss; best run per budget", logy=False)
        text = "; ".join(f"{r.budget_flops:.2g}: {r.multiplier:.2f}x" for r in comparison.rows)
        loss.text(0.02, 0.02, f"{names[1]} over {names[0]}: {text}", transform=loss.transAxes, fontsize=7,
                  va="bottom")
        _footer(fig, a)
        fig.tight_layout()
    return fig
