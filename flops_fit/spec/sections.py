"""The spec's ``[analysis]`` and ``[estimate]`` tables: how the sweep is fitted and reported, and
what ``estimate`` prices the remaining work at."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from .types import _Frozen

__all__ = ["AnalysisSpec", "EstimateSpec"]


class AnalysisSpec(_Frozen):
    """``[analysis]``: which fits to make and which budgets to predict."""

    approaches: list[Literal["isoflop", "parametric", "envelope"]] = Field(
        default_factory=lambda: ["isoflop", "parametric"], min_length=1,
        description="Chinchilla Approach 2 ('isoflop'), 3 ('parametric'), 1 ('envelope').")
    predict: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=list,
        description="Extra budgets (FLOPs) for the Chinchilla table.")
    bootstrap: int = Field(default=200, ge=0, description="Bootstrap resamples for intervals (0: none).")
    seed: int = Field(default=0, ge=0, description="Seed of the bootstrap.")
    keep_outliers: bool = Field(default=False, description="Keep points the outlier rules would exclude.")
    outlier_z: float = Field(default=3.5, gt=0,
                             description="Robust |z| beyond which a point is off its budget's profile curve.")
    figures: list[Literal["png", "pdf"]] = Field(
        default_factory=lambda: ["png", "pdf"], description="Formats the report's figures are written in "
        "(PDF: vector, fonts embedded); [] writes none. Rendering five figures takes ~2 s as PNG, "
        "~4 s as PDF.")
    profile: Literal["window", "cubic", "parabola", "auto", "shape"] = Field(
        default="shape",
        description="IsoFLOP profile estimator (default shape: the sharpest and still calibrated in "
                    "simulation): 'window' (parabola over the 5 points around the lowest loss), 'cubic' "
                    "(cubic in ln N over every point), 'parabola' (every point; biased on wide lopsided "
                    "sweeps), 'auto' (per budget: the parabola unless an F test finds lack of fit, then the "
                    "cubic or the window), 'shape' (the Chinchilla law's profile shape, shared by every "
                    "budget and fitted jointly; level, scale and minimum per budget).")


class EstimateSpec(_Frozen):
    """``[estimate]``: how ``flops-fit estimate`` turns FLOPs into time."""

    gpu: Literal["H100", "H200", "A100", "L4", "RTX4090"] = Field(
        default="H100",
        description="GPU for the stated-MFU estimate.")
    mfu: float = Field(default=0.3, gt=0, le=1, description="Model FLOP utilisation assumed on that GPU.")
    calibrate: bool = Field(default=True, description="Time a few real steps on this machine.")
    calibrate_steps: int = Field(default=4, ge=2,
                                 description="Timed steps per calibration model (after one warm-up step).")
    usd_per_gpu_hour: Optional[float] = Field(default=None, gt=0,
                                              description="Price of one GPU-hour: estimate and report give "
                                                          "the cost in $.")


# The data of a spec file.  Users hold flops_fit.Spec, the one Spec class, which adds the
# pipeline's verbs (run, estimate, ...) on top of it; the stages below the facade take a SpecModel.
