"""Seed replicates: per-cell means, the noise floor, and budgets whose minimum it hides.

A *cell* is one (budget, N, D) of the sweep.  With ``[sweep] seeds`` some cells are trained
with several seeds; the fits use each cell's mean loss, and the noise floor is the pooled sample
standard deviation of one run's final loss across seeds,

    σ = sqrt( Σ_cells Σ_seeds (L − L̄_cell)² / Σ_cells (k_cell − 1) ),

which for a single replicated cell is its sample standard deviation (ddof = 1).  A budget's
IsoFLOP minimum is *unresolved* when its lowest cell beats a neighbouring size by less than
twice the standard deviation of that difference, 2·σ·sqrt(1/k_min + 1/k_neighbour): seed noise
alone could have put the minimum on the other side.  The bootstrap draws each replicated cell's
mean from its seeds (with replacement) in every resample, so intervals include seed noise.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from pydantic import Field

from ..core.frozen import Frozen

__all__ = ["Cell", "NoiseFloor", "UnresolvedBudget", "cell_means", "noise_floor", "seed_draw"]


class Cell(Frozen):
    """One replicated (budget, N, D): its seeds' losses, mean and sample standard deviation."""

    budget_flops: float
    num_params: float
    num_tokens: float
    seeds: list[Optional[int]]
    losses: list[float]
    mean: float
    std: float


class UnresolvedBudget(Frozen):
    """A budget whose lowest point is within the noise of a neighbouring size."""

    budget_flops: float
    margin: float  # the neighbour's mean loss minus the lowest cell's
    threshold: float  # 2·σ·sqrt(1/k_min + 1/k_neighbour)
    message: str


class NoiseFloor(Frozen):
    """The seeds' standard deviation of one run's final loss, pooled over replicated cells."""

    std: float
    dof: int  # Σ (k − 1) over replicated cells
    cells: list[Cell] = Field(default_factory=list)
    unresolved: list[UnresolvedBudget] = Field(default_factory=list)

    def line(self) -> str:
        seeds = max(len(c.seeds) for c in self.cells)
        return (f"noise floor: σ = {self.std:.4g} (seed standard deviation of one run's loss; {len(self.cells)} "
                f"replicated cell(s), up to {seeds} seeds, {self.dof} degrees of freedom)")


def cell_means(arrays: tuple[np.ndarray, ...]) -> tuple[tuple[np.ndarray, ...], list[np.ndarray]]:
    """Group (N, D, L, budget, flops) by (budget, N, D); each group's mean loss and its member indices."""
    N, D, L, B, F = arrays
    keys = np.stack([B, N, D], 1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(first)  # keep the points' order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    cell = rank[inverse]
    groups = [np.flatnonzero(cell == c) for c in range(len(order))]
    heads = first[order]
    means = np.bincount(cell, weights=L) / np.bincount(cell)
    return (N[heads], D[heads], means, B[heads], F[heads]), groups


def noise_floor(L: np.ndarray, groups: list[np.ndarray], arrays: tuple[np.ndarray, ...], seeds: list,
                ) -> NoiseFloor | None:
    """σ pooled over the cells with two or more seeds (None when no cell has), and the unresolved budgets."""
    N, D, means, B, _ = arrays
    reps = [(c, g) for c, g in enumerate(groups) if len(g) > 1]
    if not reps:
        return None
    ss = sum(float(np.sum((L[g] - means[c]) ** 2)) for c, g in reps)
    dof = sum(len(g) - 1 for _, g in reps)
    std = math.sqrt(ss / dof)
    cells = [Cell(budget_flops=float(B[c]), num_params=float(N[c]), num_tokens=float(D[c]),
                  seeds=[seeds[i] for i in g], losses=[float(v) for v in L[g]], mean=float(means[c]),
                  std=float(np.std(L[g], ddof=1))) for c, g in reps]
    counts = np.array([len(g) for g in groups])
    return NoiseFloor(std=std, dof=dof, cells=cells, unresolved=_unresolved(N, means, B, counts, std))


def _unresolved(N: np.ndarray, L: np.ndarray, B: np.ndarray, counts: np.ndarray,
                std: float) -> list[UnresolvedBudget]:
    out = []
    for C in np.unique(B):
        idx = np.flatnonzero(B == C)
        idx = idx[np.argsort(N[idx])]
        i = int(np.argmin(L[idx]))
        if i == 0 or i == len(idx) - 1:
            continue  # an edge minimum is the IsoFLOP fit's to report (not bracketed)
        lo = idx[i]
        worst = None
        for j in (idx[i - 1], idx[i + 1]):
            margin = float(L[j] - L[lo])
            threshold = 2 * std * math.sqrt(1 / counts[lo] + 1 / counts[j])
            if margin < threshold and (worst is None or margin - threshold < worst[0] - worst[1]):
                worst = (margin, threshold, j)
        if worst:
            margin, threshold, j = worst
            out.append(UnresolvedBudget(
                budget_flops=float(C), margin=margin, threshold=threshold,
                message=f"budget {C:.3g}: its lowest point (N = {N[lo]:.3g}) is only {margin:.3g} below the next size "
                        f"(N = {N[j]:.3g}), within 2σ of their difference ({threshold:.3g}): the minimum is not "
                        f"resolved above the noise floor; add seeds or sizes"))
    return out


def seed_draw(L: np.ndarray, groups: list[np.ndarray], means: np.ndarray) -> Callable[[np.random.Generator], np.ndarray]:
    """A bootstrap draw of the cell ``means`` (from :func:`cell_means`): each replicated cell's seeds
    resampled with replacement."""
    reps = [(c, g) for c, g in enumerate(groups) if len(g) > 1]

    def draw(rng: np.random.Generator) -> np.ndarray:
        out = means.copy()
        for c, g in reps:
            out[c] = float(np.mean(L[rng.choice(g, size=len(g))]))
        return out

    return draw
