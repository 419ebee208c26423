"""Framing: where the patient lies in the image, as on clinical chest radiographs.

Clinical radiographs do not show the chest the same way twice. The field of view ranges from
the chest alone to the whole upper body with air above the shoulders and beside the chest; the
patient is shifted and rotated by a few degrees; the collimator's shutters cut the edges. A
model that only ever saw one framing learns that "dark at the image edge" means lung.

Per patient a :class:`Framing` is drawn from the ranges of :class:`FramingRanges`
(:func:`sample_framing`). It acts on both images of a pair in the same way, so the dark-field
target keeps the geometry of the attenuation input (air: ``D = 0``):

1. field of view: the torso (width ``2 a``) fills the fraction ``phi`` of the image width,
   ``fov = 2 a / phi``; the detector is centred on ``(c_x, c_z)`` (exact: the closed-form
   projector evaluates the phantom on that grid, :func:`render_grid`);
2. rotation by ``theta`` about the beam axis (counter-clockwise on the displayed image):
   the scene is rendered on a padded grid and resampled (:func:`rotate_crop`);
3. collimation: rectangular shutters at fractions ``(top, bottom, left, right)`` of the image.
   Behind a shutter only scattered photons arrive, ``I/I0 = t_s`` (``t_s`` 2-20 %: bright, or
   grey once the window is set), with a linear penumbra ``w`` over ``penumbra_mm`` (1-12 mm: a
   sharp blade or the soft border of a plate):  ``I/I0 = w e^{-A} + (1 - w) t_s`` and
   ``D -> w D`` (:func:`collimate`). The open field's corners next to a shutter are rounded
   with radius ``corner_radius`` (a fraction of the image width; 0 gives square corners), as on
   many digitized and computed-radiography films: ``w`` there falls with the distance to the
   arc, ``w_c = clip(1/2 - (|p - c| - R) / ramp, 0, 1)`` (``c`` the arc's centre, ``R`` its
   radius, ``ramp`` the penumbra in pixels), and the field's ``w`` is the smaller of ``w_c``
   and the shutters' product (:func:`open_fraction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from darkfield_nb.physics.anatomy import Anatomy
from darkfield_nb.physics.geometry import Grid

LUNG_CENTER_Z = 0.5  # cm above shift_z: the vertical centre of the lung fields


@dataclass
class FramingRanges:
    """Ranges from which :func:`sample_framing` draws one patient's framing (uniform unless
    said otherwise). The defaults cover routine PA chest radiographs; :meth:`fixed` is the
    single framing of the first simulator (40 cm field, centred, upright, no shutters)."""

    chest_fraction: tuple[float, float] = (0.55, 1.0)  # torso width / image width
    fov_cm: float | None = None  # a fixed field width instead of chest_fraction
    shift: float = 0.8  # shift: up to this fraction of the free space either side ...
    shift_extra: float = 0.03  # ... plus up to this fraction of the field (chest may be cut)
    rotation_deg: tuple[float, float] = (-5.0, 5.0)
    arms_up_probability: float = 0.15
    collimation_probability: float = 0.3  # per side (about 3 images in 4 have a shutter)
    collimation_depth: tuple[float, float] = (0.01, 0.08)  # shutter depth, fraction of image
    shutter_transmission: tuple[float, float] = (0.02, 0.2)  # scatter behind a shutter
    penumbra_mm: float | tuple[float, float] = (1.0, 12.0)  # soft edge of the shutters (mm)
    corner_radius: tuple[float, float] = (0.0, 0.1)  # rounded field corners, fraction of width

    @classmethod
    def fixed(cls, fov_cm: float = 40.0) -> FramingRanges:
        """One framing for every patient: ``fov_cm`` field centred on the phantom origin."""
        return cls(
            fov_cm=fov_cm,
            shift=0.0,
            shift_extra=0.0,
            rotation_deg=(0.0, 0.0),
            arms_up_probability=0.0,
            collimation_probability=0.0,
        )

    @property
    def is_fixed(self) -> bool:
        return self.fov_cm is not None and self.shift == 0 and self.shift_extra == 0


@dataclass
class Framing:
    """One patient's framing (see the module docstring)."""

    fov_cm: float = 40.0  # field width (and height: square images)
    center_x: float = 0.0  # phantom point at the image centre (cm)
    center_z: float = 0.0
    rotation_deg: float = 0.0  # counter-clockwise on the displayed image
    collimation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # top bottom left right
    shutter_transmission: float = 0.05
    penumbra_mm: float = 2.0
    chest_fraction: float = 0.75  # torso width / field width (what was asked)
    corner_radius: float = 0.0  # rounded corners of the open field next to a shutter (fraction)


