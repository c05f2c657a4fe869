"""The content-addressed results store of one run directory.

Layout (docs/DESIGN.md)::

    <runs_dir>/<name>/plan.json
    <runs_dir>/<name>/experiments/<id>/result.json      # written last: the experiment is done
    <runs_dir>/<name>/experiments/<id>/metrics.jsonl    # every logged point, always
    <runs_dir>/<name>/experiments/<id>/checkpoints/step-00000123/{state.pt,trainer.json,COMPLETE}
    <runs_dir>/<name>/experiments/<id>/lease.<n>        # held while one process trains it (lease.py)
    <runs_dir>/<name>/experiments/trunk-<size>-<hash>/pinned/step-00000123/...  # reuse = "branch": branch points

``result.json`` and the ``COMPLETE`` marker are written through a temporary file and
``os.replace``, so a reader never sees half a file.  A checkpoint without its marker does
not exist.  ``decide`` is the one run/skip/resume decision, shared by ``run`` and
``estimate``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from filelock import FileLock
from pydantic import ValidationError

from ..core.files import atomic_write_json, atomic_write_text
from .lease import HEARTBEAT_S, Lease, LeaseInfo, acquire, holder
from ..plan.plan import Experiment
from .records import CurvePoint, Provenance, RunRecord

__all__ = ["Store", "Decision", "decide", "checkpoint_step", "atomic_write_text", "atomic_write_json",
           "RunRecord", "CurvePoint",
           "Provenance"]

RESULT = "result.json"
MARKER = "COMPLETE"


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint folder ``step-00000123``."""
    return int(path.name.split("-")[1])


@dataclass(frozen=True)
class Decision:
    """What ``run`` will do with one experiment, and why."""

    action: Literal["run", "resume", "skip", "wait"]  # wait: a branch whose trunk has not reached its point
    reason: str
    checkpoint: Optional[str] = None
    checkpoint_step: Optional[int] = None
    stop: Optional[int] = None  # a trunk: the step it trains to (its last branch point still needed)


