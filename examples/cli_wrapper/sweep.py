"""A user's own command-line tool that embeds flops-fit with Python objects.

    python -m examples.cli_wrapper.sweep --budgets 1e11 3e11 1e12 --sizes 16 32 48 64 96

It passes the model class, the dataset factory and the loss function as objects to
``flops_fit.find_optimal``; they live in importable modules, so their import paths identify
them in the cache (a lambda or a class defined in ``__main__`` would need ``cache_key=``).
"""

from __future__ import annotations

import argparse

import flops_fit
from examples.gpt_tinystories.data import load
from examples.gpt_tinystories.loss import next_token_loss
from examples.gpt_tinystories.model import GPT


def main(argv: list[str] | None = None) -> flops_fit.Result:
    parser = argparse.ArgumentParser(description="Compute-optimal GPT size for my TinyStories setup.")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1e11, 3e11, 1e12])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 48, 64, 96])
    parser.add_argument("--predict", type=float, nargs="*", default=[1e15])
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args(argv)

    result = flops_fit.find_optimal(
        model_cls=GPT, model_size_param="d_model", model_sizes=args.sizes,
        model_kwargs={"num_layers": 2, "vocab_size": 1024, "seq_len": 64},
        dataset=load, dataset_kwargs={"seq_len": 64}, tokens_per_sample=64,
        loss_fn=next_token_loss, compute_budgets=args.budgets,
        name="cli_wrapper", runs_dir=args.runs_dir,
        train={"batch_size": 32, "learning_rate": 1e-2},
        analysis={"predict": args.predict, "bootstrap": 100},
    )
    for budget in args.predict:
        best = result.predict(budget)["parametric"]
        print(f"C = {budget:.1e} FLOPs: d_model ≈ {best['size']}, N = {best['num_params']:.3g}, "
              f"D = {best['num_tokens']:.3g} tokens, loss ≈ {best['loss']:.3f}")
    return result


if __name__ == "__main__":
    main()
