"""Does the spec's learning rate serve its smallest and largest size?  A short LR sweep through flops-fit.

    python -m examples.gutenberg.lr_check specs/gutenberg_gpu.toml --sizes 64 320 --tokens 1e7

For each size and each multiplier m of ``train.learning_rate`` (default 2^-2 .. 2^2) it trains
one ordinary, cached experiment of ``--tokens`` data units with the spec's recipe (warmup,
schedule, batch, precision), prints the final held-out losses, fits a parabola in log2(lr)
around each size's minimum and reports the best learning rate per size and their shift in
octaves.  With μP the best rate should not move with width.  ``--json`` writes the table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def lr_check(spec_path: str, sizes: list[float], tokens: float, multipliers: list[float], on_event=None) -> dict:
    from flops_fit.api import Spec
    from flops_fit.execute.runner import make_accelerator, run_experiments
    from flops_fit.plan.plan import compile_plan, size_infos
    from flops_fit.store.store import Store

    base = Spec.load(spec_path)
    infos = {i.size: i for i in size_infos(base)}
    rows, experiments = [], []
    for m in multipliers:
        data = base.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["name"] = f"{base.name}-lr"
        data["train"]["learning_rate"] = base.train.learning_rate * m
        budgets = sorted({round(tokens / base.data.tokens_per_sample * base.train.batch_size) / base.train.batch_size
                          * infos[s].flops_per_sample for s in sizes})
        data["sweep"].update(budgets=budgets, sizes_per_budget=None, min_steps=1)
        spec = Spec.from_dict(data, source=base.source)
        plan = compile_plan(spec, list(infos.values()))
        for s, budget in zip(sorted(sizes, key=lambda s: infos[s].flops_per_sample), budgets):
            exp = next(e for e in plan.experiments if e.size == s and e.budget_flops == budget)
            experiments.append(exp)
            rows.append({"size": s, "num_params": exp.num_params, "lr": spec.train.learning_rate, "multiplier": m,
                         "id": exp.id, "steps": exp.steps})
    store = Store(base.run_dir.parent / f"{base.name}-lr")
    runtime = plan.runtime.model_copy(update={"log_with": []})
    accelerator = make_accelerator(runtime, str(store.root / "tracking"))
    run_experiments(experiments, store, accelerator, on_event=on_event, runtime=runtime)
    for r in rows:
        res = store.read_result(r["id"])
        r["loss"] = res.loss if res and res.status == "ok" else None
        r["status"] = res.status if res else None
    best = {}
    for s in sizes:
        mine = sorted((math.log2(r["lr"]), r["loss"]) for r in rows if r["size"] == s and r["loss"] is not None)
        if len(mine) < 3:
            continue
        i = int(np.argmin([l for _, l in mine]))
        lo, hi = max(0, i - 1), min(len(mine), i + 2)
        window = mine[lo:hi] if hi - lo == 3 else mine[:3] if i == 0 else mine[-3:]
        x, y = np.array(window).T
        p2, p1, _ = np.polyfit(x, y, 2)
        edge = i in (0, len(mine) - 1)
        x_best = -p1 / (2 * p2) if p2 > 0 and not edge else mine[i][0]
        best[str(s)] = {"best_lr": 2 ** x_best, "at_grid_edge": edge, "min_loss": mine[i][1]}
    out = {"spec": spec_path, "tokens": tokens, "rows": rows, "best": best}
    if len(best) >= 2:
        keys = sorted(best, key=float)
        out["shift_octaves"] = math.log2(best[keys[-1]]["best_lr"] / best[keys[0]]["best_lr"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec")
    parser.add_argument("--sizes", type=float, nargs="+", required=True)
    parser.add_argument("--tokens", type=float, default=1e7)
    parser.add_argument("--multipliers", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4])
    parser.add_argument("--json", default=None, help="write the table here")
    args = parser.parse_args()
    sizes = [int(s) if float(s).is_integer() else s for s in args.sizes]
    out = lr_check(args.spec, sizes, args.tokens, args.multipliers)
    for r in out["rows"]:
        loss = "–" if r["loss"] is None else f"{r['loss']:.4f}"
        print(f"size {r['size']:>6}  N {r['num_params']:>11,}  lr {r['lr']:.3g}  steps {r['steps']:>6}  loss {loss}  {r['status']}")
    for s, b in out["best"].items():
        print(f"size {s}: best lr {b['best_lr']:.3g}{' (grid edge!)' if b['at_grid_edge'] else ''}, loss {b['min_loss']:.4f}")
    if "shift_octaves" in out:
        print(f"shift of the best lr from smallest to largest size: {out['shift_octaves']:+.2f} octaves")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
