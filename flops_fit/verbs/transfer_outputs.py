"""The transfer check's files besides ``transfer.json``: ``coordinates.csv`` and ``transfer.png``
(each from a :class:`~flops_fit.verbs.transfer.Transfer`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

__all__ = ["coordinates_csv", "figure"]


def coordinates_csv(result: Any) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["module", *[f"init_{x}" for x in result.coordinate_widths],
                *[f"steps2-{result.coordinate_steps}_{x}" for x in result.coordinate_widths], "spread",
                "slope_init", "slope", "flag"])
    for c in result.coordinates:
        w.writerow([c.module, *c.at_init, *c.at_step, c.spread, c.slope_init, c.slope, c.flag])
    return buf.getvalue()


def figure(result: Any, path: Path) -> None:
    """Loss against log2 learning rate, one colour per size, minima starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, o in enumerate(result.optima):
        pts = sorted((p for p in result.sweep if p.num_params == o.num_params and p.loss is not None),
                     key=lambda p: p.factor)
        ax.plot([p.learning_rate for p in pts], [p.loss for p in pts], "o-", color=f"C{k}",
                label=f"N = {o.num_params:,}")
        if o.best_lr:
            ax.plot([o.best_lr], [o.best_loss], "*", ms=14, color=f"C{k}")
    ax.axvline(result.spec_lr, color="grey", ls=":", label="spec learning rate")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final held-out loss")
    ax.set_title(f"Learning-rate transfer: {result.verdict}")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
