"""The lungs of the chest phantom: each a superellipsoid minus its holes.

A lung is a superellipsoid (``|u|^p + |v|^p + w^2 <= 1``, ``p`` = 2.6, tapered to the apex on
its lateral side) minus the diaphragm dome, the heart, the mediastinum, the spine and the great
vessels: ``L_lung = |lung| - |U_i (lung n hole_i)|`` along every ray (exact interval
arithmetic, :mod:`~darkfield_nb.physics.geometry`). :func:`build_lungs` places both lungs and
their holes from the random :class:`~darkfield_nb.physics.anatomy.Anatomy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from darkfield_nb.physics import geometry as g
from darkfield_nb.physics.anatomy import Anatomy

SIDES = (-1, 1)  # -1: patient's right lung (image left), +1: patient's left lung (image right)


@dataclass
class Lung:
    """One lung: a superellipsoid (``p`` = 2.6, tapered to the apex on its lateral side) minus
    holes (diaphragm dome, heart, mediastinum, spine, great vessels)."""

    side: int
    center: tuple[float, float, float]
    a_lat: float
    a_med: float
    b: float
    c: float
    p: float = 2.6
    taper: float = 0.35
    holes: list = field(default_factory=list)  # callables (X, Z) -> interval

    def base(self, X, Z) -> g.Interval:
        """The lung's superellipsoid before holes are cut: ``|u|^p + |v|^p + w^2 <= 1``."""
        cx, cy, cz = self.center
        dx = X - cx
        v = (Z - cz) / self.c
        lateral = dx * self.side > 0
        a = np.where(lateral, self.a_lat * (1.0 - self.taper * np.clip(v, 0, 1) ** 2), self.a_med)
        q = 1.0 - np.abs(dx / a) ** self.p - np.abs(v) ** self.p
        inside = q > 0
        h = self.b * np.sqrt(np.maximum(q, 0.0))
        return (
            np.where(inside, cy - h, g.EMPTY).astype(np.float32),
            np.where(inside, cy + h, g.EMPTY).astype(np.float32),
        )

    def bbox(self) -> tuple[float, float, float, float]:
        cx, _, cz = self.center
        x0, x1 = sorted((cx - self.side * self.a_med, cx + self.side * self.a_lat))
        return x0, x1, cz - self.c, cz + self.c

    def length(self, X, Z, within: g.Interval | None = None) -> np.ndarray:
        """Lung path length (cm) per pixel, optionally only inside the solid ``within``."""
        base = self.base(X, Z)
        if within is not None:
            base = g.intersect(base, within)
        return g.length_minus(base, [h(X, Z) for h in self.holes])

    def contains(self, X, Y, Z) -> np.ndarray:
        """Voxel test (X, Z of shape (nz, 1, nx) or broadcastable; Y along axis 1)."""
        inside = g.contains(self.base(X, Z), Y)
        for h in self.holes:
            inside &= ~g.contains(h(X, Z), Y)
        return inside


def dome_top(anat: Anatomy, side: int) -> float:
    """Height (cm) of the top of the diaphragm dome under lung ``side`` (-1 right, +1 left)."""
    top = anat.dome_right if side < 0 else anat.dome_left
    return top * anat.height + anat.shift_z - anat.dome_drop


def build_lungs(anat: Anatomy) -> dict:
    """The two lungs with their holes (dome, heart, mediastinum, spine, aorta / vena cava)."""
    w, d, h, sz = anat.width, anat.depth, anat.height, anat.shift_z
    hs = anat.heart_scale
    heart_c = (1.9 * w, 2.0 * d, -4.4 * h + sz)
    heart_s = (6.2 * w * hs, 5.0 * d * hs, 4.6 * h * hs)

    def heart(X, Z):
        return g.ellipsoid(X, Z, heart_c, heart_s, anat.heart_angle_deg)

    def mediastinum(X, Z):
        # upper mediastinum widening downwards; anterior and posterior junction lines.
        a = 2.3 * w + 0.35 * np.clip((10.0 + sz - Z) / 10.0, 0, 1.5)
        return g.elliptic_cylinder_z(X, 0.0, 0.8 * d, a, 6.5 * d)

    def spine(X, Z):
        return g.elliptic_cylinder_z(X, 0.0, -6.3 * d, 3.3 * w, 3.2 * d)

    def aorta(X, Z):
        return g.ellipsoid(X, Z, (2.6 * w, -1.0 * d, 5.8 * h + sz), (1.9, 2.0, 2.0))

    def descending_aorta(X, Z):
        return g.elliptic_cylinder_z(X, 2.0 * w, -4.8 * d, 1.6, 1.5)

    def vena_cava(X, Z):
        return g.ellipsoid(X, Z, (-2.7 * w, 1.0 * d, 5.0 * h + sz), (1.4, 1.6, 5.5))

    lungs = {}
    flat = 1.0 - anat.dome_flatten
    for side in SIDES:
        top = dome_top(anat, side)
        x0 = 6.5 * side * w

        def dome(X, Z, top=top, x0=x0):
            return g.paraboloid_below(
                X, Z, top, x0, 1.0 * d, 0.11 * flat / w**2, 0.05 * flat / d**2
            )

        holes = [dome, heart, mediastinum, spine]
        holes += [aorta, descending_aorta] if side > 0 else [vena_cava]
        c = 14.0 * h
        lungs[side] = Lung(  # hyperinflation grows the lung downwards (the apex stays)
            side=side,
            center=(
                7.7 * side * w,
                -0.8 * d,
                (0.3 if side < 0 else 0.0) * h + sz - c * anat.inflate_z,
            ),
            a_lat=6.1 * w * (1.0 + anat.inflate_xy),
            a_med=(5.6 if side < 0 else 5.3) * w,
            b=6.7 * d * (1.0 + anat.inflate_y),
            c=c * (1.0 + anat.inflate_z),
            holes=holes,
        )
    lungs["heart"] = (heart_c, heart_s, anat.heart_angle_deg)
    return lungs
