"""CT projector: any chest CT in Hounsfield units becomes an attenuation / dark-field pair.

For voxels of size ``dy`` along the projection axis:

    A(x, z) = sum_y mu(HU) dy     (mu from materials.hu_to_mu)
    D(x, z) = sum_y eps(HU) dy,  eps = eps_0 * a(HU) / a_ref  in lung voxels, 0 elsewhere

with the local air fraction ``a = clip(-HU/1000, 0, 1)`` and ``a_ref`` = 0.755 (healthy
inflated lung), then the scanner effects of :mod:`~darkfield_nb.physics.acquisition`. Bone and
metal add their beam-hardening dark-field (``k_b (mu - mu_t) dy`` summed over voxels above
soft tissue, HU > 100).
"""

from __future__ import annotations

import numpy as np

from darkfield_nb.physics import materials
from darkfield_nb.physics.acquisition import AcquisitionConfig, acquire
from darkfield_nb.physics.radiograph import RadiographConfig, to_radiograph


def threshold_lung_mask(hu: np.ndarray, threshold: float = -400.0, axis: int = 1) -> np.ndarray:
    """Lungs by thresholding: connected air-like regions (HU < ``threshold``) that do not touch
    the volume border across the axial plane (outside air does), larger than 0.1 % of the volume.
    """
    from scipy import ndimage

    air = np.asarray(hu) < threshold
    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    border = set()
    for ax in range(air.ndim):
        for idx in (0, -1):
            border |= set(np.unique(np.take(lab, idx, axis=ax)).tolist())
    keep = np.zeros(n + 1, bool)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    for k in range(1, n + 1):
        if k not in border and sizes[k] >= 0.001 * air.size:
            keep[k] = True
    return keep[lab]


def project_ct(
    hu: np.ndarray,
    lung_mask: np.ndarray | None,
    spacing_mm,
    *,
    axis: int = 1,
    energy_kev: float = materials.DEFAULT_ENERGY_KEV,
    seed: int = 0,
    epsilon_per_m: float = materials.EPSILON_LUNG_PER_M,
    acquisition: AcquisitionConfig | None = None,
    noise: bool = True,
    artifacts: bool = True,
    radiograph: bool = True,
    dose: float = 1.0,
    radiograph_config: RadiographConfig | None = None,
):
    """Project a CT volume to ``(attenuation, darkfield)``.

    ``hu``: 3-D array in Hounsfield units. ``lung_mask``: boolean array of the same shape, or
    ``None`` for :func:`threshold_lung_mask`. ``spacing_mm``: voxel size per axis (3 numbers,
    in the array's axis order) or one number for isotropic voxels. ``axis``: the
    antero-posterior axis the beam runs along (1 for (z, y, x) volumes). ``noise`` and
    ``artifacts`` (blur and stripes) switch the scanner effects; with both off the outputs are
    the exact line integrals. ``radiograph=True`` returns the attenuation as a processed
    radiograph (uint16, :func:`to_radiograph`), otherwise the line integral ``A``.
    The image's axes are the two remaining volume axes, in order.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu: expected a 3-D volume, got shape {hu.shape}")
    if not np.all(np.isfinite(hu)):
        raise ValueError("hu: contains NaN or Inf")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    if np.any(sp <= 0):
        raise ValueError(f"spacing_mm must be positive, got {tuple(sp)}")
    if lung_mask is None:
        lung_mask = threshold_lung_mask(hu)
    lung_mask = np.asarray(lung_mask, dtype=bool)
    if lung_mask.shape != hu.shape:
        raise ValueError(f"lung_mask shape {lung_mask.shape} does not match hu shape {hu.shape}")
    dy_cm = sp[axis] / 10.0
    mu = materials.hu_to_mu(hu, energy_kev)
    A = mu.sum(axis=axis) * dy_cm
    eps0 = epsilon_per_m / 100.0 * materials.epsilon_scale(energy_kev)
    air = materials.air_fraction_from_hu(hu)
    eps = np.where(lung_mask, eps0 * air / materials.LUNG_AIR_FRACTION_REF, 0.0)
    D = eps.sum(axis=axis) * dy_cm
    cfg = acquisition or AcquisitionConfig()
    mu_t = materials.mu("soft_tissue", energy_kev)
    dense = np.where(hu > 100.0, np.maximum(mu - mu_t, 0.0), 0.0).sum(axis=axis) * dy_cm
    D = D + cfg.beam_hardening_bone * dense
    img_sp = [s for i, s in enumerate(sp) if i != axis]
    cfg = AcquisitionConfig(
        **{
            **cfg.__dict__,
            "noise": noise and cfg.noise,
            "stripes": artifacts and cfg.stripes,
            "blur": artifacts and cfg.blur,
        }
    )
    if noise or artifacts:
        pixel_mm = float(np.sqrt(img_sp[0] * img_sp[1]))
        meas = acquire(
            A.astype(np.float32),
            D.astype(np.float32),
            pixel_mm,
            np.random.default_rng(seed),
            cfg,
            dose=dose,
        )
        A, D = meas.attenuation, meas.darkfield
    A = np.asarray(A, np.float32)
    D = np.asarray(D, np.float32)
    if radiograph:
        return to_radiograph(A, radiograph_config), D
    return A, D
