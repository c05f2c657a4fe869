"""A whole sweep (or a slice of one) against a bare loop that uses the same technique and against
the arithmetic limit.

    python -m benchmarks.bench_sweep specs/gutenberg_gpu.toml --budgets 3e13 7.5e13 \\
        --config graphs:auto:6 --config graphs:off:6 --out docs/gutenberg_gpu/sweep_bench.json

Each ``--config`` is ``NAME:CUDA_GRAPHS:WORKERS_PER_GPU[:GROUP]``: the spec's sweep (restricted to
``--budgets``; ``--seeds K`` trains seeds 0..K-1 of every cell) is trained by ``Spec.run`` into its
own store (``runs/<spec>_bench_<NAME>``, trained afresh unless ``--keep``) and timed from the call to
the last result.  ``--transfer MAX_STEPS`` times ``Spec.transfer(middle=True, max_steps=...)``
(the learning-rate sweep: every size at seven rates) instead of the sweep.  Reported:

* per size: steps, seconds a step (the engine's own clock, evaluation excluded; packed workers
  share the GPU, so this is the step time under sharing), achieved FLOP/s and MFU;
* per sweep: wall-clock, FLOPs (measured per sample, as the fit uses), sweep-level MFU =
  FLOPs / (wall × peak), GPU-hours, and the arithmetic limit: the wall-clock at 40% of peak;
* the bare loop, one process, the same model, batches already on the GPU, bf16 autocast,
  fused AdamW, clipping, eager or with forward + backward + clip captured in a CUDA graph
  (``torch.cuda.graph``, the optimizer eager, as the engine does): seconds a step per size, the
  capture's cost, and the sweep's steps at those rates (``bare_sweep_seconds``).

peak = 989 TFLOP/s (H100 SXM dense bf16; ``--peak`` for another device).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch

PEAK = 989e12
LIMIT_MFU = 0.4


def _spec(path: str, name: str, graphs: str, workers: int, budgets: list[float] | None, group: str,
          seeds: int):
    from flops_fit import Spec

    spec = Spec.load(path)
    sweep = spec.sweep.model_copy(update={"budgets": budgets}) if budgets else spec.sweep
    if seeds:
        sweep = sweep.model_copy(update={"seeds": list(range(seeds)), "seed_budgets": [],
                                         "replicate": "all"})
    train = spec.train.model_copy(update={"cuda_graphs": graphs, "workers_per_gpu": workers, "group": group})
    return spec.model_copy(update={"name": f"{spec.name}_bench_{name}", "sweep": sweep, "train": train})


def engine_sweep(path: str, name: str, graphs: str, workers: int, budgets, peak: float, fresh: bool,
                 group: str = "off", seeds: int = 0, transfer: int = 0) -> dict:
    """Train the sweep (or the transfer check) with flops-fit; per-size and sweep-level numbers from
    its records."""
    spec = _spec(path, name, graphs, workers, budgets, group, seeds)
    store = Path(spec.run_dir)
    if fresh and store.exists():
        shutil.rmtree(store)
    t0 = time.perf_counter()
    if transfer:
        spec.transfer(middle=True, max_steps=transfer)
    else:
        spec.run(report=False)
    wall = time.perf_counter() - t0
    records = [json.loads(p.read_text()) for p in store.glob("experiments/*/result.json")]
    by_size = defaultdict(lambda: {"steps": 0, "seconds": 0.0, "flops": 0.0, "runs": 0})
    for r in records:
        own_steps = r["steps"] - (r.get("branch_step") or 0)
        s = by_size[r["size"]]
        s["steps"] += own_steps
        s["seconds"] += r["train_seconds"] - r.get("trunk_seconds", 0.0)
        s["flops"] += own_steps * r["batch_size"] * r["flops_per_sample"]
        s["runs"] += 1
        s["flops_per_step"] = r["batch_size"] * r["flops_per_sample"]
        s["notes"] = sorted(set(s.get("notes", [])) | {n for n in r["notes"]
                                                       if "CUDA graphs" in n or "group" in n})
    sizes = {str(k): {**v, "ms_per_step": 1e3 * v["seconds"] / max(1, v["steps"]),
                      "tflops": v["flops"] / max(1e-9, v["seconds"]) / 1e12,
                      "mfu": v["flops"] / max(1e-9, v["seconds"]) / peak}
             for k, v in sorted(by_size.items())}
    flops = sum(v["flops"] for v in by_size.values())
    return {"name": name, "cuda_graphs": graphs, "workers_per_gpu": workers, "group": group,
            "seeds": seeds, "transfer_steps": transfer, "experiments": len(records),
            "failed": sum(r["status"] == "failed" for r in records), "wall_seconds": wall, "flops": flops,
            "mfu": flops / wall / peak, "gpu_hours": wall / 3600, "limit_seconds": flops / (LIMIT_MFU * peak),
            "worker_seconds": sum(v["seconds"] for v in by_size.values()),
            "steps": sum(v["steps"] for v in by_size.values()), "sizes": sizes,
            "losses": {r["id"]: r["loss"] for r in records}}


def bare_step(path: str, size, graphs: bool, steps: int, warmup: int = 20) -> dict:
    """Seconds a step of a hand-written loop for one size (and the capture's seconds)."""
    from flops_fit import Spec
    from flops_fit.spec.components import build_data, build_loss, build_model

    job = next(e.job for e in Spec.load(path).plan().experiments if e.job.size == size)
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(job.model.target, job.size_param, size, job.model.kwargs, job.search_path).to(device)
    loss_fn = build_loss(job.loss.target, job.loss.kwargs, job.search_path)
    data = build_data(job.data.target, job.data.kwargs, job.search_path)
    b = job.loop.batch_size
    x_all, y_all = (t[: 64 * b].to(device) for t in data.tensors)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), fused=True)
    batches = [(x_all[i * b:(i + 1) * b], y_all[i * b:(i + 1) * b]) for i in range(64)]
    params = [p for p in model.parameters()]
    acc = torch.zeros((), device=device)

    def fwd_bwd(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        acc.add_(loss.detach().float())

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            fwd_bwd(*batches[i])
            opt.step()
            opt.zero_grad(set_to_none=True)
    torch.cuda.current_stream().wait_stream(side)
    capture = 0.0
    if graphs:
        t0 = time.perf_counter()
        sx, sy = batches[0][0].clone(), batches[0][1].clone()
        opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fwd_bwd(sx, sy)
        torch.cuda.synchronize()
        capture = time.perf_counter() - t0

    def step(i):
        x, y = batches[i % 64]
        if graphs:
            sx.copy_(x, non_blocking=True)
            sy.copy_(y, non_blocking=True)
            graph.replay()
            opt.step()
        else:
            fwd_bwd(x, y)
            opt.step()
            opt.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    torch.cuda.synchronize()
    return {"ms_per_step": 1e3 * (time.perf_counter() - t0) / steps, "capture_seconds": capture}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec")
    p.add_argument("--budgets", type=float, nargs="*", help="the sweep's budgets to train (default: all)")
    p.add_argument("--config", action="append", default=[], help="NAME:CUDA_GRAPHS:WORKERS_PER_GPU[:GROUP]")
    p.add_argument("--seeds", type=int, default=0, help="train seeds 0..K-1 of every cell")
    p.add_argument("--transfer", type=int, default=0, metavar="MAX_STEPS",
                   help="time the transfer check (--middle, MAX_STEPS) instead of the sweep")
    p.add_argument("--no-bare", action="store_true", help="skip the bare loop")
    p.add_argument("--bare-steps", type=int, default=200)
    p.add_argument("--peak", type=float, default=PEAK)
    p.add_argument("--keep", action="store_true", help="reuse stores of earlier runs (default: train afresh)")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    out = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "peak": a.peak,
           "limit_mfu": LIMIT_MFU, "budgets": a.budgets, "sweeps": [], "bare": {}}
    for config in a.config or ["graphs:auto:1", "eager:off:1"]:
        name, graphs, workers, *group = config.split(":")
        out["sweeps"].append(engine_sweep(a.spec, name, graphs, int(workers), a.budgets, a.peak, not a.keep,
                                          group[0] if group else "off", a.seeds, a.transfer))
        _print_sweep(out["sweeps"][-1])
        if a.out:
            a.out.write_text(json.dumps(out, indent=1))
    bare = torch.cuda.is_available() and not a.no_bare
    sizes = sorted({int(k) for s in out["sweeps"] for k in s["sizes"]}) if bare else []
    for size in sizes:  # the bare loop needs CUDA (graphs); on CPU only the engine's numbers
        out["bare"][str(size)] = {mode: bare_step(a.spec, size, mode == "graphs", a.bare_steps)
                                  for mode in ("eager", "graphs")}
        torch.cuda.empty_cache()
    for s in out["sweeps"]:
        mode = "eager" if s["cuda_graphs"] == "off" else "graphs"
        s["bare_sweep_seconds"] = sum(v["steps"] * out["bare"][k][mode]["ms_per_step"] / 1e3
                                      for k, v in s["sizes"].items() if k in out["bare"])
        for k, v in s["sizes"].items():
            v["bare_ms_per_step"] = out["bare"].get(k, {}).get(mode, {}).get("ms_per_step")
    base = out["sweeps"][0]["losses"]
    for s in out["sweeps"][1:]:
        same = [k for k in base if k in s["losses"] and s["losses"][k] == base[k]]
        s["losses_identical_to_first"] = f"{len(same)}/{len(base)}"
        diffs = [abs(s["losses"][k] - base[k]) / base[k] for k in base if k in s["losses"] and base[k]]
        s["max_relative_loss_difference"] = max(diffs, default=math.nan)
    print(json.dumps({k: v for k, v in out.items() if k != "sweeps"}, indent=1))
    for s in out["sweeps"]:
        print(f"{s['name']}: wall {s['wall_seconds']:.1f} s, bare (same technique, serial) "
              f"{s['bare_sweep_seconds']:.1f} s, limit {s['limit_seconds']:.1f} s, sweep MFU {s['mfu']:.2%}, "
              f"losses vs first {s.get('losses_identical_to_first', '-')}")
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


def _print_sweep(s: dict) -> None:
    print(f"{s['name']} (cuda_graphs={s['cuda_graphs']}, workers={s['workers_per_gpu']}, "
          f"group={s['group']}): "
          f"{s['experiments']} runs, {s['failed']} failed, wall {s['wall_seconds']:.1f} s, "
          f"{s['flops']:.3g} FLOPs, MFU {s['mfu']:.2%}, "
          f"limit {s['limit_seconds']:.1f} s, worker time {s['worker_seconds']:.0f} s / {s['steps']} steps",
          flush=True)
    for k, v in s["sizes"].items():
        print(f"  size {k}: {v['runs']} runs, {v['steps']} steps, {v['ms_per_step']:.2f} ms/step, "
              f"{v['tflops']:.2f} TFLOP/s, MFU {v['mfu']:.2%} {' '.join(v['notes'])}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
