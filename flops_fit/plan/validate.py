"""Fail fast, all at once: every check that can fail before any training.

``check(spec)`` resolves every import path, checks the model constructor's signature
against ``size_param`` and ``kwargs``, builds the data and checks what it yields, builds
every size on the meta device, compiles the plan (a budget that fits no size is an
error), then runs a real smoke step on the smallest model: one small batch, forward,
loss (a finite scalar tensor), backward.  Problems from the user's code carry the spec
key that led to them.  It writes nothing; it returns the Plan when all is well and
raises :class:`SpecError` with every problem otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import difflib
import inspect
import math
import traceback
from typing import Any, Callable

from ..spec.components import (
    build_data, build_loss, build_model, call_model, first_batch, is_data_source, split_batch)
from ..core.errors import FlopsFitError, Problem, SpecError
from ..core.imports import ImportPathError, resolve
from .plan import Plan, compile_plan, sample_batch, size_info
from ..spec.spec import SpecModel

__all__ = ["check"]


class _Checker:
    def __init__(self, spec: SpecModel):
        self.spec = spec
        self.folders = [str(spec.folder)]
        self.problems: list[Problem] = []

    def add(self, key: str, message: str, hint: str | None = None, **kw: Any) -> None:
        self.problems.append(Problem(message, key=key, file=self.spec.source, hint=hint, **kw))

    def user_error(self, key: str, what: str, exc: BaseException) -> None:
        if isinstance(exc, FlopsFitError):
            for p in exc.problems:
                self.add(p.key or key, p.message, p.hint)
            return
        frame = _user_frame(exc)
        self.add(key, f"{what} raised {type(exc).__name__}: {exc}{frame}")

    def resolve(self, key: str, path: str | None) -> Any:
        if path is None:
            return None
        try:
            return resolve(path, self.folders)
        except ImportPathError as exc:
            self.add(key, str(exc), value=path, has_value=True, hint="check the import path 'module:attr'")
            return None


def _user_frame(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename and "flops_fit" not in f.filename]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _check_signature(c: _Checker, key: str, factory: Callable, given: dict[str, Any], what: str) -> bool:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return True
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                        inspect.Parameter.KEYWORD_ONLY)]
    ok = True
    for name, source_key in given.items():
        if name not in params and not takes_any:
            near = difflib.get_close_matches(name, names, n=1)
            c.add(source_key, f"{what} accepts no argument '{name}'",
                  hint=f"did you mean '{near[0]}'?" if near else f"it accepts: {', '.join(names) or 'nothing'}")
            ok = False
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                               inspect.Parameter.KEYWORD_ONLY) \
                and name not in given:
            c.add(key, f"{what} requires argument '{name}', which the spec does not give",
                  hint=f"add it to {key.rsplit('.', 1)[0]}.kwargs")
            ok = False
    return ok


def _check_model(c: _Checker) -> bool:
    m = c.spec.model
    factory = c.resolve("model.target", m.target)
    if factory is None:
        return False
    if not callable(factory):
        c.add("model.target", f"{m.target!r} is not callable",
              hint="name a torch.nn.Module class or a factory function")
        return False
    given = {k: f"model.kwargs.{k}" for k in m.kwargs}
    if m.size_param in m.kwargs:
        c.add(f"model.kwargs.{m.size_param}", "the size parameter is also given in kwargs",
              hint="remove it: model.sizes sets it")
        return False
    given[m.size_param] = "model.size_param"
    return _check_signature(c, "model.target", factory, given, f"model {m.target!r}")


def _check_data(c: _Checker, key: str, path: str | None, kwargs: dict) -> Any:
    obj = c.resolve(f"{key}", path)
    if obj is None:
        return None
    if not is_data_source(obj):
        if not callable(obj):
            c.add(key, f"{path!r} is neither a dataset nor callable",
                  hint="name a function or class returning a Dataset, IterableDataset or DataLoader")
            return None
        prefix = "data.kwargs" if key == "data.target" else "data.eval_kwargs"
        if not _check_signature(c, key, obj, {k: f"{prefix}.{k}" for k in kwargs}, f"data target {path!r}"):
            return None
    try:
        data = build_data(obj, kwargs, c.folders)
    except Exception as exc:  # the user's loader failed
        c.user_error(key, f"data target {path!r}", exc)
        return None
    if not is_data_source(data):
        c.add(key, f"data target returned {type(data).__name__}, expected a torch Dataset, "
                   "IterableDataset or DataLoader")
        return None
    from torch.utils.data import IterableDataset

    if hasattr(data, "__len__") and not isinstance(data, IterableDataset):
        try:
            if len(data) == 0:
                c.add(key, "the dataset is empty")
                return None
        except TypeError:
            pass
    return data


def _check_loss(c: _Checker) -> Callable | None:
    fn = c.resolve("loss.target", c.spec.loss.target)
    if fn is None:
        return None
    if not callable(fn):
        c.add("loss.target", f"{c.spec.loss.target!r} is not callable",
              hint="name a function loss(outputs, targets) -> scalar tensor")
        return None
    return build_loss(fn, c.spec.loss.kwargs)


def _check_trackers(c: _Checker) -> None:
    """Every ``log_with`` tracker importable (the names were checked against accelerate's at load)."""
    if not c.spec.train.log_with:
        return
    from accelerate.tracking import get_available_trackers  # accelerate's own availability checks

    available = {getattr(t, "value", t) for t in get_available_trackers()}
    for i, name in enumerate(c.spec.train.log_with):
        if name not in available:
            c.add(f"train.log_with[{i}]", f"tracker {name!r} is not installed",
                  hint=f"pip install {name}, or remove it")


def _smoke(c: _Checker, data: Any, loss_fn: Callable) -> None:
    """Smallest model on CPU: one batch of 2, forward, loss, backward."""
    spec = c.spec
    size = spec.model.sizes[0]
    try:
        batch = first_batch(data, 2)
        inputs, targets = split_batch(batch)
    except Exception as exc:
        c.user_error("data.target", "taking one batch from the data", exc)
        return
    try:
        model = build_model(spec.model.target, spec.model.size_param, size, spec.model.kwargs, c.folders)
        outputs = call_model(model, inputs)
    except Exception as exc:
        c.user_error("model.target", f"the model at {spec.model.size_param}={size} on one batch", exc)
        return
    try:
        loss = loss_fn(outputs, targets)
    except Exception as exc:
        c.user_error("loss.target", "the loss on the model's outputs", exc)
        return
    import torch

    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        c.add("loss.target", f"the loss must return a scalar tensor, got {shape}",
              hint="reduce it, e.g. with .mean()")
        return
    if not math.isfinite(float(loss.detach())):
        c.add("loss.target", f"the loss on the first batch is not finite ({float(loss.detach())})")
        return
    if not loss.requires_grad:
        c.add("loss.target", "the loss does not depend on the model's parameters (no gradient)")
        return
    try:
        loss.backward()
    except Exception as exc:
        c.user_error("loss.target", "backward through the loss", exc)


def _builds(spec: SpecModel, size) -> bool:
    """Whether the model at ``size`` builds on the meta device (tells a model error from a FLOP-rule error)."""
    try:
        build_model(spec.model.target, spec.model.size_param, size, spec.model.kwargs, [str(spec.folder)],
                    device="meta")
        return True
    except Exception:
        return False


def check(spec: SpecModel, smoke: bool = True) -> Plan:
    """Run every check; return the Plan, or raise SpecError listing every problem."""
    c = _Checker(spec)
    model_ok = _check_model(c)
    data = _check_data(c, "data.target", spec.data.target, spec.data.kwargs)
    if spec.data.eval_target:
        _check_data(c, "data.eval_target", spec.data.eval_target, spec.data.eval_kwargs)
    loss_fn = _check_loss(c)
    for key, path in (("flops.target", spec.flops.target), ("train.optimizer", spec.train.optimizer)):
        obj = c.resolve(key, path)
        if path and obj is not None and not callable(obj):
            c.add(key, f"{path!r} is not callable")
    _check_trackers(c)
    _check_batch_split(c)
    _check_runs_dir(c)
    plan = None
    if model_ok:
        plan = _compile(c, data is not None)
    if plan is not None and smoke and data is not None and loss_fn is not None:
        _smoke(c, data, loss_fn)
    if c.problems:
        raise SpecError(c.problems)
    return plan


def _processes(spec: SpecModel) -> int:
    """Processes one experiment is split over: a torchrun/accelerate launch, or data-parallel GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        return world
    if spec.train.parallel == "data" and spec.train.device != "cpu":
        import torch

        return max(1, torch.cuda.device_count())
    return 1


def _check_runs_dir(c: _Checker) -> None:
    """The run directory can be created and written (not a file, not read-only)."""
    run_dir = Path(c.spec.run_dir)
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            break
    if folder.exists() and not folder.is_dir():
        c.add("runs_dir" if folder != run_dir else "name", f"{folder} is a file, not a folder",
              value=str(folder),
              has_value=True, hint="point runs_dir at a folder (it is created when missing)")
    elif folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        c.add("runs_dir", f"{folder} is not writable by this user", value=str(folder), has_value=True,
              hint="choose a runs_dir you can write, or fix its permissions")


def _check_batch_split(c: _Checker) -> None:
    """Once, before anything is written: the global batch must split over the processes."""
    t = c.spec.train
    world = _processes(c.spec)
    if t.batch_size % world:
        c.add("train.batch_size", f"{t.batch_size} does not split over {world} processes", value=t.batch_size,
              has_value=True, hint=f"use a multiple of {world}")
    elif t.micro_batch_size and (t.batch_size // world) % t.micro_batch_size:
        c.add("train.micro_batch_size", f"{t.batch_size // world} samples per process are not a multiple of "
              f"{t.micro_batch_size}", value=t.micro_batch_size, has_value=True,
              hint="choose a micro-batch that divides batch_size / processes")


def fit_problems(plan: Plan) -> list[str]:
    """Why none of the plan's approaches could give a fit (empty when one can)."""
    per_budget = [len(plan.for_budget(b)) for b in plan.budgets]
    can = {"isoflop": sum(1 for k in per_budget if k >= 3) >= 2, "parametric": len(plan.experiments) >= 5,
           "envelope": len(plan.experiments) >= 2}
    if any(can.get(a, False) for a in plan.approaches):
        return []
    return [f"{len(plan.budgets)} budget(s) with {per_budget} experiments: the IsoFLOP fit needs 2+ budgets of 3+ "
            f"sizes, the parametric fit 5+ experiments"]


def _compile(c: _Checker, data_ok: bool) -> Plan | None:
    """Size table (errors keyed to the size that raised), then the plan."""
    spec = c.spec
    if spec.flops.rule != "6N" and not data_ok:
        return None
    try:
        batch = sample_batch(spec)
    except Exception as exc:
        c.user_error("data.target", "taking one batch from the data", exc)
        return None
    infos = []
    for i, size in enumerate(spec.model.sizes):
        try:
            infos.append(size_info(spec, size, batch))
        except Exception as exc:
            key = f"model.sizes[{i}]" if spec.flops.rule == "6N" or _builds(spec, size) else "flops.rule"
            c.user_error(key, f"building the model at {spec.model.size_param}={size}" if key != "flops.rule"
                         else f"counting FLOPs with rule {spec.flops.rule!r}", exc)
            return None
    try:
        return compile_plan(spec, infos)
    except SpecError as exc:
        c.problems.extend(exc.problems)
        return None
