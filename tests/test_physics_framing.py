"""Framing of the simulated radiographs: field of view, rotation, collimation, air has no D.

References: the chest fraction measured from the body mask (independent of the sampler), the
orientation from image moments (scikit-image regionprops), the shutter edge found as the
step in a row profile, the rotation padding checked against the rotated square's extent.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from darkfield_nb import labels
from darkfield_nb.physics import (
    AcquisitionConfig,
    DisplayRanges,
    FramingRanges,
    make_patient,
    simulate,
)
from darkfield_nb.physics.framing import Framing, open_fraction, rotation_pad

SIZE = 128
CLEAN = AcquisitionConfig(noise=False, stripes=False, blur=False)


def _pair(index, framing=None, case="healthy", **kw):
    p = make_patient(4, index, case, framing=framing, display=DisplayRanges.fixed(), **kw)
    return p, simulate(p, SIZE, acquisition=CLEAN)


def test_chest_fraction_within_asked_range_and_measured_from_the_body():
    """Torso width / image width at the mid-lung row (arms raised, so no arm beside the
    chest; no rotation, no shutters) equals the drawn fraction within 2 pixels, and every
    drawn fraction lies in the asked range."""
    ranges = FramingRanges(
        chest_fraction=(0.55, 0.95),
        rotation_deg=(0.0, 0.0),
        collimation_probability=0.0,
        arms_up_probability=1.0,
    )
    seen = []
    for i in range(8):
        p, pair = _pair(i, ranges)
        fr = p.framing
        assert 0.55 <= fr.chest_fraction <= 0.95
        z_mid = p.anatomy.shift_z  # lung centre height, well below the shoulders
        row = int((fr.center_z + fr.fov_cm / 2 - z_mid) / (fr.fov_cm / SIZE))
        lab, _ = ndimage.label(pair.body[row])
        col = int((0.0 - (fr.center_x - fr.fov_cm / 2)) / (fr.fov_cm / SIZE))  # phantom x = 0
        width = int((lab == lab[col]).sum())
        assert abs(width / SIZE - fr.chest_fraction) <= 2.0 / SIZE + 1e-9, (width, fr)
        seen.append(fr.chest_fraction)
    assert max(seen) - min(seen) > 0.15  # the framing really varies


def test_air_outside_the_body_has_no_darkfield():
    """Noise-free D is exactly 0 outside the body (and behind shutters); the measured D
    there is zero-mean noise."""
    air_seen = 0
    for i in range(4):
        _, pair = _pair(i)
        outside = ~ndimage.binary_dilation(pair.body, iterations=2)
        assert outside.sum() > 100
        assert float(np.abs(pair.darkfield_clean[outside]).max()) == 0.0
        noisy = simulate(make_patient(4, i, "healthy"), SIZE)
        air = ~ndimage.binary_dilation(noisy.body, iterations=4) & (noisy.open_field > 0.99)
        if air.sum() > 50:  # a tight framing may leave no air
            air_seen += 1
            assert abs(float(noisy.darkfield[air].mean())) < 0.02
    assert air_seen >= 2


def _orientation_deg(mask):
    return np.degrees(regionprops(mask.astype(np.uint8))[0].orientation)


@pytest.mark.parametrize("angle", [-4.0, 3.0])
def test_rotation_recovered_from_image_moments(angle):
    """The lung mask of the rotated pair is the unrotated one turned by the asked angle:
    the principal-axis orientation (regionprops) differs by the angle within a degree."""
    base = FramingRanges(rotation_deg=(0.0, 0.0), collimation_probability=0.0)
    turned = dataclasses.replace(base, rotation_deg=(angle, angle))
    _, p0 = _pair(2, base)
    _, p1 = _pair(2, turned)
    m0 = labels.has_label(p0.mask, labels.LUNG)
    m1 = labels.has_label(p1.mask, labels.LUNG)
    # regionprops orientation is measured from the row axis, counter-clockwise as displayed
    diff = (_orientation_deg(m1) - _orientation_deg(m0) + 90.0) % 180.0 - 90.0
    assert abs(diff - angle) < 1.0, (diff, angle)


def test_rotation_pad_covers_the_rotated_square():
    for n, a in [(128, 5.0), (512, -3.0), (64, 0.0)]:
        pad = rotation_pad(n, a)
        t = np.radians(a)
        half_extent = n / 2 * (abs(np.cos(t)) + abs(np.sin(t)))
        assert n / 2 + pad >= half_extent


def test_collimation_edges_are_where_asked():
    """A shutter of depth d on the left puts the step of the attenuation profile at column
    d * size (within a pixel); behind it A = -ln(t_s) and D = 0."""
    fr = Framing(fov_cm=40.0, collimation=(0.0, 0.0, 0.1, 0.05), shutter_transmission=0.04)
    w = open_fraction(fr, SIZE)
    assert np.all(w[:, int(0.1 * SIZE) - 2] == 0) and np.all(w[:, int(0.1 * SIZE) + 2] == 1)
    ranges = FramingRanges(
        rotation_deg=(0.0, 0.0), collimation_probability=1.0, collimation_depth=(0.06, 0.06)
    )
    p, pair = _pair(1, ranges)
    a = pair.line_integral_clean
    assert p.framing.collimation == pytest.approx((0.06,) * 4)
    row = a[SIZE // 2]
    step = int(np.argmax(np.abs(np.diff(row[: SIZE // 3])))) + 1
    assert abs(step - 0.06 * SIZE) <= 1.0
    assert float(a[SIZE // 2, 0]) == pytest.approx(-np.log(p.framing.shutter_transmission), 1e-5)
    assert float(np.abs(pair.darkfield_clean[:, :5]).max()) == 0.0
    assert not pair.body[:, :5].any()


def test_framing_is_seeded_and_healthy_and_sick_share_it():
    a = make_patient(9, 3, "healthy").framing
    b = make_patient(9, 3, "healthy").framing
    c = make_patient(9, 3, "pneumonia").framing
    assert a == b == c
    assert make_patient(9, 4, "healthy").framing != a


def test_fixed_framing_is_the_first_simulators_detector():
    p = make_patient(2, 0, "healthy", framing=FramingRanges.fixed())
    assert p.framing.fov_cm == 40.0 and p.framing.center_x == 0.0 and p.framing.center_z == 0.0
    assert p.framing.rotation_deg == 0.0 and p.framing.collimation == (0.0,) * 4
