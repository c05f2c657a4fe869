"""Chinchilla Approach 1: the lower envelope of loss against FLOPs over all training curves.

Every logged curve point gives (C, loss, N, D) with C the FLOPs spent so far.  FLOPs are cut
into log-spaced bins; in each bin the lowest loss wins and its run's N and D so far are the
optimum for that compute.  Power laws N_opt ∝ C^a and D_opt ∝ C^b are fitted to the
envelope.  Early points (before 10% of a run, still in warmup) are left out, as Hoffmann et al.
left out the start of training.
"""

from __future__ import annotations

import numpy as np

from .isoflop import power_law
from .laws import EnvelopeFit, EnvelopePoint

__all__ = ["envelope"]


def envelope(curves: list[tuple[float, list]], bins: int = 30, min_fraction: float = 0.1,
             loss_key: str = "train_loss") -> EnvelopeFit | None:
    """``curves``: (num_params, logged curve points with flops, tokens and the loss).  None when too few points."""
    rows = []
    for num_params, curve in curves:
        if not curve:
            continue
        last = curve[-1].flops
        for p in curve:
            loss = getattr(p, loss_key)
            if loss is not None and np.isfinite(loss) and p.flops >= min_fraction * last:
                rows.append((p.flops, loss, num_params, p.tokens))
    if len(rows) < 5:
        return None
    arr = np.array(rows)
    edges = np.logspace(np.log10(arr[:, 0].min()), np.log10(arr[:, 0].max()), bins + 1)
    env = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (arr[:, 0] >= lo) & (arr[:, 0] <= hi)
        if m.any():
            env.append(arr[m][np.argmin(arr[m][:, 1])])
    env = np.array(env)
    if len(env) < 4 or len(np.unique(env[:, 2])) < 2:
        return None
    return EnvelopeFit(n_opt=power_law(env[:, 0], env[:, 2]), d_opt=power_law(env[:, 0], env[:, 3]),
                       points=[EnvelopePoint(flops=float(c), loss=float(l), num_params=float(n),
                                             num_tokens=float(d))
                               for c, l, n, d in env])
