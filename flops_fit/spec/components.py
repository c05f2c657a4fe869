"""Build the user's model, data and loss from import paths, and call them by the contract.

The contract (docs/DESIGN.md): a dataset item or batch is ``(inputs, targets)`` or
``{"inputs": ..., "targets": ...}``; ``inputs`` that is a dict is passed as keyword
arguments; ``outputs = model(inputs)``; ``loss = loss_fn(outputs, targets)``.  Nothing
here knows about tokens, images or any modality.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # torch loads when a model or data is built (planning, training), not to fit a CSV
    import torch

from ..core.errors import ContractError, Problem
from ..core.imports import resolve

__all__ = ["build_model", "build_data", "build_loss", "split_batch", "call_model", "forward_loss",
           "first_batch", "is_data_source"]


def build_model(target: str | Callable, size_param: str, size: Any, kwargs: dict,
                folders: Sequence[str | Path] = (),
                device: str | torch.device | None = None) -> torch.nn.Module:
    """Instantiate the model at ``size`` (on ``device``; ``"meta"`` allocates nothing)."""
    import torch

    factory = resolve(target, folders) if isinstance(target, str) else target
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = factory(**{**kwargs, size_param: size})
    if not isinstance(model, torch.nn.Module):
        raise ContractError([Problem(f"model target returned {type(model).__name__}, expected a torch.nn.Module", key="model.target")])
    return model


def build_data(target: str | Callable | Any, kwargs: dict, folders: Sequence[str | Path] = ()) -> Any:
    """Call the data target (or take the object as given) and return the dataset/loader."""
    obj = resolve(target, folders) if isinstance(target, str) else target
    if is_data_source(obj):
        return obj
    return obj(**kwargs)


def is_data_source(obj: Any) -> bool:
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    return isinstance(obj, (Dataset, IterableDataset, DataLoader))


def build_loss(target: str | Callable, kwargs: dict, folders: Sequence[str | Path] = ()) -> Callable:
    """The loss function with its kwargs bound."""
    fn = resolve(target, folders) if isinstance(target, str) else target
    return functools.partial(fn, **kwargs) if kwargs else fn


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a tuple/list of two or a dict with those keys."""
    if isinstance(batch, dict):
        if "inputs" in batch and "targets" in batch:
            return batch["inputs"], batch["targets"]
        raise ContractError([Problem(f"a batch dict needs keys 'inputs' and 'targets', got {sorted(batch)}",
                                     key="data.target")])
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ContractError([Problem(f"a batch must be (inputs, targets) or {{'inputs', 'targets'}}, got {type(batch).__name__}",
                                 key="data.target")])


def call_model(model: Callable, inputs: Any) -> Any:
    """``model(**inputs)`` for dict inputs, else ``model(inputs)``."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def forward_loss(model: Callable, inputs: Any, targets: Any, loss_fn: Callable) -> torch.Tensor:
    return loss_fn(call_model(model, inputs), targets)


def first_batch(data: Any, batch_size: int) -> Any:
    """One collated batch of up to ``batch_size`` samples from any supported data source."""
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        return next(iter(data))
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    return next(iter(loader))
