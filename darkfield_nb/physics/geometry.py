"""Closed-form path lengths through simple solids, for a beam along the y axis.

Coordinates are in cm: ``x`` lateral (+ is the image right, the patient's left on a PA view),
``y`` antero-posterior (the beam direction, + anterior), ``z`` vertical (+ up). A detector pixel
is a point ``(x, z)``; the ray through it meets a convex solid in one interval ``[lo, hi]`` of y.
Every solid here returns that interval per pixel (arrays), so lengths, intersections and
set differences are exact and cheap; no 3-D voxel grid is needed.

An empty interval is stored as ``lo = hi = EMPTY`` (a large number), so ``hi - lo = 0`` and
it sorts after every real interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY = np.float32(1.0e4)

Interval = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of a square detector of ``size`` pixels over ``fov_cm``,
    centred on the phantom point ``(cx, cz)`` (cm; the default is the phantom origin).

    ``x[j] = cx + (j + 0.5) fov/size - fov/2`` (left to right),
    ``z[i] = cz + fov/2 - (i + 0.5) fov/size`` (top row first).
    """

    size: int
    fov_cm: float = 40.0
    cx: float = 0.0
    cz: float = 0.0

    @property
    def pixel_cm(self) -> float:
        return self.fov_cm / self.size

    @property
    def x(self) -> np.ndarray:
        j = np.arange(self.size) + 0.5
        return (self.cx + j * self.pixel_cm - self.fov_cm / 2).astype(np.float32)

    @property
    def z(self) -> np.ndarray:
        i = np.arange(self.size) + 0.5
        return (self.cz + self.fov_cm / 2 - i * self.pixel_cm).astype(np.float32)

    def cols(self, x0: float, x1: float) -> slice:
        """Column slice covering ``x0 <= x <= x1`` (clipped to the detector)."""
        left = self.cx - self.fov_cm / 2
        lo = int(np.floor((min(x0, x1) - left) / self.pixel_cm))
        hi = int(np.ceil((max(x0, x1) - left) / self.pixel_cm)) + 1
        return slice(max(lo, 0), max(min(hi, self.size), 0))

    def rows(self, z0: float, z1: float) -> slice:
        """Row slice covering ``z0 <= z <= z1`` (clipped to the detector)."""
        top = self.cz + self.fov_cm / 2
        lo = int(np.floor((top - max(z0, z1)) / self.pixel_cm))
        hi = int(np.ceil((top - min(z0, z1)) / self.pixel_cm)) + 1
        return slice(max(lo, 0), max(min(hi, self.size), 0))

    def window(self, x0: float, x1: float, z0: float, z1: float):
        """``(rows, cols, X, Z)``: slices and broadcastable coordinates of a sub-window."""
        r, c = self.rows(z0, z1), self.cols(x0, x1)
        return r, c, self.x[c][None, :], self.z[r][:, None]


def _interval(center_y, half, inside) -> Interval:
    lo = np.where(inside, center_y - half, EMPTY).astype(np.float32)
    hi = np.where(inside, center_y + half, EMPTY).astype(np.float32)
    return lo, hi


def superellipsoid(X, Z, center, semi, p: float = 2.0, angle_deg: float = 0.0) -> Interval:
    """y-interval of ``|u/a|^p + |v/c|^p + ((y-cy)/b)^2 <= 1`` (closed form).

    ``(u, v)`` are ``(x - cx, z - cz)`` rotated by ``angle_deg`` in the detector plane (a
    rotation about the beam axis), ``semi = (a, b, c)``. Chord half-length:
    ``h = b sqrt(1 - |u/a|^p - |v/c|^p)``. ``p = 2`` is an ellipsoid.
    """
    cx, cy, cz = center
    a, b, c = semi
    dx, dz = X - cx, Z - cz
    if angle_deg:
        t = np.deg2rad(angle_deg)
        dx, dz = np.cos(t) * dx + np.sin(t) * dz, -np.sin(t) * dx + np.cos(t) * dz
    if p == 2.0:
        q = 1.0 - (dx / a) ** 2 - (dz / c) ** 2
    else:
        q = 1.0 - np.abs(dx / a) ** p - np.abs(dz / c) ** p
    inside = q > 0
    return _interval(cy, b * np.sqrt(np.maximum(q, 0.0)), inside)


