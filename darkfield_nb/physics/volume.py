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
from darkfield_nb.physics import materials, skeleton
from darkfield_nb.physics.lungs import SIDES
from darkfield_nb.physics.pathology import Consolidation, Effusion, Emphysema, Nodules
from darkfield_nb.physics.phantom import carina_z, torso_interval
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
            sev = p.severity
            rb = (p.diffuse_reduction if p.diffuse else p.background_reduction) * sev
            eps = eps * (1 - rb)
            mu_lung = mu_lung * (1 - p.density_drop * sev * (1.0 if p.diffuse else 0.3))
            for _, c, s, r in [] if p.diffuse else p.blobs:
                blob = lung & _inside(g.ellipsoid(X2, Z2, c, s), Y)
                eps = np.where(blob, eps * (1 - r * sev), eps)
                mu_lung = np.where(blob, mu_lung * (1 - p.density_drop * sev), mu_lung)
        elif isinstance(p, Consolidation):
            sev = p.severity
            for _, c, s, fmax in p.blobs:
                blob = lung & _inside(g.ellipsoid(X2, Z2, c, s), Y)
                f = scene.mu_lung[:, None, :] / mu_t
                fc = f + sev * (np.maximum(fmax, f + 0.05) - f)
                kept = 1 - sev * (1 - p.microstructure_kept)
                eps = np.where(blob, eps * (1 - fc) / (1 - f) * kept, eps)
                mu_lung = np.where(blob, mu_t * fc, mu_lung)
        elif isinstance(p, Nodules):
            for c, r1 in p.spheres:
                r = r1 * p.severity
                ball = (X3 - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z3 - c[2]) ** 2 < r * r
                lung &= ~ball
        elif isinstance(p, Effusion):
            healthy = scene.lung_len_healthy[p.side]
            keep = scene.lung_len[p.side] > 0.5 * healthy
            lung &= ~((X3 * p.side > 0) & ~keep[:, None, :])
    mu = np.where(lung, mu_lung, mu)
    eps = np.where(lung, eps, 0.0)
    # trachea (air) above the carina
    mu = np.where(((X3 - 0.2) ** 2 + Y**2 < 0.85**2) & (Z3 > carina_z(anat)) & body, 0.0, mu)
    # vertebral bodies: elliptic cylinders, cancellous with a cortical rim, discs left out
    a_v = skeleton.vertebra_halfwidth(anat, Z3)
    b_v, yv = skeleton.vertebra_depth(anat)
    _, phase = skeleton.vertebra_phase(anat, Z3)
    rho = (X3 / a_v) ** 2 + ((Y - yv) / b_v) ** 2
    vert = (rho < 1) & (phase < skeleton.VERTEBRA_BODY_FRACTION)
    mu = np.where(vert, mu_t + np.where(rho > 0.8, d_cort, d_canc), mu)
    # ribs: elliptic ring walls at the posterior / anterior heights of skeleton.rib_rings
    for ring in skeleton.rib_rings(anat):
        a_o, b_o, t = ring.a_o, ring.b_o, ring.t
        r_o = (X3 / a_o) ** 2 + (Y / b_o) ** 2
        r_i = (X3 / (a_o - t)) ** 2 + (Y / (b_o - t)) ** 2
        u = np.clip(np.abs(X3) / a_o, 0, 1)
        zc = np.where(Y < 0, ring.z_posterior(u), ring.z_anterior(u))
        ok = np.where(Y < 0, u >= ring.u0_post, u >= ring.u0_ant)
        rib = (r_o <= 1) & (r_i >= 1) & (np.abs(Z3 - zc) < 0.55) & ok
        mu = np.where(rib, mu_t + 0.5 * (d_cort + d_canc), mu)
    # clavicles
    xm, xl = skeleton.clavicle_x(anat)
    _, zc, r, _ = skeleton.clavicle_centerline(anat, np.abs(X3))
    clav = ((Z3 - zc) ** 2 + (Y - 5.5) ** 2 < r**2) & (np.abs(X3) > xm) & (np.abs(X3) < xl)
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
