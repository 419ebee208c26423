"""Random chest anatomy: the scalar parameters of one patient's phantom.

All lengths are in cm in the phantom frame of :mod:`darkfield_nb.physics.geometry`
(x lateral, + = patient's left = image right; y antero-posterior, + anterior; z up). The solids
built from these numbers live in :mod:`~darkfield_nb.physics.phantom` (soft tissue, heart),
:mod:`~darkfield_nb.physics.lungs`, :mod:`~darkfield_nb.physics.vessels` and
:mod:`~darkfield_nb.physics.skeleton` (ribs, spine, clavicles, scapulae).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from darkfield_nb.physics import materials


@dataclass
class Anatomy:
    """One patient's body. Every field has a default: the average adult of the phantom."""

    width: float = 1.0  # lateral scale of thorax and lungs
    depth: float = 1.0  # antero-posterior scale
    height: float = 1.0  # vertical scale of the lungs and rib spacing
    shift_z: float = 0.0  # vertical position of the thorax in the field (cm)
    chest_a: float = 15.0  # torso half-width at the chest (cm)
    chest_b: float = 10.5  # torso half-depth (cm)
    fat: float = 1.5  # subcutaneous fat thickness (cm)
    heart_scale: float = 1.0
    heart_angle_deg: float = -35.0
    dome_right: float = -4.6  # top of the right diaphragm dome (cm, before shift_z)
    dome_left: float = -6.0
    female: bool = False  # adds breast shadows over the lower lung fields
    gastric_bubble: bool = True
    minor_fissure: bool = True
    rib_spacing: float = 2.35  # vertical distance between posterior ribs (cm)
    rib_thickness: float = 0.75  # radial thickness of a rib (cm)
    clavicle_lift: float = 0.0  # vertical offset of the clavicles (cm)
    arms_out: float = 4.3  # lateral offset of the arms from the chest wall (cm)
    arms_up: bool = False  # arms raised beside the head instead of hanging beside the chest
    # hyperinflation (emphysema): lung height x (1 + inflate_z), width x (1 + inflate_xy),
    # depth x (1 + inflate_y); the diaphragm domes drop by dome_drop cm and their curvature
    # falls by the factor (1 - dome_flatten). All 0 for a normal chest.
    inflate_z: float = 0.0
    inflate_xy: float = 0.0
    inflate_y: float = 0.0
    dome_drop: float = 0.0
    dome_flatten: float = 0.0
    lung_tissue_fraction: float = materials.LUNG_TISSUE_FRACTION
    lung_gradient: float = 0.12  # relative tissue-fraction increase from apex to base
    epsilon_per_cm: float = materials.EPSILON_LUNG_PER_M / 100.0
    vessel_seed: int = 0


def sample_anatomy(rng: np.random.Generator, arms_up_probability: float = 0.0) -> Anatomy:
    """Draw a random adult chest (sizes within about +/- 10 %, a habitus from slim to obese:
    subcutaneous fat 0.6-4.5 cm, arms 3.8-8 cm from the chest wall, raised with probability
    ``arms_up_probability``; dark-field coefficient ``epsilon ~ N(2.5, 0.4) /m`` clipped to
    1.5..3.5 /m)."""
    eps_m = np.clip(
        rng.normal(materials.EPSILON_LUNG_PER_M, materials.EPSILON_LUNG_SD_PER_M), 1.5, 3.5
    )
    width = float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))
    return Anatomy(
        width=width,
        depth=float(np.clip(rng.normal(1.0, 0.07), 0.85, 1.18)),
        height=float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12)),
        shift_z=float(rng.uniform(-1.5, 1.5)),
        chest_a=15.0 * width * float(rng.uniform(0.97, 1.05)),
        chest_b=10.5 * float(np.clip(rng.normal(1.0, 0.07), 0.85, 1.18)),
        fat=float(0.6 + 3.9 * rng.beta(1.5, 3.0)),
        heart_scale=float(np.clip(rng.normal(1.0, 0.07), 0.85, 1.2)),
        heart_angle_deg=float(rng.uniform(-45, -25)),
        dome_right=float(rng.normal(-4.6, 0.7)),
        dome_left=float(rng.normal(-6.0, 0.7)),
        female=bool(rng.random() < 0.5),
        gastric_bubble=bool(rng.random() < 0.75),
        minor_fissure=bool(rng.random() < 0.5),
        rib_spacing=float(rng.uniform(2.2, 2.5)),
        rib_thickness=float(rng.uniform(0.65, 0.85)),
        clavicle_lift=float(rng.uniform(-0.8, 0.8)),
        arms_out=float(rng.uniform(3.8, 8.0)),
        lung_tissue_fraction=float(
            materials.LUNG_TISSUE_FRACTION * np.clip(rng.normal(1.0, 0.08), 0.8, 1.2)
        ),
        lung_gradient=float(rng.uniform(0.05, 0.2)),
        epsilon_per_cm=float(eps_m / 100.0),
        vessel_seed=int(rng.integers(0, 2**31 - 1)),
        arms_up=bool(rng.random() < arms_up_probability),
    )


def hyperinflate(anat: Anatomy, severity: float) -> Anatomy:
    """The chest of ``anat`` hyperinflated by emphysema of ``severity`` in [0, 1]:
    lungs 14 % taller, 5 % wider and 10 % deeper (barrel chest) at severity 1, domes 3.5 cm
    lower and 60 % flatter; severity 0 returns an equal copy."""
    from dataclasses import replace

    s = float(np.clip(severity, 0.0, 1.0))
    return replace(
        anat,
        inflate_z=0.14 * s,
        inflate_xy=0.05 * s,
        inflate_y=0.10 * s,
        dome_drop=3.5 * s,
        dome_flatten=0.6 * s,
        chest_b=anat.chest_b * (1.0 + 0.06 * s),
    )
