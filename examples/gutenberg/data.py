"""gutenberg-en as next-token windows, tokenized once into a memory-mapped ``uint16`` array.

``load(path, split, seq_len, tokenizer) -> TensorDataset(x, y)``.  ``path`` is the folder
holding the unpacked ``train.txt`` and ``val.txt`` (``python3 unpack.py data/gutenberg-en``;
see the README), or any UTF-8 text file of your own with documents separated by lines holding
only ``<|endoftext|>``.  The first load streams the text document by document, encodes it with
the BPE tokenizer and writes the ids to ``<file>.<tokenizer-hash>.u16`` beside it (through a
temporary file and a rename, so a killed build leaves no half cache); a sidecar JSON records
the text's size and modification time, and a changed text is tokenized again.  Later loads map
the cache: no tokenizing, no copy until the windows are cut.

Windows of ``seq_len`` tokens follow each other (x = ids[i·T:(i+1)·T], y shifted by one);
documents are joined with ``<|endoftext|>``.  A TensorDataset lets flops-fit move the whole
split to the GPU once and index batches there.  D counts tokens: ``tokens_per_sample = seq_len``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .tokenizer import EOT, HERE, documents, load as load_tokenizer

SAMPLE = HERE / "data" / "sample.txt"
BATCH_DOCS = 16


def text_file(path: str | Path, split: str = "train") -> Path:
    """The text of ``split``: ``path`` itself when it is a file, else ``path/<split>.txt``."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = HERE.parent.parent / p  # relative to the repository root
    if p.is_dir():
        p = p / f"{split}.txt"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such text; unpack the corpus (README, 'gutenberg-en') or pass your own file")
    return p


def tokenizer_digest(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:12]


def cache_path(text: Path, tok) -> Path:
    return text.with_name(f"{text.name}.{tokenizer_digest(tok)}.u16")


def build_cache(text: Path, tok) -> Path:
    """Tokenize ``text`` into its ``uint16`` cache (streamed, atomic); returns the cache path."""
    if tok.get_vocab_size() > 2**16:
        raise ValueError(f"a vocabulary of {tok.get_vocab_size()} does not fit uint16")
    out = cache_path(text, tok)
    eot = tok.token_to_id(EOT)
    tmp = out.with_name(out.name + f".{os.getpid()}.part")
    count = 0
    try:
        with open(tmp, "wb") as f:
            batch: list[str] = []
            for doc in documents(text):
                batch.append(doc)
                if len(batch) == BATCH_DOCS:
                    count += _write(f, tok, batch, eot)
                    batch = []
            if batch:
                count += _write(f, tok, batch, eot)
        stat = text.stat()
        meta = {"text_bytes": stat.st_size, "text_mtime_ns": stat.st_mtime_ns, "tokens": count,
                "tokenizer": tokenizer_digest(tok), "vocab_size": tok.get_vocab_size()}
        Path(str(out) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _write(f, tok, docs: list[str], eot: int) -> int:
    ids = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.uint16)
    f.write(arr.tobytes())
    return len(arr)


def _fresh(text: Path, cache: Path) -> bool:
    meta = Path(str(cache) + ".json")
    if not (cache.exists() and meta.exists()):
        return False
    info = json.loads(meta.read_text())
    stat = text.stat()
    return info.get("text_bytes") == stat.st_size and info.get("text_mtime_ns") == stat.st_mtime_ns


def tokens(path: str | Path, split: str = "train", tokenizer: str = "tokenizer-8192.json") -> np.memmap:
    """The token ids of ``split`` as a read-only ``uint16`` memory map (built on first use)."""
    text = text_file(path, split)
    tok = load_tokenizer(tokenizer)
    cache = cache_path(text, tok)
    if not _fresh(text, cache):
        build_cache(text, tok)
    return np.memmap(cache, dtype=np.uint16, mode="r")


@functools.lru_cache(maxsize=4)
def _windows(path: str, split: str, seq_len: int, tokenizer: str, max_tokens: int | None) -> TensorDataset:
    ids = tokens(path, split, tokenizer)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"{path} ({split}): {len(ids)} tokens are fewer than one window of {seq_len}")
    flat = torch.from_numpy(np.asarray(ids[: n * seq_len + 1], dtype=np.int64))
    return TensorDataset(flat[:-1].view(n, seq_len), flat[1:].view(n, seq_len))


def load(path: str = str(SAMPLE), split: str = "train", seq_len: int = 256, tokenizer: str = "tokenizer-8192.json",
         max_tokens: int | None = None) -> TensorDataset:
    """Windows of ``seq_len`` tokens of ``split`` and their next-token targets."""
    return _windows(str(path), split, int(seq_len), tokenizer, max_tokens)
