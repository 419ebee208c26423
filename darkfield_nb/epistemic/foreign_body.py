"""A self-supervised foreign-body map: a segmenter trained on generic objects added to the input.

Physics prior, and nothing more specific: a foreign body (metal, wire, plastic) *adds* its
attenuation ``mu * path`` to the line integral of the anatomy it overlies, so in a radiograph
it is an added, brighter layer whose shape is either thin and long (a wire, a lead, a tube) or
compact (a can, a clip, a snap, a pad). :func:`foreign_body_corrupt` draws such layers from
generic primitives and adds them to an in-distribution input; a small U-Net
(:class:`~.fpi.FPINet`) learns to segment them. Nothing here uses the simulator's device
models (``physics.devices``): the shapes are random Bezier curves, polylines and ellipses, so the
simulated pacemakers, cables and clips stay a test the detector never trained on.

One object ``k`` is a shape ``s_k(p)`` in [0, 1] (the fraction of the object's full path
length at pixel ``p``) and a contrast ``c_k`` in normalized input units; with a detector blur
``G_b`` (Gaussian, ``b`` px, one per image) the corrupted input and the label are

    x'(p) = x(p) + (G_b * sum_k c_k s_k)(p),
    y(p)  = min(1, (G_b * sum_k c_k s_k)(p) / t)

so ``y = 1`` where the added layer reaches the visibility threshold ``t`` (``label_threshold``)
and falls linearly below it. Shapes (:func:`render_curve`, :func:`render_ellipse`):

* curves: a cubic Bezier (or, with probability ``polyline``, 2-3 straight segments with sharp
  turns) of random length; the cross-section either a tube (``s = sqrt(1 - (d / r)^2)``, the
  chord of a cylinder of radius ``r``, ``d`` the distance to the centre line) or a flat band;
  for ``r < 0.5`` px the tube's mean path over a pixel is ``pi r / 2`` of its peak, drawn as a
  band of one pixel at that height;
* compact objects: ellipses (axes and angle random) filled flat, as a dome (the chord of an
  ellipsoid) or as a ring (the rim only, a hollow can or an electrode ring).

With probability ``p_clean`` an image gets no object (label all zero), so that the network
also sees unmodified images as normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy import ndimage

from .fpi import FPIConfig


@dataclass
class ForeignBodyConfig(FPIConfig):
    """:class:`~.fpi.FPIConfig` (network and training) plus the foreign-body corruption.

    max_objects: objects per image, uniform in 1..max_objects (when not clean); p_clean:
    probability of an image with none; p_curve: probability that an object is a curve (else an
    ellipse); polyline: probability that a curve is 2-3 straight segments; radius: curve
    half-width range (px); length: curve length range (px); axes: ellipse semi-axis range (px);
    contrast: range of ``c`` (log-uniform, normalized input units); blur: range of the Gaussian
    blur ``b`` (px; 0 draws none); label_threshold: ``t``. The inherited FPI patch fields
    (``patch_min`` ... ``second_scale``) are not used by this corruption."""

    max_objects: int = 4
    p_clean: float = 0.2
    p_curve: float = 0.6
    polyline: float = 0.3
    radius: tuple[float, float] = (0.2, 2.5)
    length: tuple[float, float] = (6.0, 200.0)
    axes: tuple[float, float] = (1.0, 20.0)
    contrast: tuple[float, float] = (0.01, 1.0)
    blur: tuple[float, float] = (0.0, 0.8)
    label_threshold: float = 0.02
    method: ClassVar[str] = "foreign_body"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("radius", "length", "axes", "contrast", "blur"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not 0.0 <= lo <= hi:
                raise ValueError(f"ForeignBodyConfig.{name}=({lo}, {hi}): need 0 <= lo <= hi")
            setattr(self, name, (lo, hi))
        if self.contrast[0] <= 0 or self.radius[0] <= 0 or self.axes[0] <= 0:
            raise ValueError("ForeignBodyConfig: contrast, radius and axes need lo > 0")
        for name in ("p_clean", "p_curve", "polyline"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ForeignBodyConfig.{name}={getattr(self, name)}: need 0..1")
        if self.max_objects < 1 or self.label_threshold <= 0:
            raise ValueError("ForeignBodyConfig: max_objects >= 1 and label_threshold > 0")


# ----------------------------------------------------------------------------- shapes
def distance_to_polyline(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Euclidean distance (px) from every pixel centre of ``shape`` (row, col) to the polyline
    through ``points`` (K, 2) in (row, col) pixel coordinates: the smallest distance to any of
    its segments, ``|p - a - clip(((p - a).(b - a)) / |b - a|^2, 0, 1) (b - a)|``."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise ValueError(f"distance_to_polyline: need (K >= 2, 2) points, got {pts.shape}")
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    best = np.full(shape, np.inf)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        ab = b - a
        L2 = float(ab @ ab)
        pr, pc = rr - a[0], cc - a[1]
        t = np.zeros(shape) if L2 == 0 else np.clip((pr * ab[0] + pc * ab[1]) / L2, 0.0, 1.0)
        d2 = (pr - t * ab[0]) ** 2 + (pc - t * ab[1]) ** 2
        np.minimum(best, d2, out=best)
    return np.sqrt(best)


def tube_profile(d: np.ndarray, radius: float) -> np.ndarray:
    """Path through a cylinder of ``radius`` px at distance ``d`` from its axis, relative to the
    diameter: ``sqrt(1 - (d / r)^2)`` inside, 0 outside. For ``r < 0.5`` px a pixel holds the
    mean over its width, ``pi r^2 / 2r / 1 = pi r / 2`` of the peak, within half a pixel of the
    axis."""
    d = np.asarray(d, dtype=np.float64)
    if radius < 0.5:
        return np.where(d <= 0.5, math.pi * radius / 2.0, 0.0)
    return np.sqrt(np.clip(1.0 - (d / radius) ** 2, 0.0, None))


def band_profile(d: np.ndarray, radius: float) -> np.ndarray:
    """A flat band of half-width ``radius`` with a one-pixel linear edge (the pixel's covered
    fraction), ``clip(radius + 0.5 - d, 0, min(1, 2 radius))``."""
    d = np.asarray(d, dtype=np.float64)
    return np.clip(radius + 0.5 - d, 0.0, min(1.0, 2.0 * radius))


def bezier(ctrl: np.ndarray, n: int = 64) -> np.ndarray:
    """``n`` points of the Bezier curve with control points ``ctrl`` (K, 2) (de Casteljau)."""
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    p = np.broadcast_to(np.asarray(ctrl, dtype=np.float64), (n, *np.shape(ctrl))).copy()
    while p.shape[1] > 1:
        p = (1 - t) * p[:, :-1] + t * p[:, 1:]
    return p[:, 0]


def random_curve_points(
    shape: tuple[int, int], rng: np.random.Generator, cfg: ForeignBodyConfig
) -> np.ndarray:
    """Centre-line points (K, 2) of a random curve (module docstring): a start uniform in the
    image, a random direction, a length log-uniform in ``cfg.length``; a cubic Bezier whose two
    inner control points are displaced sideways by up to half the length, or (``polyline``)
    2-3 segments with turns of up to 150 degrees."""
    h, w = shape
    start = rng.uniform([0, 0], [h, w])
    angle = rng.uniform(0, 2 * math.pi)
    length = math.exp(rng.uniform(*np.log(cfg.length)))
    if rng.random() < cfg.polyline:
        pts = [start]
        n_seg = int(rng.integers(2, 4))
        for _ in range(n_seg):
            seg = length / n_seg
            pts.append(pts[-1] + seg * np.array([math.sin(angle), math.cos(angle)]))
            angle += rng.uniform(-1, 1) * math.radians(150)
        return np.array(pts)
    d = np.array([math.sin(angle), math.cos(angle)])
    normal = np.array([-d[1], d[0]])
    end = start + length * d
    c1 = start + length / 3 * d + rng.uniform(-0.5, 0.5) * length * normal
    c2 = start + 2 * length / 3 * d + rng.uniform(-0.5, 0.5) * length * normal
    return bezier(np.array([start, c1, c2, end]), n=max(8, int(length / 2)))


def render_curve(
    shape: tuple[int, int], rng: np.random.Generator, cfg: ForeignBodyConfig
) -> np.ndarray:
    """``s`` in [0, 1] of one random curve (tube or band cross-section, radius log-uniform in
    ``cfg.radius``)."""
    pts = random_curve_points(shape, rng, cfg)
    radius = math.exp(rng.uniform(*np.log(cfg.radius)))
    d = distance_to_polyline(pts, shape)
    return tube_profile(d, radius) if rng.random() < 0.5 else band_profile(d, radius)


def render_ellipse(
    shape: tuple[int, int], rng: np.random.Generator, cfg: ForeignBodyConfig
) -> np.ndarray:
    """``s`` in [0, 1] of one random ellipse: centre uniform in the image, semi-axes
    log-uniform in ``cfg.axes``, any angle; filled flat (the covered fraction at the edge), as a
    dome ``sqrt(1 - q)`` (``q`` the squared normalized radius, the chord of an ellipsoid) or as a
    ring of 1-3 px at the rim."""
    h, w = shape
    cy, cx = rng.uniform([0, 0], [h, w])
    a, b = np.exp(rng.uniform(*np.log(cfg.axes), size=2))
    th = rng.uniform(0, math.pi)
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (rr - cy) * math.cos(th) + (cc - cx) * math.sin(th)
    v = -(rr - cy) * math.sin(th) + (cc - cx) * math.cos(th)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)  # 1 on the rim
    edge = (1.0 - rho) * min(a, b)  # approximate signed distance to the rim (px), inside > 0
    kind = rng.integers(0, 3)
    if kind == 0:
        return np.clip(edge + 0.5, 0.0, 1.0)
    if kind == 1:
        return np.sqrt(np.clip(1.0 - rho**2, 0.0, None))
    width = rng.uniform(1.0, 3.0)
    return np.clip(0.5 + width / 2 - np.abs(edge), 0.0, 1.0)


def foreign_body_corrupt(
    x: np.ndarray, rng: np.random.Generator, cfg: ForeignBodyConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One corruption of the 2-D input ``x`` (module docstring). Returns (``x'``, ``y``), both
    float32 of ``x``'s shape, with ``x' - x = G_b * sum_k c_k s_k`` and ``y = min(1, (x' - x) /
    t)``; a clean draw returns ``x`` unchanged and ``y = 0``."""
    cfg = cfg or ForeignBodyConfig()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"foreign_body_corrupt: need a 2-D image, got {x.shape}")
    layer = np.zeros(x.shape, dtype=np.float64)
    if rng.random() >= cfg.p_clean:
        for _ in range(int(rng.integers(1, cfg.max_objects + 1))):
            draw = render_curve if rng.random() < cfg.p_curve else render_ellipse
            s = draw(x.shape, rng, cfg)
            c = math.exp(rng.uniform(*np.log(cfg.contrast)))
            layer += c * s
        b = rng.uniform(*cfg.blur)
        if b >= 0.2:
            layer = ndimage.gaussian_filter(layer, b, mode="constant")
    y = np.minimum(1.0, layer / cfg.label_threshold)
    return (x + layer).astype(np.float32), y.astype(np.float32)


def foreign_body_batch(
    images: torch.Tensor, idx: np.ndarray, rng: np.random.Generator, cfg: ForeignBodyConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupted images and labels (B, 1, h, w) for ``images[idx]``: a random ``cfg.crop``
    window (0: the whole image), :func:`foreign_body_corrupt`, a random left-right flip (the
    batch function :func:`~.fpi.train_fpi` calls for this config)."""
    _, _, h, w = images.shape
    xs, ys = [], []
    for i in idx:
        a = images[i, 0].numpy()
        if cfg.crop:
            ch, cw = min(cfg.crop, h), min(cfg.crop, w)
            r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            a = a[r0 : r0 + ch, c0 : c0 + cw]
        xc, y = foreign_body_corrupt(a, rng, cfg)
        if rng.random() < 0.5:
            xc, y = xc[:, ::-1], y[:, ::-1]
        xs.append(np.ascontiguousarray(xc))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]


__all__ = [
    "ForeignBodyConfig",
    "band_profile",
    "bezier",
    "distance_to_polyline",
    "foreign_body_batch",
    "foreign_body_corrupt",
    "random_curve_points",
    "render_curve",
    "render_ellipse",
    "tube_profile",
]
