"""The ``flops-fit`` console script and ``python -m flops_fit``.

Ctrl-C at any moment ends like any other interrupt: one ``interrupted`` line on stderr and exit
130, no traceback.  A SIGINT that lands while a module is being imported is held back until the
import is over: raised inside an import, a KeyboardInterrupt can cross a C++ extension's
initialisation (torch's, through pybind11) and abort the interpreter (SIGABRT, or death by SIGINT
with no message).  The held-back signal is delivered again every 50 ms until it lands outside
an import, where it is the ordinary KeyboardInterrupt every command handles.  One still held back
when the command has finished is dropped (the command's own exit code stands): the interpreter's
shutdown is not interrupted either.  A SIGINT before this module's handler is installed (while
the package itself loads) is noted by ``flops_fit/__init__`` when it runs as the command line, and
ends the command the same way; only the interpreter's own start-up (its ``site`` imports, the
first ~50 ms) comes before any of this program runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_IMPORTING = ("<frozen importlib._bootstrap", "<frozen importlib._bootstrap_external")
_pending: list[threading.Timer] = []


def _in_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith(_IMPORTING):
            return True
        frame = frame.f_back
    return False


def _redeliver() -> None:
    _pending.clear()
    os.kill(os.getpid(), signal.SIGINT)


def interrupt(signum, frame) -> None:
    """SIGINT handler: KeyboardInterrupt, unless an import is running (then the signal comes again)."""
    if _in_import(frame):
        if not _pending:
            timer = threading.Timer(0.05, _redeliver)
            timer.daemon = True
            _pending.append(timer)
            timer.start()
        return
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGINT, interrupt)
    try:
        if getattr(sys.modules["flops_fit"], "_early_interrupts", None):  # noted by flops_fit/__init__
            raise KeyboardInterrupt
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: nothing was started\n")
        _exit_interrupted()
    try:
        cli_main()
    except SystemExit as done:
        if done.code != 130:
            raise
        _exit_interrupted()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for timer in _pending:
            timer.cancel()


def _exit_interrupted() -> None:
    """Exit 130 now, its line already printed: past this point the interpreter's own shutdown could
    still turn the exit into death by SIGINT (−2; seen once in ~10 suite runs with the signal landing
    while the command line was being set up), so the streams are flushed and the process leaves
    without it.  Everything the command holds (leases, checkpoints) was released on the way here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)
