"""Batching: deterministic order across epochs, shards that tile the global batch, every data kind."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset

from flops_fit.execute.data import Layout, _Order, make_sources
from flops_fit.plan.plan import Component, Job, Loop, Optim, Schedule
from tests.toy import DictData, regression


def _job(steps: int = 5, batch: int = 8) -> Job:
    return Job(experiment_id="t", budget_flops=1.0, model=Component(target="tests.toy:MLP"), size_param="width", size=4,
               data=Component(target="tests.toy:regression"), eval_fraction=0.1, eval_batches=2,
               loss=Component(target="tests.toy:mse"), tokens_per_sample=1, steps=steps, num_params=1,
               flops_per_sample=1.0, precision="fp32",
               optim=Optim(learning_rate=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8, grad_clip=None),
               schedule=Schedule(kind="constant", warmup_steps=1, min_lr_ratio=0.1, decay_fraction=0.2),
               loop=Loop(batch_size=batch, seed=3, divergence_factor=3.0, log_points=4, eval_points=0, num_workers=0,
                         checkpoint_seconds=600.0, keep_checkpoints=1))


def test_order_crosses_epochs_and_shards_tile_the_batch():
    order = _Order(10, seed=1)
    whole = Layout(batch_size=4, rank=0, world=1, micro=4)
    steps = [order.local_indices(s, whole) for s in range(5)]  # 20 positions = two epochs
    flat = torch.cat(steps)
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:].tolist()) == list(range(10))
    assert not torch.equal(flat[:10], flat[10:])  # each epoch is reshuffled
    shards = [order.local_indices(3, Layout(4, r, 2, 2)) for r in range(2)]
    assert torch.equal(torch.cat(shards), steps[3])


def test_resume_at_any_step_gives_the_same_batches():
    ds = regression(64)
    src = make_sources(ds, None, _job(), Layout(8, 0, 1, 4), torch.device("cpu"))
    full = list(src.batches(0))
    later = list(src.batches(3))
    assert len(full) == 10 and len(later) == 4  # 5 steps x 2 micro-batches
    for a, b in zip(full[6:], later):
        assert torch.equal(a[0], b[0])
    train_rows = {tuple(x.tolist()) for xs, _ in full for x in xs}
    eval_rows = {tuple(x.tolist()) for xs, _ in src.eval_batches for x in xs}
    assert train_rows.isdisjoint(eval_rows)  # the held-out split never trains


def test_dict_items_and_streams():
    src = make_sources(DictData(64), None, _job(), Layout(8, 0, 1, 8), torch.device("cpu"))
    inputs, targets = next(src.batches(0))
    assert set(inputs) == {"x"} and inputs["x"].shape == (8, 8) and targets.shape == (8,)

    class Stream(IterableDataset):
        def __iter__(self):
            yield from regression(40)

    stream = make_sources(Stream(), None, _job(steps=12), Layout(8, 0, 1, 8), torch.device("cpu"))
    assert len(list(stream.batches(0))) == 12  # cycled past the end of the stream
    loader = make_sources(DataLoader(regression(64), batch_size=8), None, _job(), Layout(8, 0, 1, 8), torch.device("cpu"))
    assert len(list(loader.batches(2))) == 3
