"""Grouped training against one experiment at a time: the step of K models of one shape.

    python -m benchmarks.bench_group --widths 64 128 256 --members 7 --out docs/bench/group.json

The model is the gutenberg recipe's GPT (6 layers, vocab 8192, 64 x 256 tokens a step, bf16
autocast on CUDA, AdamW fused on CUDA, clipping at 1.0), K members at learning rates
``lr · 2^k`` (a ``transfer`` sweep), each on its own batches.  Three ways to step them, each
timed over ``--steps`` rounds after a warm-up (a round = one optimizer step of every member):

* ``one_eager``: the engine's :class:`TrainStep` per member, eager;
* ``one_graphs``: the same with the step captured in a CUDA graph (the engine's default on CUDA);
* ``grouped``: the engine's :class:`GroupStep`: parameters stacked, one vmapped forward and
  backward, each member's own clip and optimizer step;
* ``grouped_graphs``: the same with the batched forward, backward and clips in a CUDA graph.

Reported per width: milliseconds per member-step, FLOP/s and MFU (6·N·tokens per member-step,
N = all parameters, the attention's T² term left out: MFU is a lower bound), the speed-up of
grouped over each one-at-a-time way, and how far grouped losses drift from eager ones after the
timed rounds (float rounding of batched kernels).  Peak: 989 TFLOP/s (H100 SXM dense bf16).
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from accelerate import Accelerator
from examples.gpt_tinystories.loss import next_token_loss
from examples.gpt_tinystories.model import GPT
from flops_fit.execute.group import GroupStep
from flops_fit.execute.step import TrainStep

PEAK = 989e12


def _members(width: int, k: int, accelerator: Accelerator, batch: int, seq: int, vocab: int, layers: int,
             head_dim: int):
    lanes = []
    for i in range(k):
        torch.manual_seed(i)
        model = GPT(width, num_layers=layers, vocab_size=vocab, seq_len=seq, head_dim=head_dim,
                    base_width=128).to(accelerator.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3 * 2.0 ** (i - k // 2),
                                fused=accelerator.device.type == "cuda")
        model, opt = accelerator.prepare(model, opt)
        g = torch.Generator(device="cpu").manual_seed(100 + i)
        data = torch.randint(0, vocab, (64, batch, seq + 1), generator=g).to(accelerator.device)

        def batches(data=data):
            while True:
                for row in data:
                    yield row[:, :-1], row[:, 1:]

        lanes.append(SimpleNamespace(
            raw_model=model, model=model, loss_fn=next_token_loss, optimizer=opt, step_optimizer=opt,
            layout=SimpleNamespace(accum=1), job=SimpleNamespace(optim=SimpleNamespace(grad_clip=1.0)),
            direct=True, acc=torch.zeros((), device=accelerator.device), batches=batches()))
    return lanes


def _time(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench(width: int, k: int, steps: int, warmup: int, accelerator: Accelerator, args) -> dict:
    shape = (args.batch, args.seq, args.vocab, args.layers, args.head_dim)
    out = {"width": width, "members": k}
    losses = {}
    for way in ("one_eager", "one_graphs", "grouped", "grouped_graphs"):
        if way.endswith("graphs") and accelerator.device.type != "cuda":
            continue
        lanes = _members(width, k, accelerator, *shape)
        if way.startswith("grouped"):
            step = GroupStep(accelerator, "auto" if way == "grouped_graphs" else "off")

            def fn():
                step(lanes)
        else:
            mode = "off" if way == "one_eager" else "auto"
            steppers = [TrainStep(m.model, m.loss_fn, m.step_optimizer, accelerator, 1, 1.0, True, m.acc, mode)
                        for m in lanes]

            def fn():
                for s, l in zip(steppers, lanes):
                    s(l.batches)
        seconds = _time(fn, steps, warmup, accelerator.device)
        n = sum(p.numel() for p in lanes[0].raw_model.parameters())
        flops = 6 * n * args.batch * args.seq
        out[way] = {"ms_per_member_step": 1e3 * seconds / k, "flops_per_s": flops * k / seconds,
                    "mfu": flops * k / seconds / args.peak, "num_params": n}
        losses[way] = [float(l.acc) for l in lanes]
        if way.startswith("grouped") and step.note:
            out[f"{way}_note"] = step.note
        del lanes
        accelerator.free_memory()
        if accelerator.device.type == "cuda":
            torch.cuda.empty_cache()
    best = min((w for w in ("grouped", "grouped_graphs") if w in out),
               key=lambda w: out[w]["ms_per_member_step"])
    for way in ("one_eager", "one_graphs"):
        if way in out:
            out[f"best_grouped_speedup_over_{way}"] = (out[way]["ms_per_member_step"]
                                                      / out[best]["ms_per_member_step"])
    for way in ("grouped", "grouped_graphs", "one_graphs"):
        if way in losses:
            out[f"{way}_vs_one_eager_max_rel_loss_diff"] = max(
                abs(a - b) / abs(b) for a, b in zip(losses[way], losses["one_eager"]))
    return out


def _backends(names: str | None):
    """``torch.nn.attention.sdpa_kernel`` over the named backends (a null context for None)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not names:
        return contextlib.nullcontext()
    table = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    return sdpa_kernel([table[n] for n in names.split(",")])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--members", type=int, default=7)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--peak", type=float, default=PEAK)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--precision", default="bf16", choices=["bf16", "no"], help="mixed precision on CUDA")
    p.add_argument("--sdpa", default=None,
                   help="attention backends to allow, comma-separated (math, efficient, flash, cudnn; "
                        "default: torch's)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=not cuda, mixed_precision=args.precision if cuda else "no")
    device = torch.cuda.get_device_name() if cuda else "cpu"
    rows = []
    for w in args.widths:
        with _backends(args.sdpa):
            row = bench(w, args.members, args.steps, args.warmup, accelerator, args)
        row["sdpa"] = args.sdpa or "default"
        rows.append(row)
        print(json.dumps(row), flush=True)
    doc = {"device": device, "torch": torch.__version__, "args": vars(args), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
