"""Medical devices, the out-of-distribution cases: pacemakers, ECG cables, surgical clips.

Each device adds its attenuation in excess of the soft tissue it displaces,
``(mu_metal - mu_tissue) * path`` (for metals simply about ``mu_metal * path``), to
``scene.A_metal``, sets its mask bit where it is visible (below), and marks pixels behind dense
metal (excess attenuation above 1) where the dark-field estimate can throw outliers. Their
spurious dark-field (beam hardening) is added when the scene is composed.

- Pacemaker: titanium can (two 0.4 mm walls, brighter rim), lithium-iodine battery (iodine,
  nearly opaque), copper-like circuit pads, one or two leads (coiled conductor) to the right
  atrium / ventricle ending in platinum tips.
- ECG: electrodes (metal snap on a faint foam pad) with copper-core cables leaving the field.
- Surgical clips: small titanium V shapes in a cluster.

Thin parts (wires, leads, clip legs, the electrode's snap, ring and pad) are drawn as the
detector records them: each pixel holds the mean path length over its area
(:func:`pixel_mean`, 8 x 8 sub-pixel points), not the path at its centre. Sampled at pixel
centres, a 0.9 mm wire across 1.56 mm pixels showed only in the pixels whose centres it crossed,
at its full 0.9 mm path: a dotted line, brighter than the wire it stands for.

Label rule (:class:`LabelRule`, :func:`visible`). The label marks where the device is visible
in the measured attenuation, not a band around its geometry. Let ``c`` be the device's own
excess line integral at each pixel centre (what its ``apply`` adds to ``scene.A_metal``,
noise-free, before blur) and ``G_s`` the detector blur (Gaussian, ``s = blur_attenuation_mm /
pixel_mm`` pixels, applied when ``s >= 0.2`` as in :func:`~.acquisition.acquire`). A pixel gets
the device's bit where

    c >= t   or   (G_s * c) >= t

i.e. where the device itself covers the pixel above the threshold, or where the blur carries
enough of it there (the blurred contribution is what the detector records, in expectation;
thresholding it instead of dilating by a fixed reach labels the neighbours of a dense wire and
not those of a faint pad). Since ``G_s`` is a weighted mean (weights >= 0, sum 1, radius
``int(4 s + 0.5)`` px), every labelled pixel lies within that radius of a pixel with ``c >= t``.

Threshold ``t``: single-pixel visibility above quantum noise (Rose criterion, ``k = 5``). The
measured line integral is ``A_meas = -ln(N / N0)`` with ``N ~ Poisson(N0 exp(-A))`` and
``N0 = photons_per_mm2 * pixel_mm^2``, so (delta method) its standard deviation is

    sigma_A = 1 / sqrt(N0 exp(-A)) = exp(A / 2) / sqrt(N0)

and ``t = k sigma_A`` evaluated in the lung (reference ``A = 2.5``: the median noise-free
line integral over lung pixels of seed-1 healthy patients at 256 px is 1.9-2.8, median 2.5),
at the default exposure (dose 1, ``photons_per_mm2 = 2e6``) and the image's own pixel size.
At 256 px over 40 cm (1.5625 mm): ``N0 = 4.88e6``, ``sigma_A = 0.0016``, ``t = 0.0079``, a
0.8 % transmission change. The display processing (tone curve, 8-bit quantisation) is not
part of the rule: it is a physical visibility, not a display one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from darkfield_nb import labels
from darkfield_nb.physics import geometry as g
from darkfield_nb.physics import materials
from darkfield_nb.physics.acquisition import AcquisitionConfig
from darkfield_nb.physics.phantom import Scene

DEVICE_CASES = ("pacemaker", "cables", "clips")
_ACQ = AcquisitionConfig()


@dataclass(frozen=True)
class LabelRule:
    """Where a device's label bit goes (formulas in the module docstring).

    ``k``: Rose factor; ``lung_A``: reference lung line integral; ``photons_per_mm2``: N0 per
    mm^2 at the default exposure; ``blur_mm``: Gaussian sigma of the detector blur.
    """

    k: float = 5.0
    lung_A: float = 2.5
    photons_per_mm2: float = _ACQ.photons_per_mm2
    blur_mm: float = _ACQ.blur_attenuation_mm

    def threshold(self, pixel_mm: float) -> float:
        """``t = k exp(lung_A / 2) / sqrt(photons_per_mm2 pixel_mm^2)``."""
        n0 = self.photons_per_mm2 * float(pixel_mm) ** 2
        return float(self.k * np.exp(self.lung_A / 2.0) / np.sqrt(n0))

    def sigma_px(self, pixel_mm: float) -> float:
        """Detector blur in pixels; 0 where :func:`~.acquisition.acquire` does not blur."""
        s = self.blur_mm / float(pixel_mm)
        return s if s >= 0.2 else 0.0


LABEL_RULE = LabelRule()


def visible(contribution: np.ndarray, threshold: float, sigma_px: float) -> np.ndarray:
    """Pixels where ``c >= t`` or ``(G_sigma * c) >= t`` (``scipy.ndimage.gaussian_filter``,
    mode ``nearest`` as the detector blur; no blur when ``sigma_px`` is 0)."""
    c = np.asarray(contribution, dtype=np.float64)
    out = c >= threshold
    if sigma_px > 0:
        out |= gaussian_filter(c, sigma_px, mode="nearest") >= threshold
    return out


def _label(scene: Scene, before: np.ndarray, bit: int, rule: LabelRule = LABEL_RULE) -> None:
    """Set ``bit`` where the device's own contribution ``A_metal - before`` is visible."""
    pixel_mm = scene.grid.pixel_cm * 10.0
    c = scene.A_metal.astype(np.float64) - before
    shown = visible(c, rule.threshold(pixel_mm), rule.sigma_px(pixel_mm))
    scene.mask |= np.where(shown, bit, 0).astype(np.uint16)


