"""TinyStories as next-token windows: ``load(path, seq_len, tokenizer) -> TensorDataset(x, y)``.

``path`` is a ``.txt`` file in the original layout (stories separated by ``<|endoftext|>``,
for example the full ``TinyStories-train.txt`` or ``TinyStoriesV2-GPT4-train.txt``), a
folder holding such a file, or ``"hf:roneneldan/TinyStories"`` to read the split through the
``datasets`` library when it is installed (never required).  Stories are tokenized with the
BPE tokenizer (or taken as UTF-8 bytes with ``tokenizer="bytes"``, vocabulary 256), joined
with ``<|endoftext|>`` and cut into non-overlapping windows of
``seq_len + 1`` tokens: x = window[:-1], y = window[1:].  Tokenized arrays of large files
are cached beside them (``<file>.<tokenizer>.tokens.npy``).

A TensorDataset lets flops-fit move the whole dataset to the GPU once and index batches
there.  D counts tokens: ``tokens_per_sample = seq_len``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .tokenizer import EOT, HERE, load as load_tokenizer, stories

SAMPLE = HERE / "data" / "TinyStories-train.head.txt"
CACHE_MIN_BYTES = 20_000_000


def _read_stories(path: str, split: str) -> list[str]:
    if path.startswith("hf:"):
        import datasets  # optional: only for the hub

        return [r["text"].strip() for r in datasets.load_dataset(path[3:], split=split) if r["text"].strip()]
    p = Path(path)
    if p.is_dir():
        names = ["TinyStoriesV2-GPT4-train.txt", "TinyStories-train.txt"] if split == "train" else \
            ["TinyStoriesV2-GPT4-valid.txt", "TinyStories-valid.txt"]
        p = next((p / n for n in names if (p / n).exists()), None)
        if p is None:
            raise FileNotFoundError(f"no {' or '.join(names)} in {path}")
    return stories(p.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=8)
def _tokens(path: str, tokenizer: str, split: str, max_stories: int | None) -> np.ndarray:
    if tokenizer == "bytes":  # UTF-8 bytes, vocabulary 256; stories separated by byte 0
        texts = _read_stories(path, split)[:max_stories]
        return np.frombuffer("\0".join(texts).encode("utf-8") + b"\0", dtype=np.uint8).astype(np.int16)
    tok = load_tokenizer(tokenizer)
    file = Path(path)
    digest = hashlib.sha256(tok.to_str().encode()).hexdigest()[:10]
    cache = file.with_name(f"{file.name}.{digest}.tokens.npy") if file.is_file() else None
    if cache is not None and cache.exists() and max_stories is None:
        return np.load(cache)
    texts = _read_stories(path, split)[:max_stories]
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.int32 if tok.get_vocab_size() >= 2**15 else np.int16)
    if cache is not None and max_stories is None and file.stat().st_size >= CACHE_MIN_BYTES:
        try:
            np.save(cache, arr)
        except OSError:
            pass
    return arr


def _resolve(path: str) -> str:
    if not path.startswith("hf:") and not Path(path).is_absolute() and not Path(path).exists():
        return str(HERE.parent.parent / path)  # relative to the repository root
    return path


def load(path: str | list[str] = str(SAMPLE), seq_len: int = 128, tokenizer: str = "tokenizer-1024.json",
         split: str = "train", max_stories: int | None = None) -> TensorDataset:
    """Windows of ``seq_len`` tokens and their next-token targets (several files are concatenated)."""
    paths = [path] if isinstance(path, str) else list(path)
    arrays = [_tokens(_resolve(p), tokenizer, split, max_stories) for p in paths]
    ids = torch.from_numpy(np.concatenate(arrays).astype(np.int64))
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"{path}: {len(ids)} tokens are fewer than one window of {seq_len}")
    x = ids[: n * seq_len].view(n, seq_len)
    y = ids[1: n * seq_len + 1].view(n, seq_len)
    return TensorDataset(x, y)
