"""Learning-rate schedules as multipliers of the peak rate, functions of the step.

* ``cosine``: linear warmup over ``W`` steps, then ``r + (1-r)·(1+cos(π·t))/2`` with
  ``t = (s-W)/(S-W)``, reaching ``r = min_lr_ratio`` exactly at the last step ``S``.
* ``constant``: linear warmup, then 1.
* ``wsd`` (warmup-stable-decay, Hägele et al. 2024): warmup, constant, then a cooldown
  over the last ``decay_fraction`` of the run of shape ``1 - (1-r)·sqrt(t)``.
"""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["lr_multiplier"]


def lr_multiplier(kind: str, steps: int, warmup: int, min_ratio: float,
                  decay_fraction: float) -> Callable[[int], float]:
    """``f(step) -> lr / peak_lr`` for the step about to be taken (0-based)."""

    def warm(step: int) -> float | None:
        return (step + 1) / warmup if step < warmup else None

    def cosine(step: int) -> float:
        w = warm(step)
        if w is not None:
            return w
        t = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def constant(step: int) -> float:
        w = warm(step)
        return 1.0 if w is None else w

    def wsd(step: int) -> float:
        w = warm(step)
        if w is not None:
            return w
        decay = max(1, int(round(decay_fraction * steps)))
        start = steps - decay
        if step < start:
            return 1.0
        t = min(1.0, (step - start + 1) / decay)
        return 1 - (1 - min_ratio) * math.sqrt(t)

    return {"cosine": cosine, "constant": constant, "wsd": wsd}[kind]
