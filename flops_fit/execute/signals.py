"""Stopping a training run: SIGINT/SIGTERM noted between steps (the loop checkpoints, then raises
:class:`Interrupted`), a scheduler's preemption signal, and a signal that came too late to stop
the experiment it arrived in."""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["Interrupted", "stopping"]


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint (not a failure: nothing is recorded)."""


class _Stopping:
    """The signal that asked the loop to stop (None: none).  While training in one process, SIGINT
    and SIGTERM only set it, so the loop can checkpoint before it exits; with several processes
    the handlers stay as they are (a checkpoint is collective, and ranks see a signal at different steps)."""

    signum: int | None = None
    preempted: int | None = None  # a job's preemption or timeout signal: stays set until the process ends
    in_job: bool = False  # run by a scheduler's job (dispatch): data-parallel ranks agree on a signal

    def preempt(self, signum: int) -> None:
        """A scheduler's checkpoint signal (dispatch's handler): stop after this step, take nothing new."""
        self.signum = self.preempted = signum

    @contextlib.contextmanager
    def handlers(self, enabled: bool = True):
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        self.signum = self.preempted

        def note(signum, frame) -> None:
            self.signum = signum
        # a signal the process was told to ignore (a shell's background job ignores Ctrl-C) stays ignored
        previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(sig) is not signal.SIG_IGN}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.late, self.signum = self.signum, None

    late: int | None = None  # a signal that came during the last step: the experiment finished anyway

    def pending(self) -> int | None:
        """The signal that arrived too late to stop the last experiment (then cleared)."""
        late, self.late = self.late, None
        return late


stopping = _Stopping()
