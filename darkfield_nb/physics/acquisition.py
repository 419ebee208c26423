"""What the scanner adds: beam hardening, detector blur, stripes, and noise.

Noise model (grating interferometry). With ``N0`` photons per pixel without the patient,
``N = N0 exp(-A)`` behind it, reference visibility ``V0`` and ``N_ref`` reference photons:

    sigma_D = sqrt( 2 exp(2 D) / (N V0^2) + 2 / (N_ref V0^2) )

so the dark-field is noisier behind dense tissue (spine, heart, diaphragm) and where D is
large. The visibility estimate is heavy-tailed: the noise is Student-t with ``nu`` = 3-5
degrees of freedom scaled to that standard deviation, plus rare outliers behind metal.
Attenuation is measured as ``-ln(Poisson(N0 e^{-A}) / N0)``.

The fan beam of the Munich scanner sweeps vertically; mechanical and grating errors leave
horizontal stripes: ``D -> D (1 + m_row) + o_row`` with row-wise multiplicative errors of a few
percent and a small additive offset, constant along a row and varying in bands of a few mm.
Detector blur is a Gaussian applied to both line integrals (an approximation: blur acts on
intensities, but at these contrasts the difference is negligible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass
class AcquisitionConfig:
    """Scanner settings shared by all patients of a data set (every field has a default)."""

    noise: bool = True  # Poisson attenuation noise and dark-field noise
    stripes: bool = True  # row-wise dark-field artifacts
    blur: bool = True  # detector blur
    photons_per_mm2: float = 2.0e6  # N0 per mm^2 at the detector without the patient
    reference_factor: float = 4.0  # N_ref = reference_factor * N0 (flat-field scan)
    visibility: float = 0.25  # reference visibility V0 (per patient +/- 10 %)
    student_nu: tuple[float, float] = (3.0, 5.0)  # range of the Student-t degrees of freedom
    outlier_rate: float = 0.02  # fraction of pixels behind metal with an outlier
    stripe_amplitude: float = 0.03  # std of the multiplicative row error (per patient x0.5-1.5)
    stripe_offset: float = 0.004  # std of the additive row error (D units)
    stripe_band_mm: float = 3.0  # typical stripe height
    blur_attenuation_mm: float = 0.5  # Gaussian sigma of the detector blur
    blur_darkfield_mm: float = 0.8
    beam_hardening_bone: float = 0.03  # spurious D per unit bone excess attenuation
    beam_hardening_metal: float = 0.04  # spurious D per unit (saturating) metal attenuation
    beam_hardening_soft: float = 0.002  # spurious D per unit soft-tissue attenuation
    metal_saturation: float = 6.0  # A_sat in A_sat (1 - exp(-A / A_sat))
    max_sigma: float = 0.5  # cap on sigma_D behind opaque metal


def darkfield_sigma(D, A, n0: float, visibility: float, reference_factor: float = 4.0):
    """Standard deviation of the measured dark-field (formula in the module docstring).

    ``D``: dark-field line integral; ``A``: attenuation line integral; ``n0``: photons per
    pixel without patient; ``visibility``: V0; ``N_ref = reference_factor * n0``.
    """
    n = n0 * np.exp(-np.asarray(A, dtype=np.float64))
    v2 = visibility**2
    return np.sqrt(
        2.0 * np.exp(2.0 * np.asarray(D, np.float64)) / (n * v2)
        + 2.0 / (reference_factor * n0 * v2)
    )


def beam_hardening(A_bone, A_metal, A_soft, cfg: AcquisitionConfig) -> np.ndarray:
    """Spurious dark-field of dense material (not scattering: spectral hardening):
    ``k_b A_bone + k_m A_sat (1 - exp(-A_metal / A_sat)) + k_s A_soft``."""
    sat = cfg.metal_saturation * (1.0 - np.exp(-A_metal / cfg.metal_saturation))
    return (
        cfg.beam_hardening_bone * A_bone
        + cfg.beam_hardening_metal * sat
        + cfg.beam_hardening_soft * A_soft
    ).astype(np.float32)


def stripe_field(
    rng: np.random.Generator,
    size: int,
    pixel_mm: float,
    amplitude: float,
    offset: float,
    band_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise multiplicative and additive errors, each of shape ``(size, 1)``.

    Bands of random height (0.5-2 x ``band_mm``) with independent normal values, plus a slow
    drift over the sweep; constant along each row.
    """
    edges = [0.0]
    total = size * pixel_mm
    while edges[-1] < total:
        edges.append(edges[-1] + band_mm * rng.uniform(0.5, 2.0))
    vals_m = rng.standard_normal(len(edges))
    vals_o = rng.standard_normal(len(edges))
    pos = (np.arange(size) + 0.5) * pixel_mm
    idx = np.searchsorted(edges, pos) - 1
    drift = np.interp(pos, np.linspace(0, total, 6), rng.standard_normal(6))
    mult = amplitude * (0.8 * vals_m[idx] + 0.6 * drift)
    add = offset * vals_o[idx]
    return mult[:, None].astype(np.float32), add[:, None].astype(np.float32)


