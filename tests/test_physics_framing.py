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


def test_penumbra_is_a_linear_ramp_of_the_asked_width():
    """Across a left shutter at column d, w rises linearly from 0 to 1 over penumbra_mm
    (hand computed: slope pixel_mm / penumbra_mm per pixel, w = 1/2 at the edge)."""
    size, fov, pen = 200, 40.0, 10.0  # 2 mm pixels: a 5-pixel ramp
    fr = Framing(fov_cm=fov, collimation=(0.0, 0.0, 0.1, 0.0), penumbra_mm=pen)
    row = open_fraction(fr, size)[size // 2]
    pos = np.arange(size) + 0.5
    expected = np.clip((pos - 0.1 * size) / (pen / (fov * 10 / size)) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(row, expected, atol=1e-6)
    ramp = row[(row > 0) & (row < 1)]  # pixel centres 0.2 ... 0.8 of the way up the ramp
    assert len(ramp) == 4 and np.allclose(np.diff(ramp), 0.2, atol=1e-6)


def test_rounded_corner_follows_the_arc_next_to_a_shutter():
    """With a left shutter and corner radius R, the open field's two left corners are quarter
    circles: w = 1/2 at distance R from the arcs' centres (R, x0 + R) and (size - R, x0 + R),
    0 beyond R + ramp / 2, unchanged outside the R x R corner squares; no rounding on the right
    (no shutter there, nor above or below)."""
    size = 200
    fr = Framing(fov_cm=40.0, collimation=(0.0, 0.0, 0.05, 0.0), penumbra_mm=2.0)
    square = open_fraction(fr, size)
    rounded = open_fraction(dataclasses.replace(fr, corner_radius=0.2), size)
    r, x0 = 0.2 * size, 0.05 * size
    pos = np.arange(size) + 0.5
    ramp = 2.0 / (40.0 * 10 / size)
    expected = square.copy()
    for cy, rows in ((r, pos < r), (size - r, pos > size - r)):
        dist = np.hypot(pos[:, None] - cy, pos[None, :] - (x0 + r))
        zone = rows[:, None] & (pos[None, :] < x0 + r)
        w_c = np.clip(0.5 - (dist - r) / ramp, 0, 1)
        expected = np.where(zone, np.minimum(expected, w_c), expected)
    np.testing.assert_allclose(rounded, expected, atol=1e-6)
    for row in (0, size - 1):  # the cut corners
        assert rounded[row, int(x0) + 2] == 0.0 and square[row, int(x0) + 2] == 1.0
    np.testing.assert_array_equal(rounded[:, size // 2 :], square[:, size // 2 :])
    np.testing.assert_array_equal(
        rounded[int(r) + 1 : size - int(r) - 1], square[int(r) + 1 : size - int(r) - 1]
    )


def test_sampled_corners_are_rounded_only_with_a_shutter():
    """Patients without shutters get square corners; the drawn radius and penumbra lie in the
    asked ranges; the other draws (field of view, shifts, rotation) do not depend on them."""
    wide = FramingRanges(corner_radius=(0.02, 0.1), penumbra_mm=(1.0, 12.0))
    narrow = FramingRanges(corner_radius=(0.0, 0.0), penumbra_mm=2.0)
    for i in range(20):
        a = make_patient(5, i, "healthy", framing=wide).framing
        b = make_patient(5, i, "healthy", framing=narrow).framing
        assert (a.fov_cm, a.center_x, a.rotation_deg, a.collimation) == (
            b.fov_cm,
            b.center_x,
            b.rotation_deg,
            b.collimation,
        )
        assert 1.0 <= a.penumbra_mm <= 12.0 and b.penumbra_mm == 2.0 and b.corner_radius == 0.0
        if any(a.collimation):
            assert 0.02 <= a.corner_radius <= 0.1
        else:
            assert a.corner_radius == 0.0
