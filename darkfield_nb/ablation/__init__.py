"""Ablations: expand a YAML grid into runs of notebook 11, run them resumably with papermill,
collect a tidy CSV and a summary figure (``main`` is ``darkfield-nb ablate``)."""

from .experiment import DATA_DIR, LOSSES, TRAIN_DIR, cached_dataset, figures_of_merit, train_config
from .grid import Run, expand_grid, load_grid
from .report import collect, summary_figure
from .runner import Outcome, execute_run, is_complete, main, run_dir, run_grid

__all__ = [
    "DATA_DIR",
    "TRAIN_DIR",
    "LOSSES",
    "Outcome",
    "Run",
    "cached_dataset",
    "collect",
    "execute_run",
    "expand_grid",
    "figures_of_merit",
    "is_complete",
    "load_grid",
    "main",
    "run_dir",
    "run_grid",
    "summary_figure",
    "train_config",
]
