"""A byte-level BPE tokenizer trained offline on the shipped TinyStories sample.

``python -m examples.gpt_tinystories.tokenizer [--vocab 1024]`` rebuilds
``data/tokenizer-<vocab>.json``; nothing is downloaded.  ``<|endoftext|>`` is token 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "data" / "TinyStories-train.head.txt"
EOT = "<|endoftext|>"


def stories(text: str) -> list[str]:
    return [s.strip() for s in text.split(EOT) if s.strip()]


def train(vocab_size: int = 1024, source: Path = SAMPLE, out: Path | None = None) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(stories(source.read_text(encoding="utf-8")), trainer=trainer)
    out = out or HERE / "data" / f"tokenizer-{vocab_size}.json"
    tok.save(str(out))
    return out


def load(path: str | Path):
    """The tokenizer at ``path``; a missing ``tokenizer-<V>.json`` beside the sample is built from it."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = HERE / "data" / path.name
    if not path.exists() and path.name.startswith("tokenizer-") and path.parent == HERE / "data":
        train(int(path.stem.split("-")[1]), out=path)
    return Tokenizer.from_file(str(path))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab", type=int, default=1024)
    print(train(parser.parse_args().vocab))
