"""Tests of the physics simulator against the figures in DESIGN section 4 and closed forms.

References: the DESIGN mu table (40/50/60 keV); the visibility-noise formula computed by hand;
hand-built CT volumes whose path lengths are known by construction (voxel counts x spacing);
controlled comparisons of the same patient with one effect switched off.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from darkfield_nb import labels
from darkfield_nb.contract import check_manifest
from darkfield_nb.io import read_image
from darkfield_nb.physics import (
    AcquisitionConfig,
    DisplayRanges,
    FramingRanges,
    darkfield_sigma,
    generate_dataset,
    hu_to_mu,
    make_patient,
    mu,
    mu_to_hu,
    project_ct,
    sample_recipe,
    simulate,
    to_radiograph,
    verify_checksums,
    write_checksums,
)
from darkfield_nb.physics.dataset import checksums, read_checksums
from darkfield_nb.physics.materials import LUNG_AIR_FRACTION_REF

SIZE = 128
REPO = Path(__file__).resolve().parents[1]


def _patient(seed, index, case, **kw):
    """The first simulator's single framing and display: these tests are about the physics."""
    return make_patient(
        seed, index, case, framing=FramingRanges.fixed(), display=DisplayRanges.fixed(), **kw
    )


def _lung(pair):
    return labels.has_label(pair.mask, labels.LUNG)


# --------------------------------------------------------------------------------------------
# materials
# --------------------------------------------------------------------------------------------

DESIGN_TABLE = {  # DESIGN section 4, 1/cm at 40 / 50 / 60 keV
    "lung": (0.070, 0.059, 0.053),
    "soft_tissue": (0.285, 0.240, 0.217),
    "adipose": (0.228, 0.202, 0.188),
    "cortical_bone": (1.28, 0.81, 0.60),
    "titanium": (9.97, 5.47, 3.45),
    "copper": (43.6, 23.4, 14.3),
    "platinum": (267.0, 149.0, 93.0),
    "iodine": (109.0, 61.0, 37.0),
}


@pytest.mark.parametrize("material", sorted(DESIGN_TABLE))
def test_mu_matches_design_table(material):
    for energy, expected in zip((40.0, 50.0, 60.0), DESIGN_TABLE[material], strict=True):
        assert mu(material, energy) == pytest.approx(expected, rel=1e-9)
    # log-log interpolation: at the geometric-mean energy, mu is the geometric mean
    e = np.sqrt(40.0 * 50.0)
    lo, hi = DESIGN_TABLE[material][:2]
    assert mu(material, e) == pytest.approx(np.sqrt(lo * hi), rel=1e-9)


def test_hu_round_trip_and_anchors():
    energy = 47.0
    assert hu_to_mu(-1000.0, energy) == pytest.approx(0.0)
    assert hu_to_mu(0.0, energy) == pytest.approx(mu("water", energy))
    # bilinear: cortical bone HU gives cortical bone mu at this energy
    assert hu_to_mu(1400.0, energy) == pytest.approx(mu("cortical_bone", energy))
    hu = np.array([-1000.0, -750.0, -50.0, 0.0, 300.0, 1400.0, 2500.0])
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu, energy), energy), hu, atol=1e-9)


def test_unknown_material_names_the_problem():
    with pytest.raises(KeyError, match="unobtainium"):
        mu("unobtainium")


# --------------------------------------------------------------------------------------------
# healthy phantoms
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy_pairs():
    return [simulate(_patient(11, i, "healthy"), SIZE) for i in range(4)]


def test_mean_lung_darkfield_in_literature_range(healthy_pairs):
    """DESIGN: eps ~2.5/m, ~8 cm of lung on average, so mean D over the lungs ~0.2."""
    for pair in healthy_pairs:
        m = float(pair.darkfield[_lung(pair)].mean())
        assert 0.1 <= m <= 0.5, m


