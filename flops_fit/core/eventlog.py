"""What the log says about a sweep's events, shared by the live display (:mod:`flops_fit.report.progress`)
and the worker processes' stderr (:mod:`flops_fit.execute.launch`): quiet by default, every decision with
``--verbose`` (``FLOPS_FIT_VERBOSE=1``, inherited by the workers)."""

from __future__ import annotations

import math
import os

from rich.markup import escape

__all__ = ["EventLog", "VERBOSE_ENV", "verbose_logs", "skip_kind", "format_seconds"]


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


VERBOSE_ENV = "FLOPS_FIT_VERBOSE"


def verbose_logs() -> bool:
    """Whether every decision is logged (``--verbose``; inherited by worker processes)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def skip_kind(reason: str) -> str:
    """The group a skip's reason belongs to in the summary line."""
    if reason.startswith("done"):
        return "done earlier"
    if reason.startswith("running on"):
        return "in other hands"
    return "not retried (failed or diverged)"


class EventLog:
    """What the log says about a sweep's events, quiet by default: one line per finished, failed,
    resumed or waiting experiment and per skip that needs the user (a failed run not retried);
    skips of work done earlier or held by another process are counted and summarised once
    (:meth:`summary`).  ``verbose``: every decision, as it happens."""

    def __init__(self, verbose: bool | None = None):
        self.verbose = verbose_logs() if verbose is None else verbose
        self.skipped: dict[str, int] = {}

    def line(self, event) -> str | None:
        """The line for ``event`` (rich markup), or None when it is only counted."""
        exp = event.experiment
        if event.kind == "decision":
            d = event.decision
            if d.action == "skip":
                kind = skip_kind(d.reason)
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                if self.verbose or kind.startswith("not retried"):
                    return (
                        f"[{'yellow' if 'WARNING' in d.reason or kind.startswith('not') else 'dim'}]skip {exp.id}: "
                        f"{escape(d.reason)}[/]"
                    )
                return None
            if d.action == "run" and not self.verbose:
                return None
            return f"{d.action} {exp.id}: {escape(d.reason)}"
        if event.kind == "result":
            r = event.result
            color = "green" if r.status == "ok" else "red"
            loss = f"{r.loss:.4f}" if r.loss is not None else "–"
            return f"[{color}]{r.status}[/] {exp.id}: loss {loss} ({format_seconds(r.train_seconds)}) {escape(r.reason)}"
        return None

    def summary(self) -> str | None:
        """One line for the skips that were only counted, e.g. ``skipped 12: 8 done earlier, 4 in other hands``."""
        if not self.skipped or self.verbose:
            return None
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return f"[dim]skipped {sum(self.skipped.values())}: {parts} (--verbose lists them)[/]"
