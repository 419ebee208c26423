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

import numpy as np

from darkfield_nb.physics import geometry as g
from darkfield_nb.physics import materials
from darkfield_nb.physics.anatomy import Anatomy


def _profile(d, half):
    """Elliptic cross-section factor ``sqrt(1 - (d/half)^2)`` (0 outside)."""
    return np.sqrt(np.maximum(1.0 - (d / half) ** 2, 0.0))


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
    w, h, sz = anat.width, anat.height, anat.shift_z
    a_cage = anat.chest_a - 1.1
    b_cage = anat.chest_b * anat.depth - 1.2
    t = anat.rib_thickness
    z1 = 13.4 * h + sz
    for k in range(12):
        size_k = min(1.0, 0.5 + 0.14 * k)
        a_o, b_o = a_cage * size_k, b_cage * (0.6 + 0.4 * size_k)
        a_i, b_i = a_o - t, b_o - t
        zk = z1 - k * anat.rib_spacing * h
        drop = 2.2 + 1.6 * (1 - size_k)
        for side in (-1, 1):
            for part in ("posterior", "anterior"):
                if part == "posterior":
                    u0, hz, zmin, zmax = 2.3 * w / a_o, 0.55, zk - drop - 1.0, zk + 0.9
                else:
                    u0, hz = 0.42 + 0.1 * (1 - size_k), 0.6
                    zmin, zmax = zk - drop - 5.0 - 1.0, zk - drop + 1.0
                x0, x1 = sorted((side * u0 * a_o, side * a_o))
                rows, cols, X, Z = grid.window(x0, x1, zmin, zmax)
                if rows.stop <= rows.start or cols.stop <= cols.start:
                    continue
                u = np.clip(np.abs(X) / a_o, 0.0, 1.0)
                h_o = b_o * np.sqrt(np.maximum(1 - u**2, 0.0))
                h_i = b_i * np.sqrt(np.maximum(1 - (np.abs(X) / a_i) ** 2, 0.0))
                ring = (h_o - h_i) * (u >= u0)
                if part == "posterior":
                    zc = zk + 0.8 * u - (drop + 0.8) * u**2
                    slope = (0.8 - 2 * (drop + 0.8) * u) / a_o
                else:
                    zc = zk - drop - 5.0 * (1 - u)
                    slope = 5.0 / a_o * np.ones_like(u)
                    ring = ring * np.clip((u - u0) / 0.08, 0, 1)  # fades into cartilage
                hz_eff = hz * np.sqrt(1 + slope**2)
                dz = Z - zc
                weight = 0.55 if part == "posterior" else 0.3  # thin cortex; anterior ribs faint
                val = (
                    weight
                    * ring
                    * (
                        d_cort * _profile(dz, hz_eff)
                        - (d_cort - d_canc) * 0.5 * _profile(dz, 0.55 * hz_eff)
                    )
                )
                add(rows, cols, val)


def _spine(anat, grid, d_cort, d_canc, add):
    d, sz, h = anat.depth, anat.shift_z, anat.height
    rows, cols, X, Z = grid.window(-4.0, 4.0, -grid.fov_cm, grid.fov_cm)
    # vertebral body half-width grows caudally; height period ~ 2.5 cm (body + disc)
    a_v = np.clip(1.9 + 0.035 * (2.0 - Z), 1.3, 2.6) * anat.width
    a_v = np.where(Z > 15.0 + sz, 1.3, a_v)
    b_v = 1.6 * d
    period = 2.55 * h
    phase = np.mod(Z - (13.4 * h + sz), period) / period  # 0..1 within a level
    body_frac = 0.84
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
    z_top = 13.4 * h + sz + 2 * period
    k = 0
    while True:
        zc_level = z_top - k * period
        k += 1
        if zc_level < -grid.fov_cm / 2 - period:
            break
        if zc_level > grid.fov_cm / 2 + period:
            continue
        zb = zc_level - 0.3 * period * body_frac  # upper part of the body
        aw = float(np.clip(1.9 + 0.035 * (2.0 - zb), 1.3, 2.6)) * anat.width
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
    sz = anat.shift_z + anat.clavicle_lift
    for s in (-1, 1):
        xm, xl = 2.2, 15.5 * anat.width
        zm, zl = 12.2 + sz, 14.8 + sz
        rows, cols, X, Z = grid.window(s * xm, s * xl, zm - 2.5, zl + 2.5)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        t = np.clip((np.abs(X) - xm) / (xl - xm), 0.0, 1.0)
        zc = zm + (zl - zm) * t - 0.7 * np.sin(2 * np.pi * t)
        slope = ((zl - zm) - 0.7 * 2 * np.pi * np.cos(2 * np.pi * t)) / (xl - xm)
        r = 0.85 - 0.3 * t
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
    sz = anat.shift_z
    for s in (-1, 1):
        cx = s * (anat.chest_a + anat.arms_out - 0.8)
        cz = 12.0 + sz
        rows, cols, X, Z = grid.window(cx - 2.6, cx + 2.6, cz - 2.6, cz + 2.6)
        if rows.stop > rows.start and cols.stop > cols.start:
            rho = np.hypot(X - cx, Z - cz)
            add(
                rows,
                cols,
                d_cort * (g.tube_chord(rho, 2.4) - g.tube_chord(rho, 2.1))
                + d_canc * g.tube_chord(rho, 2.1),
            )
        rows, cols, X, Z = grid.window(cx - 1.3, cx + 1.3, -grid.fov_cm, cz - 1.5)
        if rows.stop > rows.start and cols.stop > cols.start:
            dx = np.abs(X - cx - s * 0.02 * (cz - Z))
            add(
                rows,
                cols,
                (
                    d_cort * (g.tube_chord(dx, 1.1) - g.tube_chord(dx, 0.7))
                    + d_canc * 0.3 * g.tube_chord(dx, 0.7)
                )
                * np.ones_like(Z),
            )
