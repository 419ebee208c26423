"""What a checkpoint may carry besides the generator, applied at inference: the stored
recalibration (``darkfield-nb calibrate``, key "recalibration") and the per-image OOD
detector (key "ood").

Recalibration: predict and synthesize apply the global sigma-scaling factor s of the entry
(``calibration.store.apply_recalibration(...)["scale"]`` without region masks, which a
radiograph does not have) to every sigma map::

    aleatoric' = s aleatoric,  epistemic' = s epistemic,  total' = s total

so total'^2 = aleatoric'^2 + epistemic'^2 still holds. The mean is unchanged.

OOD: the detector's score of the image the model sees (normalized, resampled to the training
geometry) and its flag (score above the stored threshold), ``ood.score_radiograph``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

SIGMA_MAPS = ("aleatoric", "epistemic", "total")


def recalibration_factor(recal: dict) -> float:
    """The global sigma-scaling factor s of a recalibration entry (``recalibration_of``)."""
    from darkfield_nb.calibration.recalibrate import SigmaScaling

    return float(SigmaScaling.from_dict(recal["sigma_scaling"]).factor)


def recalibration_digest(recal: dict | None) -> str | None:
    """A short digest of the entry for the completion key (None without one)."""
    if recal is None:
        return None
    text = json.dumps(recal, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def apply_sigma_factor(maps: dict, factor: float | None) -> dict:
    """``maps`` with the sigma maps multiplied by ``factor`` (unchanged when None); the
    arrays / tensors keep their dtype."""
    if factor is None:
        return maps
    return {k: (v * factor if k in SIGMA_MAPS else v) for k, v in maps.items()}


def recalibration_message(recal: dict, checkpoint: str | Path) -> str:
    """The line predict prints when it applies a stored recalibration."""
    fitted = recal.get("fitted_on") or {}
    n = fitted.get("n_images", "?")
    split = fitted.get("split", "val")
    return (
        f"applying the recalibration stored in {checkpoint} "
        f"(sigma x {recalibration_factor(recal):.4g}, fitted on {n} {split} images)"
    )


def ood_of_input(detector, x: np.ndarray | torch.Tensor, device) -> dict[str, float | bool]:
    """``{"ood_score", "ood_flag"}`` of one model input (H, W): ``ood.score_radiograph``."""
    from darkfield_nb.ood import score_radiograph

    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return score_radiograph(detector, np.asarray(x, dtype=np.float32), device)


__all__ = [
    "SIGMA_MAPS",
    "apply_sigma_factor",
    "ood_of_input",
    "recalibration_digest",
    "recalibration_factor",
    "recalibration_message",
]
