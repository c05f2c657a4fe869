"""flops-fit: compute-optimal model size, data and loss for your architecture and dataset.

Plan an IsoFLOP sweep from a TOML spec, train it, fit Chinchilla scaling laws and predict
the optimal N, D and loss for any compute budget::

    from flops_fit import Spec
    result = Spec.load("specs/quickstart.toml").run()
    print(result.chinchilla_table().to_markdown())
"""

import os as _os
import sys as _sys

if _sys.orig_argv[1:3] == ["-m", "flops_fit"] or _os.path.basename(_sys.argv[0]) == "flops-fit":
    # The command line (not a library import): a Ctrl-C from here until flops_fit.entry installs
    # its handler is noted and ends the command with its one `interrupted` line (entry.main).
    import signal as _signal

    _early_interrupts: list[int] = []
    _signal.signal(_signal.SIGINT, lambda signum, frame: _early_interrupts.append(signum))

from ._version import __version__

from .core.errors import FlopsFitError, SpecError  # noqa: E402

_LAZY = {"Spec": "api", "find_optimal": "api", "fit": "api", "Result": "report.report", "Points": "analysis",
         "Point": "analysis"}


def __getattr__(name: str):
    """Everything but the errors loads on first use: ``import flops_fit.cli`` (the command line)
    starts without torch, and ``Result``/``Points`` bring the fitting stack (lmfit, scipy)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'flops_fit' has no attribute {name!r}")

__all__ = ["Spec", "find_optimal", "fit", "Result", "Points", "Point", "FlopsFitError", "SpecError",
           "__version__"]
