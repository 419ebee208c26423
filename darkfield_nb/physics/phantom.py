"""The procedural chest phantom's scene: soft tissue, airways, lungs, heart and vessels on one
detector grid.

Every solid is given in closed form (ellipsoids, superellipsoids, elliptic cylinders,
paraboloid domes, tubes), and the beam runs along y, so the path length of every pixel's ray
through every solid is an exact interval computation (:mod:`~darkfield_nb.physics.geometry`).
The lungs (:mod:`~darkfield_nb.physics.lungs`: a superellipsoid minus the diaphragm dome,
the heart, the mediastinum and the spine) and the vessel trees
(:mod:`~darkfield_nb.physics.vessels`) have modules of their own; this one builds the body
around them.

:func:`project_phantom` returns a :class:`Scene`: per-pixel path lengths and attenuation terms
that pathologies (:mod:`~darkfield_nb.physics.pathology`) and devices
(:mod:`~darkfield_nb.physics.devices`) then modify before they are composed into the line
integrals ``A = integral mu dl`` and ``D = integral epsilon dl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from darkfield_nb import labels
from darkfield_nb.physics import geometry as g
from darkfield_nb.physics import materials
from darkfield_nb.physics.anatomy import Anatomy
from darkfield_nb.physics.lungs import SIDES, Lung, build_lungs, dome_top
from darkfield_nb.physics.vessels import vessel_path, vessel_tree

__all__ = [  # Lung, SIDES, build_lungs, dome_top, vessel_*: re-exported, they lived here
    "SIDES",
    "Lung",
    "Scene",
    "build_lungs",
    "carina_z",
    "dome_top",
    "finish_scene",
    "project_phantom",
    "torso_interval",
    "vessel_path",
    "vessel_tree",
]


@dataclass
class Scene:
    """Everything a pair is composed from, on one detector grid (all float32, shape (n, n)).

    ``A = A_body + A_bone + A_metal + sum_lungs (mu_lung - mu_t) L_lung + dA``
    ``D = eps L_lung_total + dD + beam hardening``; see :func:`compose`.
    """

    grid: g.Grid
    energy_kev: float
    anatomy: Anatomy
    lungs: dict  # side -> Lung
    lung_len: dict  # side -> current lung path length (cm)
    lung_len_healthy: dict  # side -> lung path length before pathologies
    A_body: np.ndarray  # soft tissue, fat, airways (attenuation, dimensionless)
    A_bone: np.ndarray  # bone attenuation in excess of the soft tissue it displaces
    A_metal: np.ndarray  # device attenuation in excess of soft tissue
    dA: np.ndarray  # pathology and vessel changes of attenuation
    dD: np.ndarray  # pathology and vessel changes of dark-field
    mu_t: float  # soft tissue mu (1/cm)
    mu_lung: np.ndarray  # lung mu per pixel (tissue fraction field), 1/cm
    eps: np.ndarray  # lung dark-field coefficient per pixel, 1/cm
    heart: np.ndarray  # bool, heart silhouette
    bone: np.ndarray  # bool, bone where its excess attenuation is visible
    body: np.ndarray  # bool, inside the patient
    mask: np.ndarray  # uint16 label bits (filled as parts are added)
    metal_outlier: np.ndarray  # bool, pixels behind metal (rare noise outliers)
    extra: dict = field(default_factory=dict)

    @property
    def lung_total(self) -> np.ndarray:
        return self.lung_len[-1] + self.lung_len[1]


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def torso_interval(anat: Anatomy, X, Z, inset: float = 0.0) -> g.Interval:
    """Torso as a vertical elliptic cylinder whose half-width/depth narrow to the neck."""
    zn = 15.8 + anat.shift_z
    s = _sigmoid((zn - Z) / 0.9)
    a = 6.0 + (anat.chest_a - 6.0) * s - inset
    b = 5.8 + (anat.chest_b * anat.depth - 5.8) * s - inset
    a = np.maximum(a, 0.1)
    b = np.maximum(b, 0.1)
    return g.elliptic_cylinder_z(X, 0.0, -0.3, a, b)


def _body_attenuation(anat: Anatomy, grid: g.Grid, mu_t: float, mu_fat: float, X, Z):
    """Soft tissue and fat of torso, neck, shoulders, arms and breasts; returns (A, body)."""
    outer = torso_interval(anat, X, Z)
    inner = torso_interval(anat, X, Z, inset=anat.fat)
    a = anat.chest_a
    body_len = g.length(outer)
    # shoulders overlap the torso: exact union inside their window only
    zs = 12.6 + anat.shift_z
    rows, cols, Xw, Zw = grid.window(-(a + 4.5), a + 4.5, zs - 4.2, zs + 4.2)
    parts = [(outer[0][rows, cols], outer[1][rows, cols])]
    parts += [g.ellipsoid(Xw, Zw, (s * (a - 1.5), -0.8, zs), (6.0, 6.2, 4.2)) for s in SIDES]
    body_len[rows, cols] = g.union_length(parts)
    # arms lie beside the chest wall (or are raised beside the head): add what does not
    # overlap the torso and shoulders
    arm_x = a + anat.arms_out
    top = 12.0 + anat.shift_z
    if anat.arms_up:
        arm_x = a - 1.0
        z_lo, z_hi = top, grid.cz + grid.fov_cm
    else:
        z_lo, z_hi = grid.cz - grid.fov_cm, 13.5 + anat.shift_z
    for s in SIDES:
        rows, cols, Xw, Zw = grid.window(s * arm_x - 6.0, s * arm_x + 6.0, z_lo, z_hi)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        if anat.arms_up:  # upper arm rising from the shoulder, tilted outwards
            axis = s * (arm_x + 0.12 * (Zw - top))
            arm = g.elliptic_cylinder_z(Xw - axis, 0.0, -0.8, 4.2, 4.6)
            fade = np.clip((Zw - top + 1.0) / 3.0, 0.0, 1.0)
        else:
            arm = g.elliptic_cylinder_z(Xw + 0 * Zw, s * arm_x, -0.8, 3.9, 4.6)
            fade = np.clip((top + 1.5 - Zw) / 3.0, 0.0, 1.0)  # rounds off into the shoulder
        mid, half = (arm[1] + arm[0]) / 2, fade * (arm[1] - arm[0]) / 2
        arm = (mid - half, mid + half)
        torso_w = (outer[0][rows, cols], outer[1][rows, cols])
        body_len[rows, cols] += g.length(arm) - g.length(g.intersect(arm, torso_w))
    fat_len = body_len - g.length(inner)
    A = mu_fat * fat_len + mu_t * g.length(inner)
    if anat.female:
        mu_breast = mu_fat
        for s in SIDES:
            br = g.ellipsoid(
                X,
                Z,
                (s * 8.5 * anat.width, anat.chest_b * anat.depth - 0.5, -5.5 + anat.shift_z),
                (6.5, 2.2, 5.8),
            )
            A = A + mu_breast * (g.length(br) - g.length(g.intersect(br, outer)))
    return A.astype(np.float32), body_len > 0


def carina_z(anat: Anatomy) -> float:
    """Height (cm) of the carina, where the trachea splits into the main bronchi."""
    return 5.6 * anat.height + anat.shift_z


def _airways(anat: Anatomy, X, Z, mu_t: float) -> np.ndarray:
    """Trachea, main bronchi and gastric bubble: air replacing soft tissue (negative excess)."""
    carina = (0.2, carina_z(anat))
    path = g.tube_chord(np.abs(X - 0.2), 0.85) * (Z > carina[1])
    for s in SIDES:
        hilum = (s * 4.0 * anat.width, carina[1] - 3.2)
        path = path + g.tube_chord(g.segment_distance(X, Z, carina, hilum), 0.55)
    if anat.gastric_bubble:
        c = (6.3 * anat.width, 1.0, dome_top(anat, 1) - 3.2)
        path = path + g.length(g.ellipsoid(X, Z, c, (2.6, 2.2, 1.7)))
    return (-mu_t * path).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------


def project_phantom(
    anat: Anatomy,
    grid: g.Grid | int,
    energy_kev: float,
    fov_cm: float = 40.0,
    rng: np.random.Generator | None = None,
) -> Scene:
    """Project the healthy phantom (no pathology, no devices) onto ``grid`` (a
    :class:`~darkfield_nb.physics.geometry.Grid`, or a size in pixels over ``fov_cm``).

    ``rng`` draws the lung texture fields (tissue-fraction and microstructure variation).
    """
    from darkfield_nb.physics import skeleton

    rng = np.random.default_rng(0) if rng is None else rng
    grid = grid if isinstance(grid, g.Grid) else g.Grid(int(grid), fov_cm)
    size, fov_cm = grid.size, grid.fov_cm
    X = grid.x[None, :]
    Z = grid.z[:, None]
    n = size
    mu_t = materials.mu("soft_tissue", energy_kev)
    mu_fat = materials.mu("adipose", energy_kev)
    mu_lung_ref = materials.mu("lung", energy_kev)

    A_body, body = _body_attenuation(anat, grid, mu_t, mu_fat, X, Z)
    A_body = A_body + _airways(anat, X, Z, mu_t)

    lungs = build_lungs(anat)
    heart_c, heart_s, heart_ang = lungs.pop("heart")
    heart = g.length(g.ellipsoid(X, Z, heart_c, heart_s, heart_ang)) > 0
    lung_len = {}
    for side in SIDES:
        lung = lungs[side]
        x0, x1, z0, z1 = lung.bbox()
        rows, cols, Xw, Zw = grid.window(x0, x1, z0, z1)
        full = np.zeros((n, n), np.float32)
        full[rows, cols] = lung.length(Xw, Zw)
        lung_len[side] = full

    # Lung tissue fraction f (mu_lung = mu_lung_ref f / f_ref) and dark-field coefficient
    # eps = eps0 (1 - f) / (1 - f_ref) * microstructure: both vary smoothly over the lung.
    zrel = np.clip((anat.shift_z + 1.0 - Z) / 13.0, -1.0, 1.0)
    f = anat.lung_tissue_fraction * (1.0 + anat.lung_gradient * zrel)
    f = f * (1.0 + 0.06 * g.smooth_field(rng, n, 6.0, fov_cm))
    micro = 1.0 + 0.10 * g.smooth_field(rng, n, 4.0, fov_cm)
    micro = micro + 0.05 * g.smooth_field(rng, n, 1.5, fov_cm)
    f = np.clip(f, 0.05, 0.95).astype(np.float32)
    mu_lung = (mu_lung_ref * f / materials.LUNG_TISSUE_FRACTION).astype(np.float32)
    eps = (
        anat.epsilon_per_cm
        * materials.epsilon_scale(energy_kev)
        * (1.0 - f)
        / materials.LUNG_AIR_FRACTION_REF
        * micro
    ).astype(np.float32)

    A_bone, bone = skeleton.project_skeleton(anat, grid, energy_kev)
    # bone lies inside soft tissue: where a bone's closed form overhangs the body outline
    # (a humeral head above a rounded shoulder), it is cut
    A_bone = np.where(body, A_bone, 0.0).astype(np.float32)
    bone &= body

    mask = np.zeros((n, n), np.uint16)
    scene = Scene(
        grid=grid,
        energy_kev=energy_kev,
        anatomy=anat,
        lungs=lungs,
        lung_len=lung_len,
        lung_len_healthy={k: v.copy() for k, v in lung_len.items()},
        A_body=A_body,
        A_bone=A_bone,
        A_metal=np.zeros((n, n), np.float32),
        dA=np.zeros((n, n), np.float32),
        dD=np.zeros((n, n), np.float32),
        mu_t=mu_t,
        mu_lung=mu_lung,
        eps=eps,
        heart=heart,
        bone=bone,
        body=body,
        mask=mask,
        metal_outlier=np.zeros((n, n), bool),
    )
    if anat.minor_fissure:
        # the horizontal fissure of the right lung, seen edge-on: a faint thin line
        zf = 1.2 * anat.height + anat.shift_z
        line = np.exp(-0.5 * ((Z - zf - 0.04 * (X + 8.0)) / 0.06) ** 2) * (X < -4.0)
        scene.dA += (0.03 * (mu_t - mu_lung) * lung_len[-1] * line).astype(np.float32)
    return scene


def finish_scene(scene: Scene) -> None:
    """Add the vessels (clipped to the final lung) and the lung / heart / bone mask bits.

    Call after the pathologies have changed the lung (a pneumothorax removes lung markings).
    """
    segs = vessel_tree(scene.anatomy, scene.lungs)
    vp = vessel_path(segs, scene.grid)
    lung_total = scene.lung_total
    v = np.minimum(vp, 0.9 * lung_total)
    scene.dA += (scene.mu_t - scene.mu_lung) * v
    scene.dD -= scene.eps * v
    healthy = scene.lung_len_healthy[-1] + scene.lung_len_healthy[1]
    scene.mask |= np.where((healthy > 1.0) & ~scene.heart, labels.LUNG, 0).astype(np.uint16)
    scene.mask |= np.where(scene.heart, labels.HEART, 0).astype(np.uint16)
    scene.mask |= np.where(scene.bone, labels.BONE, 0).astype(np.uint16)
