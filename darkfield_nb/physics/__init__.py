"""Physics-based paired data: a procedural 3-D chest phantom and a CT projector.

Public names::

    generate_dataset(out, n_patients, size, seed, *, ood_patients=0, overwrite=False, ...)
    make_patient(seed, index=0, case="healthy") -> Patient
    simulate(patient, size, fov_cm=None, acquisition=None) -> Pair
    FramingRanges, Framing, sample_framing      (field of view, shift, rotation, shutters)
    DisplayRanges, VENDOR_LOOKS, sample_display (vendor display processing, burnt-in text)
    project_ct(hu, lung_mask, spacing_mm, *, axis=1, energy_kev=47.0, seed=0, ...)
    to_radiograph(line_integral, config=None) -> uint16 image
    AcquisitionConfig, RadiographConfig, darkfield_sigma
    mu(material, energy_kev), hu_to_mu, mu_to_hu, MU_TABLE
    write_checksums(root), verify_checksums(root), sample_recipe()
    phantom_volume(patient, n=96) -> Volume   (voxelized phantom, for pictures and checks)

Modules, one concept each: ``materials`` (mu table, HU), ``geometry`` (closed-form chords),
``anatomy`` (random body parameters), ``phantom`` (the scene: soft tissue, airways, heart),
``lungs`` (the two lungs and their holes), ``vessels`` (pulmonary vessel trees),
``skeleton`` (bones), ``pathology``, ``devices``, ``acquisition`` (blur, stripes, noise),
``radiograph`` (display processing), ``display`` (vendor looks, annotations), ``framing``
(field of view, position, rotation, collimation), ``simulate`` (one patient), ``ct`` (CT projector),
``volume`` (voxelized phantom), ``dataset`` (writing a data set).
"""

from darkfield_nb.physics.acquisition import AcquisitionConfig, darkfield_sigma
from darkfield_nb.physics.ct import project_ct, threshold_lung_mask
from darkfield_nb.physics.dataset import (
    DEFAULT_OOD_CASES,
    generate_dataset,
    plan_cases,
    sample_recipe,
    verify_checksums,
    write_checksums,
)
from darkfield_nb.physics.display import VENDOR_LOOKS, DisplayRanges, sample_display
from darkfield_nb.physics.framing import Framing, FramingRanges, sample_framing
from darkfield_nb.physics.materials import MU_TABLE, hu_to_mu, mu, mu_to_hu
from darkfield_nb.physics.radiograph import RadiographConfig, to_radiograph
from darkfield_nb.physics.simulate import CASES, Pair, Patient, make_patient, simulate
from darkfield_nb.physics.volume import Volume, phantom_volume

__all__ = [
    "CASES",
    "DEFAULT_OOD_CASES",
    "MU_TABLE",
    "VENDOR_LOOKS",
    "AcquisitionConfig",
    "DisplayRanges",
    "Framing",
    "FramingRanges",
    "Pair",
    "Patient",
    "Volume",
    "RadiographConfig",
    "darkfield_sigma",
    "generate_dataset",
    "hu_to_mu",
    "make_patient",
    "mu",
    "mu_to_hu",
    "phantom_volume",
    "plan_cases",
    "project_ct",
    "sample_display",
    "sample_framing",
    "sample_recipe",
    "simulate",
    "threshold_lung_mask",
    "to_radiograph",
    "verify_checksums",
    "write_checksums",
]
