"""Add one entry to a checkpoint file: copy ``src`` to ``dst`` with ``ckpt[key] = value``,
written atomically and checked before it takes the name ``dst``.

Used by the recalibration (``"recalibration"``, :mod:`darkfield_nb.calibration.store`) and the
out-of-distribution detector (``"ood"``, :mod:`darkfield_nb.epistemic.store`). The written file
must load with :func:`checkpoint.load_checkpoint` (``torch.load(weights_only=True)``: the entry
may hold only tensors, numbers, strings, lists, tuples and dicts), rebuild its generator with
:func:`checkpoint.generator_from_checkpoint`, and give back the entry (``read_back`` of the
reloaded checkpoint must equal ``same``).

:func:`open_source` is the opening both ``calibrate_checkpoint`` and ``attach_ood_detector``
share before they fit anything: load ``src``, refuse ``dst``, rebuild the generator, and pick
the stage to analyse (the last one trained).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from darkfield_nb import checkpoint
from darkfield_nb.io import atomic_path, check_output_file


def check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse an existing ``dst`` unless ``overwrite``; make sure its folder is writable."""
    if dst.exists() and not overwrite:
        same = dst.resolve() == src.resolve()
        what = "is the source checkpoint" if same else "already exists"
        raise FileExistsError(f"{dst}: {what}; pass --overwrite (overwrite=True) to replace it")
    check_output_file(dst)


def open_source(
    src: Path, dst: Path, overwrite: bool, device: torch.device
) -> tuple[dict, torch.nn.Module, int]:
    """Load checkpoint ``src``, check the destination (:func:`check_destination`), rebuild its
    generator on ``device``; return (raw checkpoint dict, generator, last trained stage).

    The stage is ``stages_trained - 1`` (0-based; ``n_stages - 1`` when the checkpoint does not
    say). Raises FileNotFoundError / CheckpointError naming ``src`` (missing, unreadable, or
    weights that do not fit their config) and FileExistsError / WriteError naming ``dst``."""
    ckpt = checkpoint.load_checkpoint(src)
    check_destination(src, dst, overwrite)
    model = checkpoint.generator_from_checkpoint(ckpt, device, source=src, checked=True)
    return ckpt, model, int(ckpt.get("stages_trained", model.config.n_stages)) - 1


def write_checkpoint_entry(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key: str,
    value: Any,
    *,
    read_back: Callable[[dict], Any],
    same: Callable[[Any, Any], bool] | None = None,
    overwrite: bool = False,
) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with ``value`` stored under ``key`` (replacing one
    ``src`` may carry), atomically; return ``dst``.

    ``read_back(ckpt)`` extracts (and validates) the entry from a reloaded checkpoint dict;
    ``same(stored, reloaded)`` compares it with ``value`` (default ``==``).

    Raises:
        FileNotFoundError / CheckpointError: ``src`` is missing or not a checkpoint.
        FileExistsError: ``dst`` exists and ``overwrite`` is False (naming it).
        WriteError: ``dst`` cannot be written (naming it).
        ValueError: the entry did not survive the reload.
    """
    src, dst = Path(src), Path(dst)
    ckpt = checkpoint.load_checkpoint(src)
    check_destination(src, dst, overwrite)
    ckpt[key] = value
    same = same if same is not None else (lambda a, b: a == b)
    with atomic_path(dst) as tmp:
        torch.save(ckpt, tmp)
        back = checkpoint.load_checkpoint(tmp)
        checkpoint.generator_from_checkpoint(back, checked=True)  # load_checkpoint checked it
        if not same(value, read_back(back)):
            raise ValueError(f"{dst}: the {key!r} entry did not survive a reload")
    return dst
