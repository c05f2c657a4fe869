"""The ``flops-fit`` console script and ``python -m flops_fit``.

Ctrl-C while the command line is still importing (typer, rich, the spec's pydantic models: the
first half-second) ends like any other interrupt: one ``interrupted`` line on stderr and exit
130, no traceback.  Until the command line's own handler is in place, SIGINT raises SystemExit.
"""

from __future__ import annotations

import signal
import sys


def _early_interrupt(signum, frame) -> None:
    sys.stderr.write("interrupted: nothing was started\n")
    sys.stderr.flush()
    raise SystemExit(130)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _early_interrupt)
    from .cli import main as cli_main

    signal.signal(signal.SIGINT, previous)  # from here KeyboardInterrupt, which every command handles
    cli_main()