@dataclass
class Measured:
    """Result of :func:`acquire` (all float32 images)."""

    attenuation: np.ndarray  # measured line integral A
    darkfield: np.ndarray  # measured D
    sigma: np.ndarray  # sigma_D used for the noise
    stripe_mult: np.ndarray  # (n, 1)
    stripe_add: np.ndarray  # (n, 1)


def acquire(
    A: np.ndarray,
    D: np.ndarray,
    pixel_mm: float,
    rng: np.random.Generator,
    cfg: AcquisitionConfig,
    *,
    dose: float = 1.0,
    visibility: float | None = None,
    nu: float = 4.0,
    stripe_scale: float = 1.0,
    metal_outlier: np.ndarray | None = None,
) -> Measured:
    """Apply blur, stripes and noise to noise-free line integrals ``A`` and ``D``.

    ``dose`` scales ``N0``; ``visibility`` overrides ``cfg.visibility``; ``nu`` is the Student-t
    degrees of freedom; ``metal_outlier`` marks pixels where outliers may occur.
    The random draws are made whether or not a switch is on, so switching noise off leaves
    the stripes (and vice versa) unchanged.
    """
    n = A.shape[0]
    v0 = cfg.visibility if visibility is None else visibility
    n0 = cfg.photons_per_mm2 * dose * pixel_mm**2
    if cfg.blur:
        sa = cfg.blur_attenuation_mm / pixel_mm
        sd = cfg.blur_darkfield_mm / pixel_mm
        if sa >= 0.2:
            A = gaussian_filter(A, sa, mode="nearest")
        if sd >= 0.2:
            D = gaussian_filter(D, sd, mode="nearest")
    A = A.astype(np.float32)
    D = D.astype(np.float32)
    mult, add = stripe_field(
        rng,
        n,
        pixel_mm,
        cfg.stripe_amplitude * stripe_scale,
        cfg.stripe_offset * stripe_scale,
        cfg.stripe_band_mm,
    )
    sigma = np.minimum(darkfield_sigma(D, A, n0, v0, cfg.reference_factor), cfg.max_sigma)
    counts = rng.poisson(n0 * np.exp(-A.astype(np.float64)))
    t = rng.standard_t(nu, size=A.shape) / np.sqrt(nu / (nu - 2.0))
    metal = np.zeros(A.shape, bool) if metal_outlier is None else metal_outlier
    n_metal = int(metal.sum())
    outlier_u = rng.random(n_metal)
    outlier_v = rng.uniform(-1.0, 1.0, n_metal)
    if cfg.noise:
        A_meas = -np.log(np.maximum(counts, 0.5) / n0)
    else:
        A_meas = A.astype(np.float64)
    D_meas = D.astype(np.float64)
    if cfg.stripes:
        D_meas = D_meas * (1.0 + mult) + add
    if cfg.noise:
        D_meas = D_meas + sigma * t
        if n_metal:
            jump = np.where(outlier_u < cfg.outlier_rate, outlier_v * 10.0 * sigma[metal], 0.0)
            D_meas[metal] += jump
    return Measured(
        attenuation=A_meas.astype(np.float32),
        darkfield=np.clip(D_meas, -1.0, 3.0).astype(np.float32),
        sigma=sigma.astype(np.float32),
        stripe_mult=mult,
        stripe_add=add,
    )
