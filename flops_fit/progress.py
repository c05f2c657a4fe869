"""Live progress of a sweep on a rich console: the sweep bar, the current experiment, and a quiet
log (one line per finished, failed or resumed experiment; skips summarised; ``--verbose``: every
decision).  Shared by the CLI, ``find_optimal`` and the worker processes' stderr."""

from __future__ import annotations

import math
import os
import time

from rich.console import Console
from rich.markup import escape

__all__ = ["progress_handler", "format_seconds", "JobsProgress", "EventLog", "SweepProgress", "VERBOSE_ENV",
           "verbose_logs"]


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
                    return f"[{'yellow' if 'WARNING' in d.reason or kind.startswith('not') else 'dim'}]skip {exp.id}: " \
                           f"{escape(d.reason)}[/]"
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


class SweepProgress:
    """A live display of a sweep fed by RunEvents (the bar, the experiment in training) and the
    quiet :class:`EventLog` above it; :meth:`stop` ends the display and prints the skip summary."""

    def __init__(self, console: Console, live: bool = True, label: str = "sweep", verbose: bool | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                                 transient=False, disable=not live)
        self.log, self.label = EventLog(verbose), label
        self.sweep = self.exp = None
        self.t = 0.0

    def __call__(self, event) -> None:
        progress = self.progress
        if self.sweep is None:
            progress.start()
            self.sweep = progress.add_task(self.label, total=event.total, info="")
        line = self.log.line(event)
        if line:
            progress.console.print(line, highlight=False)
        exp = event.experiment
        if event.kind == "decision":
            if event.decision.action == "skip":
                progress.advance(self.sweep)
            else:
                if self.exp is not None:
                    progress.remove_task(self.exp)
                self.exp = progress.add_task(f"  {exp.id}", total=exp.steps, info="")
                self.t = time.perf_counter()
        elif event.kind == "log" and self.exp is not None:
            p = event.point
            rate = p.tokens / max(1e-9, time.perf_counter() - self.t)
            progress.update(self.exp, completed=p.step, info=f"loss {p.train_loss:.4f}  {rate:,.0f} units/s")
        elif event.kind == "result":
            progress.advance(self.sweep)

    def stop(self) -> None:
        self.progress.stop()
        summary = self.log.summary()
        if summary:
            self.progress.console.print(summary, highlight=False)


def progress_handler(console: Console, live: bool = True, label: str = "sweep", verbose: bool | None = None):
    """(display, handler) of a :class:`SweepProgress`; ``label`` names the bar (sweep, confirm, ...)."""
    display = SweepProgress(console, live, label, verbose)
    return display, display


class JobsProgress:
    """``run`` with a scheduler or worker processes: one bar of the experiments with a result
    (``label``: "jobs" for a scheduler's, "sweep" for local workers')."""

    def __init__(self, console: Console, label: str = "jobs"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        self.task = None

    def __call__(self, finished: int, total: int) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("experiments", total=total)
        self.bar.update(self.task, completed=finished, total=total)

    def stop(self) -> None:
        self.bar.stop()