def test_soft_tissue_away_from_lung_and_bone_is_dark(healthy_pairs):
    """Soft tissue has no small-angle scattering: only weak beam hardening, < 0.03."""
    for pair in healthy_pairs:
        sc = pair.scene
        lung_any = ndimage.binary_dilation(sc.lung_total > 0, iterations=4)
        bone = ndimage.binary_dilation(sc.bone | (sc.A_bone > 0.02), iterations=4)
        soft = ndimage.binary_erosion(sc.body, iterations=4) & ~lung_any & ~bone
        assert soft.sum() > 200
        assert float(np.percentile(pair.darkfield_clean[soft], 99)) < 0.03
        assert abs(float(pair.darkfield[soft].mean())) < 0.03


def test_lungs_dark_in_radiograph_bright_in_darkfield(healthy_pairs):
    for pair in healthy_pairs:
        lung = _lung(pair)
        heart = labels.has_label(pair.mask, labels.HEART) & ~lung
        att = pair.attenuation.astype(float)
        assert att.max() <= 4095
        assert att[lung].mean() < att[heart].mean() - 500
        assert pair.darkfield[lung].mean() > 3 * pair.darkfield[heart].mean()


# --------------------------------------------------------------------------------------------
# pathology: controlled comparison with the same patient without it
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 3, 5])
def test_emphysema_lowers_darkfield_far_more_than_attenuation(index):
    """Emphysema: D falls by a quarter or more, A only by a few percent (hard to see)."""
    healthy = simulate(_patient(7, index, "healthy"), SIZE)
    sick = simulate(_patient(7, index, "emphysema", severity=0.8), SIZE)
    region = labels.has_label(sick.mask, labels.EMPHYSEMA)
    assert region.sum() > 20
    d0 = healthy.darkfield[region].mean()
    d1 = sick.darkfield[region].mean()
    assert (d0 - d1) / d0 >= 0.25, (d0, d1)
    a0 = healthy.line_integral_clean[region].mean()
    a1 = sick.line_integral_clean[region].mean()
    assert 0 < (a0 - a1) / a0 < 0.15, (a0, a1)


def test_consolidation_raises_attenuation_lowers_darkfield():
    healthy = simulate(_patient(7, 2, "healthy"), SIZE)
    sick = simulate(_patient(7, 2, "pneumonia", severity=1.0), SIZE)
    region = labels.has_label(sick.mask, labels.CONSOLIDATION)
    assert region.sum() > 10
    assert sick.line_integral_clean[region].mean() > healthy.line_integral_clean[region].mean()
    assert sick.darkfield_clean[region].mean() < 0.8 * healthy.darkfield_clean[region].mean()


def test_pneumothorax_region_has_no_lung_darkfield():
    sick = simulate(_patient(7, 4, "pneumothorax", severity=1.0), SIZE)
    region = labels.has_label(sick.mask, labels.PNEUMOTHORAX)
    assert region.sum() > 20
    assert float(sick.scene.lung_total[region].max()) == 0.0
    core = ndimage.binary_erosion(region, iterations=2)
    lung = _lung(sick) & ~region
    assert sick.darkfield_clean[core].mean() < 0.2 * sick.darkfield_clean[lung].mean()


@pytest.mark.parametrize(
    "case,bit",
    [
        ("pacemaker", labels.PACEMAKER),
        ("cables", labels.CABLE),
        ("clips", labels.CLIP),
        ("effusion", labels.EFFUSION),
        ("nodule", labels.NODULE),
    ],
)
def test_every_case_sets_its_mask(case, bit):
    pair = simulate(
        _patient(5, 1, case, **({"severity": 1.0} if case in ("effusion", "nodule") else {})), SIZE
    )
    assert labels.has_label(pair.mask, bit).sum() > 0


def test_metal_attenuates_and_adds_spurious_darkfield():
    healthy = simulate(_patient(5, 1, "healthy"), SIZE)
    pm = simulate(_patient(5, 1, "pacemaker"), SIZE)
    can = pm.scene.A_metal > 3.0
    assert can.sum() > 5
    assert (pm.line_integral_clean[can] > healthy.line_integral_clean[can] + 2.0).all()
    assert (pm.darkfield_clean[can] > healthy.darkfield_clean[can]).all()


# --------------------------------------------------------------------------------------------
# acquisition: noise model and stripes
# --------------------------------------------------------------------------------------------


