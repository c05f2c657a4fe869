"""flops-fit's training loop against a bare PyTorch loop, same model, same batches, one run.

    python -m benchmarks.bench_train --preset cpu     # small MLP and small GPT on CPU, fp32
    python -m benchmarks.bench_train --preset gpu     # GPT from ~2M to ~200M parameters, bf16, compile

The bare loop is what a user writes: a DataLoader (shuffle, pin_memory), ``.to(device,
non_blocking=True)``, bf16 autocast on CUDA, fused AdamW, optional ``torch.compile``, no
``.item()`` per step.  The engine is ``flops_fit.execute.train_experiment`` on the same model
class, data and hyper-parameters (evaluation and checkpoints off).  Throughput is measured
after ``--warmup`` steps (compile and allocator warm-up excluded from both) in tokens/s.

MFU (GPT on CUDA) = tokens/s × F / peak, F = 6·N_non-embedding + 6·V·d (read-out) +
12·L·d·T (attention), peak = 989 TFLOP/s (H100/H200 dense bf16).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from flops_fit.execute.runner import make_accelerator
from flops_fit.execute.worker import train_experiment
from flops_fit.plan.plan import Component, Job, Loop, Optim, Runtime, Schedule
from flops_fit.store.store import Store

PEAK = 989e12
GPT_SIZES = {  # name: (d_model, num_layers)
    "2M": (128, 8), "5M": (192, 10), "14M": (320, 12), "30M": (448, 12), "92M": (768, 13), "210M": (1024, 16),
}
#: Micro-batches where a global batch of 128 × 1024 tokens does not fit in 80 GB (activations of
#: 16 layers at d = 1024 alone need ~70 GB): both loops accumulate gradients over them.
MICRO_BATCH = {"210M": 64}


def random_tokens(n: int = 2048, seq_len: int = 128, vocab: int = 1024, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq_len + 1), generator=g)
    return TensorDataset(ids[:, :-1].contiguous(), ids[:, 1:].contiguous())


def random_regression(n: int = 8192, dim: int = 256, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return TensorDataset(x, torch.sin(x.sum(1, keepdim=True)).expand(-1, 1).squeeze(1))


class MLP(torch.nn.Module):
    def __init__(self, width: int, dim: int = 256, depth: int = 3):
        super().__init__()
        layers = [torch.nn.Linear(dim, width), torch.nn.GELU()]
        for _ in range(depth - 1):
            layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def mse(out, y):
    return torch.nn.functional.mse_loss(out.float(), y)


def bare_loop(model_fn, data: TensorDataset, loss_fn, batch: int, steps: int, warmup: int, lr: float,
              precision: str, compile_: bool, device: torch.device, micro: int | None = None) -> float:
    """Tokens (samples) per second after warm-up, of the loop a user would write (accumulating
    gradients over ``batch // micro`` micro-batches when ``micro`` is given)."""
    try:
        return _bare_loop(model_fn, data, loss_fn, batch, steps, warmup, lr, precision, compile_, device, micro)
    finally:  # leave the GPU as found: compiled graphs hold the model until dynamo is reset
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _bare_loop(model_fn, data, loss_fn, batch, steps, warmup, lr, precision, compile_, device, micro) -> float:
    micro = micro or batch
    accum = batch // micro
    torch.manual_seed(0)
    model = model_fn().to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=lr,
                            betas=(0.9, 0.95), fused=device.type == "cuda")
    if compile_:
        torch._dynamo.reset()  # as the engine does per experiment: no recompile-limit fallback to eager
        model = torch.compile(model)
    warm = max(1, steps // 10)  # the engine's schedule: linear warmup, cosine to 10%
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm)))))
    loader = DataLoader(data, batch_size=micro, shuffle=True, drop_last=True, pin_memory=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    done, k, t0 = 0, 0, None
    while done < steps:
        for x, y in loader:
            if done == warmup and k == 0:
                _sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                loss = loss_fn(model(x), y)
            (loss / accum if accum > 1 else loss).backward()
            k += 1
            if k < accum:
                continue
            k = 0
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    _sync(device)
    return (steps - warmup) * batch / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine(model_target: str, model_kwargs: dict, size_param: str, size, data_target: str, data_kwargs: dict,
           loss_target: str, batch: int, steps: int, warmup: int, lr: float, precision: str, compile_: bool,
           device: torch.device, micro: int | None = None) -> float:
    """Samples per second of flops-fit's loop after warm-up, from its logged wall-clock."""
    job = Job(experiment_id="bench", budget_flops=1.0, model=Component(target=model_target, kwargs=model_kwargs),
              size_param=size_param, size=size, data=Component(target=data_target, kwargs=data_kwargs),
              eval_fraction=0.01, eval_batches=1, loss=Component(target=loss_target), tokens_per_sample=1, steps=steps,
              num_params=1, flops_per_sample=1.0, precision=precision,
              optim=Optim(learning_rate=lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, grad_clip=1.0),
              schedule=Schedule(kind="cosine", warmup_steps=max(1, steps // 10), min_lr_ratio=0.1, decay_fraction=0.2),
              loop=Loop(batch_size=batch, micro_batch_size=micro, seed=0, divergence_factor=3.0, log_points=8, eval_points=0, num_workers=0,
                        checkpoint_seconds=1e9, keep_checkpoints=1),
              search_path=[str(Path(__file__).parent.parent)])
    acc = make_accelerator(Runtime(precision=precision, device="auto" if device.type == "cuda" else "cpu",
                                   compile=compile_), tempfile.gettempdir())
    with tempfile.TemporaryDirectory() as tmp:
        result = train_experiment(job, Store(Path(tmp)), acc, compile=compile_)
    curve = result.curve
    first = next(p for p in curve if p.step >= warmup)
    last = curve[-1]
    return (last.step - first.step) * batch / (last.seconds - first.seconds)


def gpt_flops_per_token(d: int, layers: int, vocab: int, seq: int) -> float:
    non_embedding = 12 * layers * d * d
    return 6 * non_embedding + 6 * vocab * d + 12 * layers * d * seq


def run_case(name: str, kind: str, args, device: torch.device, **cfg) -> dict:
    if kind == "mlp":
        model_kw = {"dim": 256, "depth": cfg.get("depth", 3)}
        data_kw = {"n": 8192, "dim": 256}
        common = dict(batch=args.batch, steps=args.steps, warmup=args.warmup, lr=1e-3, precision=args.precision,
                      compile_=args.compile, device=device)
        data = random_regression(**data_kw)
        bare = bare_loop(lambda: MLP(cfg["width"], **model_kw), data, mse, **common)
        eng = engine("benchmarks.bench_train:MLP", model_kw, "width", cfg["width"], "benchmarks.bench_train:random_regression",
                     data_kw, "benchmarks.bench_train:mse", **common)
        per_sample = 1
        flops = None
    else:
        from examples.gpt_tinystories.model import GPT
        from examples.gpt_tinystories.loss import next_token_loss

        d, layers = cfg["d_model"], cfg["num_layers"]
        vocab, head_dim, base = (256, 4, 32) if cfg.get("quickstart") else (args.vocab, args.head_dim, d)
        model_kw = {"num_layers": layers, "vocab_size": vocab, "seq_len": args.seq, "head_dim": head_dim,
                    "base_width": base}
        data_kw = {"n": args.samples, "seq_len": args.seq, "vocab": vocab}
        common = dict(batch=args.batch, steps=args.steps, warmup=args.warmup, lr=1e-3, precision=args.precision,
                      compile_=args.compile, device=device, micro=MICRO_BATCH.get(name.removeprefix("gpt-")))
        data = random_tokens(**data_kw)
        start_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        bare = math.nan if args.engine_only else bare_loop(lambda: GPT(d, **model_kw), data, next_token_loss, **common)
        after_bare = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        eng = engine("examples.gpt_tinystories.model:GPT", model_kw, "d_model", d, "benchmarks.bench_train:random_tokens",
                     data_kw, "examples.gpt_tinystories.loss:next_token_loss", **common)
        per_sample = args.seq
        flops = gpt_flops_per_token(d, layers, vocab, args.seq)
    row = {"case": name, "bare_tokens_per_s": bare * per_sample, "engine_tokens_per_s": eng * per_sample,
           "ratio": eng / bare}
    if flops is not None:
        n = GPT(d, **model_kw).num_params()
        gpus = int(__import__("os").environ.get("WORLD_SIZE", "1"))  # MFU per GPU
        row.update(num_params=n, micro_batch=common["micro"], cuda_bytes_at_start=start_bytes,
                   cuda_bytes_after_bare=after_bare,
                   cuda_bytes_after_engine=torch.cuda.memory_allocated(device) if device.type == "cuda" else 0, bare_mfu=bare * per_sample * flops / PEAK, engine_mfu=eng * per_sample * flops / (PEAK * gpus))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--sizes", nargs="*", help="GPT sizes for the gpu preset (default all)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--engine-only", action="store_true",
                        help="time only the engine (e.g. under torchrun, to measure data-parallel scaling)")
    args = parser.parse_args()
    import os

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.preset == "gpu":
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if args.preset == "gpu" else torch.device("cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.preset == "cpu":
        args.batch, args.precision, args.compile = 64, "fp32", False
        args.steps, args.warmup = args.steps or 200, args.warmup or 20
        args.vocab, args.seq, args.head_dim, args.samples = 1024, 64, 16, 1024
        cases = [("mlp-w128", "mlp", {"width": 128, "depth": 2}), ("mlp-w256", "mlp", {"width": 256}),
                 ("gpt-d64-L2", "gpt", {"d_model": 64, "num_layers": 2}),
                 ("quickstart-d32", "gpt", {"d_model": 32, "num_layers": 2, "quickstart": True})]
        args.batch_gpt = 16
    else:
        args.batch, args.precision, args.compile = 128, "bf16", True
        args.steps, args.warmup = args.steps or 60, args.warmup or 20
        args.vocab, args.seq, args.head_dim, args.samples = 8192, 1024, 64, 1024
        cases = [(f"gpt-{k}", "gpt", {"d_model": d, "num_layers": L}) for k, (d, L) in GPT_SIZES.items()
                 if not args.sizes or k in args.sizes]
    rows = []
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    say = print if local_rank == 0 else (lambda *a, **k: None)
    say(f"device: {device_name} x {world} process(es); torch {torch.__version__}; global batch {args.batch}; "
        f"steps {args.steps} (warm-up {args.warmup}); precision {args.precision}; compile {args.compile}")
    for name, kind, cfg in cases:
        if args.preset == "cpu" and kind == "gpt":
            args.batch = 8 if cfg.get("quickstart") else args.batch_gpt  # the quickstart's batch
        row = run_case(name, kind, args, device, **cfg)
        rows.append(row)
        mfu = f"  MFU bare {row['bare_mfu']:.1%} engine {row['engine_mfu']:.1%}" if "bare_mfu" in row and device.type == "cuda" else ""
        n = f" N={row['num_params'] / 1e6:.1f}M" if "num_params" in row else ""
        say(f"{name:12s}{n:>10s}  bare {row['bare_tokens_per_s']:>12,.0f} tok/s  engine {row['engine_tokens_per_s']:>12,.0f} tok/s"
              f"  ratio {row['ratio']:.3f}{mfu}", flush=True)
    if args.out and local_rank == 0:
        Path(args.out).write_text(json.dumps({"device": device_name, "processes": world, "torch": torch.__version__,
                                              "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
