"""Out of device memory beside other workers: give way, do not fail.

Several workers packed on one GPU (``[train] workers_per_gpu``) share its memory; how much each
needs depends on the sizes they happen to train at once (the gutenberg sweep on an H100, six
workers: 12–19 GB each at times, and 21 of 45 experiments ended as "failed" with CUDA out of
memory although every one fits alone).  An experiment that runs out of memory while other
processes train beside it is not at fault: the packing is.  So a packed worker that hits it
*gives way*: it writes no result (the experiment stays pending, its checkpoints kept), releases
its lease, says so in one line and exits with :data:`GAVE_WAY`; ``run`` starts the next round
with as many fewer workers as gave way, down to one, until a round ends with none giving way.
Alone on the device, out of memory is the experiment's own failure and is recorded as one.
"""

from __future__ import annotations

import os

from ..store.store import Store

__all__ = ["GAVE_WAY", "PACKED_ENV", "GaveWay", "out_of_memory", "others_training", "gives_way"]

GAVE_WAY = 75  # a worker's exit code when it gave way (EX_TEMPFAIL: try again later)
PACKED_ENV = "FLOPS_FIT_PACKED"  # set by ``run`` in the workers it packs on a device


class GaveWay(Exception):
    """An experiment left pending for the workers beside this one (out of device memory)."""


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (torch's, or a CUDA error saying so)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return "out of memory" in text and ("CUDA" in text or type(exc).__name__ == "AcceleratorError")


def others_training(store: Store) -> int:
    """How many experiments of ``store`` other live processes hold now."""
    try:
        ids = [folder.name for folder in (store.root / "experiments").iterdir()]
    except FileNotFoundError:
        return 0
    holders = (store.holder(exp_id) for exp_id in ids)
    return sum(1 for info in holders if info is not None and info.pid != os.getpid())


def gives_way(exc: BaseException, store: Store, exp_id: str) -> GaveWay | None:
    """The :class:`GaveWay` to raise instead of recording ``exc`` as a failure, or None."""
    if not os.environ.get(PACKED_ENV) or not out_of_memory(exc):
        return None
    beside = others_training(store)
    if not beside:
        return None
    return GaveWay(f"gave way: out of device memory beside {beside} experiment(s) in training; {exp_id} "
                   "stays pending for the next round, with fewer workers")
