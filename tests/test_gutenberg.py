"""The gutenberg-en example: streamed documents, the BPE tokenizer, the uint16 token cache, the LR check."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from examples.gutenberg import data as gd
from examples.gutenberg.tokenizer import EOT, documents, load as load_tokenizer, train as train_tokenizer


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(gd.SAMPLE, folder / "train.txt")
    text = gd.SAMPLE.read_text(encoding="utf-8")
    (folder / "val.txt").write_text(text[: len(text) // 3] + "\n" + EOT + "\n", encoding="utf-8")
    gd._windows.cache_clear()
    return folder


def test_documents_are_streamed_between_separators(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(f"one\ntwo\n{EOT}\n\n{EOT}\nthree\n{EOT}\nfour", encoding="utf-8")
    assert list(documents(path)) == ["one\ntwo", "three", "four"]


def test_shipped_tokenizer_and_offline_rebuild(tmp_path):
    tok = load_tokenizer("tokenizer-8192.json")
    assert tok.get_vocab_size() == 8192 and tok.token_to_id(EOT) == 0
    text = "It was the best of times, it was the worst of times."
    assert tok.decode(tok.encode(text).ids) == text
    assert len(text.encode()) / len(tok.encode(text).ids) > 3  # a real BPE: several bytes per token
    a = train_tokenizer(gd.SAMPLE, 400, tmp_path / "a.json")
    b = train_tokenizer(gd.SAMPLE, 400, tmp_path / "b.json")
    assert json.loads(a.read_text())["model"]["vocab"] == json.loads(b.read_text())["model"]["vocab"]
    with pytest.raises(FileNotFoundError, match="build it"):
        load_tokenizer("tokenizer-123.json")


def test_token_cache_is_uint16_keyed_by_tokenizer_and_rebuilt_when_text_changes(corpus):
    ids = gd.tokens(corpus, "train")
    tok = load_tokenizer("tokenizer-8192.json")
    cache = gd.cache_path(corpus / "train.txt", tok)
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and cache.exists()
    assert gd.tokenizer_digest(tok) in cache.name
    docs = list(documents(corpus / "train.txt"))
    expected = [i for enc in tok.encode_batch(docs) for i in enc.ids + [tok.token_to_id(EOT)]]
    assert ids.tolist() == expected  # the streamed, batched encoding equals encoding each document
    meta = json.loads((cache.parent / (cache.name + ".json")).read_text())
    assert meta["tokens"] == len(expected)
    stamp = cache.stat().st_mtime_ns
    assert len(gd.tokens(corpus, "train")) == len(expected) and cache.stat().st_mtime_ns == stamp  # reused
    with open(corpus / "train.txt", "a", encoding="utf-8") as f:
        f.write("A new chapter begins here.\n" + EOT + "\n")
    assert len(gd.tokens(corpus, "train")) > len(expected)  # a changed text is tokenized again
    assert not list(corpus.glob("*.part"))


def test_windows_and_held_out_split(corpus):
    ds = gd.load(str(corpus), split="train", seq_len=32)
    x, y = ds.tensors
    ids = gd.tokens(corpus, "train")
    assert x.shape[1] == 32 and x.dtype == torch.long and len(ds) == (len(ids) - 1) // 32
    assert torch.equal(x[0, 1:], y[0, :-1]) and torch.equal(x[1, 0:1], y[0, -1:])
    assert x[0].tolist() == ids[:32].tolist()
    val = gd.load(str(corpus), split="val", seq_len=32)
    assert 0 < len(val) < len(ds)
    with pytest.raises(FileNotFoundError, match="unpack the corpus"):
        gd.load(str(corpus / "missing"), seq_len=32)
    with pytest.raises(ValueError, match="fewer than one window"):
        gd.load(str(corpus), split="val", seq_len=100_000)


def test_gutenberg_gpu_spec_validates_and_plans_every_budget_with_six_sizes(monkeypatch, corpus):
    from flops_fit import Spec
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    data = Spec.load(ROOT / "specs/gutenberg_gpu.toml").model_dump(mode="json", by_alias=True, exclude_none=True)
    data["data"]["kwargs"]["path"] = data["data"]["eval_kwargs"]["path"] = str(corpus)  # the sample, not the corpus
    plan = Spec.from_dict(data).plan()
    for budget in plan.budgets:
        assert len(plan.for_budget(budget)) >= 6, budget
    assert plan.flop_rule == "measured"


def test_lr_check_trains_cached_experiments_and_finds_the_best_rate(in_tmp):
    from examples.gutenberg.lr_check import lr_check
    from tests.conftest import write_toy_spec

    path = write_toy_spec(in_tmp, sizes=(4, 16), budgets=(1e6,), lr=2e-2)
    seen = []
    out = lr_check(str(path), [4, 16], tokens=16 * 60, multipliers=[1 / 16, 1, 16], on_event=seen.append)
    assert len(out["rows"]) == 6 and all(r["steps"] == 60 and r["loss"] is not None for r in out["rows"])
    assert sorted({r["lr"] for r in out["rows"]}) == pytest.approx([2e-2 / 16, 2e-2, 2e-2 * 16])
    assert set(out["best"]) == {"4", "16"} and "shift_octaves" in out
    for size, best in out["best"].items():
        losses = {r["lr"]: r["loss"] for r in out["rows"] if str(r["size"]) == size}
        assert best["min_loss"] == min(losses.values())
    again = []
    lr_check(str(path), [4, 16], tokens=16 * 60, multipliers=[1 / 16, 1, 16], on_event=again.append)
    assert [e for e in again if e.kind == "result"] == [] and len([e for e in seen if e.kind == "result"]) == 6
