"""Thin devices are drawn as the detector sees them: each pixel integrates the path length over
its area (``devices.pixel_mean``), so a wire thinner than a pixel is a continuous line, not the
dots of the pixel centres it happens to cross."""

from __future__ import annotations

import math

import numpy as np

from darkfield_nb.physics import geometry as g
from darkfield_nb.physics.devices import pixel_mean


def _grid(n: int, pixel: float):
    centres = (np.arange(n) + 0.5) * pixel
    return centres[None, :], centres[:, None]  # X (1, w), Z (h, 1)


def test_pixel_mean_of_a_wire_integrates_its_cross_section():
    """A straight wire of radius r across a pixel of width p: the integral of the chord
    2 sqrt(r^2 - d^2) over d is pi r^2, so the pixel's mean path is pi r^2 / p (closed form),
    wherever the wire lies in the pixel (with enough sub-samples)."""
    p, r = 0.156, 0.045
    X, Z = _grid(9, p)
    for x0 in (4.5 * p, 4.5 * p + 0.3 * p):  # through a pixel centre, and off-centre
        wire = np.array([[x0, -1.0], [x0, 10.0]])

        def chord(x, z, wire=wire):
            return g.tube_chord(g.polyline_distance(x, z, wire), r)

        fine = pixel_mean(chord, X, Z, p, n=200)
        np.testing.assert_allclose(fine.sum(axis=1), math.pi * r**2 / p, rtol=2e-3)
        coarse = pixel_mean(chord, X, Z, p)  # the default 8 x 8: within 5 % of it
        np.testing.assert_allclose(coarse.sum(axis=1), math.pi * r**2 / p, rtol=0.05)


def test_pixel_mean_is_exact_for_a_linear_function_and_keeps_shapes():
    """The sub-pixel points are symmetric about the centre: the mean of a linear function is
    its value at the centre, for any n."""
    X, Z = _grid(6, 0.2)
    for n in (1, 2, 5):
        got = pixel_mean(lambda x, z: 3.0 * x - 2.0 * z + 1.0, X, Z, 0.2, n=n)
        assert got.shape == (6, 6)
        np.testing.assert_allclose(got, 3.0 * X - 2.0 * Z + 1.0, atol=1e-12)


def test_sampled_cables_are_continuous_lines():
    """Along a rendered cable the path length never drops to zero between pixels: every pixel
    column the wire crosses holds part of it (centre sampling left gaps)."""
    p, r = 0.156, 0.045
    X, Z = _grid(40, p)
    wire = np.array([[0.0, 0.37], [40 * p, 40 * p * 0.31 + 0.37]])  # a shallow diagonal

    def chord(x, z):
        return g.tube_chord(g.polyline_distance(x, z, wire), r)

    centre, mean = chord(X, Z), pixel_mean(chord, X, Z, p)
    crossed = mean.max(axis=0) > 0
    assert crossed.all()
    assert (centre.max(axis=0) == 0).sum() > 5  # gaps of the centre sampling
