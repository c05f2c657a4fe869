"""FLOP accounting: the rules that turn a budget C into data D for a model of N parameters.

* ``6N`` (default, Chinchilla): training FLOPs per data unit = 6·N, so ``C = 6·N·D`` with N
  counting every parameter, embeddings included.  At small scale this is off by tens of
  percent (the input embedding is a lookup; attention adds 12·L·d·T per token).
* ``measured``: ``torch.utils.flop_counter.FlopCounterMode`` counts forward + backward of
  one real batch (run on the ``meta`` device: no memory, no time), divided by the batch.
* ``function``: the user's ``fn(model, batch) -> FLOPs per sample``.

Every report names the rule used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch loads when a model is built: fitting a CSV never imports it
    import torch

__all__ = ["RULE_DESCRIPTIONS", "count_params", "flops_per_sample", "measure_flops_per_sample",
           "PEAK_FLOPS", "to_meta"]

RULE_DESCRIPTIONS = {
    "6N": "C = 6·N·D (Chinchilla convention; N = the model's num_params(), every parameter unless it defines one)",
    "measured": "C = measured forward+backward FLOPs per sample × samples (torch.utils.flop_counter)",
    "function": "C = user function FLOPs per sample × samples",
}

#: Dense peak FLOP/s (bf16/fp16 tensor cores; fp32 uses TF32 peak) of GPUs named in [estimate].
PEAK_FLOPS = {
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12},
    "RTX4090": {"bf16": 165e12, "fp16": 165e12, "fp32": 82e12},
}


def count_params(model: torch.nn.Module) -> int:
    """N: ``model.num_params()`` when the model defines it, else every parameter counted once."""
    if callable(getattr(model, "num_params", None)):
        return int(model.num_params())
    return sum(p.numel() for p in model.parameters())


def to_meta(value: Any) -> Any:
    """A copy of a (nested) batch with every tensor on the meta device."""
    import torch

    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, dict):
        return {k: to_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_meta(v) for v in value)
    return value


def measure_flops_per_sample(model: torch.nn.Module, forward_loss: Callable[[torch.nn.Module, Any, Any], torch.Tensor],
                             inputs: Any, targets: Any, batch_size: int) -> float:
    """Forward + backward FLOPs of one batch, per sample, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss = forward_loss(model, inputs, targets)
        loss.backward()
    return counter.get_total_flops() / batch_size


def flops_per_sample(rule: str, num_params: int, tokens_per_sample: float,
                     measured: float | None = None) -> float:
    """Training FLOPs for one sample under ``rule`` (``measured`` is the counted/user value)."""
    if rule == "6N":
        return 6.0 * num_params * tokens_per_sample
    if measured is None or not measured > 0:
        raise ValueError(f"flop rule {rule!r} needs a positive measured FLOPs per sample, got {measured!r}")
    return float(measured)