SUBPIXELS = 8  # per axis: a 0.9 mm wire across a 1.56 mm pixel gets its mean path within 5 %


def pixel_mean(f, X: np.ndarray, Z: np.ndarray, pixel_cm: float, n: int = SUBPIXELS):
    """The mean of ``f(x, z)`` over each pixel's area, on an ``n x n`` grid of sub-pixel points:

        F(X, Z) = (1 / n^2) sum_{i, j} f(X + o_i, Z + o_j),   o_k = ((k + 1/2) / n - 1/2) pixel,

    i.e. the detector pixel integrates the path length over its area. Sampled at the pixel
    centre only, a wire thinner than a pixel shows in the pixels whose centres it happens to
    cross: a dotted line, and a 1 px ring that comes and goes. ``X`` (1, w) and ``Z`` (h, 1):
    pixel-centre coordinates from ``Grid.window``."""
    offsets = ((np.arange(n) + 0.5) / n - 0.5) * pixel_cm
    total = 0.0
    for ox in offsets:
        for oz in offsets:
            total = total + f(X + ox, Z + oz)
    return total / (n * n)


def _draw_tube(scene: Scene, points: np.ndarray, radius: float, dmu: float) -> None:
    """Add a tube of ``radius`` along a 2-D polyline: ``dmu * 2 sqrt(r^2 - d^2)``, averaged
    over each pixel's area (:func:`pixel_mean`)."""
    pts = np.asarray(points)[:, :2]
    grid = scene.grid
    pad = radius + grid.pixel_cm
    # process in chunks of segments to keep windows small
    step = 8
    for k in range(0, len(pts) - 1, step):
        seg = pts[k : min(k + step + 1, len(pts))]
        rows, cols, X, Z = grid.window(
            seg[:, 0].min() - pad,
            seg[:, 0].max() + pad,
            seg[:, 1].min() - pad,
            seg[:, 1].max() + pad,
        )
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        # the distance also to the neighbouring segments: a pixel at a chunk's end is averaged
        # over the whole tube, not the chunk's part of it (the chunks combine by maximum)
        near = pts[max(k - 1, 0) : min(k + step + 2, len(pts))]
        chord = pixel_mean(
            lambda x, z, near=near: g.tube_chord(g.polyline_distance(x, z, near), radius),
            X,
            Z,
            grid.pixel_cm,
        )
        sub = scene.A_metal[rows, cols]
        np.maximum(sub, dmu * chord, out=sub)


