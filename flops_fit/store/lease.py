"""Leases: which process trains an experiment, safe on shared filesystems.

``flock`` is silently a no-op on NFS mounted ``nolock`` and disabled on Lustre mounted
``noflock``, so two nodes could train the same experiment.  A lease needs only one
operation every POSIX filesystem makes atomic, NFS and Lustre included: creating a hard
link (fails when the name exists).

* A lease is the file ``experiments/<id>/lease.<generation>`` holding :class:`LeaseInfo`
  (owner host, pid, token, Slurm job, since, heartbeat, interval).  It is written to a
  unique temporary file and hard-linked to its name: of several processes claiming the same
  generation exactly one succeeds.
* The current lease is the highest generation present; a claimer that finds a higher
  generation than its own after creating it steps back.  Its owner refreshes ``heartbeat``
  every ``interval_s`` from a thread, rewriting the file in place (never creating it: a lease
  deleted under its owner stays deleted, and the owner learns of it at the next beat).  It is
  **live** while the heartbeat is younger than three intervals (``EXPIRY``); a lease of this
  host whose process is gone is dead at once (a killed local ``run`` is resumed immediately,
  as with a file lock).
* Taking over a dead lease is claiming the next generation; the new owner resumes from the
  last complete checkpoint.  An owner that finds a higher generation (or its file gone) has
  lost the lease: it stops without writing anything (:class:`LeaseLost`).
* Releasing deletes the owner's file, after the result was written.

Clocks: the heartbeat is the owner's wall-clock time, compared with the reader's, so nodes
need clocks synchronised to well under ``3 × interval_s`` (NTP; Slurm's munge requires it).
``FLOPS_FIT_HOST`` overrides the host name recorded (containers on several nodes may share one).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from pydantic import ValidationError

from ..core.frozen import Frozen

__all__ = ["LeaseInfo", "Lease", "LeaseLost", "acquire", "holder", "host_name", "pid_alive", "EXPIRY",
           "HEARTBEAT_S"]

EXPIRY = 3  # heartbeats a lease may miss before it may be taken over
HEARTBEAT_S = 30.0
PREFIX = "lease."


class LeaseLost(Exception):
    """Another process took this experiment's lease over: stop without writing anything."""


def host_name() -> str:
    return os.environ.get("FLOPS_FIT_HOST") or socket.gethostname()


def _job_id() -> Optional[str]:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class LeaseInfo(Frozen):
    """The content of a lease file."""

    host: str
    pid: int
    token: str
    since: float  # unix time the lease was taken
    heartbeat: float  # unix time of the owner's last refresh
    interval_s: float
    job: Optional[str] = None  # the scheduler's job id, when run as a job

    def describe(self) -> str:
        """``host:pid since 2026-11-22T17:30:00Z`` (the reason ``decide`` gives)."""
        since = datetime.fromtimestamp(self.since, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.host}:{self.pid} since {since}" + (f" (job {self.job})" if self.job else "")

    def live(self, now: float | None = None) -> bool:
        """Younger than ``EXPIRY`` heartbeats and, on this host, its process still there."""
        if self.host == host_name() and not pid_alive(self.pid):
            return False
        return (now if now is not None else time.time()) - self.heartbeat <= EXPIRY * self.interval_s


def _generations(folder: Path) -> list[int]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(n[len(PREFIX):]) for n in names if n.startswith(PREFIX) and n[len(PREFIX):].isdigit())


def _read(path: Path) -> LeaseInfo | None:
    try:
        return LeaseInfo.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


_DEAD = LeaseInfo(host="?", pid=0, token="", since=0, heartbeat=0, interval_s=0)  # an unreadable, old file


def _current(folder: Path) -> tuple[int, LeaseInfo | None] | None:
    """The highest generation and its content (None: being written, or unreadable), or None."""
    for gen in reversed(_generations(folder)):
        path = folder / f"{PREFIX}{gen}"
        info = _read(path)
        if info is not None:
            return gen, info
        try:  # a file being written counts as live for a while, then as dead
            if time.time() - path.stat().st_mtime <= EXPIRY * HEARTBEAT_S:
                return gen, None
        except FileNotFoundError:
            continue
        return gen, _DEAD
    return None


def holder(folder: Path) -> LeaseInfo | None:
    """The live lease of the experiment folder ``folder`` (None: nobody holds it)."""
    found = _current(folder)
    if found is None:
        return None
    gen, info = found
    if info is None:  # being written right now
        return LeaseInfo(host="?", pid=0, token="", since=time.time(), heartbeat=time.time(),
                         interval_s=HEARTBEAT_S)
    return info if info.live() else None


