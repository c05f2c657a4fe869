"""Analysis stage: pure functions from measured Points to scaling-law fits."""

from .fit import Fits, fit_points
from .points import Point, Points

__all__ = ["Fits", "Point", "Points", "fit_points"]