def sample_framing(
    rng: np.random.Generator, anatomy: Anatomy, ranges: FramingRanges | None = None
) -> Framing:
    """Draw a framing for ``anatomy`` from ``ranges`` (module docstring). The same number of
    random draws is made whatever the ranges, so the other draws do not depend on them."""
    r = ranges or FramingRanges()
    u = rng.uniform(0.0, 1.0, 8)
    width = 2.0 * anatomy.chest_a
    lo, hi = r.chest_fraction
    if r.fov_cm is not None:
        fov = float(r.fov_cm)
    else:
        fov = width / (lo + (hi - lo) * u[0])
    height = 2 * 14.0 * anatomy.height  # lung fields, apex to costophrenic angles
    free_x = max(fov - width, 0.0) / 2
    free_z = max(fov - height, 0.0) / 2
    cx = (2 * u[1] - 1) * (r.shift * free_x + r.shift_extra * fov)
    cz = anatomy.shift_z + LUNG_CENTER_Z
    cz += (2 * u[2] - 1) * (r.shift * free_z + r.shift_extra * fov)
    if r.fov_cm is not None and r.shift == 0 and r.shift_extra == 0:
        cx, cz = 0.0, 0.0  # the first simulator's detector: centred on the phantom origin
    rot = r.rotation_deg[0] + (r.rotation_deg[1] - r.rotation_deg[0]) * u[3]
    sides = rng.uniform(0.0, 1.0, 4) < r.collimation_probability
    depth = rng.uniform(*r.collimation_depth, 4) * sides
    ts = rng.uniform(*r.shutter_transmission)
    pen_lo, pen_hi = _as_range(r.penumbra_mm)
    rad_lo, rad_hi = r.corner_radius
    return Framing(
        fov_cm=float(fov),
        center_x=float(cx),
        center_z=float(cz),
        rotation_deg=float(rot),
        collimation=tuple(float(d) for d in depth),
        shutter_transmission=float(ts),
        penumbra_mm=float(pen_lo + (pen_hi - pen_lo) * u[4]),
        chest_fraction=float(width / fov),
        corner_radius=float(rad_lo + (rad_hi - rad_lo) * u[5]) if any(depth > 0) else 0.0,
    )


def _as_range(value: float | tuple[float, float]) -> tuple[float, float]:
    """``(v, v)`` for a number, the pair itself for a range."""
    if np.isscalar(value):
        return float(value), float(value)
    lo, hi = value
    return float(lo), float(hi)


def rotation_pad(size: int, angle_deg: float) -> int:
    """Pixels to add on each side so that a ``size`` image rotated by ``angle_deg`` is covered:
    ``ceil(size/2 (|cos| + |sin|) - size/2) + 2`` (0 without rotation)."""
    if angle_deg == 0:
        return 0
    t = math.radians(angle_deg)
    half = size / 2
    return int(math.ceil(half * (abs(math.cos(t)) + abs(math.sin(t))) - half)) + 2


def render_grid(framing: Framing, size: int) -> tuple[Grid, int]:
    """The detector grid to render on (padded for the rotation) and the padding in pixels."""
    pad = rotation_pad(size, framing.rotation_deg)
    n = size + 2 * pad
    return Grid(n, framing.fov_cm * n / size, framing.center_x, framing.center_z), pad


