"""Figures of merit of the simulator (the checks of issue 3, measured on fresh patients).

- mean D over the lung mask of healthy patients (literature: about 0.2);
- soft tissue away from lungs and bone: mean measured D and 99th percentile of noise-free D;
- emphysema: relative drop of D inside the emphysema mask against the same patient without
  it, and the relative change of the attenuation line integral there;
- noise: std of (noisy - noise-free) D behind heart/spine over that over the lungs;
- stripes: std of row means over std of column means of the relative stripe error.

These use the first simulator's single framing and display (``FramingRanges.fixed()``,
``DisplayRanges.fixed()``): they are about the physics. :func:`disease_figures` measures mean
lung ``D`` and ``A`` of each disease against severity; :func:`framing_figures` the spread of
the default framing (chest fraction, rotation, shutters, arms, looks).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from darkfield_nb import labels
from darkfield_nb.physics.acquisition import AcquisitionConfig
from darkfield_nb.physics.display import DisplayRanges
from darkfield_nb.physics.framing import FramingRanges
from darkfield_nb.physics.simulate import make_patient, simulate

DISEASES = ("emphysema", "pneumonia", "effusion", "pneumothorax")


def _fixed(seed: int, index: int, case: str, **kw):
    return make_patient(
        seed, index, case, framing=FramingRanges.fixed(), display=DisplayRanges.fixed(), **kw
    )


def _dense_region(pair) -> np.ndarray:
    sc = pair.scene
    lung = labels.has_label(pair.mask, labels.LUNG)
    heart = labels.has_label(pair.mask, labels.HEART) & ~lung
    spine = (np.abs(sc.grid.x)[None, :] < 1.5) & (sc.grid.z[:, None] < 0) & sc.body
    return ndimage.binary_erosion(heart | spine, iterations=1)


def measure_figures(seed: int = 0, size: int = 128, patients: int = 4) -> dict:
    """Measure the figures listed in the module docstring over ``patients`` patients."""
    lung_d, soft_d, soft_p99, drop, dA, noise_ratio, stripe_ratio = [], [], [], [], [], [], []
    quiet = AcquisitionConfig(noise=False)
    for i in range(patients):
        patient = _fixed(seed, i, "healthy")
        pair = simulate(patient, size)
        clean = simulate(patient, size, acquisition=quiet)
        sc = pair.scene
        lung = labels.has_label(pair.mask, labels.LUNG)
        lung_d.append(float(pair.darkfield[lung].mean()))
        near = ndimage.binary_dilation(sc.lung_total > 0, iterations=4)
        near |= ndimage.binary_dilation(sc.bone | (sc.A_bone > 0.02), iterations=4)
        soft = ndimage.binary_erosion(sc.body, iterations=4) & ~near
        soft_d.append(float(pair.darkfield[soft].mean()))
        soft_p99.append(float(np.percentile(pair.darkfield_clean[soft], 99)))
        noise = pair.darkfield - clean.darkfield
        inner = ndimage.binary_erosion(lung, iterations=2)
        noise_ratio.append(float(noise[_dense_region(pair)].std() / noise[inner].std()))
        flat = simulate(patient, size, acquisition=AcquisitionConfig(noise=False, stripes=False))
        rel = np.where(inner, clean.darkfield / np.maximum(flat.darkfield, 1e-6) - 1, 0.0)
        rows, cols = inner.sum(1) >= 5, inner.sum(0) >= 5
        rm = rel.sum(1)[rows] / inner.sum(1)[rows]
        cm = rel.sum(0)[cols] / inner.sum(0)[cols]
        stripe_ratio.append(float(rm.std() / max(cm.std(), 1e-12)))
        sick = simulate(_fixed(seed, i, "emphysema"), size)
        region = labels.has_label(sick.mask, labels.EMPHYSEMA)
        if region.sum() > 0:
            d0, d1 = pair.darkfield[region].mean(), sick.darkfield[region].mean()
            drop.append(float((d0 - d1) / d0))
            a0 = pair.line_integral_clean[region]
            dA.append(float(np.abs(sick.line_integral_clean[region] - a0).mean() / a0.mean()))
    return {
        "mean_lung_D": float(np.mean(lung_d)),
        "soft_tissue_D_mean": float(np.mean(soft_d)),
        "soft_tissue_D_clean_p99": float(np.max(soft_p99)),
        "emphysema_D_drop": float(np.mean(drop)),
        "emphysema_D_drop_min": float(np.min(drop)),
        "emphysema_attenuation_change": float(np.mean(dA)),
        "emphysema_attenuation_change_max": float(np.max(dA)),
        "noise_ratio_dense_over_lung": float(np.mean(noise_ratio)),
        "stripe_row_over_column": float(np.mean(stripe_ratio)),
        "patients": int(patients),
        "size": int(size),
    }


def disease_figures(
    seed: int = 0,
    size: int = 128,
    patients: int = 4,
    severities: tuple[float, ...] = (0.5, 1.0),
) -> dict:
    """Mean noise-free ``D`` and ``A`` over the healthy lung mask, per disease and severity,
    averaged over ``patients`` patients (each compared with itself at severity 0).

    Returns ``{"healthy": {"D": .., "A": ..}, "<case>@<s>": {"D": .., "A": ..}, ...}``.
    """
    clean = AcquisitionConfig(noise=False, stripes=False, blur=False)
    sums: dict[str, list] = {}
    for i in range(patients):
        base = simulate(_fixed(seed, i, "healthy"), size, acquisition=clean)
        lung = labels.has_label(base.mask, labels.LUNG)
        sums.setdefault("healthy", []).append(
            (base.darkfield_clean[lung].mean(), base.line_integral_clean[lung].mean())
        )
        for case in DISEASES:
            for s in severities:
                p = simulate(_fixed(seed, i, case, severity=s), size, acquisition=clean)
                sums.setdefault(f"{case}@{s:g}", []).append(
                    (p.darkfield_clean[lung].mean(), p.line_integral_clean[lung].mean())
                )
    return {
        k: {"D": float(np.mean([v[0] for v in vals])), "A": float(np.mean([v[1] for v in vals]))}
        for k, vals in sums.items()
    }


def framing_figures(seed: int = 0, patients: int = 50) -> dict:
    """Spread of the default framing and display over ``patients`` drawn patients (no
    rendering): chest-fraction and rotation ranges, fractions with shutters / arms up, and
    the count of each vendor look and bit depth."""
    from collections import Counter

    ps = [make_patient(seed, i, "healthy") for i in range(patients)]
    phi = [p.framing.chest_fraction for p in ps]
    rot = [p.framing.rotation_deg for p in ps]
    return {
        "chest_fraction_min": float(np.min(phi)),
        "chest_fraction_max": float(np.max(phi)),
        "rotation_deg_min": float(np.min(rot)),
        "rotation_deg_max": float(np.max(rot)),
        "fov_cm_min": float(np.min([p.framing.fov_cm for p in ps])),
        "fov_cm_max": float(np.max([p.framing.fov_cm for p in ps])),
        "collimated_fraction": float(np.mean([any(p.framing.collimation) for p in ps])),
        "arms_up_fraction": float(np.mean([p.anatomy.arms_up for p in ps])),
        "looks": dict(sorted(Counter(p.display.look for p in ps).items())),
        "bits": dict(sorted(Counter(str(p.display.radiograph.bits) for p in ps).items())),
    }
