"""The severity study's model as ``predict`` uses it: the generator with the checkpoint's lung
level and recalibration attached (:func:`load_model`), and a case's maps scaled as ``predict``
writes them for the level and the mean (:func:`written_factors`, :func:`scale_maps`).

For one image with normalized input x and MC-dropout maps (mu, aleatoric, epistemic, total)
at the size the model sees::

    g      = LungLevel.factors(x, mu)     (the lung level's factor, 1 without a level)
    c      = calibration.store.mean_factor(recalibration)   (1 without a recalibration)
    mu'    = c g mu
    total' = g total,  aleatoric' = g aleatoric,  epistemic' = g epistemic

which is what ``inference.hookups.apply_recalibration_maps`` does to the mean and, before its
sigma factors, to the sigma maps. The recalibration's sigma factors s(x) (and the OOD
detector's density sigma of ``predict --epistemic combined``) are left out on purpose: the
study reports the interval of the level-scaled network, uncalibrated, so that its coverage
says how honest the network's own sigma is at each severity.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from darkfield_nb import checkpoint as ckpt_io
from darkfield_nb.calibration.store import mean_factor, recalibration_of
from darkfield_nb.hardware import pick_device
from darkfield_nb.level.store import stored_level
from darkfield_nb.paths import pretrained_checkpoint

SIGMA_MAPS = ("aleatoric", "epistemic", "total")


def load_model(
    checkpoint: str | os.PathLike | None = None, device: str | torch.device = "auto"
) -> tuple[torch.nn.Module, int, Path]:
    """(generator, last trained stage (0-based), path) of ``checkpoint`` (None: the shipped
    model, ``data_samples/pretrained.pt``), with what ``inference.load_model`` attaches for
    the maps: ``model.lung_level`` (a ``level.LungLevel`` on the model's device, or None),
    ``model.recalibration`` (the stored entry, or None) and ``model.checkpoint_path``.

    Raises FileNotFoundError for a missing file, and ``checkpoint.CheckpointError`` naming it
    for an unusable stored entry or a recalibration fitted with another lung level than the
    checkpoint carries (as ``inference.load_model``: its mean factor would not fit the maps)."""
    path = Path(checkpoint) if checkpoint else pretrained_checkpoint()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    dev = pick_device(device)
    ck, model = ckpt_io.load_with_generator(path, dev)
    try:
        recal = recalibration_of(ck)
        level = stored_level(ck, recal, str(path))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ckpt_io.CheckpointError(f"{path}: unusable stored entry ({exc})") from exc
    if level is not None:
        level.to(dev)
    model.lung_level, model.recalibration, model.checkpoint_path = level, recal, path
    return model, int(ck["stages_trained"]) - 1, path


def written_factors(
    model: torch.nn.Module, x: torch.Tensor | np.ndarray, mu: np.ndarray
) -> dict[str, float]:
    """``{"lung_level": L, "level_factor": g, "mean_factor": c}`` of one image: model input
    ``x`` (normalized, (H, W) or (1, 1, H, W), at the size the model sees) and its MC mean
    ``mu`` (H, W), from ``model.lung_level`` and ``model.recalibration`` (module docstring).
    Without a level, L is NaN and g = 1; without a recalibration c = 1."""
    level = getattr(model, "lung_level", None)
    recal = getattr(model, "recalibration", None)
    lung, g = math.nan, 1.0
    if level is not None:
        got_l, got_g = level.factors(x, np.asarray(mu)[None])
        lung, g = float(got_l[0]), float(got_g[0])
    c = 1.0 if recal is None else mean_factor(recal)
    return {"lung_level": lung, "level_factor": g, "mean_factor": c}


def scale_maps(maps: dict[str, np.ndarray], g: float, c: float) -> dict[str, np.ndarray]:
    """``maps`` (``mu`` and the sigma maps, (H, W)) as predict writes them for the level and
    the mean: ``mu`` times g then c, every sigma map times g (module docstring); other maps
    (``beta``) unchanged. Arrays keep their dtype; g = c = 1 returns ``maps`` as they are."""
    out = dict(maps)
    if g != 1.0:
        for k in ("mu", *SIGMA_MAPS):
            out[k] = np.asarray(maps[k] * np.float64(g), dtype=maps[k].dtype)
    if c != 1.0:
        out["mu"] = np.asarray(out["mu"] * float(c), dtype=maps["mu"].dtype)
    return out


__all__ = ["load_model", "scale_maps", "written_factors"]