def rotate_crop(image: np.ndarray, angle_deg: float, pad: int, order: int = 1) -> np.ndarray:
    """Rotate ``image`` (rendered with ``pad`` extra pixels per side) by ``angle_deg``
    counter-clockwise on the display about its centre, and crop the pad.

    One ``scipy.ndimage.affine_transform`` onto the cropped output: output pixel ``o``
    (row, col) samples the input at ``M (o - c_out) + c_in`` with
    ``M = [[cos t, sin t], [-sin t, cos t]]`` (the matrix of ``scipy.ndimage.rotate``, whose
    result it equals exactly), ``c`` the array centres; ``order`` 1 for intensities, 0 for
    masks and label bits (bool arrays are handled as 0/1).
    """
    if angle_deg == 0 and pad == 0:
        return image
    n_in = image.shape[0]
    n_out = n_in - 2 * pad
    if angle_deg == 0:
        return np.ascontiguousarray(image[pad : n_in - pad, pad : n_in - pad])
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    m = np.array([[c, s], [-s, c]])
    offset = np.full(2, (n_in - 1) / 2) - m @ np.full(2, (n_out - 1) / 2)
    is_bool = image.dtype.kind == "b"
    src = image.astype(np.uint8) if is_bool else image
    out = ndimage.affine_transform(
        src, m, offset, output_shape=(n_out, n_out), order=order, mode="nearest"
    )
    return out.astype(bool) if is_bool else out


def open_fraction(framing: Framing, size: int) -> np.ndarray:
    """``w``: 1 inside the collimated field, 0 behind the shutters, linear over the penumbra;
    corners next to a shutter rounded with ``corner_radius`` (module docstring, step 3).

    A shutter of depth ``d`` (fraction of the image) on the top edge covers the rows whose
    centres lie above ``d size`` pixels from the top; ``w`` ramps from 0 to 1 over
    ``penumbra_mm`` centred on that edge (same for the other three sides).
    """
    pix_mm = framing.fov_cm * 10.0 / size
    ramp = max(framing.penumbra_mm / pix_mm, 1e-6)
    pos = np.arange(size) + 0.5  # pixel centres, from the top / left edge

    def edge(depth: float, from_far: bool) -> np.ndarray:
        if depth <= 0:
            return np.ones(size, np.float32)
        p = size - pos if from_far else pos
        return np.clip((p - depth * size) / ramp + 0.5, 0.0, 1.0).astype(np.float32)

    top, bottom, left, right = framing.collimation
    rows = edge(top, False) * edge(bottom, True)
    cols = edge(left, False) * edge(right, True)
    w = rows[:, None] * cols[None, :]
    radius = framing.corner_radius * size
    if radius <= 0:
        return w
    # rounded corners next to a shutter: w_c = clip(1/2 - (|p - c| - R) / ramp, 0, 1) inside
    # the R x R square at the corner of the open field (c: the arc's centre)
    y0, y1, x0, x1 = top * size, size - bottom * size, left * size, size - right * size
    for (vertical, v_edge, v_sign), (horizontal, h_edge, h_sign) in (
        ((top, y0, 1), (left, x0, 1)),
        ((top, y0, 1), (right, x1, -1)),
        ((bottom, y1, -1), (left, x0, 1)),
        ((bottom, y1, -1), (right, x1, -1)),
    ):
        if vertical <= 0 and horizontal <= 0:
            continue
        cy, cx = v_edge + v_sign * radius, h_edge + h_sign * radius
        in_y = (pos - cy) * v_sign < 0  # between the field's edge and the arc's centre
        in_x = (pos - cx) * h_sign < 0
        zone = in_y[:, None] & in_x[None, :]
        dist = np.hypot(pos[:, None] - cy, pos[None, :] - cx)
        w_c = np.clip(0.5 - (dist - radius) / ramp, 0.0, 1.0).astype(np.float32)
        w = np.where(zone, np.minimum(w, w_c), w)
    return w


def collimate(
    A: np.ndarray, D: np.ndarray, framing: Framing
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shutters on noise-free line integrals: ``A' = -ln(w e^{-A} + (1 - w) t_s)``,
    ``D' = w D`` (module docstring). Returns ``(A', D', w)``; unchanged without shutters."""
    w = open_fraction(framing, A.shape[0])
    if np.all(w == 1):
        return A, D, w
    t_s = framing.shutter_transmission
    A2 = -np.log(w * np.exp(-A.astype(np.float64)) + (1.0 - w) * t_s)
    return A2.astype(np.float32), (w * D).astype(np.float32), w
