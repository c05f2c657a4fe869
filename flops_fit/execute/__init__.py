"""Execute stage: train pending experiments of a Plan into the Store."""

from .runner import RunEvent, run_plan
from .worker import train_experiment

__all__ = ["RunEvent", "run_plan", "train_experiment"]
