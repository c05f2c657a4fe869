"""What ``fit_points`` returns: the fits of every approach, the excluded points and the backtest
(frozen, JSON round-trip; ``Fits`` evaluates itself through its laws)."""

from __future__ import annotations

import math
from typing import Optional

from pydantic import Field

from ..core.frozen import Frozen
from .laws import EnvelopeFit, FlopsPerUnit, IsoflopFit, ParametricFit, Prediction
from .noise import NoiseFloor
from .parametric import DataLimit

__all__ = ["Fits", "Exclusion", "Backtest", "BacktestMeasured"]


class Exclusion(Frozen):
    """A point left out of the fits, and why."""

    id: str
    reason: str


class BacktestMeasured(Frozen):
    loss_min: float
    num_params_at_min: float
    loss: Optional[float] = None  # the held-out budget's profile minimum, when bracketed
    num_params: Optional[float] = None


class Backtest(Frozen):
    """The fits without the largest budget, predicting it, against what was measured there."""

    held_out_budget: float
    fit_budgets: list[float]
    measured: BacktestMeasured
    predicted: dict[str, Prediction] = Field(default_factory=dict)


class Fits(Frozen):
    """Every fit of one analysis; JSON round-trip (``model_dump_json``/``model_validate_json``)."""

    isoflop: Optional[IsoflopFit] = None
    parametric: Optional[ParametricFit] = None
    envelope: Optional[EnvelopeFit] = None
    excluded: list[Exclusion] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    flops_per_unit: FlopsPerUnit = Field(default_factory=FlopsPerUnit)
    backtest: Optional[Backtest] = None
    num_points: int = 0  # the values fitted: points, or with seed replicates (budget, N, D) cells
    # with seed replicates: the noise floor and the budgets it leaves unresolved
    noise: Optional[NoiseFloor] = None
    unique_tokens: Optional[float] = None  # U of the data (the points' median); None: not known
    data_limit: Optional[DataLimit] = None  # where the data run out (data-constrained law only)

    def predict(self, budget_flops: float, unique_tokens: float | None = None) -> dict[str, Prediction]:
        """Each fitted approach's :class:`Prediction` at ``budget_flops``; with U unique tokens
        (default the data's) each says its epochs D_opt/U, and the data-constrained law allocates
        under that repetition (the IsoFLOP and envelope laws cannot: they extrapolate the sweep)."""
        U = self.unique_tokens if unique_tokens is None else unique_tokens
        out = {}
        fitted = (("isoflop", self.isoflop), ("parametric", self.parametric), ("envelope", self.envelope))
        for name, fit in fitted:
            if fit is None:
                continue
            p = fit.predict(budget_flops, U) if name == "parametric" else fit.predict(budget_flops)
            if U and p.epochs is None and math.isfinite(p.num_tokens):
                p = p.model_copy(update={"unique_tokens": U, "epochs": p.num_tokens / U})
            out[name] = p
        return out