def _write_new(path: Path, info: LeaseInfo) -> bool:
    """Create ``path`` holding ``info`` unless it exists (hard link of a complete temporary file)."""
    tmp = path.with_name(f".{path.name}.{info.token}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(info.model_dump_json())
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some FUSE mounts): exclusive create, then the content
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(info.model_dump_json())
        return True
    finally:
        tmp.unlink(missing_ok=True)


def acquire(folder: Path, interval_s: float = HEARTBEAT_S) -> "Lease | None":
    """Take the lease of ``folder`` (an experiment's folder) when nobody holds a live one; None otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    found = _current(folder)
    if found is not None:
        gen, info = found
        if info is None or info.live():
            return None
    now = time.time()
    info = LeaseInfo(host=host_name(), pid=os.getpid(), token=secrets.token_hex(8), since=now, heartbeat=now,
                     interval_s=interval_s, job=_job_id())
    gen = 0 if found is None else found[0] + 1
    path = folder / f"{PREFIX}{gen}"
    if not _write_new(path, info):
        return None
    if max(_generations(folder), default=gen) != gen:  # read a listing from before a newer taker: it won
        mine = _read(path)
        if mine is not None and mine.token == info.token:
            path.unlink(missing_ok=True)
        return None
    for old in _generations(folder):  # the dead owners' files
        if old < gen:
            (folder / f"{PREFIX}{old}").unlink(missing_ok=True)
    return Lease(folder, gen, info)


class Lease:
    """A held lease: ``refresh()`` it (or ``keep()`` it fresh from a thread), ``release()`` it."""

    def __init__(self, folder: Path, generation: int, info: LeaseInfo):
        self.folder, self.generation, self.info = folder, generation, info
        self.path = folder / f"{PREFIX}{generation}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writing = threading.Lock()  # check() and the heartbeat thread: one refresh at a time
        self.lost: str | None = None  # why it was lost (set by the heartbeat thread, or by check())

    def held(self) -> bool:
        mine = _read(self.path)
        return mine is not None and mine.token == self.info.token and max(_generations(self.folder)) == self.generation

    def refresh(self) -> bool:
        """Write a new heartbeat; False (nothing written) when the lease was taken over or deleted.
        The file is rewritten in place, never created: a lease deleted between the check and the
        write stays deleted (a rename would bring it back and the owner would never learn of it).
        Another process that catches the file half-written sees it as being written: live."""
        with self._writing:
            if not self.held():
                return False
            info = self.info.model_copy(update={"heartbeat": time.time()})
            try:
                fd = os.open(self.path, os.O_WRONLY)
            except FileNotFoundError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.truncate(0)
                f.write(info.model_dump_json())
            self.info = info
            return True

    def _lost_reason(self) -> str:
        now = _current(self.folder)
        if now is None:
            return f"lease of {self.folder.name} deleted"
        other = now[1].describe() if now[1] else "another process"
        return f"lease of {self.folder.name} taken over by {other}"

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this owner still holds the lease (heartbeat renewed).
        Called right before anything is written for the experiment (a checkpoint, the result): an
        owner paused past expiry (SIGSTOP, a swapped-out node) and resumed must not write over its
        taker's files even before its heartbeat thread has noticed."""
        if self.lost is None:
            try:
                if not self.refresh():
                    self.lost = self._lost_reason()
            except OSError as exc:
                self.lost = f"lease of {self.folder.name} cannot be renewed ({exc.strerror or exc})"
        if self.lost is not None:
            raise LeaseLost(self.lost)

    def keep(self, on_lost: Callable[[str], None] | None = None) -> None:
        """Refresh every ``interval_s`` from a daemon thread; when taken over (or its file deleted)
        set ``lost`` and call ``on_lost(reason)`` once."""
        def beat() -> None:
            while not self._stop.wait(self.info.interval_s):
                try:
                    ok = self.refresh()
                except OSError:
                    continue  # a filesystem hiccup: try again next beat (expiry allows for missed ones)
                if not ok:
                    self.lost = self._lost_reason()
                    if on_lost is not None:
                        on_lost(self.lost)
                    return
        self._thread = threading.Thread(target=beat, name=f"lease-{self.folder.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease file (when it is still this owner's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        mine = _read(self.path)
        if mine is not None and mine.token == self.info.token:
            self.path.unlink(missing_ok=True)
