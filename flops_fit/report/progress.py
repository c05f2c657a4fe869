"""Live progress of a sweep on a rich console: the sweep bar, the current experiment, and a quiet
log (one line per finished, failed or resumed experiment; skips summarised; ``--verbose``: every
decision).  Shared by the CLI, ``find_optimal`` and the worker processes' stderr."""

from __future__ import annotations

import time

from rich.console import Console

from ..core.eventlog import VERBOSE_ENV, EventLog, format_seconds, verbose_logs

__all__ = ["progress_handler", "format_seconds", "JobsProgress", "EventLog", "SweepProgress", "VERBOSE_ENV",
           "verbose_logs"]


class SweepProgress:
    """A live display of a sweep fed by RunEvents (the bar, the experiment in training) and the
    quiet :class:`EventLog` above it; :meth:`stop` ends the display and prints the skip summary."""

    def __init__(self, console: Console, live: bool = True, label: str = "sweep",
                 verbose: bool | None = None):
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
            progress.update(self.exp, completed=p.step,
                            info=f"loss {_loss(p.train_loss)}  {rate:,.0f} units/s")
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

        self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console)
        self.task = None

    def __call__(self, finished: int, total: int) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("experiments", total=total)
        self.bar.update(self.task, completed=finished, total=total)

    def stop(self) -> None:
        self.bar.stop()


def _loss(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.4f}"
