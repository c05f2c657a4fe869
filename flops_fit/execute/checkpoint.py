"""Checkpoints of one experiment: model, optimizer, scheduler, RNG, data position.

Saved as plain tensors and containers so that ``torch.load(weights_only=True)`` reads them
(no pickle of arbitrary objects), plus ``trainer.json`` (step, loss curve so far), then the
store writes the ``COMPLETE`` marker last.  The data position is the step itself: batches
are a pure function of (seed, step).
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..store.store import Store, atomic_write_json

__all__ = ["save_checkpoint", "load_checkpoint", "CorruptCheckpoint"]


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(tuple(state["python"][0:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(store: Store, exp_id: str, step: int, keep: int, rank: int, model: torch.nn.Module,
                    optimizer: Any, scheduler: Any, scaler: Any, trainer: dict, is_main: bool,
                    pinned: bool = False) -> Path:
    """Write a checkpoint at ``step`` (``pinned``: a trunk's branch point, never pruned); only the main
    process writes weights and the marker."""
    folder = (store.pinned_dir(exp_id) if pinned else store.checkpoints_dir(exp_id)) / f"step-{step:08d}"
    if is_main:
        folder = store.new_checkpoint_dir(exp_id, step, pinned)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None},
                   folder / "state.pt")
        atomic_write_json(folder / "trainer.json", trainer)
    return folder


def save_rng(folder: Path, rank: int) -> None:
    torch.save(_rng_state(), folder / f"rng-{rank}.pt")


class CorruptCheckpoint(Exception):
    """A checkpoint marked complete whose files cannot be read (truncated, deleted under it)."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(f"checkpoint {folder} is unreadable ({reason})")
        self.folder, self.reason = folder, reason


def load_checkpoint(folder: Path, rank: int, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                    scaler: Any) -> dict:
    """Restore every state from ``folder``; returns trainer.json.  Files that cannot be read raise
    :class:`CorruptCheckpoint` (a model that does not fit its state is the user's error, raised as is)."""
    rng_file = folder / f"rng-{rank}.pt"
    try:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        rng = torch.load(rng_file, weights_only=True) if rng_file.exists() else None
        trainer = json.loads((folder / "trainer.json").read_text())
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CorruptCheckpoint(folder, f"{type(exc).__name__}: {first}") from exc
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if rng is not None:
        _set_rng_state(rng)
    return trainer