def test_sigma_formula_by_hand():
    # N = 1e5 e^-2, V0 = 0.25, D = 0.2, N_ref = 4e5
    n = 1e5 * np.exp(-2.0)
    expected = np.sqrt(2 * np.exp(0.4) / (n * 0.0625) + 2 / (4e5 * 0.0625))
    assert darkfield_sigma(0.2, 2.0, 1e5, 0.25, 4.0) == pytest.approx(expected, rel=1e-12)


def test_darkfield_noise_larger_behind_spine_and_heart():
    patient = _patient(3, 0, "healthy")
    noisy = simulate(patient, SIZE)
    clean = simulate(patient, SIZE, acquisition=AcquisitionConfig(noise=False))
    noise = noisy.darkfield - clean.darkfield  # same stripes: the difference is the noise
    lung = ndimage.binary_erosion(_lung(noisy), iterations=2)
    heart = labels.has_label(noisy.mask, labels.HEART) & ~_lung(noisy)
    cols = np.abs(noisy.scene.grid.x) < 1.5
    spine = np.zeros_like(lung)
    spine[:, cols] = True
    spine &= noisy.scene.grid.z[:, None] < 0  # below the carina: spine behind the heart
    dense = ndimage.binary_erosion(heart | (spine & noisy.scene.body), iterations=1)
    s_lung = noise[lung].std()
    s_dense = noise[dense].std()
    assert s_dense > 1.5 * s_lung, (s_dense, s_lung)
    # the noise follows the formula: its std over lung matches the mean predicted sigma
    assert s_lung == pytest.approx(float(noisy.measured.sigma[lung].mean()), rel=0.3)


def test_stripes_are_row_correlated():
    patient = _patient(3, 1, "healthy")
    on = simulate(patient, SIZE, acquisition=AcquisitionConfig(noise=False))
    off = simulate(patient, SIZE, acquisition=AcquisitionConfig(noise=False, stripes=False))
    lung = ndimage.binary_erosion(_lung(on), iterations=2)
    # relative artifact over the lungs: m_row + o_row / D
    rel = np.where(lung, on.darkfield / np.maximum(off.darkfield, 1e-6) - 1.0, 0.0)
    assert np.abs(rel[lung]).max() > 1e-3
    rows, cols = lung.sum(axis=1) >= 5, lung.sum(axis=0) >= 5
    row_means = rel.sum(axis=1)[rows] / lung.sum(axis=1)[rows]
    col_means = rel.sum(axis=0)[cols] / lung.sum(axis=0)[cols]
    assert row_means.std() > 5 * col_means.std(), (row_means.std(), col_means.std())


def test_radiograph_processing_orders_densities():
    a = np.zeros((64, 64))
    a[:, 16:32] = 2.0  # "lung"
    a[:, 32:48] = 5.0  # "mediastinum"
    a[:, 48:] = 7.0  # "bone"
    img = to_radiograph(a)
    assert img.dtype == np.uint16 and img.max() <= 4095
    means = [img[:, k : k + 16].mean() for k in (0, 16, 32, 48)]
    assert means == sorted(means) and means[0] < 0.05 * 4095 and means[-1] > 0.8 * 4095


# --------------------------------------------------------------------------------------------
# CT projector
# --------------------------------------------------------------------------------------------


def _phantom_ct(shape=(8, 40, 48), spacing=(2.0, 1.5, 1.0)):
    """A water cylinder (axis along z) in air with an air-filled lung block at -750 HU."""
    nz, ny, nx = shape
    hu = np.full(shape, -1000.0)
    yy, xx = np.mgrid[0:ny, 0:nx]
    cyl = ((yy - ny / 2 + 0.5) / 16.0) ** 2 + ((xx - nx / 2 + 0.5) / 20.0) ** 2 <= 1.0
    hu[:, cyl] = 0.0
    lung = np.zeros(shape, bool)
    lung[2:6, 12:26, 14:22] = True
    hu[lung] = -750.0
    return hu, lung, cyl, spacing


