"""Disease with a severity in [0, 1]: monotone dark-field loss, the attenuation signature of
each disease, severity 0 equal to the healthy patient, and disease in the training split.

References: controlled comparisons of one patient (same anatomy, framing, noise draws) at
several severities on noise-free line integrals; the direction of each attenuation change
from DESIGN section 4 and the radiology of each disease.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from darkfield_nb import labels
from darkfield_nb.physics import AcquisitionConfig, generate_dataset, make_patient, simulate
from darkfield_nb.physics.anatomy import Anatomy, hyperinflate
from darkfield_nb.physics.phantom import build_lungs, dome_top

SIZE = 128
CLEAN = AcquisitionConfig(noise=False, stripes=False, blur=False)
DISEASES = {
    "emphysema": labels.EMPHYSEMA,
    "pneumonia": labels.CONSOLIDATION,
    "effusion": labels.EFFUSION,
    "pneumothorax": labels.PNEUMOTHORAX,
}
SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _series(case, index=2):
    return [
        simulate(make_patient(8, index, case, severity=s), SIZE, acquisition=CLEAN)
        for s in SEVERITIES
    ]


@pytest.mark.parametrize("case", sorted(DISEASES))
def test_lesion_darkfield_falls_monotonically_with_severity(case):
    pairs = _series(case)
    region = labels.has_label(pairs[-1].mask, DISEASES[case])
    assert region.sum() > 20
    d = [float(p.darkfield_clean[region].mean()) for p in pairs]
    assert all(b < a for a, b in zip(d, d[1:], strict=False)), d
    assert d[-1] < 0.75 * d[0], d


@pytest.mark.parametrize(
    "case,sign", [("emphysema", -1), ("pneumonia", 1), ("effusion", 1), ("pneumothorax", -1)]
)
def test_attenuation_signature_direction(case, sign):
    """Emphysema (less dense, hyperinflated lung) and pneumothorax (air) lower the line
    integral in the lesion; consolidation and effusion (fluid) raise it."""
    healthy, sick = _series(case)[0], _series(case)[-1]
    region = labels.has_label(sick.mask, DISEASES[case])
    a0 = float(healthy.line_integral_clean[region].mean())
    a1 = float(sick.line_integral_clean[region].mean())
    assert sign * (a1 - a0) > 0.02 * a0, (a0, a1)


@pytest.mark.parametrize("case", [*sorted(DISEASES), "nodule"])
def test_severity_zero_equals_healthy(case):
    healthy = simulate(make_patient(8, 5, "healthy"), SIZE)
    zero = simulate(make_patient(8, 5, case, severity=0.0), SIZE)
    for name in ("attenuation", "darkfield", "mask", "line_integral"):
        assert np.array_equal(getattr(healthy, name), getattr(zero, name)), name


def test_hyperinflation_larger_lungs_lower_flatter_diaphragm():
    anat = Anatomy()
    big = hyperinflate(anat, 1.0)
    assert hyperinflate(anat, 0.0) == anat
    l0, l1 = build_lungs(anat), build_lungs(big)
    for side in (-1, 1):
        assert l1[side].c > l0[side].c and l1[side].b > l0[side].b
        assert dome_top(big, side) < dome_top(anat, side) - 3.0
    assert big.dome_flatten > 0
    # more lung path in total: more lung area on the detector
    e0 = simulate(make_patient(8, 1, "emphysema", severity=0.0), SIZE, acquisition=CLEAN)
    e1 = simulate(make_patient(8, 1, "emphysema", severity=1.0), SIZE, acquisition=CLEAN)
    assert (e1.lung_length > 0).sum() > 1.05 * (e0.lung_length > 0).sum()


def test_severity_out_of_range_names_the_problem():
    with pytest.raises(ValueError, match="severity must be in"):
        make_patient(0, 0, "emphysema", severity=1.5)


def test_disease_in_training_with_severity_devices_only_ood(tmp_path):
    out = generate_dataset(
        tmp_path / "d", 12, 64, seed=3, ood_patients=3, progress=False, workers=1
    )
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    train = [r for r in rows if r["split"] != "ood"]
    sick = [r for r in train if r["case"] != "healthy"]
    assert 0 < len(sick) < len(train)  # a fraction of training patients is healthy
    assert {r["case"] for r in sick} <= {
        "emphysema",
        "pneumonia",
        "effusion",
        "pneumothorax",
        "nodule",
    }
    assert all(0.0 < float(r["severity"]) <= 1.0 for r in sick)
    assert all(float(r["severity"]) == 0.0 for r in train if r["case"] == "healthy")
    assert {r["case"] for r in rows if r["split"] == "ood"} <= {
        "pacemaker",
        "cables",
        "clips",
        "high_contrast",
    }
    for col in ("fov_cm", "pixel_mm", "chest_fraction", "rotation_deg", "look", "bits"):
        assert col in rows[0]
