"""Next-token cross-entropy: ``loss(logits (B, T, V), targets (B, T)) -> scalar``."""

from torch import Tensor
from torch.nn import functional as F


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
