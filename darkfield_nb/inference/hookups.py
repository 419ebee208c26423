"""What a checkpoint may carry besides the generator, applied at inference: the stored
recalibration (``darkfield-nb calibrate``, key "recalibration") and the per-image OOD
detector (key "ood").

Lung level (key "lung_level", ``darkfield_nb.level``): where the checkpoint carries one,
predict and synthesize first multiply the dark-field and every sigma map of each image by its
factor g = L / (mean of mu over the predicted lung field), L the image's lung level read by the
level networks (:func:`apply_level_factor`); the recalibration below was fitted on top of it.

Recalibration: predict and synthesize then multiply the dark-field by the entry's mean
factor c (version 3, ``calibration.mean_scale``; 1 for an older entry), mu = c mean, then every
sigma map by the entry's factor map s(x) (``calibration.store.apply_recalibration(...)["scale"]``
without label masks, which a radiograph does not have). For an entry with field factors (from
version 2, ``darkfield-nb calibrate``) s comes from the scaled mean mu at the model geometry,
before the maps are resampled back to the input's size::

    s(x) = f_in   if mu(x) > t      (the predicted lung field; t the stored lung_threshold)
    s(x) = f_out  otherwise

and for an older entry without them s is the global factor everywhere (as before, byte for
byte). Then::

    aleatoric' = s aleatoric,  epistemic' = s epistemic,  total' = s total

so total'^2 = aleatoric'^2 + epistemic'^2 still holds per pixel.

OOD: the detector's score of the image the model sees (normalized, resampled to the training
geometry) and its flag (score above the stored threshold), ``ood.score_radiograph``.

Epistemic map (``PredictConfig.epistemic``, :func:`epistemic_mode`): "mc" writes the Monte
Carlo dropout spread as it is; "combined" adds the detector's sigma ``d =
detector.epistemic_sigma(u, m)`` of the same model input (u: the per-pixel distance of the
features the score reads; m: the foreign-body map, where the detector carries one, which adds
in quadrature), at the model geometry, before the maps are resampled back::

    epistemic' = sqrt((s mc)^2 + d^2),  total' = sqrt((s aleatoric)^2 + epistemic'^2)
               = sqrt((s aleatoric)^2 + (s mc)^2 + d^2)

s (the recalibration factor map, 1 without one) scales the aleatoric and MC parts only: the
density's conversion was calibrated on its own (``epistemic.conversion.DistanceSigma``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

SIGMA_MAPS = ("aleatoric", "epistemic", "total")
EPISTEMIC_MODES = ("auto", "mc", "combined")


def _scaling(recal: dict):
    from darkfield_nb.calibration.recalibrate import SigmaScaling

    return SigmaScaling.from_dict(recal["sigma_scaling"])


def _mean_factor(recal: dict) -> float:
    from darkfield_nb.calibration.store.entry import mean_factor

    return mean_factor(recal)


def recalibration_scale(recal: dict, mean: np.ndarray) -> float | np.ndarray:
    """What multiplies the sigma maps of a prediction with MC mean ``mean`` (any shape, at the
    model geometry): the map s(x) = f_in if mean(x) > t else f_out (float64, ``mean``'s shape)
    for an entry with field factors, else the global factor as a float (module docstring)."""
    sc = _scaling(recal)
    return sc.field_map(mean) if sc.per_field else float(sc.factor)


def apply_level_factor(maps: dict, level_factor: float | np.ndarray | None) -> dict:
    """``maps`` with the dark-field and every sigma map times the lung level's factor g
    (``level.LungLevel.factors``): a number for one image (H, W), or one per image (B,) for
    stacks (B, H, W); unchanged when None. The arrays keep their dtype."""
    if level_factor is None:
        return maps
    g = np.asarray(level_factor, np.float64)
    out = {}
    for k, v in maps.items():
        if k in SIGMA_MAPS or k == "darkfield":
            gk = g.reshape((-1,) + (1,) * (v.ndim - 1)) if g.ndim else g
            out[k] = np.asarray(v * gk, dtype=v.dtype)
        else:
            out[k] = v
    return out


def level_items(level, x: torch.Tensor, mean: np.ndarray, items: list[dict]) -> np.ndarray | None:
    """The lung level's factor g (B,) of model inputs ``x`` (B, 1, H, W) with MC means ``mean``
    (B, H, W) over its lung field (``LungLevel.factors``, ``LungLevel.lung_field``), setting
    ``it["level"]`` = {"lung_level": L,
    "lung_level_sd": the members' standard deviation (ddof 1; 0 for one member),
    "level_factor": g} for each of ``items`` (the summary columns) and ``it["level_warning"]``
    (``LungLevel.level_warning``: the level dropped or clipped; None); None without a level."""
    if level is None:
        return None
    each = level.member_estimates(x)
    lung = each.mean(axis=0)
    spread = each.std(axis=0, ddof=1) if len(each) > 1 else np.zeros_like(lung)
    field, agreement = level.lung_field_checked(x, mean)
    g = level.factors_of(lung, mean, field)
    for i, it in enumerate(items):
        it["level"] = {
            "lung_level": float(lung[i]),
            "lung_level_sd": float(spread[i]),
            "level_factor": float(g[i]),
        }
        it["level_warning"] = level.level_warning(
            float(g[i]), None if agreement is None else float(agreement[i])
        )
    return g


def apply_recalibration_maps(
    maps: dict, recal: dict | None, level_factor: float | np.ndarray | None = None
) -> tuple[dict, float | np.ndarray]:
    """(``maps`` with the dark-field times the mean factor c and the sigma maps times
    :func:`recalibration_scale` of that scaled dark-field, that scale); ``recal`` None:
    (``maps`` unchanged, None). ``level_factor``: the lung level's g, applied first to the
    dark-field and every sigma map (:func:`apply_level_factor`; the recalibration was fitted on
    top of it). ``maps``: NumPy arrays at the model geometry; a field-factor map is applied in
    float64 and the maps keep their dtype."""
    maps = apply_level_factor(maps, level_factor)
    if recal is None:
        return maps, None
    c = _mean_factor(recal)
    if c != 1.0:
        d = maps["darkfield"]
        maps = {**maps, "darkfield": np.asarray(d * c, dtype=d.dtype)}
    scale = recalibration_scale(recal, maps["darkfield"])
    return apply_sigma_factor(maps, scale), scale


def recalibration_digest(recal: dict | None) -> str | None:
    """A short digest of the entry for the completion key (None without one)."""
    if recal is None:
        return None
    text = json.dumps(recal, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def apply_sigma_factor(maps: dict, factor: float | np.ndarray | None) -> dict:
    """``maps`` with the sigma maps multiplied by ``factor`` (a number, or a NumPy map that
    broadcasts against NumPy maps; unchanged when None); the arrays / tensors keep their
    dtype."""
    if factor is None:
        return maps
    if isinstance(factor, np.ndarray):
        return {
            k: (np.asarray(v * factor, dtype=v.dtype) if k in SIGMA_MAPS else v)
            for k, v in maps.items()
        }
    return {k: (v * factor if k in SIGMA_MAPS else v) for k, v in maps.items()}


def recalibration_message(recal: dict, checkpoint: str | Path) -> str:
    """The line predict prints when it applies a stored recalibration: the global factor, or
    both field factors and the threshold of the predicted lung field."""
    fitted = recal.get("fitted_on") or {}
    n = fitted.get("n_images", "?")
    split = fitted.get("split", "val")
    sc = _scaling(recal)
    if sc.per_field:
        how = (
            f"sigma x {sc.per_field['predicted_lung']:.4g} inside the predicted lung field "
            f"(mean > {sc.lung_threshold:g} D), x {sc.per_field['outside']:.4g} outside"
        )
    else:
        how = f"sigma x {sc.factor:.4g}"
    c = _mean_factor(recal)
    if c != 1.0:
        how = f"dark-field x {c:.4g}, {how}"
    return (
        f"applying the recalibration stored in {checkpoint} ({how}, fitted on {n} {split} images)"
    )


def level_message(level, checkpoint: str | Path) -> str:
    """The line predict prints when the checkpoint carries a lung level."""
    n = len(level.members)
    return (
        f"applying the lung level stored in {checkpoint} ({n} network{'s' * (n > 1)}): each "
        "image's dark-field and sigma maps x g, so that its mean D over the lung field (the "
        "level's lung-mask network's where it has one) is the level read from the whole "
        "radiograph (summary columns lung_level, level_factor)"
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
    got = shared_density(detector, prefix, x, model, mean)
    return None if got is None else got[0]


def shared_density(
    detector, prefix, x: torch.Tensor, model, mean: torch.Tensor | None = None
) -> tuple[list[dict], torch.Tensor] | None:
    """(:func:`shared_ood`'s rows, the detector's epistemic sigma ``detector.epistemic_sigma(u,
    m)`` (B, 1, H, W) of the same features and input), or None where :func:`shared_ood` is
    None."""
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
        scores, sigma = detector.score_and_sigma_features(feats, mu.float(), x.float())
    return _rows(detector, scores), sigma


def _rows(detector, scores) -> list[dict]:
    flag = detector.threshold.flag
    return [{"ood_score": float(s), "ood_flag": bool(flag(float(s)))} for s in scores]


def ood_of_input(detector, x: np.ndarray | torch.Tensor, device) -> dict[str, float | bool]:
    """``{"ood_score", "ood_flag"}`` of one model input (H, W), scored as the model sees it
    (``OODDetector.score``; not normalized again: after resampling, a second
    ``normalize_input`` would shift it, and the detector was fitted on inputs normalized once)."""
    t = torch.as_tensor(x, dtype=torch.float32).detach()
    with torch.no_grad():
        return _rows(detector, detector.score(t[None, None].to(device)))[0]


def density_of_input(detector, x: np.ndarray | torch.Tensor, device) -> tuple[dict, np.ndarray]:
    """(:func:`ood_of_input`, the density's epistemic sigma (H, W) float32) of one model input
    from one detector pass (``OODDetector.score_and_distance``)."""
    t = torch.as_tensor(x, dtype=torch.float32).detach()
    with torch.no_grad():
        scores, sigma = detector.score_and_sigma(t[None, None].to(device))
    return _rows(detector, scores)[0], sigma[0, 0].float().cpu().numpy()


def epistemic_mode(mode: str, detector, checkpoint: str | Path | None = None) -> str:
    """The epistemic map a run writes: "mc" or "combined" (module docstring). "auto" is
    "combined" when the checkpoint carries an OOD detector, else "mc"; "combined" without one
    is an error naming the ``checkpoint``."""
    if mode not in EPISTEMIC_MODES:
        raise ValueError(f"epistemic={mode!r}: choose one of {EPISTEMIC_MODES}")
    if mode == "auto":
        return "mc" if detector is None else "combined"
    if mode == "combined" and detector is None:
        raise ValueError(
            f"{checkpoint or 'the checkpoint'}: epistemic='combined' needs the feature-density "
            "OOD detector, and this checkpoint carries none (attach one with "
            "darkfield_nb.epistemic.store.attach_ood_detector, or use --epistemic mc)"
        )
    return mode


def score_items(detector, mode, seen, det, x, model, items, pending, device) -> np.ndarray | None:
    """Score the model inputs ``x`` (B, 1, H, W) of ``items`` with the detector: ``it["ood"]``
    for every item in ``pending``, from the Monte Carlo prefix ``seen`` and deterministic mean
    ``det`` (``mc_predict_batch``'s callbacks) where they hold the detector's features
    (:func:`shared_density`), else one detector pass per image. Returns, for ``mode``
    "combined", the density's epistemic sigma (B, H, W) float32 (zero for items not pending),
    else None."""
    mean = det[0].mu if det else None
    shared = shared_density(detector, seen[0] if seen else None, x, model, mean)
    sigma = None
    if mode == "combined":
        sigma = np.zeros((x.shape[0], *x.shape[-2:]), np.float32)
        if shared is not None:
            sigma[:] = shared[1][:, 0].float().cpu().numpy()
    for i, it in enumerate(items):
        if it["path"] not in pending:
            continue
        if shared is not None:
            it["ood"] = shared[0][i]
        elif sigma is not None:
            it["ood"], sigma[i] = density_of_input(detector, it["x"], device)
        else:
            it["ood"] = ood_of_input(detector, it["x"], device)
    return sigma


def combine_epistemic(maps: dict, density: np.ndarray | None) -> dict:
    """``maps`` (after :func:`apply_sigma_factor`) with the density sigma ``density`` (B, H, W)
    added to the epistemic map in quadrature and the total rebuilt (module docstring):
    ``epistemic = sqrt(mc^2 + d^2)``, ``total = sqrt(aleatoric^2 + epistemic^2)``, computed
    in float64 and stored as float32. ``density`` None: ``maps`` unchanged."""
    if density is None:
        return maps
    d = np.asarray(density, np.float64)
    epi = np.sqrt(np.asarray(maps["epistemic"], np.float64) ** 2 + d**2)
    total = np.sqrt(np.asarray(maps["aleatoric"], np.float64) ** 2 + epi**2)
    return {**maps, "epistemic": epi.astype(np.float32), "total": total.astype(np.float32)}


__all__ = [
    "EPISTEMIC_MODES",
    "SIGMA_MAPS",
    "apply_level_factor",
    "apply_recalibration_maps",
    "apply_sigma_factor",
    "combine_epistemic",
    "density_of_input",
    "epistemic_mode",
    "level_items",
    "level_message",
    "ood_of_input",
    "score_items",
    "shared_density",
    "shared_ood",
    "recalibration_digest",
    "recalibration_message",
    "recalibration_scale",
]
