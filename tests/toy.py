"""Tiny models and data for tests: an MLP regression that trains in milliseconds."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class MLP(nn.Module):
    def __init__(self, width: int, in_dim: int = 8, depth: int = 1, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout)]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.GELU()]
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class Exploding(MLP):
    """Diverges: huge learning rates are applied through a scaled output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 1e6


class GoesNaN(MLP):
    """Not a number once a weight passes 5 (one Adam step at a learning rate of 10 does it): the
    training loss is NaN, not merely large."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        big = torch.stack([p.abs().max() for p in self.parameters()]).max() > 5
        return torch.where(big, torch.full_like(out, torch.nan), out)


def _batched(x: torch.Tensor) -> bool:
    from torch._C._functorch import is_batchedtensor

    return is_batchedtensor(x)


class OtherWhenBatched(MLP):
    """Computes something else under vmap (as a backend's batching rule that is wrong would)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * 2.0 if _batched(x) else out


class NaNWhenBatched(MLP):
    """Not a number under vmap only (as cuDNN attention's batched backward was on an H100)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * torch.nan if _batched(x) else out


class HostSync(MLP):
    """Reads a value back to the host in every forward (``.item()``): a CUDA graph cannot capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * 0.0 + out if out.abs().max().item() >= 0 else out


class ScaledMLP(MLP):
    """An MLP whose one optimizer group has learning rate ``lr_scale`` × the spec's (as μP models do)."""

    def __init__(self, width: int, in_dim: int = 8, lr_scale: float = 1.0):
        super().__init__(width, in_dim)
        self.lr_scale = lr_scale

    def optimizer_groups(self):
        return [{"params": list(self.parameters()), "lr_scale": self.lr_scale, "weight_decay": 0.0}]


def regression(n: int = 2048, in_dim: int = 8, seed: int = 0, shift: float = 0.0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g)
    w = torch.randn(in_dim, generator=g)
    y = torch.sin(x @ w) + 0.1 * torch.randn(n, generator=g) + shift
    return TensorDataset(x, y)


class DictData(Dataset):
    """Items as {"inputs": {"x": ...}, "targets": ...} to test the dict contract."""

    def __init__(self, n: int = 512):
        self.base = regression(n)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return {"inputs": {"x": x}, "targets": y}


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(outputs, targets)


def mse_vector(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs - targets) ** 2


def not_a_dataset(n: int = 3):
    return [1, 2, 3]


class WrongShape(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.lin = nn.Linear(3, width)

    def forward(self, x):
        return self.lin(x)


class SlowMLP(MLP):
    """An MLP slowed down so that a test can kill it mid-run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.004)
        return super().forward(x)


class FailsLater(MLP):
    """Passes the smoke step, then raises in training (the user's bug surfaces mid-sweep)."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 1:
            FailsLater.calls += 1
            if FailsLater.calls > 3:
                raise RuntimeError("bug in the user's forward")
        return super().forward(x)


def teacher(n: int = 65536, in_dim: int = 16, width: int = 64, noise: float = 0.05, seed: int = 0) -> Dataset:
    """Targets from a fixed random two-layer network plus noise: a student's loss falls with its
    width (capacity) and with the samples it sees, towards the noise floor (a regression project
    with a real compute-optimal trade-off)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g)
    w1 = torch.randn(in_dim, width, generator=g) / in_dim ** 0.5
    w2 = torch.randn(width, generator=g) / width ** 0.5
    y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(n, generator=g)
    return TensorDataset(x, y / y.std())


class DiesInJobs(MLP):
    """Kills its process in training inside a scheduler's job (as the OOM killer would); fine elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os

        if self.training and os.environ.get("SUBMITIT_EXECUTOR"):
            os._exit(3)
        return super().forward(x)


class OutOfMemoryBeside(MLP):
    """At width ``oom_width``, inside a packed worker, runs the device out of memory once — as soon
    as another process trains beside it, as packing does — then trains normally.  ``flag``: a file
    whose removal is the "once"."""

    def __init__(self, width: int, in_dim: int = 8, oom_width: int = 0, flag: str = ""):
        super().__init__(width, in_dim)
        self.oom = width == oom_width and flag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os
        import time
        from pathlib import Path

        from flops_fit.execute.memory import PACKED_ENV, others_training
        from flops_fit.store.store import Store

        if self.oom and self.training and os.environ.get(PACKED_ENV) and Path(self.oom).exists():
            deadline = time.time() + 30
            stores = [Store(root) for root in Path("runs").iterdir()]
            while not sum(others_training(st) for st in stores) and time.time() < deadline:
                time.sleep(0.05)
            try:
                os.remove(self.oom)
            except FileNotFoundError:
                return super().forward(x)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB (a toy's)")
        return super().forward(x)
