"""The pulmonary vessels of the chest phantom: branching 3-D tubes from each hilum, clipped to
the lung, and their projected path length.
"""

from __future__ import annotations

import numpy as np

from darkfield_nb.physics import geometry as g
from darkfield_nb.physics.anatomy import Anatomy
from darkfield_nb.physics.lungs import SIDES


def vessel_tree(anat: Anatomy, lungs: dict) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Segments ``(p0, p1, radius)`` (3-D, cm) of the pulmonary vessel trees.

    Each lung gets five roots from its hilum; every branch splits in two (spread 18-38
    degrees about a random axis, length x0.7-0.9, radius x0.72) for five generations; a branch
    whose end leaves the lung is dropped. Grown one generation at a time (vectorized), seeded
    by ``anatomy.vessel_seed``.
    """
    rng = np.random.default_rng(anat.vessel_seed)
    roots = np.array(
        [(0.35, 0.1, 1.0), (0.9, 0.3, 0.45), (1.0, -0.2, -0.1), (0.6, -0.4, -1.0), (0.3, 0.5, -0.9)]
    )
    segs = []
    for side in SIDES:
        lung = lungs[side]
        hilum = np.array([side * 4.6 * anat.width, -0.5, 1.0 * anat.height + anat.shift_z])
        d = roots * np.array([side, 1.0, 1.0]) + rng.normal(0, 0.15, roots.shape)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        p0 = np.repeat(hilum[None], len(d), 0)
        length = np.full(len(d), 3.2)
        radius = 0.42
        for gen in range(6):
            p1 = p0 + d * length[:, None]
            if gen > 0:
                X = p1[None, :, 0].astype(np.float32)
                Z = p1[None, :, 2].astype(np.float32)
                keep = lung.contains(X, p1[None, :, 1].astype(np.float32), Z)[0]
                p0, p1, d, length = p0[keep], p1[keep], d[keep], length[keep]
            segs += [(a, b, radius) for a, b in zip(p0, p1, strict=True)]
            if gen == 5 or len(p1) == 0:
                break
            # two children per branch: rotate d about a random axis perpendicular to it
            d2 = np.repeat(d, 2, 0)
            ax = np.cross(d2, rng.normal(0, 1, d2.shape))
            ax /= np.linalg.norm(ax, axis=1, keepdims=True) + 1e-9
            ang = np.deg2rad(rng.uniform(18, 38, len(d2))) * np.tile([-1.0, 1.0], len(d))
            c, s_ = np.cos(ang)[:, None], np.sin(ang)[:, None]
            nd = d2 * c + np.cross(ax, d2) * s_ + ax * (ax * d2).sum(1, keepdims=True) * (1 - c)
            d = nd / np.linalg.norm(nd, axis=1, keepdims=True)
            p0 = np.repeat(p1, 2, 0)
            length = np.repeat(length, 2) * rng.uniform(0.7, 0.9, len(d))
            radius *= 0.72
    return segs


def vessel_path(segs, grid: g.Grid) -> np.ndarray:
    """Projected path length (cm) through the vessel tubes.

    A tube of radius r whose axis makes angle theta with the beam has chord
    ``2 sqrt(r^2 - rho^2) / sin(theta)`` at projected distance rho from its axis (capped at
    four radii where the tube runs nearly along the beam).
    """
    out = np.zeros((grid.size, grid.size), np.float32)
    for p0, p1, r in segs:
        d3 = p1 - p0
        l3 = float(np.linalg.norm(d3))
        sin_t = max(float(np.hypot(d3[0], d3[2])) / max(l3, 1e-9), r / 2.0 / max(l3, 1e-9), 0.25)
        x0, x1 = sorted((p0[0], p1[0]))
        z0, z1 = sorted((p0[2], p1[2]))
        rows, cols, X, Z = grid.window(x0 - r, x1 + r, z0 - r, z1 + r)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        dist = g.segment_distance(X, Z, (p0[0], p0[2]), (p1[0], p1[2]))
        chord = g.tube_chord(dist, r) / sin_t
        np.maximum(out[rows, cols], chord, out=out[rows, cols])
    return out