def _superellipse(X, Z, cx, cz, a, b, angle_deg, p=4.0):
    t = np.deg2rad(angle_deg)
    u = np.cos(t) * (X - cx) + np.sin(t) * (Z - cz)
    v = -np.sin(t) * (X - cx) + np.cos(t) * (Z - cz)
    return np.abs(u / a) ** p + np.abs(v / b) ** p  # < 1 inside


@dataclass
class Pacemaker:
    center: tuple[float, float] = (9.0, 10.0)  # can centre (x, z) cm
    size: tuple[float, float] = (2.5, 2.2)  # half-width, half-height (cm)
    angle_deg: float = 10.0
    leads: list = field(default_factory=list)  # Bezier control points (k, 2) per lead
    case = "pacemaker"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        before = scene.A_metal.astype(np.float64)
        E = scene.energy_kev
        mu_t = scene.mu_t
        d_ti = materials.mu("titanium", E) - mu_t
        d_i = materials.mu("iodine", E) - mu_t
        d_cu = materials.mu("copper", E) - mu_t
        d_pt = materials.mu("platinum", E) - mu_t
        cx, cz = self.center
        a, b = self.size
        r = max(a, b) * 1.5
        rows, cols, X, Z = scene.grid.window(cx - r, cx + r, cz - r, cz + r)
        q = _superellipse(X, Z, cx, cz, a, b, self.angle_deg)
        inside = q < 1.0
        rim = np.exp(-(((1.0 - np.minimum(q, 1.0)) / 0.04) ** 2)) * inside
        path_ti = 0.08 * inside + 0.5 * rim
        # battery: lower 55 % of the can; circuit: a few pads in the upper part
        t = np.deg2rad(self.angle_deg)
        v = -np.sin(t) * (X - cx) + np.cos(t) * (Z - cz)
        qb = _superellipse(X, Z, cx, cz - 0.42 * b, 0.8 * a, 0.5 * b, self.angle_deg)
        battery = (qb < 1.0) * 0.45
        pads = np.zeros_like(q)
        for _ in range(4):
            px = cx + rng.uniform(-0.6, 0.6) * a
            pz = cz + rng.uniform(0.2, 0.7) * b
            pads += (
                _superellipse(X, Z, px, pz, rng.uniform(0.2, 0.5), 0.15, self.angle_deg) < 1
            ) * 0.03
        val = d_ti * path_ti + d_i * battery + d_cu * pads * (v > 0)
        sub = scene.A_metal[rows, cols]
        sub += val.astype(np.float32)
        for ctrl in self.leads:
            pts = g.bezier(np.asarray(ctrl), 80)
            _draw_tube(scene, pts, 0.11, 0.45 * d_cu)
            tip = pts[-1]
            direction = pts[-1] - pts[-6]
            direction /= np.linalg.norm(direction) + 1e-9
            _draw_tube(scene, np.array([tip - 0.9 * direction, tip]), 0.12, d_pt)
        _label(scene, before, labels.PACEMAKER)
        scene.metal_outlier |= scene.A_metal > 1.0


@dataclass
class Cables:
    electrodes: list = field(default_factory=list)  # (x, z)
    cables: list = field(default_factory=list)  # Bezier control points per cable
    case = "cables"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        before = scene.A_metal.astype(np.float64)
        d_cu = materials.mu("copper", scene.energy_kev) - scene.mu_t
        for ex, ez in self.electrodes:
            rows, cols, X, Z = scene.grid.window(ex - 1.8, ex + 1.8, ez - 1.8, ez + 1.8)

            def electrode(x, z, ex=ex, ez=ez):
                rho = np.hypot(x - ex, z - ez)
                snap = g.tube_chord(rho, 0.35) / 0.7 * 0.12
                ring = (np.abs(rho - 1.2) < 0.08) * 0.02  # a thin conductive ring in the pad
                pad = (rho < 1.6) * 0.1 * scene.mu_t / d_cu
                return snap + ring + pad

            sub = scene.A_metal[rows, cols]
            sub += (d_cu * pixel_mean(electrode, X, Z, scene.grid.pixel_cm)).astype(np.float32)
        for ctrl in self.cables:
            pts = g.bezier(np.asarray(ctrl), 120)
            _draw_tube(scene, pts, 0.045, d_cu)
        _label(scene, before, labels.CABLE)
        scene.metal_outlier |= scene.A_metal > 1.0


