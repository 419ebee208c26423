"""Issue-8 clean-ups: one definition of the bone landmarks, one bilinear resampler.

References: the bone mask of the closed-form projector against the projected voxel model
(Dice coefficient, computed here), and ``scipy.ndimage.zoom`` (order 1, grid mode) for the
block-centre upsampling of :func:`~darkfield_nb.physics.geometry.linear_resample`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from darkfield_nb.physics import (
    AcquisitionConfig,
    DisplayRanges,
    FramingRanges,
    make_patient,
    mu,
    simulate,
    skeleton,
)
from darkfield_nb.physics.geometry import linear_resample, smooth_field
from darkfield_nb.physics.volume import phantom_volume

N = 96


def _dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _bone_masks(patient):
    pair = simulate(
        patient, N, acquisition=AcquisitionConfig(noise=False, stripes=False, blur=False)
    )
    vol = phantom_volume(patient, N)
    mu_t = mu("soft_tissue", vol.energy_kev)
    excess = np.where(vol.mu > mu_t + 0.1, vol.mu - mu_t, 0.0)
    voxel = excess.sum(axis=1) * vol.spacing_mm / 10.0 > 0.15
    return pair.scene.A_bone > 0.15, voxel


def _patient():
    return make_patient(
        3, 0, "healthy", framing=FramingRanges.fixed(), display=DisplayRanges.fixed()
    )


def test_voxel_bones_project_onto_the_closed_form_bones():
    """Ribs, spine and clavicles of the voxel model land where the projector draws them
    (Dice >= 0.75; the voxel model leaves out scapulae and humeri). Ribs moved by 1.2 cm in
    one of the two models alone give a Dice near 0.6."""
    closed, voxel = _bone_masks(_patient())
    assert _dice(closed, voxel) >= 0.75


def test_landmarks_have_one_definition(monkeypatch):
    """Moving the ribs in ``skeleton.rib_rings`` moves them in both the projector and the
    voxel model: they still agree. (Copies of the numbers would drift apart here.)"""
    orig = skeleton.rib_rings
    monkeypatch.setattr(
        skeleton,
        "rib_rings",
        lambda anat: [dataclasses.replace(r, zk=r.zk + 1.2) for r in orig(anat)],
    )
    closed, voxel = _bone_masks(_patient())
    assert _dice(closed, voxel) >= 0.75
    monkeypatch.undo()
    closed0, _ = _bone_masks(_patient())
    assert _dice(closed, closed0) < 0.9  # the ribs really moved


@pytest.mark.parametrize("factor", [2, 4, 5])
def test_block_centre_resampling_equals_scipy_zoom(factor):
    rng = np.random.default_rng(factor)
    small = rng.standard_normal((7, 9)).astype(np.float32)
    ours = linear_resample(small, (7 * factor, 9 * factor), 1.0 / factor, 0.5)
    ref = ndimage.zoom(small, factor, order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_node_resampling_interpolates_linearly_between_edge_nodes():
    """Nodes spanning the detector edges: a linear ramp of nodes gives the linear ramp at the
    pixel centres, ``v(i) = (i + 0.5) / size * (n - 1)`` (hand-computed)."""
    n, size = 5, 40
    coarse = np.tile(np.arange(n, dtype=np.float32), (n, 1))
    out = linear_resample(coarse, (size, size), (n - 1) / size, 0.0)
    expected = (np.arange(size) + 0.5) / size * (n - 1)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    f = smooth_field(np.random.default_rng(0), 64, 4.0, 40.0)
    assert f.shape == (64, 64) and abs(float(f.mean())) < 0.5
