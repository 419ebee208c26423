"""Bones of the phantom in closed form: ribs, spine, clavicles, scapulae, humeri.

Each bone adds its attenuation in excess of the soft tissue it displaces,
``(mu_bone - mu_tissue) * path``. Bones are hollow: a cortical shell (mu of cortical bone) around
cancellous bone (:data:`~darkfield_nb.physics.materials.CANCELLOUS_BONE_FRACTION`).

Ribs are elliptical rings around the thorax: at lateral position x the beam crosses the ring
wall with path ``h_o(x) - h_i(x)`` per half (``h = b sqrt(1 - x^2/a^2)`` for the outer and inner
ellipse), which grows towards the ring's lateral edge where the beam runs along the rib: the
bright lateral rib margins of a chest radiograph. The posterior half of each ring is drawn at
a height that falls laterally; the anterior half rises from the costal cartilage (not
drawn) to meet it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from darkfield_nb.physics import geometry as g
from darkfield_nb.physics import materials
from darkfield_nb.physics.anatomy import Anatomy


def _profile(d, half):
    """Elliptic cross-section factor ``sqrt(1 - (d/half)^2)`` (0 outside)."""
    return np.sqrt(np.maximum(1.0 - (d / half) ** 2, 0.0))


# --------------------------------------------------------------------------------------------
# Landmarks: the one definition of where each bone is (the projector below and the voxel model
# of :mod:`~darkfield_nb.physics.volume` both read these)
# --------------------------------------------------------------------------------------------

N_RIBS = 12
VERTEBRA_BODY_FRACTION = 0.84  # vertebral body height / level period (the rest is disc)


@dataclass(frozen=True)
class RibRing:
    """Rib ``k`` (0 = first rib): an elliptic ring wall around the thorax.

    Outer semi-axes ``(a_o, b_o)``, inner ``(a_o - t, b_o - t)``; at ``u = |x| / a_o`` the
    posterior half runs at height ``zk + 0.8 u - (drop + 0.8) u^2`` (for ``u >= u0_post``),
    the anterior half at ``zk - drop - 5 (1 - u)`` (for ``u >= u0_ant``).
    """

    a_o: float
    b_o: float
    t: float
    zk: float
    drop: float
    u0_post: float
    u0_ant: float

    def z_posterior(self, u):
        return self.zk + 0.8 * u - (self.drop + 0.8) * u**2

    def z_anterior(self, u):
        return self.zk - self.drop - 5.0 * (1 - u)


def rib_rings(anat: Anatomy) -> list[RibRing]:
    """The twelve rib rings of ``anat`` (the first ribs smaller; ``rib_spacing`` apart)."""
    w, h = anat.width, anat.height
    a_cage = anat.chest_a - 1.1
    b_cage = anat.chest_b * anat.depth - 1.2
    out = []
    for k in range(N_RIBS):
        size_k = min(1.0, 0.5 + 0.14 * k)
        a_o = a_cage * size_k
        out.append(
            RibRing(
                a_o=a_o,
                b_o=b_cage * (0.6 + 0.4 * size_k),
                t=anat.rib_thickness,
                zk=13.4 * h + anat.shift_z - k * anat.rib_spacing * h,
                drop=2.2 + 1.6 * (1 - size_k),
                u0_post=2.3 * w / a_o,
                u0_ant=0.42 + 0.1 * (1 - size_k),
            )
        )
    return out


def vertebra_halfwidth(anat: Anatomy, Z):
    """Half-width (cm) of the vertebral body at height ``Z``: grows caudally, 1.3 in the neck."""
    a_v = np.clip(1.9 + 0.035 * (2.0 - Z), 1.3, 2.6) * anat.width
    return np.where(Z > 15.0 + anat.shift_z, 1.3, a_v)


def vertebra_depth(anat: Anatomy) -> tuple[float, float]:
    """``(b_v, y_v)``: antero-posterior half-depth and centre (cm) of the vertebral bodies."""
    return 1.6 * anat.depth, -5.5 * anat.depth


def vertebra_phase(anat: Anatomy, Z):
    """``(period, phase)``: the level period (cm) and the phase in [0, 1) of height ``Z``
    within its level (body for ``phase < VERTEBRA_BODY_FRACTION``, then disc)."""
    period = 2.55 * anat.height
    return period, np.mod(Z - (13.4 * anat.height + anat.shift_z), period) / period


def clavicle_centerline(anat: Anatomy, abs_x):
    """``(t, zc, r, slope)`` of the clavicle at lateral distance ``|x|``: relative position
    ``t`` from the sternal end (x = 2.2) to the acromion (x = 15.5 w), centre height ``zc``,
    radius ``r`` and the slope ``dz/dx`` of the centre line."""
    xm, xl = clavicle_x(anat)
    sz = anat.shift_z + anat.clavicle_lift
    zm, zl = 12.2 + sz, 14.8 + sz
    t = np.clip((abs_x - xm) / (xl - xm), 0.0, 1.0)
    zc = zm + (zl - zm) * t - 0.7 * np.sin(2 * np.pi * t)
    slope = ((zl - zm) - 0.7 * 2 * np.pi * np.cos(2 * np.pi * t)) / (xl - xm)
    return t, zc, 0.85 - 0.3 * t, slope


def clavicle_x(anat: Anatomy) -> tuple[float, float]:
    """Lateral extent ``(sternal end, acromial end)`` of each clavicle (cm)."""
    return 2.2, 15.5 * anat.width


def project_skeleton(anat: Anatomy, grid: g.Grid, energy_kev: float):
    """Excess attenuation of all bones and a boolean bone mask, on ``grid``."""
    n = grid.size
    mu_t = materials.mu("soft_tissue", energy_kev)
    d_cort = materials.mu("cortical_bone", energy_kev) - mu_t
    d_canc = materials.mu("cancellous_bone", energy_kev) - mu_t
    A = np.zeros((n, n), np.float32)

    def add(rows, cols, val):
        A[rows, cols] += val.astype(np.float32)

    _ribs(anat, grid, d_cort, d_canc, add)
    _spine(anat, grid, d_cort, d_canc, add)
    _clavicles(anat, grid, d_cort, d_canc, add)
    _scapulae(anat, grid, d_cort, add)
    _humeri(anat, grid, d_cort, d_canc, add)
    bone = A > 0.15  # visible bone: excess attenuation above 0.15 (~2 mm of cortex)
    return A, bone


def _ribs(anat, grid, d_cort, d_canc, add):
    for ring in rib_rings(anat):
        a_o, zk, drop = ring.a_o, ring.zk, ring.drop
        a_i, b_o, b_i = a_o - ring.t, ring.b_o, ring.b_o - ring.t
        for side in (-1, 1):
            for part in ("posterior", "anterior"):
                if part == "posterior":
                    u0, hz, zmin, zmax = ring.u0_post, 0.55, zk - drop - 1.0, zk + 0.9
                else:
                    u0, hz = ring.u0_ant, 0.6
                    zmin, zmax = zk - drop - 5.0 - 1.0, zk - drop + 1.0
                x0, x1 = sorted((side * u0 * a_o, side * a_o))
                rows, cols, X, Z = grid.window(x0, x1, zmin, zmax)
                if rows.stop <= rows.start or cols.stop <= cols.start:
                    continue
                u = np.clip(np.abs(X) / a_o, 0.0, 1.0)
                h_o = b_o * np.sqrt(np.maximum(1 - u**2, 0.0))
                h_i = b_i * np.sqrt(np.maximum(1 - (np.abs(X) / a_i) ** 2, 0.0))
                ring_len = (h_o - h_i) * (u >= u0)
                if part == "posterior":
                    zc = ring.z_posterior(u)
                    slope = (0.8 - 2 * (drop + 0.8) * u) / a_o
                else:
                    zc = ring.z_anterior(u)
                    slope = 5.0 / a_o * np.ones_like(u)
                    ring_len = ring_len * np.clip((u - u0) / 0.08, 0, 1)  # fades into cartilage
                hz_eff = hz * np.sqrt(1 + slope**2)
                dz = Z - zc
                weight = 0.55 if part == "posterior" else 0.3  # thin cortex; anterior ribs faint
                val = (
                    weight
                    * ring_len
                    * (
                        d_cort * _profile(dz, hz_eff)
                        - (d_cort - d_canc) * 0.5 * _profile(dz, 0.55 * hz_eff)
                    )
                )
                add(rows, cols, val)


def _spine(anat, grid, d_cort, d_canc, add):
    sz = anat.shift_z
    rows, cols, X, Z = grid.window(-4.0, 4.0, grid.cz - grid.fov_cm, grid.cz + grid.fov_cm)
    # vertebral body half-width grows caudally; height period ~ 2.5 cm (body + disc)
    a_v = vertebra_halfwidth(anat, Z)
    b_v = vertebra_depth(anat)[0]
    period, phase = vertebra_phase(anat, Z)  # phase 0..1 within a level
    body_frac = VERTEBRA_BODY_FRACTION
    vz = np.clip(phase / body_frac, 0, 1)
    in_body = (phase < body_frac).astype(np.float32)
    end = (
        0.35 + 0.65 * _profile(2 * vz - 1, 1.0) ** 0.3 * in_body
    )  # discs stay faintly dense  # squarish vertebral body outline
    outer = g.tube_chord(X, a_v) * (b_v / a_v)
    inner = g.tube_chord(X, np.maximum(a_v - 0.1, 0.1)) * ((b_v - 0.1) / a_v)
    endplate = np.exp(-0.5 * (np.minimum(vz, 1 - vz) * period * body_frac / 0.12) ** 2) * in_body
    val = (
        0.45 * end * (d_canc * inner + d_cort * (outer - inner)) + 0.05 * d_cort * endplate * inner
    )
    add(rows, cols, val)
    # pedicles (cortical rings seen end-on) and spinous processes, per level
    z_top = 13.4 * anat.height + sz + 2 * period
    k = 0
    while True:
        zc_level = z_top - k * period
        k += 1
        if zc_level < grid.cz - grid.fov_cm / 2 - period:
            break
        if zc_level > grid.cz + grid.fov_cm / 2 + period:
            continue
        zb = zc_level - 0.3 * period * body_frac  # upper part of the body
        aw = float(vertebra_halfwidth(anat, np.float64(zb)))
        for s in (-1, 1):
            cx = s * (aw - 0.35)
            rows, cols, X, Z = grid.window(cx - 0.6, cx + 0.6, zb - 0.8, zb + 0.8)
            if rows.stop <= rows.start or cols.stop <= cols.start:
                continue
            rho = np.hypot((X - cx) / 0.42, (Z - zb) / 0.6)
            ring = _profile(rho, 1.0) - 0.7 * _profile(rho, 0.7)
            add(rows, cols, 0.25 * (d_cort * ring + d_canc * 0.7 * _profile(rho, 0.7)))
        zs = zc_level - 0.75 * period
        rows, cols, X, Z = grid.window(-0.6, 0.6, zs - 1.2, zs + 1.2)
        if rows.stop > rows.start and cols.stop > cols.start:
            rho = np.hypot(X / (0.35 - 0.12 * (Z - zs)), (Z - zs) / 1.0)
            add(rows, cols, 0.12 * d_cort * _profile(rho, 1.0) + 0.25 * d_canc * _profile(rho, 1.0))


def _clavicles(anat, grid, d_cort, d_canc, add):
    xm, xl = clavicle_x(anat)
    sz = anat.shift_z + anat.clavicle_lift
    zm, zl = 12.2 + sz, 14.8 + sz
    for s in (-1, 1):
        rows, cols, X, Z = grid.window(s * xm, s * xl, zm - 2.5, zl + 2.5)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        _, zc, r, slope = clavicle_centerline(anat, np.abs(X))
        dist = np.abs(Z - zc) / np.sqrt(1 + slope**2)
        inside_x = np.clip((np.abs(X) - xm + 0.8) / 0.8, 0, 1) * (np.abs(X) <= xl + 0.2)
        val = d_cort * g.tube_chord(dist, r) - (d_cort - d_canc) * g.tube_chord(dist, 0.7 * r)
        add(rows, cols, val * inside_x)


def _scapulae(anat, grid, d_cort, add):
    sz = anat.shift_z
    for s in (-1, 1):
        a = anat.chest_a
        glen = np.array([s * (a + 0.2), 11.8 + sz])
        sup = np.array([s * (a - 5.5), 14.0 + sz])
        inf = np.array([s * (a - 2.5), 0.5 + sz])
        xs = sorted((glen[0], sup[0], inf[0]))
        rows, cols, X, Z = grid.window(xs[0] - 1, xs[2] + 1, inf[1] - 1, sup[1] + 1)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        tri = np.array([glen, sup, inf])
        # signed distance to each edge (positive inside the triangle)
        centroid = tri.mean(0)
        dmin = None
        for i in range(3):
            p, q = tri[i], tri[(i + 1) % 3]
            nrm = np.array([q[1] - p[1], -(q[0] - p[0])])
            nrm /= np.linalg.norm(nrm)
            if np.dot(centroid - p, nrm) < 0:
                nrm = -nrm
            di = (X - p[0]) * nrm[0] + (Z - p[1]) * nrm[1]
            dmin = di if dmin is None else np.minimum(dmin, di)
        plate = 0.35 * np.clip(dmin / 0.6, 0, 1) ** 0.5
        border = g.tube_chord(g.segment_distance(X, Z, glen, inf), 0.5)
        neck = g.tube_chord(g.segment_distance(X, Z, glen, glen + np.array([-s * 1.5, 1.2])), 0.9)
        add(rows, cols, d_cort * (plate + 0.7 * border + 0.5 * neck))


def _humeri(anat, grid, d_cort, d_canc, add):
    """Humeral heads at the shoulders and shafts running down beside the chest, or up beside
    the head when ``anat.arms_up``."""
    sz = anat.shift_z
    for s in (-1, 1):
        # the head stays in the shoulder joint however far out the arm hangs
        hx = s * (anat.chest_a + min(anat.arms_out, 4.8) - 0.8)
        cx = s * (anat.chest_a + anat.arms_out - 0.8)
        cz = 12.0 + sz
        if anat.arms_up:
            cx = hx = s * (anat.chest_a - 1.0)
            cz = 13.5 + sz
        rows, cols, X, Z = grid.window(hx - 2.6, hx + 2.6, cz - 2.6, cz + 2.6)
        if rows.stop > rows.start and cols.stop > cols.start:
            rho = np.hypot(X - hx, Z - cz)
            add(
                rows,
                cols,
                d_cort * (g.tube_chord(rho, 2.4) - g.tube_chord(rho, 2.1))
                + d_canc * g.tube_chord(rho, 2.1),
            )
        if anat.arms_up:  # the shaft leaves the head upwards and slightly outwards
            z0, z1, tilt = cz + 1.5, grid.cz + grid.fov_cm, -0.12
        else:
            z0, z1, tilt = grid.cz - grid.fov_cm, cz - 1.5, 0.02
        rows, cols, X, Z = grid.window(cx - 1.3 - 4, cx + 1.3 + 4, z0, z1)
        if rows.stop > rows.start and cols.stop > cols.start:
            dx = np.abs(X - cx - s * tilt * (cz - Z))
            add(
                rows,
                cols,
                (
                    d_cort * (g.tube_chord(dx, 1.1) - g.tube_chord(dx, 0.7))
                    + d_canc * 0.3 * g.tube_chord(dx, 0.7)
                )
                * np.ones_like(Z),
            )
