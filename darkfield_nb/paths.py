"""Where the shipped sample data and the pretrained checkpoint live.

The package is used from a clone (editable install), so ``data_samples/`` sits beside the
``darkfield_nb/`` folder. ``DARKFIELD_NB_SAMPLES`` overrides that, for installs elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

PRETRAINED_NAME = "pretrained.pt"


def repo_root() -> Path:
    """The folder holding ``darkfield_nb/`` (the clone's root in an editable install)."""
    return Path(__file__).resolve().parent.parent


def sample_data_dir() -> Path:
    """The shipped sample data set: ``$DARKFIELD_NB_SAMPLES`` or ``<repo>/data_samples``."""
    env = os.environ.get("DARKFIELD_NB_SAMPLES")
    return Path(env) if env else repo_root() / "data_samples"


def pretrained_checkpoint() -> Path:
    """Path of the shipped pretrained model (it may not exist yet: check ``.exists()``)."""
    return sample_data_dir() / PRETRAINED_NAME
