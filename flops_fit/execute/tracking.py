"""Experiment trackers through accelerate: one run per experiment, grouped by the spec's name, and a summary run.

``[train] log_with`` names any tracker the installed accelerate knows (``spec.known_trackers()``:
tensorboard, wandb, mlflow, aim, comet_ml, clearml, dvclive, swanlab, trackio, ...).  Every
experiment is one tracker run named by its id, in a group named by the spec:

* tensorboard: ``runs/<name>/tracking/<name>/<experiment id>/`` (one folder per spec);
* wandb: project = the spec name, ``group`` = the spec name, ``name`` = the id, ``tags`` below;
* mlflow: experiment = the spec name, ``run_name`` = the id, ``tags`` below;
* any other: run/project name = the spec name, the id in the run's configuration.

Each run's configuration (and wandb/mlflow tags) carries the spec, id, budget, size, N and D,
steps and FLOPs.  After the analysis one ``summary`` run in the same group carries the fitted
parameters as scalars, the points table and the Chinchilla table (as tables where the tracker
has ``log_table``, as text otherwise) and the report's figures (``log_images``, where it has it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["start_run", "finish_runs", "log_summary"]


def _tags(config: dict) -> list[str]:
    return [f"{k}={config[k]}" for k in ("spec", "budget_flops", "size", "num_params", "num_tokens") if k in config]


def _make(name: str, group: str, run: str, logging_dir: Path, config: dict):
    """One accelerate tracker of type ``name`` for run ``run`` of ``group``."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[name]
    if name == "tensorboard":
        return cls(f"{group}/{run}", logging_dir)
    if name == "wandb":
        return cls(group, name=run, group=group, tags=_tags(config))
    if name == "mlflow":
        return cls(experiment_name=group, logging_dir=str(logging_dir), run_name=run,
                   tags={k: str(v) for k, v in config.items()})
    if cls.requires_logging_directory:
        return cls(group, logging_dir)
    return cls(group)


def start_run(accelerator: Any, group: str, run: str, logging_dir: str | Path, config: dict) -> None:
    """Open one tracker run per ``accelerator.log_with`` entry (a name, or a GeneralTracker instance
    used as given) for ``run`` in ``group``, store ``config`` and make them the accelerator's trackers."""
    from accelerate.tracking import GeneralTracker

    config = {"spec": group, "id": run, **config}
    trackers = []
    for entry in accelerator.log_with:
        if isinstance(entry, GeneralTracker):
            tracker = entry
        else:
            tracker = _make(str(entry), group, run, Path(logging_dir), config)
        tracker.start()
        tracker.store_init_configuration(config)
        trackers.append(tracker)
    accelerator.trackers = trackers


def finish_runs(accelerator: Any) -> None:
    """Close the open runs (not ``accelerator.end_training()``: it also ends the process group)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def log_summary(accelerator: Any, group: str, logging_dir: str | Path, result: Any, report_dir: str | Path) -> None:
    """The ``summary`` run of a sweep: fitted values, the points and Chinchilla tables, the figures."""
    from .. import runs_table

    f = result.fits
    scalars: dict[str, float] = {}
    if f.parametric is not None:
        scalars |= {f"parametric/{k}": float(getattr(f.parametric, k)) for k in ("E", "A", "B", "alpha", "beta", "a", "b")}
    if f.isoflop is not None:
        scalars |= {"isoflop/a": float(f.isoflop.n_opt.exponent), "isoflop/b": float(f.isoflop.d_opt.exponent)}
    if f.noise is not None:
        scalars["noise/std"] = float(f.noise.std)
    table = result.chinchilla_table()
    columns = result._columns()
    rows = [list(r) for r in zip(*(columns[c] for c in runs_table.COLUMNS))]
    chin_cols = [k for k, _ in table.COLUMNS]
    chin_rows = [[_cell(getattr(r, k)) for k in chin_cols] for r in table.rows]
    images = {}
    for png in sorted(Path(report_dir).glob("*.png")):
        import matplotlib.image as mpimg

        images[png.stem] = mpimg.imread(png)[None, ..., :3]  # (1, H, W, 3) in [0, 1]
    start_run(accelerator, group, "summary", logging_dir, {"points": f.num_points, "flop_rule": result.flop_rule})
    try:
        for tracker in accelerator.trackers:
            tracker.log(scalars, step=0)
            if hasattr(tracker, "log_table"):
                tracker.log_table("points", columns=list(runs_table.COLUMNS), data=[[_cell(v) for v in r] for r in rows], step=0)
                tracker.log_table("chinchilla_table", columns=chin_cols, data=chin_rows, step=0)
            else:
                tracker.log({"points_csv": runs_table.rows_csv(columns), "chinchilla_table": table.to_markdown()}, step=0)
            if images and hasattr(tracker, "log_images"):
                kwargs = {"dataformats": "NHWC"} if getattr(tracker, "name", "") == "tensorboard" else {}
                tracker.log_images(images, step=0, **kwargs)
    finally:
        finish_runs(accelerator)


def _cell(v: Any) -> Any:
    if isinstance(v, list):
        return "–".join(f"{x:.3g}" for x in v)
    return "" if v is None else v
