"""Stage 3, execution: train pending experiments of a Plan into the Store — one experiment
(``worker``, ``step``, ``checkpoint``), a process's session and runner, and placement: in
process, local worker processes (``launch``), data-parallel relaunch, or Slurm (``dispatch``).

Nothing is imported here: importing ``flops_fit.execute.placement`` (which every verb does)
must not load torch before a verb trains; ``RunEvent``, ``run_plan`` and ``train_experiment``
load on first use."""

_LAZY = {"RunEvent": "runner", "run_plan": "runner", "train_experiment": "worker"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'flops_fit.execute' has no attribute {name!r}")


__all__ = ["RunEvent", "run_plan", "train_experiment"]
