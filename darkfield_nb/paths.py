"""Where the shipped sample data, the pretrained checkpoint, run outputs and real radiographs live.

The package is used from a clone (editable install), so ``data_samples/`` sits beside the
``darkfield_nb/`` folder. Environment variables override each default, for installs elsewhere:

===========================  =======================================  ==============================
function                     default                                  override
===========================  =======================================  ==============================
``sample_data_dir()``        ``<repo>/data_samples``                  ``$DARKFIELD_NB_SAMPLES``
``runs_dir()``               ``<repo>/runs``                          ``$DARKFIELD_NB_RUNS``
``real_cxr_dir()``           ``<repo>/../shared/real_cxr``            ``$DARKFIELD_NB_REAL_CXR``
===========================  =======================================  ==============================

None of these depends on the working directory, so a notebook that resolves its paths here runs
the same from the repository root, from ``notebooks/`` or from anywhere else. A path a user gives
explicitly (``resolve``) keeps its usual meaning: relative to the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

PRETRAINED_NAME = "pretrained.pt"


def repo_root() -> Path:
    """The folder holding ``darkfield_nb/`` (the clone's root in an editable install)."""
    return Path(__file__).resolve().parent.parent


def _env_or(name: str, default: Path) -> Path:
    """``$name`` as a path when it is set and non-empty, else ``default``."""
    env = os.environ.get(name)
    return Path(env).expanduser() if env else default


def sample_data_dir() -> Path:
    """The shipped sample data set: ``$DARKFIELD_NB_SAMPLES`` or ``<repo>/data_samples``."""
    return _env_or("DARKFIELD_NB_SAMPLES", repo_root() / "data_samples")


def pretrained_checkpoint() -> Path:
    """Path of the shipped pretrained model (it may not exist yet: check ``.exists()``)."""
    return sample_data_dir() / PRETRAINED_NAME


def runs_dir() -> Path:
    """Where notebooks write and share their outputs: ``$DARKFIELD_NB_RUNS`` or ``<repo>/runs``."""
    return _env_or("DARKFIELD_NB_RUNS", repo_root() / "runs")


def real_cxr_dir() -> Path:
    """Real chest radiographs (inputs only, never copied): ``$DARKFIELD_NB_REAL_CXR`` or
    ``<repo>/../shared/real_cxr``. The folder may be absent: check ``.is_dir()``."""
    return _env_or("DARKFIELD_NB_REAL_CXR", repo_root().parent / "shared" / "real_cxr")


def resolve(path: str | os.PathLike | None, default: str | os.PathLike) -> Path:
    """``path`` made absolute against the working directory, or ``default`` when ``path`` is
    ``None`` or ``""`` (a notebook parameter left at "the package default")."""
    if path is None or str(path) == "":
        return Path(default)
    return Path(path).expanduser().absolute()
