"""The float32 whitened Mahalanobis distance of the detector's pixel maps against scipy's
float64 ``mahalanobis`` (an independent reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from darkfield_nb.epistemic import GaussianDensity


def test_whitened_distance_matches_scipy_in_float32() -> None:
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(40, 40))  # correlated channels: a precision far from diagonal
    train = rng.normal(size=(2000, 40)) @ mix + 5.0
    dens = GaussianDensity.fit(train)
    q = rng.normal(size=(300, 40)) @ mix * 1.5 + 4.0
    ref = np.array([mahalanobis(row, dens.mean, dens.precision) for row in q])
    got = dens.whitened_distance(torch.from_numpy(q).float())
    assert got.dtype == torch.float32 and got.shape == (300,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=2e-5)
    np.testing.assert_allclose(dens.distance(q), ref, rtol=1e-10)  # the float64 path


def test_whitened_distance_refuses_the_wrong_width() -> None:
    dens = GaussianDensity.fit(np.random.default_rng(0).normal(size=(50, 4)))
    with pytest.raises(ValueError, match="rows of 4 features"):
        dens.whitened_distance(torch.zeros(3, 5))