@dataclass(frozen=True)
class Store:
    """The store rooted at a run directory; every method reads or writes disk, no state."""

    root: Path

    def exp_dir(self, exp_id: str) -> Path:
        return self.root / "experiments" / exp_id

    def result_path(self, exp_id: str) -> Path:
        return self.exp_dir(exp_id) / RESULT

    def read_result(self, exp_id: str, quarantine: bool = True) -> RunRecord | None:
        """The finished record, or None.  A corrupt file counts as not finished, with a warning
        naming it; with ``quarantine`` (not in dry runs) it is moved aside to ``result.json.corrupt``."""
        path = self.result_path(exp_id)
        if not path.exists():
            return None
        try:
            return RunRecord.model_validate_json(path.read_bytes())
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            aside = path.with_name(RESULT + ".corrupt")
            if quarantine:
                try:
                    os.replace(path, aside)
                except OSError:
                    pass
            first = str(exc).splitlines()[0] if str(exc) else ""
            warnings.warn(f"{path}: unreadable ({type(exc).__name__}: {first}); "
                          + (f"moved to {aside.name}, " if quarantine else "") + "the experiment will be trained again",
                          stacklevel=2)
            return None

    def write_result(self, record: RunRecord) -> None:
        """Write the record last and atomically; a finished ``ok`` record is never replaced by a failure."""
        current = self.read_result(record.id)
        if current is not None and current.status == "ok" and record.status != "ok":
            warnings.warn(f"{self.result_path(record.id)}: kept the finished ok result; not replaced by "
                          f"{record.status} ({record.reason})", stacklevel=2)
            return
        atomic_write_text(self.result_path(record.id), record.model_dump_json(indent=2) + "\n")

    def collect(self, experiments: list[Experiment]) -> list[RunRecord]:
        """The finished records of ``experiments`` (a plan's), in plan order; unfinished ones are left out."""
        found = (self.read_result(e.id) for e in experiments)
        return [r for r in found if r is not None]

    # -- checkpoints ------------------------------------------------------------------
    def checkpoints_dir(self, exp_id: str) -> Path:
        return self.exp_dir(exp_id) / "checkpoints"

    def pinned_dir(self, exp_id: str) -> Path:
        """A trunk's branch-point checkpoints: never pruned by ``keep_checkpoints``."""
        return self.exp_dir(exp_id) / "pinned"

    def pinned_checkpoint(self, exp_id: str, step: int) -> Path | None:
        path = self.pinned_dir(exp_id) / f"step-{step:08d}"
        return path if (path / MARKER).exists() else None

    def release_pins(self, trunk_id: str, branches: list[Experiment]) -> list[int]:
        """Delete the trunk's pinned checkpoints whose branches all have their result, except the
        latest (the trunk continues from it when a larger budget is added); returns the steps freed."""
        done = {}
        for b in branches:
            done.setdefault(b.job.branch.step, []).append(self.result_path(b.id).exists())
        folder = self.pinned_dir(trunk_id)
        pinned = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        freed = []
        for path in pinned[:-1]:
            step = checkpoint_step(path)
            if step in done and all(done[step]):
                shutil.rmtree(path, ignore_errors=True)
                freed.append(step)
        return freed

    def quarantine_checkpoint(self, checkpoint: Path) -> Path:
        """Move an unreadable checkpoint aside, to ``<experiment>/corrupt/``, where no decision finds it."""
        aside = checkpoint.parent.parent / "corrupt" / f"{checkpoint.parent.name}-{checkpoint.name}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        if aside.exists():
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(checkpoint, aside)
        return aside

    def new_checkpoint_dir(self, exp_id: str, step: int, pinned: bool = False) -> Path:
        path = (self.pinned_dir(exp_id) if pinned else self.checkpoints_dir(exp_id)) / f"step-{step:08d}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def mark_complete(self, checkpoint: Path, keep: int) -> None:
        """Write the completion marker last, then prune older complete checkpoints (pinned ones stay)."""
        atomic_write_text(checkpoint / MARKER, "ok\n")
        if checkpoint.parent.name == "pinned":
            return
        complete = self.complete_checkpoints(checkpoint.parent.parent.name)
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for partial in checkpoint.parent.iterdir():
            if partial.is_dir() and not (partial / MARKER).exists() and partial != checkpoint:
                shutil.rmtree(partial, ignore_errors=True)

    def complete_checkpoints(self, exp_id: str) -> list[Path]:
        folder = self.checkpoints_dir(exp_id)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and (p / MARKER).exists())

    def latest_checkpoint(self, exp_id: str) -> Path | None:
        complete = self.complete_checkpoints(exp_id)
        return complete[-1] if complete else None

    def clear_checkpoints(self, exp_id: str) -> None:
        shutil.rmtree(self.checkpoints_dir(exp_id), ignore_errors=True)

    # -- leases (see lease.py) ----------------------------------------------------------
    def acquire(self, exp_id: str, interval_s: float = HEARTBEAT_S) -> Lease | None:
        """Take the experiment's lease (None: a live one is held elsewhere)."""
        return acquire(self.exp_dir(exp_id), interval_s)

    def holder(self, exp_id: str) -> LeaseInfo | None:
        """The live lease of the experiment, or None."""
        return holder(self.exp_dir(exp_id))

    def report_lock(self) -> FileLock:
        """Held while a report is collected and written, so the last writer's report covers every result."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "report.lock"))

    def write_plan_json(self, text: str, name: str = "plan.json") -> None:
        """The sweep's ``plan.json``, or another plan file the workers read (``plans/<tag>.json``:
        the experiments of a forward check or a transfer check)."""
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / name, text)

    def extra_plans(self) -> list[Path]:
        """The plan files of experiments trained beside the sweep (``confirm``, ``transfer``)."""
        return sorted((self.root / "plans").glob("*.json"))


def _changed_sources(result: RunRecord, experiment: Experiment) -> list[str]:
    """Modules of the user's code whose source differs from what trained this result."""
    from ..core.imports import source_digest

    then = result.provenance.sources if result.provenance else {}
    if not then:
        return []
    now = source_digest(experiment.job.targets, experiment.job.search_path)
    return sorted(m for m, h in then.items() if m in now and now[m] != h)


