"""Lung pathologies: how each changes the lung's attenuation and dark-field, with a mask.

Notation: ``L`` lung path (cm), ``f`` lung tissue fraction, ``mu_l = mu_lung(f)``, ``mu_t`` soft
tissue, ``eps`` the lung dark-field coefficient (1/cm), ``L_B`` the lung path inside a lesion.

- **Emphysema** (alveolar walls destroyed): ``eps`` drops by ``r`` = 30-70 % in a region while
  ``f`` falls only by ``delta`` = 3-8 %: ``dD = -r eps L_B``, ``dA = -delta mu_l L_B`` (a few
  percent of ``A``): nearly invisible in attenuation.
- **Consolidation** (pneumonia / COVID-19-like, air replaced by fluid and cells): ``f -> f_c``
  (0.45-0.85): ``dA = (mu_t f_c - mu_l) L_B``; ``eps -> eps (1 - f_c)/(1 - f) s`` with a
  microstructure loss ``s`` = 0.5-0.9.
- **Pneumothorax**: the lung collapses towards its hilum (scale ``c`` = 0.6-0.85) and pleural
  air fills the gap: no lung, no dark-field there (``dA = -mu_t (L - L_c)``).
- **Pleural effusion**: fluid (soft-tissue mu, no dark-field) replaces lung below a meniscus
  that rises laterally.
- **Nodules**: solid spheres (0.5-1.5 cm radius) replace lung: ``dA = (mu_t - mu_l) L_n``,
  ``dD = -eps L_n``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from darkfield_nb import labels
from darkfield_nb.physics import geometry as g
from darkfield_nb.physics.phantom import SIDES, Scene

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
    air_increase: float = 0.05  # delta: relative drop of the tissue fraction
    case = "emphysema"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        size, fov = scene.grid.size, scene.grid.fov_cm
        patchy = 1.0 + 0.12 * g.smooth_field(rng, size, 2.0, fov)
        region = np.zeros((size, size), bool)
        for side, c, s, r in self.blobs:
            lb = _window_length(scene, side, lambda X, Z, c=c, s=s: g.ellipsoid(X, Z, c, s))
            rr = np.clip(r * patchy, 0.3, 0.75)
            scene.dD -= rr * scene.eps * lb
            scene.dA -= self.air_increase * scene.mu_lung * lb
            healthy = scene.lung_len_healthy[side]
            region |= (lb >= 0.8 * healthy) & (healthy > 2.0)
        scene.mask |= np.where(region, labels.EMPHYSEMA, 0).astype(np.uint16)


@dataclass
class Consolidation:
    blobs: list = field(default_factory=list)  # (side, center, semi, tissue fraction f_c)
    microstructure_loss: float = 0.7  # s
    case = "pneumonia"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        size, fov = scene.grid.size, scene.grid.fov_cm
        mottle = g.smooth_field(rng, size, 1.2, fov)
        region = np.zeros((size, size), bool)
        f = scene.mu_lung / scene.mu_t  # tissue fraction, as mu_lung = mu_t f
        for side, c, s, fc in self.blobs:
            lb = _window_length(scene, side, lambda X, Z, c=c, s=s: g.ellipsoid(X, Z, c, s))
            fcx = np.clip(fc * (1.0 + 0.2 * mottle), f + 0.05, 0.95)
            scene.dA += (scene.mu_t * fcx - scene.mu_lung) * lb
            eps_c = scene.eps * (1.0 - fcx) / (1.0 - f) * self.microstructure_loss
            scene.dD -= (scene.eps - eps_c) * lb
            healthy = scene.lung_len_healthy[side]
            region |= (lb >= 0.3 * healthy) & (lb > 1.0)
        scene.mask |= np.where(region, labels.CONSOLIDATION, 0).astype(np.uint16)


@dataclass
class Pneumothorax:
    side: int = 1
    collapse: float = 0.75  # c: linear scale of the collapsed lung about its hilum
    case = "pneumothorax"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        lung = scene.lungs[self.side]
        cx, cy, cz = lung.center
        hx, hz = cx - self.side * 0.95 * lung.a_med, cz - 0.45 * lung.c  # medial-basal anchor
        c = self.collapse
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
        scene.dA -= scene.mu_t * gap  # pleural air instead of tissue
        scene.lung_len[self.side] = new
        region = (scene.lung_len_healthy[self.side] > 1.0) & (new <= 0.0)
        scene.mask |= np.where(region, labels.PNEUMOTHORAX, 0).astype(np.uint16)


@dataclass
class Effusion:
    side: int = -1
    level: float = 2.5  # height of the meniscus above the dome top (cm)
    rise: float = 2.0  # lateral rise of the meniscus (cm)
    case = "effusion"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        grid, anat = scene.grid, scene.anatomy
        X, Z = grid.x[None, :], grid.z[:, None]
        top = (anat.dome_right if self.side < 0 else anat.dome_left) * anat.height + anat.shift_z
        lung = scene.lungs[self.side]
        xm = lung.center[0]
        zf = (
            top
            + self.level
            + self.rise * np.clip(self.side * (X - xm) / lung.a_lat + 0.3, 0, 1.3) ** 2
        )
        frac = 0.5 * (1.0 + np.tanh((zf - Z) / 0.5))
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
    spheres: list = field(default_factory=list)  # (center xyz, radius)
    case = "nodule"

    def apply(self, scene: Scene, rng: np.random.Generator) -> None:
        region = np.zeros((scene.grid.size,) * 2, bool)
        for c, r in self.spheres:
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


def sample_pathology(kind: str, rng: np.random.Generator, lungs: dict):
    """A random pathology of ``kind`` (one of :data:`PATHOLOGY_CASES`) for these lungs."""
    if kind == "emphysema":
        blobs = []
        sides = list(SIDES) if rng.random() < 0.6 else [int(rng.choice(SIDES))]
        for side in sides:
            lung = lungs[side]
            for _ in range(int(rng.integers(1, 3))):
                p = _lung_point(lung, rng, 0.0, 0.6)
                semi = (rng.uniform(2.5, 4.5), 1.6 * lung.b, rng.uniform(3.0, 5.0))
                blobs.append((side, (p[0], lung.center[1], p[2]), semi, rng.uniform(0.35, 0.7)))
        return Emphysema(blobs=blobs, air_increase=float(rng.uniform(0.03, 0.08)))
    if kind == "pneumonia":
        blobs = []
        sides = list(SIDES) if rng.random() < 0.6 else [int(rng.choice(SIDES))]
        for side in sides:
            lung = lungs[side]
            for _ in range(int(rng.integers(1, 3))):
                p = _lung_point(lung, rng, -0.6, 0.2)
                semi = (rng.uniform(2.0, 4.0), rng.uniform(3.0, 6.0), rng.uniform(2.0, 4.0))
                blobs.append((side, tuple(p), semi, rng.uniform(0.45, 0.85)))
        return Consolidation(blobs=blobs, microstructure_loss=float(rng.uniform(0.5, 0.9)))
    if kind == "pneumothorax":
        return Pneumothorax(side=int(rng.choice(SIDES)), collapse=float(rng.uniform(0.6, 0.85)))
    if kind == "effusion":
        return Effusion(
            side=int(rng.choice(SIDES)),
            level=float(rng.uniform(1.5, 6.0)),
            rise=float(rng.uniform(1.0, 3.0)),
        )
    if kind == "nodule":
        spheres = []
        for _ in range(int(rng.integers(1, 4))):
            lung = lungs[int(rng.choice(SIDES))]
            spheres.append((_lung_point(lung, rng, -0.5, 0.7), float(rng.uniform(0.5, 1.5))))
        return Nodules(spheres=spheres)
    raise ValueError(f"unknown pathology {kind!r}; known: {', '.join(PATHOLOGY_CASES)}")
