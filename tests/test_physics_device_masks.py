"""Device label masks: a pixel is labelled where the device is visible (devices.py docstring)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from darkfield_nb import labels
from darkfield_nb.physics.acquisition import AcquisitionConfig, acquire
from darkfield_nb.physics.devices import LABEL_RULE, LabelRule, visible
from darkfield_nb.physics.framing import render_grid
from darkfield_nb.physics.simulate import make_patient, render_scene

BITS = {"pacemaker": labels.PACEMAKER, "cables": labels.CABLE, "clips": labels.CLIP}


def test_threshold_is_rose_times_the_measured_quantum_noise():
    """t = 5 sigma_A, sigma_A the std of the library's own noisy attenuation at A = 2.5."""
    pixel_mm = 400.0 / 256
    n0 = 2.0e6 * pixel_mm**2
    assert LABEL_RULE.threshold(pixel_mm) == pytest.approx(5 * math.exp(1.25) / math.sqrt(n0))
    assert LABEL_RULE.threshold(pixel_mm) == pytest.approx(0.0079, abs=5e-5)
    cfg = AcquisitionConfig(blur=False, stripes=False)
    flat = np.full((256, 256), 2.5, np.float32)
    m = acquire(flat, np.zeros_like(flat), pixel_mm, np.random.default_rng(0), cfg)
    assert 5 * float(m.attenuation.std()) == pytest.approx(LABEL_RULE.threshold(pixel_mm), rel=0.03)
    # larger pixels collect more photons: a lower threshold; blur only from 0.2 px as acquire
    assert LABEL_RULE.threshold(2.0) < LABEL_RULE.threshold(1.0)
    assert LABEL_RULE.sigma_px(1.25) == pytest.approx(0.4)
    assert LABEL_RULE.sigma_px(3.0) == 0.0


def _weights(sigma: float) -> np.ndarray:
    """Hand-written 1-D Gaussian weights of scipy's filter: radius int(4 sigma + 0.5), sum 1."""
    r = int(4 * sigma + 0.5)
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return w / w.sum()


def test_visible_closed_form_point_and_disc():
    t, s = 0.0079, 0.32
    w = _weights(s)  # r = 1: [w1, w0, w1]
    assert len(w) == 3
    w0, w1 = w[1], w[0]
    # a single dense wire pixel of c = 2: blurred neighbours get 2 w0 w1 = 0.0147 >= t,
    # diagonal ones 2 w1^2 = 1.1e-4 < t -> a plus of 5 pixels
    c = np.zeros((9, 9))
    c[4, 4] = 2.0
    assert 2 * w0 * w1 >= t > 2 * w1 * w1
    expected = np.zeros((9, 9), bool)
    expected[4, 3:6] = expected[3:6, 4] = True
    np.testing.assert_array_equal(visible(c, t, s), expected)
    # a faint pixel (0.5): the blur leaves 0.5 w0 w1 = 0.0037 < t next to it: only itself
    c[4, 4] = 0.5
    np.testing.assert_array_equal(visible(c, t, s), c >= t)
    # below the threshold nowhere visible, blurred or not
    c[4, 4] = 0.9 * t
    assert not visible(c, t, s).any()
    # a uniform faint disc (an electrode pad, 0.02): exactly the disc, no halo
    yy, xx = np.mgrid[:21, :21]
    disc = np.where(np.hypot(yy - 10, xx - 10) < 6, 0.02, 0.0)
    np.testing.assert_array_equal(visible(disc, t, s), disc > 0)
    # no blur: a plain threshold
    np.testing.assert_array_equal(visible(disc * 0.3, t, 0.0), disc * 0.3 >= t)


@pytest.mark.parametrize("kind", ["pacemaker", "cables", "clips"])
def test_rendered_device_label_is_where_the_device_shows(kind):
    patient = make_patient(3, 0, kind)
    grid, _ = render_grid(patient.framing, 256)
    scene = render_scene(patient, 256, grid=grid)
    device = patient.device
    patient.device = None
    bare = render_scene(patient, 256, grid=grid)
    patient.device = device
    contribution = scene.A_metal.astype(np.float64) - bare.A_metal
    bit = BITS[kind]
    labelled = (scene.mask & bit) > 0
    # only the device's bit changes
    np.testing.assert_array_equal(scene.mask & ~np.uint16(bit), bare.mask & ~np.uint16(bit))
    pixel_mm = grid.pixel_cm * 10.0
    t, s = LABEL_RULE.threshold(pixel_mm), LABEL_RULE.sigma_px(pixel_mm)
    assert s > 0  # this test exercises the blur
    shown = contribution >= t
    assert shown.sum() > 20
    # every pixel the device covers above t is labelled
    assert not (shown & ~labelled).any()
    # every labelled pixel lies within the blur's reach of one that is shown
    reach = int(4 * s + 0.5)
    near = binary_dilation(shown, np.ones((2 * reach + 1,) * 2, bool))
    assert not (labelled & ~near).any()
    # and is blurred above t: an independent separable blur (hand weights, edge 'nearest')
    w = _weights(s)
    padded = np.pad(contribution, reach, mode="edge")
    rows = sum(w[k] * padded[k : k + contribution.shape[0], :] for k in range(len(w)))
    blurred = sum(w[k] * rows[:, k : k + contribution.shape[1]] for k in range(len(w)))
    np.testing.assert_array_equal(labelled, shown | (blurred >= t))


def test_rule_parameters_move_the_label():
    """A higher Rose factor labels a subset; a wider blur reaches further from a wire."""
    c = np.zeros((15, 15))
    c[7, :] = 1.0  # a wire along a row
    base = visible(c, LabelRule().threshold(1.5), LabelRule().sigma_px(1.5))
    strict = visible(c, LabelRule(k=50).threshold(1.5), LabelRule().sigma_px(1.5))
    wide = visible(c, LabelRule().threshold(1.5), LabelRule(blur_mm=1.5).sigma_px(1.5))
    assert not (strict & ~base).any()
    assert wide.sum() > base.sum() > 0