def decide(store: Store, experiment: Experiment, retry_failed: bool = False, holding_lock: bool = False,
           dry_run: bool = False, branches: list[Experiment] | None = None) -> Decision:
    """The run/skip/resume decision for one experiment, with its reason.

    ``holding_lock``: the caller holds the experiment's lease, so it is not "another process".
    ``dry_run`` (estimate): a corrupt result is reported, not moved aside.  A trunk (``branches``:
    the experiments branched off it) trains to the last branch point still needed; a branch
    without a checkpoint of its own starts from its trunk's pinned checkpoint, or waits for it.
    """
    if experiment.job.role == "trunk":
        return _decide_trunk(store, experiment, branches or [], retry_failed, holding_lock, dry_run)
    result = store.read_result(experiment.id, quarantine=not dry_run)
    if result is not None:
        status = result.status
        if status == "ok":
            changed = _changed_sources(result, experiment)
            note = (f"; WARNING: {', '.join(changed)} changed since it was trained: delete "
                    f"{store.exp_dir(experiment.id)} to train it again") if changed else ""
            return Decision("skip", f"done: loss {result.loss:.4g} ({RESULT} present){note}")
        if not retry_failed:
            return Decision("skip", f"{status}: {result.reason} (use --retry-failed to train again)".strip())
        return Decision("run", f"retry after {status} (--retry-failed)")
    owner = None if holding_lock else store.holder(experiment.id)
    if owner is not None:
        return Decision("skip", f"running on {owner.describe()}")
    checkpoint = store.latest_checkpoint(experiment.id)
    if checkpoint is not None:
        step = checkpoint_step(checkpoint)
        return Decision("resume", f"checkpoint at step {step}/{experiment.steps}", str(checkpoint), step)
    point = experiment.job.branch
    if point is not None:
        pinned = store.pinned_checkpoint(point.trunk_id, point.step)
        if pinned is not None:
            return Decision("resume", f"branch off {point.trunk_id} at step {point.step}/{experiment.steps} "
                                      f"(pinned checkpoint)", str(pinned), point.step)
        trunk = store.read_result(point.trunk_id, quarantine=not dry_run)
        if trunk is not None and trunk.status != "ok" and trunk.steps < point.step:
            return Decision("skip", f"its trunk {point.trunk_id} {trunk.status} at step {trunk.steps}: "
                                    f"{trunk.reason}")
        return Decision("wait", f"waits for {point.trunk_id} to reach step {point.step}",
                        checkpoint_step=point.step)
    return Decision("run", "not trained yet")


def _decide_trunk(store: Store, trunk: Experiment, branches: list[Experiment], retry_failed: bool,
                  holding_lock: bool, dry_run: bool) -> Decision:
    """A trunk is needed up to the last branch step whose branch has neither a result nor a checkpoint
    to start from; it resumes from its latest checkpoint (pinned or not) at or before the first such step."""
    def pending(b: Experiment) -> bool:
        r = store.read_result(b.id, quarantine=not dry_run)
        return r is None or (retry_failed and r.status != "ok")

    needed = sorted({b.job.branch.step for b in branches if pending(b) and store.latest_checkpoint(b.id) is None
                     and store.pinned_checkpoint(trunk.id, b.job.branch.step) is None})
    if not needed:
        return Decision("skip", "every branch point is checkpointed or its branches are done")
    result = store.read_result(trunk.id, quarantine=not dry_run)
    if result is not None and result.status != "ok" and result.steps <= needed[0] and not retry_failed:
        return Decision("skip",
                        f"{result.status}: {result.reason} (use --retry-failed to train again)".strip())
    owner = None if holding_lock else store.holder(trunk.id)
    if owner is not None:
        return Decision("skip", f"running on {owner.describe()}")
    found = [(checkpoint_step(p), p) for p in
             [*store.complete_checkpoints(trunk.id),
              *(p for p in sorted(store.pinned_dir(trunk.id).glob("step-*")) if (p / MARKER).exists())]]
    usable = sorted((s, p) for s, p in found if s <= needed[0])
    target = f"to step {needed[-1]} for {len(needed)} branch point(s)"
    if usable:
        step, path = usable[-1]
        kind = "pinned checkpoint" if path.parent.name == "pinned" else "checkpoint"
        return Decision("resume", f"{kind} at step {step}, {target}", str(path), step, stop=needed[-1])
    return Decision("run", f"trunk {target}", stop=needed[-1])
