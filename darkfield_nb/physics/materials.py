"""Material constants: linear attenuation coefficients and the lung dark-field coefficient.

Attenuation follows ``I/I0 = exp(-integral mu dl)``; dark-field follows
``V/V0 = exp(-integral epsilon dl)``. Both are line integrals along the beam, so one 3-D
phantom projected along the antero-posterior axis gives a physically consistent pair.

The mu table (1/cm) at 40 / 50 / 60 keV is the one in DESIGN section 4 (values of the NIST
XCOM / ICRU-44 kind); water (not in that table, needed for Hounsfield units) is NIST's mass
attenuation coefficient of liquid water times 1 g/cm^3. Between the tabulated energies mu is
interpolated log-log (attenuation is close to a power law of energy there); outside them the
end segments are extrapolated the same way.
"""

from __future__ import annotations

import numpy as np

#: Tabulated energies (keV) of :data:`MU_TABLE`.
TABLE_ENERGIES_KEV: tuple[float, float, float] = (40.0, 50.0, 60.0)

#: Linear attenuation coefficients mu (1/cm) at 40, 50 and 60 keV.
MU_TABLE: dict[str, tuple[float, float, float]] = {
    "air": (0.0, 0.0, 0.0),
    "water": (0.2683, 0.2269, 0.2059),
    "lung": (0.070, 0.059, 0.053),  # inflated lung, 0.26 g/cm^3
    "soft_tissue": (0.285, 0.240, 0.217),
    "adipose": (0.228, 0.202, 0.188),
    "cortical_bone": (1.28, 0.81, 0.60),
    "titanium": (9.97, 5.47, 3.45),
    "copper": (43.6, 23.4, 14.3),
    "platinum": (267.0, 149.0, 93.0),
    "iodine": (109.0, 61.0, 37.0),  # Li-I pacemaker battery
}

#: Effective energy behind a patient at 70 kVp, the optimum for dark-field chest imaging.
DEFAULT_ENERGY_KEV = 47.0

#: Healthy-lung dark-field coefficient, mean and spread over volunteers (1/m of lung path).
EPSILON_LUNG_PER_M = 2.5
EPSILON_LUNG_SD_PER_M = 0.4

#: Tissue (non-air) volume fraction of healthy inflated lung: 0.26 g/cm^3 over ~1.06 g/cm^3.
LUNG_TISSUE_FRACTION = 0.245
#: Air fraction at which the lung dark-field coefficient equals :data:`EPSILON_LUNG_PER_M`.
LUNG_AIR_FRACTION_REF = 1.0 - LUNG_TISSUE_FRACTION

#: Hounsfield value taken for cortical bone in a clinical CT (about 120 kVp); used by the
#: bilinear HU -> mu conversion above 0 HU.
CORTICAL_BONE_HU = 1400.0

#: Cancellous (trabecular) bone expressed as a mixture: this fraction cortical, rest tissue.
CANCELLOUS_BONE_FRACTION = 0.22


def mu(material: str, energy_kev: float = DEFAULT_ENERGY_KEV) -> float:
    """Linear attenuation coefficient (1/cm) of ``material`` at ``energy_kev``.

    Log-log interpolation in :data:`MU_TABLE`:
    ``ln mu(E) = ln mu_i + (ln E - ln E_i) (ln mu_j - ln mu_i) / (ln E_j - ln E_i)``
    for the bracketing table energies ``E_i <= E <= E_j`` (end segments extrapolate).
    Exact at 40, 50 and 60 keV. ``"cancellous_bone"`` is the mixture
    :data:`CANCELLOUS_BONE_FRACTION` cortical bone + the rest soft tissue.
    """
    if material == "cancellous_bone":
        f = CANCELLOUS_BONE_FRACTION
        return f * mu("cortical_bone", energy_kev) + (1 - f) * mu("soft_tissue", energy_kev)
    if material not in MU_TABLE:
        raise KeyError(
            f"unknown material {material!r}; known: {', '.join(sorted(MU_TABLE))}, cancellous_bone"
        )
    if not np.isfinite(energy_kev) or energy_kev <= 0:
        raise ValueError(f"energy_kev must be a positive number, got {energy_kev!r}")
    values = MU_TABLE[material]
    if values[0] == 0.0:
        return 0.0
    e = np.log(np.asarray(TABLE_ENERGIES_KEV))
    m = np.log(np.asarray(values))
    x = np.log(float(energy_kev))
    i = 0 if x <= e[1] else 1
    return float(np.exp(m[i] + (x - e[i]) * (m[i + 1] - m[i]) / (e[i + 1] - e[i])))


def epsilon_scale(energy_kev: float) -> float:
    """Energy scaling of the dark-field coefficient relative to :data:`DEFAULT_ENERGY_KEV`.

    Small-angle scattering strength falls roughly as ``E^-2``: ``(E_ref / E)^2``.
    """
    return (DEFAULT_ENERGY_KEV / float(energy_kev)) ** 2


def hu_to_mu(hu, energy_kev: float = DEFAULT_ENERGY_KEV) -> np.ndarray:
    """Hounsfield units to mu (1/cm) at ``energy_kev`` (bilinear model).

    ``HU <= 0`` (air-water mixtures): ``mu = mu_w (1 + HU/1000)``.
    ``HU > 0`` (water-bone mixtures): ``mu = mu_w + HU / HU_bone (mu_bone - mu_w)`` with
    ``HU_bone`` = :data:`CORTICAL_BONE_HU`, so bone gets the energy dependence of bone rather
    than of water. Values below -1000 HU are clipped to air.
    """
    hu = np.asarray(hu, dtype=np.float64)
    mw = mu("water", energy_kev)
    mb = mu("cortical_bone", energy_kev)
    low = mw * (1.0 + np.clip(hu, -1000.0, 0.0) / 1000.0)
    high = mw + np.maximum(hu, 0.0) / CORTICAL_BONE_HU * (mb - mw)
    return np.where(hu <= 0.0, low, high)


def mu_to_hu(mu_values, energy_kev: float = DEFAULT_ENERGY_KEV) -> np.ndarray:
    """Inverse of :func:`hu_to_mu` (mu in 1/cm at ``energy_kev`` to Hounsfield units)."""
    m = np.asarray(mu_values, dtype=np.float64)
    mw = mu("water", energy_kev)
    mb = mu("cortical_bone", energy_kev)
    low = 1000.0 * (m / mw - 1.0)
    high = CORTICAL_BONE_HU * (m - mw) / (mb - mw)
    return np.where(m <= mw, low, high)


def air_fraction_from_hu(hu) -> np.ndarray:
    """Local air volume fraction from Hounsfield units: ``clip(-HU/1000, 0, 1)``.

    -1000 HU is pure air (1), 0 HU tissue/water (0); inflated lung near -750 HU gives 0.75.
    """
    return np.clip(-np.asarray(hu, dtype=np.float64) / 1000.0, 0.0, 1.0)
