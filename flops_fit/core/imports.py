"""Resolve import paths such as ``"pkg.mod:attr"`` or ``"pkg.mod.attr"``.

Paths are resolved with extra folders (the spec's folder, the working directory) put on
``sys.path`` for the duration of the import, so a spec next to the user's ``model.py``
just works.  Failures raise :class:`ImportPathError` with close names listed.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["ImportPathError", "IMPORT_PATH_RE", "register", "resolve", "import_path_of", "search_path",
           "source_digest"]

IMPORT_PATH_RE = re.compile(r"^(@[\w.-]+|[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*(:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*)?)$")

#: Objects handed over in Python (``find_optimal``) that have no stable import path live
#: here under ``"@<cache_key>"``; they resolve only in the process that registered them.
_REGISTRY: dict[str, Any] = {}


def register(obj: Any, cache_key: str) -> str:
    """Register ``obj`` under ``cache_key`` and return its path ``"@cache_key"``."""
    path = f"@{cache_key}"
    _REGISTRY[path] = obj
    return path


class ImportPathError(Exception):
    """An import path could not be resolved; ``str(err)`` says why and lists close names."""


@contextlib.contextmanager
def search_path(folders: Sequence[str | Path]) -> Iterator[None]:
    """Temporarily put ``folders`` first on ``sys.path``."""
    added = [str(Path(f).resolve()) for f in folders if f is not None]
    added = [f for f in dict.fromkeys(added) if f not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _split(path: str) -> list[tuple[str, str]]:
    """Candidate (module, attribute chain) splits of ``path``."""
    if ":" in path:
        module, attr = path.split(":", 1)
        return [(module, attr)]
    parts = path.split(".")
    return [(".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)]


def _close(name: str, options: Sequence[str]) -> str:
    public = [o for o in options if not o.startswith("_")]
    near = difflib.get_close_matches(name, public, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""


def _import_module(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if missing != module and not module.startswith(missing + "."):
            raise ImportPathError(f"importing module {module!r} failed: {exc}") from exc
        parent, _, leaf = missing.rpartition(".")
        options: list[str] = []
        if parent:
            with contextlib.suppress(Exception):
                pkg = importlib.import_module(parent)
                options = [p.stem for p in Path(pkg.__file__).parent.iterdir()] if pkg.__file__ else []
        else:
            options = [p.stem for p in Path.cwd().iterdir() if p.suffix == ".py" or p.is_dir()]
        raise ImportPathError(f"module {missing!r} not found{_close(leaf, options)}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise ImportPathError(f"importing module {module!r} raised {type(exc).__name__}: {exc}") from exc
    except SystemExit as exc:  # the user's module ran a script's exit at import
        raise ImportPathError(f"importing module {module!r} called sys.exit({exc.code!r}); move script code under "
                              f"`if __name__ == '__main__':`") from None


def resolve(path: str, folders: Sequence[str | Path] = ()) -> Any:
    """Import ``path`` (``"module:attr"`` or ``"module.attr"``) and return the object."""
    if not isinstance(path, str) or not IMPORT_PATH_RE.match(path):
        raise ImportPathError(f"{path!r} is not an import path like 'package.module:name'")
    if path.startswith("@"):
        if path not in _REGISTRY:
            raise ImportPathError(f"{path!r} names an object registered in another process; pass the object again")
        return _REGISTRY[path]
    with search_path([*folders, Path.cwd()]):
        last_error: ImportPathError | None = None
        for module_name, attrs in _split(path):
            try:
                obj = _import_module(module_name)
            except ImportPathError as exc:
                last_error = last_error or exc
                if ":" in path:
                    raise
                continue
            for attr in attrs.split("."):
                if not hasattr(obj, attr):
                    raise ImportPathError(
                        f"module {module_name!r} has no attribute {attr!r}{_close(attr, dir(obj))}"
                    )
                obj = getattr(obj, attr)
            return obj
        raise last_error or ImportPathError(f"cannot import {path!r}")


def import_path_of(obj: Any) -> str | None:
    """The stable ``module:qualname`` of ``obj``, or None (lambdas, locals, ``__main__``)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module is None or qualname is None:
        return None
    if module == "__main__" or "<" in qualname:
        return None
    try:
        found = resolve(f"{module}:{qualname}")
    except ImportPathError:
        return None
    return f"{module}:{qualname}" if found is obj else None


def source_digest(paths: Sequence[str], folders: Sequence[str | Path] = ()) -> dict[str, str]:
    """sha256 (12 hex) of the source file of each import path's module, found without importing it.

    What the user's model, data and loss code says is not in an experiment's id (ids stay stable
    across refactors); recording it lets ``run`` warn when a finished result was trained by code
    that has changed since.  Objects without a source file (``@`` registrations, builtins) are skipped.
    """
    import hashlib
    import importlib.util

    out = {}
    for path in paths:
        if not path or path.startswith("@"):
            continue
        module = path.split(":")[0] if ":" in path else path.rsplit(".", 1)[0]
        try:
            with search_path(folders):
                spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        origin = getattr(spec, "origin", None) if spec else None
        if origin and Path(origin).is_file():
            out[module] = hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:12]
    return out