def test_project_ct_exact_path_lengths():
    hu, lung, cyl, spacing = _phantom_ct()
    energy = 50.0
    A, D = project_ct(
        hu, lung, spacing, axis=1, energy_kev=energy, noise=False, artifacts=False, radiograph=False
    )
    dy = spacing[1] / 10.0
    water_len = cyl.sum(axis=0) * dy  # per x column, cm (same for every slice)
    block_len = lung.sum(axis=1) * dy  # (z, x)
    mw = mu("water", energy)
    expected_A = mw * water_len[None, :] - 0.75 * mw * block_len
    np.testing.assert_allclose(A, expected_A, rtol=1e-5, atol=1e-6)
    eps = 0.025 * (47.0 / energy) ** 2 * 0.75 / LUNG_AIR_FRACTION_REF
    np.testing.assert_allclose(D, eps * block_len, rtol=1e-5, atol=1e-7)
    assert A.shape == (hu.shape[0], hu.shape[2])


def test_project_ct_threshold_segmentation_finds_the_block():
    hu, lung, _, spacing = _phantom_ct()
    _, d_auto = project_ct(hu, None, spacing, noise=False, artifacts=False, radiograph=False)
    _, d_mask = project_ct(hu, lung, spacing, noise=False, artifacts=False, radiograph=False)
    np.testing.assert_allclose(d_auto, d_mask)


def test_project_ct_with_noise_and_checks():
    hu, lung, _, spacing = _phantom_ct()
    att, D = project_ct(hu, lung, spacing, seed=1)
    assert att.dtype == np.uint16 and D.dtype == np.float32
    with pytest.raises(ValueError, match="lung_mask shape"):
        project_ct(hu, lung[:-1], spacing)


# --------------------------------------------------------------------------------------------
# data sets
# --------------------------------------------------------------------------------------------


def test_generate_dataset_contract_reproducible_and_refuses_overwrite(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    kw = dict(n_patients=7, size=64, seed=5, ood_patients=4, progress=False)
    generate_dataset(a, workers=1, **kw)
    generate_dataset(b, workers=2, **kw)
    assert checksums(a) == checksums(b)  # byte for byte, whatever the worker count
    rows, problems = check_manifest(a)
    assert problems == []
    assert {r["split"] for r in rows} == {"train", "val", "test", "ood"}
    assert {r["case"] for r in rows if r["split"] == "ood"} == {
        "pacemaker",
        "cables",
        "clips",
        "high_contrast",
    }
    for r in rows:
        att = read_image(a / "attenuation" / f"{r['id']}.png")
        d = read_image(a / "darkfield" / f"{r['id']}.tif")
        m = read_image(a / "masks" / f"{r['id']}.png")
        assert att.shape == d.shape == m.shape == (64, 64)
    meta = json.loads((a / "dataset.json").read_text())
    assert meta["darkfield_units"] == "D" and meta["seed"] == 5
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(a, workers=1, **kw)
    (a / "keep.txt").write_text("user file")
    generate_dataset(a, workers=1, overwrite=True, **{**kw, "n_patients": 3, "ood_patients": 0})
    assert len(list((a / "attenuation").iterdir())) == 3  # stale images removed
    assert (a / "keep.txt").exists()
    write_checksums(a)
    assert verify_checksums(a) == []
    (a / "masks" / "p0000.png").write_bytes(b"corrupt")
    assert any("mismatch" in p for p in verify_checksums(a))


def test_shipped_sample_set_regenerates(tmp_path):
    """data_samples/ was made by sample_recipe(); regenerating it gives the same files."""
    shipped = REPO / "data_samples"
    if not (shipped / "checksums.sha256").exists():
        pytest.skip("data_samples/ not present")
    assert verify_checksums(shipped) == []
    out = generate_dataset(tmp_path / "s", progress=False, **sample_recipe())
    expected = read_checksums(shipped / "checksums.sha256")
    actual = checksums(out)
    assert set(actual) == set(expected)
    differ = [k for k in expected if k != "dataset.json" and actual[k] != expected[k]]
    assert differ == []
    new = json.loads((out / "dataset.json").read_text())
    old = json.loads((shipped / "dataset.json").read_text())
    new.pop("darkfield_nb_version")
    old.pop("darkfield_nb_version")
    assert new == old
