"""Live progress of a sweep on a rich console: the sweep bar, the current experiment, one line
per decision and result.  Shared by the CLI and ``find_optimal``."""

from __future__ import annotations

import math
import time

from rich.console import Console

__all__ = ["progress_handler", "format_seconds", "JobsProgress"]


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def progress_handler(console: Console, live: bool = True, label: str = "sweep"):
    """A rich progress display fed by RunEvents, and its handler; ``label`` names the bar (sweep, confirm)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console, transient=False, disable=not live)
    state = {"sweep": None, "exp": None, "t": 0.0}

    def handle(event) -> None:
        if state["sweep"] is None:
            progress.start()
            state["sweep"] = progress.add_task(label, total=event.total, info="")
        exp = event.experiment
        if event.kind == "decision":
            if event.decision.action == "skip":
                progress.advance(state["sweep"])
                style = "yellow" if "WARNING" in event.decision.reason else "dim"
                progress.console.print(f"[{style}]skip {exp.id}: {event.decision.reason}[/]")
            else:
                progress.console.print(f"{event.decision.action} {exp.id}: {event.decision.reason}")
                if state["exp"] is not None:
                    progress.remove_task(state["exp"])
                state["exp"] = progress.add_task(f"  {exp.id}", total=exp.steps, info="")
                state["t"] = time.perf_counter()
        elif event.kind == "log":
            p = event.point
            rate = p.tokens / max(1e-9, time.perf_counter() - state["t"])
            progress.update(state["exp"], completed=p.step, info=f"loss {p.train_loss:.4f}  {rate:,.0f} units/s")
        elif event.kind == "result":
            r = event.result
            progress.advance(state["sweep"])
            color = "green" if r.status == "ok" else "red"
            loss = f"{r.loss:.4f}" if r.loss is not None else "–"
            progress.console.print(f"[{color}]{r.status}[/] {exp.id}: loss {loss} "
                                   f"({format_seconds(r.train_seconds)}) {r.reason}")
    return progress, handle


class JobsProgress:
    """``run`` with a scheduler: one bar of the experiments with a result."""

    def __init__(self, console: Console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        self.task = None

    def __call__(self, finished: int, total: int) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("experiments", total=total)
        self.bar.update(self.task, completed=finished, total=total)

    def stop(self) -> None:
        self.bar.stop()