def ellipsoid(X, Z, center, semi, angle_deg: float = 0.0) -> Interval:
    """y-interval of an ellipsoid with semi-axes ``(a, b, c)`` (see :func:`superellipsoid`)."""
    return superellipsoid(X, Z, center, semi, 2.0, angle_deg)


def elliptic_cylinder_z(X, cx, cy, a, b) -> Interval:
    """y-interval of the vertical elliptic cylinder ``((x-cx)/a)^2 + ((y-cy)/b)^2 <= 1``.

    ``a`` and ``b`` may be arrays (a cross-section that changes with height).
    """
    q = 1.0 - ((X - cx) / a) ** 2
    return _interval(cy, b * np.sqrt(np.maximum(q, 0.0)), q > 0)


def paraboloid_below(X, Z, top, apex_x, apex_y, kx, ky) -> Interval:
    """y-interval of the region under the dome ``z < top - kx (x-x0)^2 - ky (y-y0)^2``.

    At pixel ``(x, z)`` with ``q = top - z - kx (x-x0)^2 > 0`` that is
    ``|y - y0| < sqrt(q / ky)``.
    """
    q = top - Z - kx * (X - apex_x) ** 2
    return _interval(apex_y, np.sqrt(np.maximum(q, 0.0) / ky), q > 0)


def length(iv: Interval) -> np.ndarray:
    """Path length of an interval: ``max(hi - lo, 0)``."""
    return np.maximum(iv[1] - iv[0], 0.0)


def intersect(a: Interval, b: Interval) -> Interval:
    """Intersection of two intervals (empty where they do not overlap)."""
    lo = np.maximum(a[0], b[0])
    hi = np.minimum(a[1], b[1])
    ok = hi > lo
    return np.where(ok, lo, EMPTY), np.where(ok, hi, EMPTY)


def union_length(intervals: list[Interval]) -> np.ndarray:
    """Exact length of the union of intervals per pixel (sort by start, then sweep)."""
    if not intervals:
        raise ValueError("union_length needs at least one interval")
    if len(intervals) == 1:
        return length(intervals[0])
    lo = np.stack([iv[0] for iv in intervals])
    hi = np.stack([iv[1] for iv in intervals])
    order = np.argsort(lo, axis=0, kind="stable")
    lo = np.take_along_axis(lo, order, 0)
    hi = np.take_along_axis(hi, order, 0)
    total = np.maximum(hi[0] - lo[0], 0.0)
    reach = hi[0].copy()
    for k in range(1, len(intervals)):
        total += np.maximum(hi[k] - np.maximum(lo[k], reach), 0.0)
        np.maximum(reach, hi[k], out=reach)
    return total


def length_minus(base: Interval, holes: list[Interval]) -> np.ndarray:
    """Length of ``base`` minus the union of ``holes``: ``|B| - |U_i (B n H_i)|``."""
    if not holes:
        return length(base)
    return length(base) - union_length([intersect(base, h) for h in holes])


def contains(iv: Interval, Y) -> np.ndarray:
    """Voxel test: ``lo <= y <= hi`` (broadcasts a y axis against the interval arrays)."""
    return (iv[0] <= Y) & (Y <= iv[1])


def tube_chord(dist, radius) -> np.ndarray:
    """Chord through a cylinder of ``radius`` at perpendicular distance ``dist`` from its axis:
    ``2 sqrt(r^2 - d^2)`` (0 outside)."""
    return 2.0 * np.sqrt(np.maximum(radius * radius - dist * dist, 0.0))


