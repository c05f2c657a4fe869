"""Experiment trackers through accelerate: one run per experiment, grouped by the spec's name, and a summary run.

``[train] log_with`` names any tracker the installed accelerate knows (``spec.types.known_trackers()``:
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
    return [f"{k}={config[k]}" for k in ("spec", "budget_flops", "size", "num_params",
                                         "num_tokens") if k in config]


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


def log_summary(accelerator: Any, group: str, logging_dir: str | Path, scalars: dict[str, float],
                tables: dict[str, tuple[list[str], list[list]]], images_dir: str | Path,
                config: dict) -> None:
    """The ``summary`` run of a sweep: ``scalars``, ``tables`` (name -> (columns, rows); logged as tables
    where the tracker has ``log_table``, else as CSV text named ``<name>_csv``) and the PNGs of ``images_dir``."""
    import csv
    import io

    import matplotlib.image as mpimg

    images = {png.stem: mpimg.imread(png)[None, ..., :3]  # (1, H, W, 3)
              for png in sorted(Path(images_dir).glob("*.png"))}
    start_run(accelerator, group, "summary", logging_dir, config)
    try:
        for tracker in accelerator.trackers:
            tracker.log(scalars, step=0)
            for name, (columns, rows) in tables.items():
                if hasattr(tracker, "log_table"):
                    tracker.log_table(name, columns=columns, data=rows, step=0)
                else:
                    buf = io.StringIO()
                    csv.writer(buf).writerows([columns, *rows])
                    tracker.log({f"{name}_csv": buf.getvalue()}, step=0)
            if images and hasattr(tracker, "log_images"):
                kwargs = {"dataformats": "NHWC"} if getattr(tracker, "name", "") == "tensorboard" else {}
                tracker.log_images(images, step=0, **kwargs)
    finally:
        finish_runs(accelerator)
