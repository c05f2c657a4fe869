"""Batching the user's data object: deterministic, shardable, resumable at any step.

* Map-style datasets: a held-out split (a fixed permutation, independent of the training
  seed, so every experiment is evaluated on the same samples), then a per-epoch seeded
  permutation of the rest.  The batch of step ``s`` is a pure function of ``(seed, s)``,
  so resuming needs only the step.  Each process takes its slice of the global batch.
  Whole batches are fetched at once: tensor datasets are indexed directly (moved to the
  device once when they fit), others go through a DataLoader whose fetcher uses the
  dataset's ``__getitems__`` when it has one.
* IterableDatasets are streamed (restarted when exhausted: an epoch) and DataLoaders are
  used as given; resuming skips the batches already seen.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from ..spec.components import split_batch

__all__ = ["BatchSource", "make_sources", "to_device"]

EVAL_SPLIT_SEED = 0x5EED
DEVICE_DATA_LIMIT = 4 * 2**30  # bytes of tensor data moved to the GPU once


def to_device(value: Any, device: torch.device, non_blocking: bool = True) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, dict):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, non_blocking) for v in value)
    return value


@dataclass(frozen=True)
class Layout:
    """How the global batch of a step is split: processes, then micro-batches."""

    batch_size: int
    rank: int
    world: int
    micro: int

    @property
    def local(self) -> int:
        return self.batch_size // self.world

    @property
    def accum(self) -> int:
        return self.local // self.micro


class _StepSampler(Sampler):
    """Yields, from ``start`` on, this process's indices of each step's global batch."""

    def __init__(self, order: "_Order", layout: Layout, start: int, steps: int):
        self.order, self.layout, self.start, self.steps = order, layout, start, steps

    def __iter__(self):
        for step in range(self.start, self.steps):
            local = self.order.local_indices(step, self.layout)
            for k in range(self.layout.accum):
                yield local[k * self.layout.micro:(k + 1) * self.layout.micro].tolist()

    def __len__(self) -> int:
        return (self.steps - self.start) * self.layout.accum


class _Order:
    """Seeded per-epoch permutations of ``n`` training positions, kept on ``device``.

    A permutation is drawn on the CPU (same numbers on every device) and moved once per
    epoch; a step's indices are then slices of it on the device: no host copy per step.
    """

    def __init__(self, n: int, seed: int, device: torch.device | str = "cpu"):
        self.n, self.seed, self.device = n, seed, torch.device(device)
        self._epoch, self._perm = -1, None

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).to(self.device)
        return self._perm

    def local_indices(self, step: int, layout: Layout) -> torch.Tensor:
        first = step * layout.batch_size + layout.rank * layout.local
        parts, position, left = [], first, layout.local
        while left:
            epoch, offset = divmod(position, self.n)
            take = min(left, self.n - offset)
            parts.append(self.perm(epoch)[offset:offset + take])
            position, left = position + take, left - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class BatchSource:
    """Training micro-batches from a step on, and the fixed held-out batches, on a device."""

    def __init__(self, batches, eval_batches: list, epochs: float, num_train: int | None):
        self._batches = batches
        self.eval_batches = eval_batches
        self.epochs = epochs
        self.num_train = num_train

    def batches(self, start: int) -> Iterator[tuple[Any, Any]]:
        return self._batches(start)


def _tensor_size(ds: TensorDataset) -> int:
    return sum(t.numel() * t.element_size() for t in ds.tensors)


def _indexed(dataset: Dataset, train_idx: torch.Tensor, layout: Layout, seed: int, steps: int,
             device: torch.device, num_workers: int):
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        on_device = device.type == "cpu" or _tensor_size(dataset) <= DEVICE_DATA_LIMIT
        tensors = [t.to(device) for t in dataset.tensors] if on_device else list(dataset.tensors)
        train_on = train_idx.to(tensors[0].device)
        order = _Order(len(train_idx), seed, train_on.device)

        def tensor_batches(start: int):
            for step in range(start, steps):
                local = train_on[order.local_indices(step, layout)]
                for k in range(layout.accum):
                    idx = local[k * layout.micro:(k + 1) * layout.micro]
                    yield to_device(tensors[0][idx], device), to_device(tensors[1][idx], device)
        return tensor_batches

    order = _Order(len(train_idx), seed)
    subset = Subset(dataset, train_idx.tolist())

    def loader_batches(start: int):
        loader = DataLoader(subset, batch_sampler=_StepSampler(order, layout, start, steps),
                            num_workers=num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        for batch in loader:
            yield to_device(split_batch(batch), device)
    return loader_batches


def _fetch(dataset: Dataset, indices: list[int]) -> Any:
    if hasattr(dataset, "__getitems__"):
        items = dataset.__getitems__(indices)
        return items if not isinstance(items, list) else default_collate(items)
    return default_collate([dataset[i] for i in indices])


def _map_style(dataset: Dataset, eval_dataset: Any, job, layout: Layout, device: torch.device,
               num_workers: int) -> BatchSource:
    n = len(dataset)
    if eval_dataset is None:
        split = torch.randperm(n, generator=torch.Generator().manual_seed(EVAL_SPLIT_SEED))
        n_eval = max(1, int(round(job.eval_fraction * n)))
        eval_idx, train_idx = split[:n_eval], split[n_eval:].sort().values
        eval_src, eval_rows = dataset, eval_idx.tolist()
    else:
        train_idx = torch.arange(n)
        eval_src, eval_rows = eval_dataset, None
    samples = job.steps * job.loop.batch_size
    epochs = samples / len(train_idx)
    if epochs > 1:
        warnings.warn(f"{job.experiment_id}: the dataset ({len(train_idx)} training samples) is smaller than the "
                      f"{samples} samples the budget needs; cycling it for {epochs:.2f} epochs", stacklevel=2)
    batches = _indexed(dataset, train_idx, layout, job.loop.seed, job.steps, device, num_workers)
    return BatchSource(batches, _eval_batches(eval_src, eval_rows, job, layout, device), epochs,
                       len(train_idx))


def _eval_batches(source: Any, rows: list[int] | None, job, layout: Layout, device: torch.device) -> list:
    """A fixed list of held-out batches (this process's share), moved to the device once."""
    if isinstance(source, (IterableDataset, DataLoader)):
        return _take(source, job.eval_batches, layout, device)
    rows = rows if rows is not None else list(range(len(source)))
    out = []
    for b in range(job.eval_batches):
        chunk = rows[b * layout.batch_size:(b + 1) * layout.batch_size]
        mine = chunk[layout.rank::layout.world]
        if not mine:
            break
        out.append(to_device(split_batch(_fetch(source, mine)), device))
    return out


def _take(source: Any, count: int, layout: Layout, device: torch.device) -> list:
    loader = source if isinstance(source, DataLoader) else DataLoader(source, batch_size=layout.local)
    out = []
    for batch in loader:
        out.append(to_device(split_batch(batch), device))
        if len(out) == count:
            break
    return out


def _streamed(data: Any, eval_dataset: Any, job, layout: Layout, device: torch.device) -> BatchSource:
    """IterableDataset or user DataLoader: micro-batches in stream order, cycling at the end."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=layout.micro)
    held_out = 0 if eval_dataset is not None else job.eval_batches
    eval_batches = _eval_batches(eval_dataset, None, job, layout, device) if eval_dataset is not None \
        else _take(loader, held_out, layout, device)

    def batches(start: int):
        skip = start * layout.accum * layout.world + held_out
        produced, wanted = 0, (job.steps - start) * layout.accum
        while produced < wanted:
            seen = 0
            for i, batch in enumerate(loader):
                if i < held_out or (skip > 0 and i < skip):
                    continue
                if (i - held_out) % layout.world != layout.rank:
                    continue
                seen += 1
                yield to_device(split_batch(batch), device)
                produced += 1
                if produced == wanted:
                    return
            if seen == 0:
                raise RuntimeError("the data stream yielded no training batches")
            skip = max(0, skip - i - 1)
    return BatchSource(batches, eval_batches, math.nan, None)


def make_sources(data: Any, eval_dataset: Any, job, layout: Layout, device: torch.device,
                 num_workers: int = 0) -> BatchSource:
    """The BatchSource for any supported data object."""
    if isinstance(data, (IterableDataset, DataLoader)):
        return _streamed(data, eval_dataset, job, layout, device)
    return _map_style(data, eval_dataset, job, layout, device, num_workers)
