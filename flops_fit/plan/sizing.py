"""N and FLOPs per sample of each size, from the model built on the ``meta`` device (no memory,
no time) and the spec's FLOP rule; a real batch only for the ``measured`` and ``function`` rules."""

from __future__ import annotations

from typing import Any

from ..spec.components import build_data, build_loss, build_model, first_batch, forward_loss, split_batch
from .flops import count_params, flops_per_sample, measure_flops_per_sample, to_meta
from ..core.frozen import Frozen
from ..core.imports import resolve
from ..spec.spec import SpecModel

__all__ = ["SizeInfo", "sample_batch", "size_info", "size_infos"]


class SizeInfo(Frozen):
    size: Any
    num_params: int
    flops_per_sample: float


def sample_batch(spec: SpecModel) -> Any:
    """One small real batch, needed only by the ``measured`` and ``function`` FLOP rules (else None)."""
    if spec.flops.rule == "6N":
        return None
    data = build_data(spec.data.target, spec.data.kwargs, [str(spec.folder)])
    return first_batch(data, min(spec.train.batch_size, 8))


def size_info(spec: SpecModel, size: Any, batch: Any = None) -> SizeInfo:
    """N and FLOPs per sample of one size: the model is built on the meta device."""
    folders = [str(spec.folder)]
    model = build_model(spec.model.target, spec.model.size_param, size, spec.model.kwargs, folders,
                        device="meta")
    n = count_params(model)
    measured = _measured(spec, model, batch, folders) if batch is not None else None
    return SizeInfo(size=size, num_params=n,
                    flops_per_sample=flops_per_sample(spec.flops.rule, n, spec.data.tokens_per_sample,
                                                      measured))


def size_infos(spec: SpecModel) -> list[SizeInfo]:
    """:func:`size_info` for every size of the spec."""
    batch = sample_batch(spec)
    return [size_info(spec, size, batch) for size in spec.model.sizes]


def _measured(spec: SpecModel, model: Any, batch: Any, folders: list[str]) -> float:
    inputs, targets = split_batch(batch)
    rows = _batch_rows(targets)
    if spec.flops.rule == "function":
        fn = resolve(spec.flops.target, folders)
        return float(fn(model, to_meta(batch)))
    loss_fn = build_loss(spec.loss.target, spec.loss.kwargs, folders)
    return measure_flops_per_sample(model, lambda m, i, t: forward_loss(m, i, t, loss_fn), to_meta(inputs),
                                    to_meta(targets), rows)


def _batch_rows(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return int(value.shape[0])
    if isinstance(value, dict):
        return _batch_rows(next(iter(value.values())))
    if isinstance(value, (list, tuple)):
        return _batch_rows(value[0])
    raise TypeError(f"cannot tell the batch size of {type(value).__name__}")
