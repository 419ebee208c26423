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


def shared_ood(
    detector, prefix, x: torch.Tensor, model, mean: torch.Tensor | None = None
) -> list[dict] | None:
    """``{"ood_score", "ood_flag"}`` per image of batch ``x`` from the Monte Carlo prefix's
    encoder features (``OODDetector.score_features``: the detector's own forward pass through
    the earlier stages and the encoder is not run again), or None where they are not the
    detector's features (no prefix: a single deterministic pass; another stage; encoder
    dropout; attention gating, which scales the features the detector was fitted on). The
    lung field of the score comes from the stage's deterministic (eval-mode) mean, as in
    ``score``: ``mean`` (B, 1, H, W) where the caller has it (``mc_predict_batch``'s
    ``on_deterministic``), else one deterministic pass of the stage's decoder on the prefix."""
    if prefix is None or prefix.inp is not None:
        return None
    if prefix.stage > 0 and model.config.conditioning != "concat":  # gated encoder features
        return None
    n = model.config.n_stages
    levels = detector.density.levels
    if prefix.stage != detector.stage % n or max(levels) >= len(prefix.feats):
        return None
    feats = [prefix.feats[lv].float() for lv in levels]
    with torch.no_grad():
        mu = model.mc_suffix(prefix, 1, prefix.stage).mu if mean is None else mean
        scores = detector.score_features(feats, mu.float(), x.float())
    flag = detector.threshold.flag
    return [{"ood_score": float(s), "ood_flag": bool(flag(float(s)))} for s in scores]


def ood_of_input(detector, x: np.ndarray | torch.Tensor, device) -> dict[str, float | bool]:
    """``{"ood_score", "ood_flag"}`` of one model input (H, W), scored as the model sees it
    (``OODDetector.score``; not normalized again: after resampling, a second
    ``normalize_input`` would shift it, and the detector was fitted on inputs normalized once)."""
    t = torch.as_tensor(x, dtype=torch.float32).detach()
    with torch.no_grad():
        s = float(detector.score(t[None, None].to(device))[0])
    return {"ood_score": s, "ood_flag": bool(detector.threshold.flag(s))}


__all__ = [
    "SIGMA_MAPS",
    "apply_sigma_factor",
    "ood_of_input",
    "shared_ood",
    "recalibration_digest",
    "recalibration_factor",
    "recalibration_message",
]
