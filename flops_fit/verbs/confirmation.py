"""The forward check's records: what ``confirm`` registers (``prediction.json``, ``additions.json``)
and what it reports (``confirm.json``), each a frozen value that round-trips through JSON and
renders itself (see :mod:`flops_fit.verbs.confirm` for how they are made)."""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field

from ..core.frozen import Frozen

__all__ = ["PlannedSize", "Registration", "MeasuredSize", "Confirmation", "Additions"]


class PlannedSize(Frozen):
    """One size the check will train, with the loss the parametric law predicts for it."""

    id: str
    size: float | int
    num_params: int
    num_tokens: float
    loss: Optional[float]
    loss_ci: Optional[list[float]] = None
    epochs: Optional[float] = None  # D / U, when the sweep knows its unique tokens
    created: Optional[str] = None  # additions only: when this size was registered


class Registration(Frozen):
    """``prediction.json``: the forward check's pre-registered prediction, written before any of its runs
    is trained (a Chinchilla-table row is an :class:`~flops_fit.analysis.laws.Prediction`)."""

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
    status: Literal["ok", "failed", "diverged", "missing"]
    epochs: Optional[float] = None
    predicted_loss: Optional[float]
    predicted_loss_ci: Optional[list[float]] = None
    inside: Optional[bool] = None


class Confirmation(Frozen):
    """``confirm.json``: the pre-registered prediction against what was measured."""

    budget_flops: float
    predicted: Registration
    measured: list[MeasuredSize]
    added: list[float | int] = Field(default_factory=list)  # sizes registered after the prediction (additions)
    best_size: Optional[float | int]
    predicted_size: float | int
    best_is_predicted: bool
    best_is_adjacent: bool
    loss_error: Optional[float]
    loss_at_predicted_size_error: Optional[float]
    inside: int
    notes: list[str]
    messages: list[str] = Field(default_factory=list)  # what this call did: additions registered, --sizes ignored

    def render(self) -> list:
        """What ``flops-fit confirm`` prints: the prediction, a rich table of predicted against
        measured loss per size (★ the best measured), the error of the best, the notes."""
        from rich.table import Table

        def ci(v) -> str:
            return f"[{v[0]:.3f}, {v[1]:.3f}]" if v and all(x is not None and math.isfinite(x) for x in v) else ""

        p = self.predicted
        law = "IsoFLOP law (Approach 2)" if p.approach == "isoflop" else "parametric law (Approach 3)"
        loss_ci = (f" (95% {p.loss_ci[0]:.4g}–{p.loss_ci[1]:.4g})" if p.loss_ci else
                   " (no interval: the L_opt(C) curve through the budgets' minima is not bootstrapped)")
        out: list = [f"prediction from the {law}, registered {p.created}: N_opt {p.num_params:.3g}"
                     + (f" (95% {p.num_params_ci[0]:.3g}–{p.num_params_ci[1]:.3g})" if p.num_params_ci else "")
                     + f", D_opt {p.num_tokens:.3g}"
                     + (f", loss {p.loss:.4g}{loss_ci}" if p.loss is not None else ""),
                     "per-size losses: the parametric law (Approach 3) at each size's planned N and D"
                     + (f" ({p.fit.get('form')})" if p.fit.get("form") else "")]
        t = Table(title=f"Forward check at C = {self.budget_flops:.3g} FLOPs")
        for col in ("size", "N", "D", "epochs", "parametric loss", "95% interval", "measured", "inside"):
            t.add_column(col, justify="right")
        for m in self.measured:
            mark = " ★" if m.size == self.best_size else ""
            tag = " (predicted)" if m.size == self.predicted_size else " (added)" if m.size in self.added else ""
            t.add_row(f"{m.size}{tag}", f"{m.num_params:,}",
                      f"{m.num_tokens:.3g}", "–" if m.epochs is None else f"{m.epochs:.2f}",
                      "–" if m.predicted_loss is None else f"{m.predicted_loss:.4f}",
                      ci(m.predicted_loss_ci), "–" if m.loss is None else f"{m.loss:.4f}{mark}",
                      "–" if m.inside is None else ("yes" if m.inside else "no"))
        out.append(t)
        if self.loss_error is not None:
            out.append(f"best measured loss vs predicted: {self.loss_error:+.2%}; best size is "
                       + ("the predicted one" if self.best_is_predicted else
                          "adjacent to the predicted one" if self.best_is_adjacent else "not the predicted one"))
        from rich.markup import escape

        return (out + [f"[yellow]note: {escape(note)}[/]" for note in self.notes]
                + [f"[cyan]{escape(m)}[/]" for m in self.messages])

    def summary(self) -> dict:
        """The ``confirm --json`` document."""
        return self.model_dump(mode="json")


class Additions(Frozen):
    """``additions.json``: sizes registered after the prediction, each before it was trained."""

    sizes: list[PlannedSize] = Field(default_factory=list)