def segment_distance(X, Z, p0, p1) -> np.ndarray:
    """Distance from points ``(X, Z)`` to the 2-D segment ``p0 -> p1``."""
    (x0, z0), (x1, z1) = p0, p1
    dx, dz = x1 - x0, z1 - z0
    l2 = dx * dx + dz * dz
    if l2 == 0:
        return np.hypot(X - x0, Z - z0)
    t = np.clip(((X - x0) * dx + (Z - z0) * dz) / l2, 0.0, 1.0)
    return np.hypot(X - (x0 + t * dx), Z - (z0 + t * dz))


def polyline_distance(X, Z, points: np.ndarray) -> np.ndarray:
    """Distance from ``(X, Z)`` to a polyline given as an ``(n, 2)`` array of ``(x, z)``."""
    d = None
    for k in range(len(points) - 1):
        dk = segment_distance(X, Z, points[k], points[k + 1])
        d = dk if d is None else np.minimum(d, dk)
    return d


def bezier(control, n: int = 64) -> np.ndarray:
    """``n`` points on the Bezier curve with ``control`` points (``(k, 2)`` or ``(k, 3)``),
    by de Casteljau's construction vectorized over the curve parameter."""
    control = np.asarray(control, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    layer = np.broadcast_to(control[None], (n, *control.shape))
    for _ in range(1, len(control)):
        layer = (1 - t) * layer[:, :-1] + t * layer[:, 1:]
    return layer[:, 0]


def linear_resample(coarse: np.ndarray, shape: tuple[int, int], scale, offset) -> np.ndarray:
    """Separable linear interpolation of a 2-D ``coarse`` grid onto ``shape`` output pixels.

    Output pixel ``i`` along an axis samples the coarse grid at the fractional index
    ``pos = (i + 0.5) * scale - offset`` (clamped to the grid: edge values repeat), with two
    taps ``(1 - w) c[i0] + w c[i0 + 1]``, ``w = pos - floor(pos)``. ``scale`` and ``offset``
    are numbers or per-axis pairs. The one bilinear upsampler of the physics package:

    - nodes spanning the detector edges (``n`` nodes over ``size`` pixels):
      ``scale = (n - 1) / size``, ``offset = 0`` (:func:`smooth_field`);
    - block centres (blocks of ``f`` pixels): ``scale = 1 / f``, ``offset = 0.5``, the same
      mapping as ``scipy.ndimage.zoom(..., order=1, grid_mode=True, mode="nearest")``
      (:func:`~darkfield_nb.physics.radiograph.wide_blur`).
    """
    out = np.asarray(coarse, dtype=np.float32)
    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64), (2,))
    offsets = np.broadcast_to(np.asarray(offset, dtype=np.float64), (2,))
    for axis, n_out in enumerate(shape):
        n_in = out.shape[axis]
        pos = np.clip((np.arange(n_out) + 0.5) * scales[axis] - offsets[axis], 0, n_in - 1)
        i0 = np.minimum(np.floor(pos).astype(int), max(n_in - 2, 0))
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = (pos - i0).astype(np.float32)
        w = w[:, None] if axis == 0 else w[None, :]
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i1, axis=axis) * w
    return out


def smooth_field(rng: np.random.Generator, size: int, scale_cm: float, fov_cm: float) -> np.ndarray:
    """Zero-mean, unit-std, smooth random field on the detector with correlation ``scale_cm``.

    Drawn on a coarse grid (about two nodes per ``scale_cm``) independent of ``size`` and
    upsampled bilinearly, so the same seed gives the same field at every image size.
    """
    from scipy.ndimage import gaussian_filter

    n = max(int(np.ceil(2 * fov_cm / scale_cm)) + 1, 3)
    coarse = gaussian_filter(rng.standard_normal((n, n)), 0.7, mode="wrap")
    coarse = (coarse - coarse.mean()) / (coarse.std() + 1e-12)
    return linear_resample(coarse, (size, size), (n - 1) / size, 0.0)
