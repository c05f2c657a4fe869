"""What every command of the command line shares: the two consoles, the options, the JSON
channel, and :func:`_guard`, which turns user errors into one line each (exit 1) and Ctrl-C into
one ``interrupted`` line (exit 130)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
from enum import Enum
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

from .core.errors import FlopsFitError
from .core.eventlog import VERBOSE_ENV

err = Console(stderr=True, width=None if sys.stderr.isatty() else 220)  # progress, messages, --json's company
# the human report: `flops-fit fit x.csv > report.txt` keeps it whole
out = Console(width=None if sys.stdout.isatty() else 220)

def _choices(name: str, field: str) -> type[Enum]:
    """A CLI Enum of the spec's own Literal for ``[analysis] field`` (one list of names, not two)."""
    from typing import get_args

    from .spec.spec import AnalysisSpec

    kind = AnalysisSpec.model_fields[field].annotation
    values = get_args(get_args(kind)[0] if field == "approaches" else kind)
    return Enum(name, {v: v for v in values}, type=str)


Approach = _choices("Approach", "approaches")
Profile = _choices("Profile", "profile")


def _budgets(values: list[float] | None, option: str) -> list[float] | None:
    """Usage error (exit 2) for a budget that is not a positive, finite number of FLOPs."""
    for v in values or []:
        if not (math.isfinite(v) and v > 0):
            raise typer.BadParameter(f"{v} is not a positive, finite number of FLOPs", param_hint=option)
    return values


SpecArg = typer.Argument(..., help="Path of the spec TOML file.", exists=False)
JsonOpt = typer.Option(False, "--json", help="Print only the JSON document on stdout.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Show tracebacks of errors and log every decision "
                                                         "(each skipped experiment, each start).")
RetryOpt = typer.Option(False, "--retry-failed",
                        help="Train (or submit) again experiments that diverged or failed.")


_JSON_OUT: list = [None]  # where --json documents go: the real stdout, while prints are sent to stderr


def _emit_json(text: str) -> None:
    print(text, file=_JSON_OUT[0] or sys.stdout, flush=True)


def _guard(fn: Callable[[], None], verbose: bool, as_json: bool = False, trains: bool = True) -> None:
    """Run ``fn``; user errors become one line per problem on stderr and exit code 1.  With
    ``as_json`` anything printed while it runs (a user module printing at import) goes to stderr:
    stdout carries the JSON document only.  ``trains``: the verb can train, so an interrupt
    says that finished experiments are kept."""
    _JSON_OUT[0] = sys.stdout
    if verbose:  # every decision in the log, also in worker processes (they inherit the environment)
        os.environ[VERBOSE_ENV] = "1"
    try:
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            fn()
    except FlopsFitError as exc:
        for line in exc.lines():
            err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        if verbose:
            err.print(traceback.format_exc())
        raise typer.Exit(1)
    except KeyboardInterrupt:
        kept = ": finished experiments are kept; rerun to resume" if trains else ""
        err.print(f"[yellow]interrupted{kept}[/]")
        raise typer.Exit(130)
    except OSError as exc:  # the filesystem said no: read-only, full, a folder where a file should be
        where = f"{exc.filename}: " if exc.filename else ""
        said = escape(where + str(exc.strerror or exc))
        err.print(f"[bold red]error:[/] {said}; finished experiments are kept", highlight=False,
                  soft_wrap=True)
        if verbose:
            err.print(traceback.format_exc())
        raise typer.Exit(1)


def _load(path: str):
    from .api import Spec

    return Spec.load(path)
