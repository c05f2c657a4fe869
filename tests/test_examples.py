"""The examples: GPT + TinyStories (tokenizer, loader, μP), ViT + CIFAR-10, the CLI wrapper."""

from __future__ import annotations

import json

import pytest
import torch

from examples.gpt_tinystories import data as ts_data
from examples.gpt_tinystories.loss import next_token_loss
from examples.gpt_tinystories.model import GPT
from examples.gpt_tinystories.tokenizer import EOT, load as load_tokenizer, train as train_tokenizer
from examples.vit_cifar.data import cross_entropy, load as load_cifar
from examples.vit_cifar.model import ViT


def test_shipped_tokenizer_round_trip_and_rebuild(tmp_path):
    tok = load_tokenizer("tokenizer-1024.json")
    assert tok.get_vocab_size() == 1024 and tok.token_to_id(EOT) == 0
    text = "Once upon a time, Lily found a shiny red ball."
    assert tok.decode(tok.encode(text).ids) == text
    rebuilt = train_tokenizer(1024, out=tmp_path / "tok.json")  # offline and deterministic
    assert json.loads(rebuilt.read_text())["model"]["vocab"] == json.loads(tok.to_str())["model"]["vocab"]


def test_tinystories_windows():
    ds = ts_data.load(seq_len=32, max_stories=40)
    x, y = ds.tensors
    assert x.shape[1] == 32 and x.dtype == torch.long and torch.equal(x[0, 1:], y[0, :-1])
    assert int(x.max()) < 1024
    raw = ts_data.load(seq_len=16, tokenizer="bytes", max_stories=10)
    assert int(raw.tensors[0].max()) < 256
    both = ts_data.load(path=[str(ts_data.SAMPLE), "examples/gpt_tinystories/data/TinyStoriesV2-GPT4-train.head.txt"],
                        seq_len=32, max_stories=40)
    assert len(both) > len(ds)


def test_tinystories_folder_layout(tmp_path):
    (tmp_path / "TinyStories-train.txt").write_text("Tom ran.\n<|endoftext|>\nSue sat.\n<|endoftext|>\n" * 20)
    ds = ts_data.load(path=str(tmp_path), seq_len=8, tokenizer="bytes")
    assert len(ds) > 10
    with pytest.raises(FileNotFoundError):
        ts_data.load(path=str(tmp_path), seq_len=8, tokenizer="bytes", split="validation")


def test_gpt_shapes_params_and_mup_groups():
    model = GPT(64, num_layers=2, vocab_size=1024, seq_len=32, head_dim=16, base_width=32)
    idx = torch.randint(0, 1024, (2, 32))
    assert model(idx).shape == (2, 32, 1024)
    assert next_token_loss(model(idx), idx).ndim == 0
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    small = GPT(64, num_layers=2, vocab_size=1024, seq_len=32, head_dim=16, count_embeddings=False)
    assert small.num_params() == 2 * 12 * 64 * 64 + 2 * 2 * 2 * 64 + 2 * 64  # matrices + 2 LayerNorms per block + final
    groups = model.optimizer_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    assert groups[0]["lr_scale"] == pytest.approx(32 / 64)  # hidden matrices: lr · base / width


def _final_loss(width: int, lr: float, steps: int = 120) -> float:
    torch.manual_seed(0)
    ds = ts_data.load(seq_len=32, tokenizer="bytes", max_stories=300)
    model = GPT(width, num_layers=2, vocab_size=256, seq_len=32, head_dim=8, base_width=16)
    opt = torch.optim.AdamW([{**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": lr * g["lr_scale"]}
                             for g in model.optimizer_groups()], lr=lr)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(ds), (16,), generator=g)
        x, y = ds.tensors[0][idx], ds.tensors[1][idx]
        loss = next_token_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step >= steps - 20:
            losses.append(loss.item())
    return sum(losses) / len(losses)


def test_mup_best_learning_rate_does_not_drift_with_width():
    lrs = [3e-3, 1e-2, 3e-2, 1e-1]
    best = {w: min(range(len(lrs)), key=lambda i: _final_loss(w, lrs[i])) for w in (16, 64)}
    assert abs(best[16] - best[64]) <= 1, best


def test_cifar_loader_and_vit():
    train, test = load_cifar(split="train"), load_cifar(split="test")
    assert train.tensors[0].shape == (5085, 3, 32, 32) and len(test) == 1017
    assert test.tensors[1][:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # the known start of the test set
    assert abs(float(train.tensors[0].mean())) < 0.1  # normalised
    model = ViT(32, depth=1, head_dim=8)
    logits = model(train.tensors[0][:4])
    assert logits.shape == (4, 10) and cross_entropy(logits, train.tensors[1][:4]).ndim == 0


def test_vit_spec_plans_with_measured_flops():
    from flops_fit import Spec

    plan = Spec.load("specs/vit_cifar.toml").plan()
    assert plan.flop_rule == "measured" and plan.tokens_per_sample == 1
    per_image = {s.size: s.flops_per_sample for s in plan.sizes}
    assert per_image[32] > per_image[16] > 0


def test_cli_wrapper_embeds_find_optimal(in_tmp):
    from examples.cli_wrapper.sweep import main

    result = main(["--budgets", "1.5e10", "3e10", "--sizes", "16", "32", "48", "--predict", "1e12",
                   "--runs-dir", "runs"])  # 5 points (d48 at 1.5e10 is too short): 27 s, not 45
    assert result.summary()["points"] >= 5
    assert (in_tmp / "runs/cli_wrapper/report/fits.json").exists()


@pytest.mark.slow
def test_the_committed_gutenberg_store_refits_to_its_registered_prediction_and_recorded_check(tmp_path,
                                                                                                monkeypatch):
    """docs/gutenberg_gpu_v2/store.tgz (the second round's sweep, trained on an H100) fits here, on
    the CPU, to the prediction registered on the GPU before the forward checks, and
    examples/gutenberg/across_u.py reproduces its recorded comparison with the first round."""
    import tarfile
    from pathlib import Path

    from examples.gutenberg import across_u

    root = Path(__file__).resolve().parents[1]
    with tarfile.open(root / "docs/gutenberg_gpu_v2/store.tgz") as tar:
        tar.extractall(tmp_path, filter="data")
    monkeypatch.chdir(tmp_path)
    registered = json.loads((tmp_path / "runs/gutenberg_gpu_v2/confirm/2e15/prediction.json").read_text())
    assert across_u.main(["--json", str(tmp_path / "across_u.json")]) == 0
    now = json.loads((tmp_path / "across_u.json").read_text())
    recorded = json.loads((root / "docs/gutenberg_gpu_v2/sweep/across_u.json").read_text())
    assert now["mape"] == pytest.approx(recorded["mape"], rel=1e-6) and now["runs"] == 39
    optimum = next(o for o in now["optima"] if o["budget_flops"] == 2e15 and o["unique_tokens"] < 3e7)
    assert optimum["num_params"] == pytest.approx(registered["num_params"], rel=1e-6)
    assert optimum["loss"] == pytest.approx(registered["loss"], rel=1e-6)