@dataclass
class Clips:
    clips: list = field(default_factory=list)  # (x, z, angle_deg, leg length cm)
    case = "clips"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        before = scene.A_metal.astype(np.float64)
        d_ti = materials.mu("titanium", scene.energy_kev) - scene.mu_t
        for x, z, ang, leg in self.clips:
            t = np.deg2rad(ang)
            apex = np.array([x, z])
            for spread in (-12.0, 12.0):
                tt = t + np.deg2rad(spread)
                end = apex + leg * np.array([np.cos(tt), np.sin(tt)])
                _draw_tube(scene, np.array([apex, end]), 0.07, d_ti * 1.2)
        _label(scene, before, labels.CLIP)
        scene.metal_outlier |= scene.A_metal > 1.0


def _cable_to_edge(rng, start, fov_half: float) -> np.ndarray:
    """Bezier control points from ``start`` to a random point on the top or a side edge."""
    side = rng.choice(["top", "left", "right"])
    if side == "top":
        end = np.array([rng.uniform(-fov_half, fov_half), fov_half + 1.0])
    else:
        end = np.array(
            [
                (-1 if side == "left" else 1) * (fov_half + 1.0),
                rng.uniform(-fov_half * 0.5, fov_half),
            ]
        )
    mid1 = start + rng.normal(0, 5.0, 2)
    mid2 = end + rng.normal(0, 5.0, 2)
    return np.array([start, mid1, mid2, end])


def sample_device(kind: str, rng: np.random.Generator, anatomy, fov_cm: float = 40.0):
    """A random device of ``kind`` (one of :data:`DEVICE_CASES`) placed for ``anatomy``."""
    sz = anatomy.shift_z
    if kind == "pacemaker":
        side = 1 if rng.random() < 0.85 else -1  # usually the patient's left
        cx = side * rng.uniform(7.0, 11.0)
        cz = rng.uniform(8.5, 12.0) + sz
        leads = []
        targets = [(-2.5, -1.5 + sz), (3.5, -7.0 + sz)]
        for tx, tz in targets[: int(rng.integers(1, 3))]:
            ctrl = [
                (cx - side * 1.8, cz + 1.5),
                (cx - side * 5.0 + rng.normal(0, 1), cz + 4.0 + rng.normal(0, 1)),
                (rng.normal(-1.5, 0.8), 8.0 + sz),
                (rng.normal(-2.0, 0.8), 2.0 + sz),
                (tx + rng.normal(0, 0.8), tz + rng.normal(0, 0.8)),
            ]
            leads.append(np.array(ctrl))
        return Pacemaker(
            center=(cx, cz),
            size=(rng.uniform(2.2, 2.8), rng.uniform(2.0, 2.5)),
            angle_deg=float(rng.uniform(-20, 20)),
            leads=leads,
        )
    if kind == "cables":
        n = int(rng.integers(3, 6))
        electrodes = []
        for _ in range(n):
            electrodes.append(np.array([rng.uniform(-13, 13), rng.uniform(-10, 12) + sz]))
        cables = [_cable_to_edge(rng, e, fov_cm / 2) for e in electrodes]
        return Cables(electrodes=[tuple(e) for e in electrodes], cables=cables)
    if kind == "clips":
        cx = rng.uniform(-8, 8)
        cz = rng.uniform(-8, 8) + sz
        clips = []
        for _ in range(int(rng.integers(3, 10))):
            clips.append(
                (
                    cx + rng.normal(0, 2.0),
                    cz + rng.normal(0, 2.0),
                    float(rng.uniform(0, 360)),
                    float(rng.uniform(0.5, 0.9)),
                )
            )
        return Clips(clips=clips)
    raise ValueError(f"unknown device {kind!r}; known: {', '.join(DEVICE_CASES)}")
