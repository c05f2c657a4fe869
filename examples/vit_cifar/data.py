"""CIFAR-10 from the official "python version" pickle batches, without torchvision.

``load(path, split="train")`` reads ``data_batch_1..5`` (or ``test_batch``) from a
``cifar-10-batches-py`` folder: the shipped subset (``examples/vit_cifar/data``) or the full
dataset.  Images are scaled to [0, 1] and normalised with the CIFAR-10 channel statistics.

D counts images: ``tokens_per_sample = 1`` and the FLOP rule is ``measured`` (forward +
backward FLOPs of one image), so C = FLOPs per image × images.  (Counting patches instead
would be ``tokens_per_sample = (32/patch)^2`` with the same FLOP rule.)
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

HERE = Path(__file__).resolve().parent
SUBSET = HERE / "data" / "cifar-10-batches-py"
MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) labels from one official pickle batch."""
    with open(file, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(d[b"labels"], dtype=np.int64)


def load(path: str = str(SUBSET), split: str = "train", limit: int | None = None) -> TensorDataset:
    folder = Path(path)
    if not folder.is_absolute() and not folder.exists():
        folder = HERE.parent.parent / folder
    files = [folder / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [folder / "test_batch"]
    parts = [read_batch(f) for f in files]
    images = np.concatenate([p[0] for p in parts])[:limit]
    labels = np.concatenate([p[1] for p in parts])[:limit]
    x = (images.astype(np.float32) / 255.0 - MEAN[None, :, None, None]) / STD[None, :, None, None]
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(labels))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), labels)
