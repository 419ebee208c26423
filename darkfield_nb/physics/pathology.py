"""Lung pathologies with a severity ``s`` in [0, 1]: how each changes attenuation and dark-field.

Notation: ``L`` lung path (cm), ``f`` lung tissue fraction, ``mu_l = mu_lung(f)``, ``mu_t`` soft
tissue, ``eps`` the lung dark-field coefficient (1/cm), ``L_B`` the lung path inside a lesion.
Every effect is proportional to (or monotone in) ``s``, and ``s = 0`` changes nothing: the
image equals the healthy patient's, bit for bit.

- **Emphysema** (alveolar walls destroyed), diffuse (both whole lungs, ``eps -> eps (1 - r s)``
  with ``r`` = 0.45-0.7: fewer air-tissue interfaces) or regional (a background loss
  ``r_b`` = 0.2 over the whole lung and 1-4 upper-zone ellipsoids losing a further ``r s`` of
  the rest: ``eps -> eps (1 - r_b s)(1 - r s)``). The tissue fraction falls
  ``f -> f (1 - delta s)`` with ``delta`` = 0.25-0.45 in the lesions (0.3 ``delta`` in the
  background of the regional form): lower lung density, so lower attenuation
  (``dA = -delta s mu_l L_B``), and the chest hyperinflates
  (:func:`~darkfield_nb.physics.anatomy.hyperinflate`: taller, deeper lungs, a lower and
  flatter diaphragm), which adds lung path and lowers attenuation further.
- **Consolidation** (pneumonia / COVID-19-like, air replaced by fluid and cells):
  ``f -> f_c = f + s (f_max - f)`` (``f_max`` 0.55-0.9): ``dA = mu_t (f_c - f) L_B``;
  ``eps -> eps (1 - f_c)/(1 - f) (1 - s (1 - m))`` with microstructure kept ``m`` = 0.5-0.9.
- **Pleural effusion**: fluid (soft-tissue mu, no dark-field) replaces lung below a meniscus
  at ``z_f = z_base + sqrt(s) (z_top + h - z_base)`` (``z_base`` the lung base, ``z_top`` the
  dome, ``h`` 4-9 cm; a basal wedge's height grows like the root of its volume) that rises
  laterally by ``sqrt(s)`` x 1-3 cm: attenuation up
  (``(mu_t - mu_l) L_fluid``), dark-field down (``-eps L_fluid``).
- **Pneumothorax**: the lung collapses towards its hilum to the linear scale
  ``c = 1 - 0.55 s`` and pleural air fills the gap: no lung, no dark-field there
  (``dA = -mu_l (L - L_c)``); the collapsed lung is denser (``f -> min(f / c^2, 0.8)``).
- **Nodules**: solid spheres of radius ``s`` x 0.6-1.6 cm replace lung:
  ``dA = (mu_t - mu_l) L_n``, ``dD = -eps L_n``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from darkfield_nb import labels
from darkfield_nb.physics import geometry as g
from darkfield_nb.physics.lungs import SIDES, dome_top
from darkfield_nb.physics.phantom import Scene

PATHOLOGY_CASES = ("emphysema", "pneumonia", "pneumothorax", "effusion", "nodule")


def _lung_point(lung, rng, zlo: float, zhi: float, tries: int = 200) -> np.ndarray:
    """A random point inside ``lung`` with relative height ``(z - cz)/c`` in [zlo, zhi]."""
    cx, cy, cz = lung.center
    for _ in range(tries):
        p = np.array(
            [
                cx + rng.uniform(-0.7, 0.7) * lung.a_lat,
                cy + rng.uniform(-0.6, 0.6) * lung.b,
                cz + rng.uniform(zlo, zhi) * lung.c,
            ]
        )
        X = np.array([[p[0]]], np.float32)
        Z = np.array([[p[2]]], np.float32)
        if lung.contains(X, np.float32(p[1]), Z)[0, 0]:
            return p
    return np.array([cx, cy, cz])


def _window_length(scene: Scene, side: int, within) -> np.ndarray:
    """Lung path inside the solid ``within(X, Z)`` on the full grid (window-restricted)."""
    lung = scene.lungs[side]
    x0, x1, z0, z1 = lung.bbox()
    rows, cols, X, Z = scene.grid.window(x0, x1, z0, z1)
    out = np.zeros((scene.grid.size, scene.grid.size), np.float32)
    out[rows, cols] = lung.length(X, Z, None if within is None else within(X, Z))
    return out


@dataclass
class Emphysema:
    blobs: list = field(default_factory=list)  # (side, center xyz, semi xyz, reduction r)
    density_drop: float = 0.35  # delta: relative drop of the tissue fraction at severity 1
    severity: float = 1.0
    diffuse: bool = False  # both whole lungs (blobs unused)
    diffuse_reduction: float = 0.7  # r of the diffuse form
    background_reduction: float = 0.2  # r_b: loss over the whole lung of the regional form
    case = "emphysema"

    def adjust_anatomy(self, anat):
        """The hyperinflated chest (:func:`~darkfield_nb.physics.anatomy.hyperinflate`)."""
        from darkfield_nb.physics.anatomy import hyperinflate

        return hyperinflate(anat, self.severity)

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        size, fov = scene.grid.size, scene.grid.fov_cm
        patchy = 1.0 + 0.12 * g.smooth_field(rng, size, 2.0, fov)
        region = np.zeros((size, size), bool)
        s = float(self.severity)
        # background: mild loss over both whole lungs (the whole of a diffuse emphysema)
        rb = (self.diffuse_reduction if self.diffuse else self.background_reduction) * s
        for side in SIDES:
            lung = scene.lung_len[side]
            scene.dD -= rb * scene.eps * lung
            scene.dA -= (
                self.density_drop * s * (1.0 if self.diffuse else 0.3) * scene.mu_lung * lung
            )
            if self.diffuse:
                region |= (lung > 2.0) & (s > 0)
        # regional lesions: a further loss r s of what the background left
        for side, c, sm, r in [] if self.diffuse else self.blobs:
            lb = _window_length(scene, side, lambda X, Z, c=c, sm=sm: g.ellipsoid(X, Z, c, sm))
            rr = np.clip(r * patchy, 0.3, 0.75) * s
            scene.dD -= rr * (1.0 - rb) * scene.eps * lb
            scene.dA -= self.density_drop * s * scene.mu_lung * lb
            healthy = scene.lung_len_healthy[side]
            region |= (lb >= 0.8 * healthy) & (healthy > 2.0) & (s > 0)
        scene.mask |= np.where(region, labels.EMPHYSEMA, 0).astype(np.uint16)


@dataclass
class Consolidation:
    blobs: list = field(default_factory=list)  # (side, center, semi, tissue fraction f_max)
    microstructure_kept: float = 0.7  # m
    severity: float = 1.0
    case = "pneumonia"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        size, fov = scene.grid.size, scene.grid.fov_cm
        mottle = g.smooth_field(rng, size, 1.2, fov)
        region = np.zeros((size, size), bool)
        s = float(self.severity)
        f = scene.mu_lung / scene.mu_t  # tissue fraction, as mu_lung = mu_t f
        for side, c, sm, fmax in self.blobs:
            lb = _window_length(scene, side, lambda X, Z, c=c, sm=sm: g.ellipsoid(X, Z, c, sm))
            fcx = np.clip(fmax * (1.0 + 0.2 * mottle), f + 0.05, 0.95)
            scene.dA += scene.mu_t * s * (fcx - f) * lb  # f -> f_c = f + s (f_max - f)
            kept = 1.0 - s * (1.0 - self.microstructure_kept)
            eps_c = scene.eps * (1.0 - s * (fcx - f) / (1.0 - f)) * kept
            scene.dD -= (scene.eps - eps_c) * lb
            healthy = scene.lung_len_healthy[side]
            region |= (lb >= 0.3 * healthy) & (lb > 1.0) & (s > 0)
        scene.mask |= np.where(region, labels.CONSOLIDATION, 0).astype(np.uint16)


@dataclass
class Pneumothorax:
    side: int = 1
    severity: float = 1.0  # the lung collapses to the linear scale c = 1 - 0.55 s
    case = "pneumothorax"

    @property
    def collapse(self) -> float:
        return 1.0 - 0.55 * float(self.severity)

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        lung = scene.lungs[self.side]
        cx, cy, cz = lung.center
        hx, hz = cx - self.side * 0.95 * lung.a_med, cz - 0.45 * lung.c  # medial-basal anchor
        c = self.collapse
        if c >= 1.0:
            return
        collapsed = replace(
            lung,
            center=(hx + c * (cx - hx), cy, hz + c * (cz - hz)),
            a_lat=lung.a_lat * c,
            a_med=lung.a_med * c,
            b=lung.b * (0.5 + 0.5 * c),
            c=lung.c * c,
        )
        scene.lungs[self.side] = collapsed
        old = scene.lung_len[self.side]
        new = _window_length(scene, self.side, None)
        gap = np.maximum(old - new, 0.0)
        # collapsed lung: same tissue, less air: f -> min(f / c^2, 0.8)
        f = scene.mu_lung / scene.mu_t
        fn = np.minimum(f / c**2, 0.8)
        scene.dA += scene.mu_t * (fn - f) * new
        scene.dD -= scene.eps * (1.0 - (1.0 - fn) / (1.0 - f)) * new
        scene.dA -= scene.mu_t * gap  # pleural air: lung path -> air (compose adds mu_t - mu_l)
        scene.lung_len[self.side] = new
        region = (scene.lung_len_healthy[self.side] > 1.0) & (new <= 0.0)
        scene.mask |= np.where(region, labels.PNEUMOTHORAX, 0).astype(np.uint16)


@dataclass
class Effusion:
    side: int = -1
    level: float = 6.0  # meniscus height above the dome top at severity 1 (cm)
    rise: float = 2.0  # lateral rise of the meniscus at severity 1 (cm)
    severity: float = 1.0
    case = "effusion"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        grid, anat = scene.grid, scene.anatomy
        X, Z = grid.x[None, :], grid.z[:, None]
        top = dome_top(anat, self.side)
        lung = scene.lungs[self.side]
        xm = lung.center[0]
        base = lung.center[2] - lung.c  # the lowest lung point
        s = float(self.severity)
        width = 0.6  # meniscus edge (cm): fluid fraction ramps 0 -> 1 over it
        h = np.sqrt(s)  # a basal wedge: its height grows like the root of its volume
        zf = (
            base
            - width
            + h * (top + self.level - base + width)
            + h * self.rise * np.clip(self.side * (X - xm) / lung.a_lat + 0.3, 0, 1.3) ** 2
        )
        frac = np.clip((zf - Z) / width + 0.5, 0.0, 1.0) if s > 0 else np.zeros_like(Z * X)
        frac = frac * ((X * self.side) > 0)
        old = scene.lung_len[self.side]
        fluid = frac * old
        # fluid (soft tissue, no dark-field) replaces lung; the composition treats non-lung
        # path inside the body as soft tissue, so removing lung path is enough.
        scene.lung_len[self.side] = (old - fluid).astype(np.float32)
        region = (frac > 0.5) & (scene.lung_len_healthy[self.side] > 0.5)
        scene.mask |= np.where(region, labels.EFFUSION, 0).astype(np.uint16)


@dataclass
class Nodules:
    spheres: list = field(default_factory=list)  # (center xyz, radius at severity 1)
    severity: float = 1.0
    case = "nodule"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        region = np.zeros((scene.grid.size,) * 2, bool)
        for c, r1 in self.spheres:
            r = r1 * float(self.severity)
            if r <= 0:
                continue
            rows, cols, X, Z = scene.grid.window(c[0] - r, c[0] + r, c[2] - r, c[2] + r)
            if rows.stop <= rows.start or cols.stop <= cols.start:
                continue
            rho = np.hypot(X - c[0], Z - c[2])
            chord = g.tube_chord(rho, r)
            ln = np.minimum(chord, 0.95 * scene.lung_total[rows, cols])
            scene.dA[rows, cols] += (scene.mu_t - scene.mu_lung[rows, cols]) * ln
            scene.dD[rows, cols] -= scene.eps[rows, cols] * ln
            region[rows, cols] |= (rho < r) & (ln > 0.2)
        scene.mask |= np.where(region, labels.NODULE, 0).astype(np.uint16)


def sample_pathology(kind: str, rng: np.random.Generator, anatomy, severity: float):
    """A random pathology of ``kind`` (one of :data:`PATHOLOGY_CASES`) of ``severity`` in
    [0, 1] for the chest ``anatomy`` (the lesions are placed in the lungs that the pathology's
    own anatomy change, if any, produces)."""
    from darkfield_nb.physics.anatomy import hyperinflate
    from darkfield_nb.physics.lungs import build_lungs

    s = float(severity)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    if kind == "emphysema":
        lungs = build_lungs(hyperinflate(anatomy, s))
        diffuse = bool(rng.random() < 0.35)
        blobs = []
        sides = list(SIDES) if rng.random() < 0.6 else [int(rng.choice(SIDES))]
        for side in sides:
            lung = lungs[side]
            for _ in range(int(rng.integers(1, 3))):
                p = _lung_point(lung, rng, 0.0, 0.6)
                semi = (rng.uniform(3.0, 5.0), 1.6 * lung.b, rng.uniform(3.5, 6.0))
                blobs.append((side, (p[0], lung.center[1], p[2]), semi, rng.uniform(0.45, 0.7)))
        return Emphysema(
            blobs=blobs,
            density_drop=float(rng.uniform(0.25, 0.45)),
            severity=s,
            diffuse=diffuse,
            diffuse_reduction=float(rng.uniform(0.45, 0.7)),
        )
    lungs = build_lungs(anatomy)
    if kind == "pneumonia":
        blobs = []
        sides = list(SIDES) if rng.random() < 0.6 else [int(rng.choice(SIDES))]
        for side in sides:
            lung = lungs[side]
            for _ in range(int(rng.integers(1, 3))):
                p = _lung_point(lung, rng, -0.6, 0.2)
                semi = (rng.uniform(2.0, 4.0), rng.uniform(3.0, 6.0), rng.uniform(2.0, 4.0))
                blobs.append((side, tuple(p), semi, rng.uniform(0.55, 0.9)))
        return Consolidation(
            blobs=blobs, microstructure_kept=float(rng.uniform(0.5, 0.9)), severity=s
        )
    if kind == "pneumothorax":
        return Pneumothorax(side=int(rng.choice(SIDES)), severity=s)
    if kind == "effusion":
        return Effusion(
            side=int(rng.choice(SIDES)),
            level=float(rng.uniform(4.0, 9.0)),
            rise=float(rng.uniform(1.0, 3.0)),
            severity=s,
        )
    if kind == "nodule":
        spheres = []
        for _ in range(int(rng.integers(1, 4))):
            lung = lungs[int(rng.choice(SIDES))]
            spheres.append((_lung_point(lung, rng, -0.5, 0.7), float(rng.uniform(0.6, 1.6))))
        return Nodules(spheres=spheres, severity=s)
    raise ValueError(f"unknown pathology {kind!r}; known: {', '.join(PATHOLOGY_CASES)}")
