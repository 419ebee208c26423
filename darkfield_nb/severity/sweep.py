"""The severity sweep: one patient at one severity, simulated and predicted with MC dropout
(by default with the maps scaled as ``predict`` writes them, :mod:`.written`), and the figures
of that case (:func:`case_row`). The study's method is described in :mod:`darkfield_nb.severity`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from darkfield_nb import labels
from darkfield_nb.calibration import ggd_halfwidth, predictive_alpha
from darkfield_nb.data import normalize_input
from darkfield_nb.hardware import pick_device
from darkfield_nb.physics import DisplayRanges, FramingRanges, make_patient, simulate
from darkfield_nb.physics.pathology import PATHOLOGY_CASES
from darkfield_nb.uncertainty import MCMaps, mc_dropout_predict

from .written import scale_maps, written_factors

LEVEL = 0.9  # nominal level of the central interval studied
CASE_BITS = {
    "emphysema": labels.EMPHYSEMA,
    "pneumonia": labels.CONSOLIDATION,
    "pneumothorax": labels.PNEUMOTHORAX,
    "effusion": labels.EFFUSION,
    "nodule": labels.NODULE,
}


@dataclass
class SweepCase(MCMaps):
    """Maps of one patient at one severity, each (H, W) float32 (``mask``: uint16 label bits).

    The MC-dropout maps of :class:`~darkfield_nb.uncertainty.MCMaps` (``mu`` MC mean,
    ``aleatoric`` / ``epistemic`` / ``total`` standard deviations, ``beta`` mean shape), and
    ``y`` measured D (the target), ``y_clean`` noise-free D, ``x`` normalized input, ``half``
    the half-width of the central ``level`` interval (mu +- half). ``as_written``: whether
    the maps are scaled as predict writes them (:mod:`.written`), with ``lung_level`` L (NaN
    without a level), ``level_factor`` g and ``mean_factor`` c the values applied (g = c = 1
    for the bare network).
    """

    patient_seed: int
    severity: float
    case: str
    diffuse: bool | None
    level: float
    y: np.ndarray
    y_clean: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    half: np.ndarray
    as_written: bool = False
    lung_level: float = math.nan
    level_factor: float = 1.0
    mean_factor: float = 1.0

    @property
    def lung(self) -> np.ndarray:
        return labels.has_label(self.mask, labels.LUNG)

    @property
    def lesion(self) -> np.ndarray:
        return labels.has_label(self.mask, CASE_BITS[self.case])

    @property
    def rest(self) -> np.ndarray:
        return self.lung & ~self.lesion


@torch.no_grad()
def predict_case(
    model: torch.nn.Module,
    patient_seed: int,
    severity: float,
    *,
    case: str = "emphysema",
    size: int = 256,
    samples: int = 20,
    device: str | torch.device = "auto",
    stage: int = -1,
    level: float = LEVEL,
    mc_seed: int = 0,
    framing: FramingRanges | None = None,
    display: DisplayRanges | None = None,
    as_written: bool = True,
) -> SweepCase:
    """Simulate patient ``patient_seed`` (index 0) with ``case`` at ``severity`` and predict it
    with ``samples`` MC-dropout passes (masks seeded with ``mc_seed``, so a case is repeatable).
    ``framing`` / ``display``: the simulator's ranges (None: its defaults, the varied framing
    and vendor looks; ``FramingRanges.fixed()`` / ``DisplayRanges.fixed()`` the first
    simulator's single framing and look).

    ``as_written`` (default): the maps as predict writes them for the level and the mean,
    mu' = c g mu and every sigma map g times (``model.lung_level``'s factor g of this input
    and MC mean, ``model.recalibration``'s mean factor c; :mod:`.written`), and the interval
    half-width from the scaled total. The recalibration's sigma factors are not applied: the
    study reports the uncalibrated interval. False: the bare network's maps (g = c = 1 however
    the model is loaded)."""
    if case not in PATHOLOGY_CASES:
        raise ValueError(f"case must be a pathology, one of {', '.join(PATHOLOGY_CASES)}")
    if not 0.0 <= float(severity) <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    patient = make_patient(
        int(patient_seed), 0, case, severity=float(severity), framing=framing, display=display
    )
    pair = simulate(patient, int(size))
    x = normalize_input(pair.attenuation.astype(np.float32))
    dev = pick_device(device)
    model = model.to(dev).eval()
    xt = torch.from_numpy(x)[None, None].to(dev)
    mc = mc_dropout_predict(model, xt, samples=samples, seed=mc_seed, stage=stage)
    maps = mc.image_maps(0)
    del maps["alpha"]  # a case keeps the total sigma and beta, not the mean alpha
    applied = {"lung_level": math.nan, "level_factor": 1.0, "mean_factor": 1.0}
    if as_written:
        applied = written_factors(model, xt, maps["mu"])
        maps = scale_maps(maps, applied["level_factor"], applied["mean_factor"])
    tot, beta = maps["total"], maps["beta"]
    half = ggd_halfwidth(level, predictive_alpha(tot, beta), beta).astype(np.float32)
    diffuse = getattr(patient.pathology, "diffuse", None)
    return SweepCase(
        patient_seed=int(patient_seed),
        severity=float(severity),
        case=case,
        diffuse=None if diffuse is None else bool(diffuse),
        level=float(level),
        y=pair.darkfield.astype(np.float32),
        y_clean=pair.darkfield_clean.astype(np.float32),
        x=x,
        mask=pair.mask,
        **maps,
        half=half,
        as_written=bool(as_written),
        **applied,
    )


def _mean(a: np.ndarray, region: np.ndarray) -> float:
    return float(a[region].mean()) if region.any() else math.nan


def case_row(c: SweepCase, min_pixels: int = 20) -> dict:
    """The figures of one case (see the module docstring for regions, interval and ratio).

    Keys: patient_seed, severity, case, diffuse, as_written, lung_level (L, NaN without a
    level), level_factor (g), mean_factor (c), lung_pixels, lesion_pixels, true_lung_D,
    true_lung_D_clean, pred_lung_D, pred_lung_D_lo / _hi (band), true_ratio, pred_ratio,
    coverage_lesion, coverage_lung (share of pixels with |y - mu| <= half), width_lesion,
    width_rest, width_lung (mean 2 half), aleatoric_lesion / _rest, epistemic_lesion / _rest
    (mean sigma). Lesion figures are NaN without lesion pixels (severity 0).
    """
    lung, lesion, rest = c.lung, c.lesion, c.rest
    covered = np.abs(c.y - c.mu) <= c.half
    n_les, n_rest = int(lesion.sum()), int(rest.sum())
    ratio_ok = n_les >= min_pixels and n_rest >= min_pixels and not c.diffuse

    def ratio(a: np.ndarray) -> float:
        return _mean(a, lesion) / _mean(a, rest) if ratio_ok else math.nan

    return {
        "patient_seed": c.patient_seed,
        "severity": c.severity,
        "case": c.case,
        "diffuse": c.diffuse,
        "as_written": c.as_written,
        "lung_level": c.lung_level,
        "level_factor": c.level_factor,
        "mean_factor": c.mean_factor,
        "lung_pixels": int(lung.sum()),
        "lesion_pixels": n_les,
        "true_lung_D": _mean(c.y, lung),
        "true_lung_D_clean": _mean(c.y_clean, lung),
        "pred_lung_D": _mean(c.mu, lung),
        "pred_lung_D_lo": _mean(c.mu - c.half, lung),
        "pred_lung_D_hi": _mean(c.mu + c.half, lung),
        "true_ratio": ratio(c.y),
        "pred_ratio": ratio(c.mu),
        "coverage_lesion": _mean(covered, lesion),
        "coverage_lung": _mean(covered, lung),
        "width_lesion": _mean(2 * c.half, lesion),
        "width_rest": _mean(2 * c.half, rest),
        "width_lung": _mean(2 * c.half, lung),
        "aleatoric_lesion": _mean(c.aleatoric, lesion),
        "aleatoric_rest": _mean(c.aleatoric, rest),
        "epistemic_lesion": _mean(c.epistemic, lesion),
        "epistemic_rest": _mean(c.epistemic, rest),
    }


def severity_sweep(
    model: torch.nn.Module,
    *,
    patient_seeds: Sequence[int],
    severities: Sequence[float],
    case: str = "emphysema",
    size: int = 256,
    samples: int = 20,
    device: str | torch.device = "auto",
    progress: bool = True,
    stage: int = -1,
    level: float = LEVEL,
    framing: FramingRanges | None = None,
    display: DisplayRanges | None = None,
    keep: list | None = None,
    as_written: bool = True,
) -> list[dict]:
    """One row (:func:`case_row`) per patient x severity, patients outer, severities in the
    given order. Every case uses MC seed 0 (:func:`predict_case`). ``keep``: a list that
    receives each :class:`SweepCase` (the maps), for pictures. ``as_written``: the maps as
    predict writes them for the lung level and the mean (default), or the bare network's
    (:func:`predict_case`)."""
    if not patient_seeds or not severities:
        raise ValueError("severity_sweep: give at least one patient seed and one severity")
    dev = pick_device(device)
    rows = []
    grid = [(p, s) for p in patient_seeds for s in severities]
    for p, s in tqdm(grid, desc="severity sweep", disable=not progress):
        c = predict_case(
            model,
            p,
            s,
            case=case,
            size=size,
            samples=samples,
            device=dev,
            stage=stage,
            level=level,
            framing=framing,
            display=display,
            as_written=as_written,
        )
        rows.append(case_row(c))
        if keep is not None:
            keep.append(c)
    return rows
