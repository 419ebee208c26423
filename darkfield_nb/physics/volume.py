"""A small voxelized copy of a patient's phantom, for slice pictures and projector checks.

The data sets never need it (projection is done in closed form), but a volume shows what is
being projected, and :func:`~darkfield_nb.physics.ct.project_ct` applied to it should give
nearly the closed-form projection: a check that the two generators agree. The voxel model
holds body (fat and soft tissue), lungs (tissue-fraction and dark-field fields), heart,
airway, vertebral bodies, ribs and clavicles, and the lung pathologies; vessels, scapulae,
humeri and devices are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from darkfield_nb.physics import geometry as g
from darkfield_nb.physics import materials
from darkfield_nb.physics.pathology import Consolidation, Effusion, Emphysema, Nodules
from darkfield_nb.physics.phantom import SIDES, torso_interval
from darkfield_nb.physics.simulate import Patient, render_scene


@dataclass
class Volume:
    """Voxel maps on an ``(n, n, n)`` grid indexed ``(z, y, x)``: z from the top, y from
    posterior to anterior, x from the image left; ``spacing_mm`` isotropic."""

    mu: np.ndarray  # 1/cm at the patient's effective energy
    epsilon: np.ndarray  # 1/cm, lung dark-field coefficient (0 outside the lungs)
    lung: np.ndarray  # bool
    hu: np.ndarray  # Hounsfield units (materials.mu_to_hu at the same energy)
    spacing_mm: float
    energy_kev: float


def _inside(iv, Y):
    return (iv[0][:, None, :] <= Y) & (Y <= iv[1][:, None, :])


def phantom_volume(patient: Patient, n: int = 96, fov_cm: float = 40.0) -> Volume:
    """Voxelize ``patient`` on an ``n``-cube over ``fov_cm`` (see the module docstring)."""
    scene = render_scene(patient, n, fov_cm)
    anat, grid, E = patient.anatomy, scene.grid, patient.exposure.energy_kev
    X2, Z2 = np.broadcast_arrays(grid.x[None, :], grid.z[:, None])
    Y = grid.x[None, :, None]  # same spacing along y, centred on 0
    X3, Z3 = X2[:, None, :], Z2[:, None, :]
    mu_t, mu_fat = materials.mu("soft_tissue", E), materials.mu("adipose", E)
    d_cort = materials.mu("cortical_bone", E) - mu_t
    d_canc = materials.mu("cancellous_bone", E) - mu_t

    body = _inside(torso_interval(anat, X2, Z2), Y)
    inner = _inside(torso_interval(anat, X2, Z2, inset=anat.fat), Y)
    mu = np.where(inner, mu_t, np.where(body, mu_fat, 0.0))

    lung = np.zeros(mu.shape, bool)
    for side in SIDES:
        lung |= scene.lungs[side].contains(X3, Y, Z3)
    eps = np.where(lung, scene.eps[:, None, :], 0.0)
    mu_lung = scene.mu_lung[:, None, :]
    for p in [patient.pathology] if patient.pathology is not None else []:
        if isinstance(p, Emphysema):
            for _, c, s, r in p.blobs:
                blob = lung & _inside(g.ellipsoid(X2, Z2, c, s), Y)
                eps = np.where(blob, eps * (1 - r), eps)
                mu_lung = np.where(blob, mu_lung * (1 - p.air_increase), mu_lung)
        elif isinstance(p, Consolidation):
            for _, c, s, fc in p.blobs:
                blob = lung & _inside(g.ellipsoid(X2, Z2, c, s), Y)
                f = scene.mu_lung[:, None, :] / mu_t
                eps = np.where(blob, eps * (1 - fc) / (1 - f) * p.microstructure_loss, eps)
                mu_lung = np.where(blob, mu_t * fc, mu_lung)
        elif isinstance(p, Nodules):
            for c, r in p.spheres:
                ball = (X3 - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z3 - c[2]) ** 2 < r * r
                lung &= ~ball
        elif isinstance(p, Effusion):
            healthy = scene.lung_len_healthy[p.side]
            keep = scene.lung_len[p.side] > 0.5 * healthy
            lung &= ~((X3 * p.side > 0) & ~keep[:, None, :])
    mu = np.where(lung, mu_lung, mu)
    eps = np.where(lung, eps, 0.0)
    # trachea (air) above the carina
    carina = 5.6 * anat.height + anat.shift_z
    mu = np.where(((X3 - 0.2) ** 2 + Y**2 < 0.85**2) & (Z3 > carina) & body, 0.0, mu)
    # vertebral bodies: elliptic cylinders, cancellous with a cortical rim, discs left out
    a_v = np.clip(1.9 + 0.035 * (2.0 - Z3), 1.3, 2.6) * anat.width
    b_v, yv = 1.6 * anat.depth, -5.5 * anat.depth
    period = 2.55 * anat.height
    phase = np.mod(Z3 - (13.4 * anat.height + anat.shift_z), period) / period
    rho = (X3 / a_v) ** 2 + ((Y - yv) / b_v) ** 2
    vert = (rho < 1) & (phase < 0.84)
    mu = np.where(vert, mu_t + np.where(rho > 0.8, d_cort, d_canc), mu)
    # ribs: elliptic ring walls at the posterior / anterior heights of skeleton._ribs
    a_cage = anat.chest_a - 1.1
    b_cage = anat.chest_b * anat.depth - 1.2
    t = anat.rib_thickness
    for k in range(12):
        size_k = min(1.0, 0.5 + 0.14 * k)
        a_o, b_o = a_cage * size_k, b_cage * (0.6 + 0.4 * size_k)
        zk = 13.4 * anat.height + anat.shift_z - k * anat.rib_spacing * anat.height
        drop = 2.2 + 1.6 * (1 - size_k)
        r_o = (X3 / a_o) ** 2 + (Y / b_o) ** 2
        r_i = (X3 / (a_o - t)) ** 2 + (Y / (b_o - t)) ** 2
        u = np.clip(np.abs(X3) / a_o, 0, 1)
        zc = np.where(Y < 0, zk + 0.8 * u - (drop + 0.8) * u**2, zk - drop - 5.0 * (1 - u))
        ok = np.where(Y < 0, u >= 2.3 * anat.width / a_o, u >= 0.42 + 0.1 * (1 - size_k))
        rib = (r_o <= 1) & (r_i >= 1) & (np.abs(Z3 - zc) < 0.55) & ok
        mu = np.where(rib, mu_t + 0.5 * (d_cort + d_canc), mu)
    # clavicles
    for s in SIDES:
        tt = np.clip((np.abs(X3) - 2.2) / (15.5 * anat.width - 2.2), 0, 1)
        zl = anat.shift_z + anat.clavicle_lift
        zc = 12.2 + zl + 2.6 * tt - 0.7 * np.sin(2 * np.pi * tt)
        clav = ((Z3 - zc) ** 2 + (Y - 5.5) ** 2 < (0.85 - 0.3 * tt) ** 2) & (X3 * s > 2.0)
        clav &= np.abs(X3) < 15.5 * anat.width
        mu = np.where(clav, mu_t + d_cort, mu)
    mu = mu.astype(np.float32)
    return Volume(
        mu=mu,
        epsilon=eps.astype(np.float32),
        lung=lung,
        hu=materials.mu_to_hu(mu, E).astype(np.float32),
        spacing_mm=grid.pixel_cm * 10.0,
        energy_kev=E,
    )
