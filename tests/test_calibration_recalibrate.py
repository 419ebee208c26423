"""Recalibration: sigma scaling (NLL and coverage) against closed forms and a numerical
optimum, per-region factors, isotonic PIT recalibration, JSON round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import optimize, stats

from darkfield_nb import calibration as cal


def _ggd_data(n=30_000, true_scale=1.7, seed=0):
    rng = np.random.default_rng(seed)
    mu, alpha, beta = rng.normal(size=n), rng.uniform(0.2, 1, n), rng.uniform(0.8, 2.5, n)
    y = stats.gennorm.rvs(beta, loc=mu, scale=true_scale * alpha, random_state=rng)
    return y, mu, alpha, beta


def test_nll_scale_closed_form_for_one_beta():
    """One shape beta: s = (beta mean z)^(1/beta), z = (|r|/alpha)^beta."""
    rng = np.random.default_rng(1)
    r = rng.standard_t(4, 5000)
    alpha = rng.uniform(0.5, 2, 5000)
    for beta in (1.0, 2.0, 0.7):
        z = (np.abs(r) / alpha) ** beta
        s = cal.fit_scale(r, 0 * r, alpha, np.full_like(r, beta), method="nll")
        assert s == pytest.approx((beta * z.mean()) ** (1 / beta), rel=1e-9)


def test_nll_scale_is_the_numerical_minimum_for_mixed_beta():
    y, mu, alpha, beta = _ggd_data(5000)
    s = cal.fit_scale(y, mu, alpha, beta, method="nll")
    res = optimize.minimize_scalar(
        lambda t: -stats.gennorm.logpdf(y, beta, loc=mu, scale=t * alpha).mean(),
        bounds=(0.1, 10),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert s == pytest.approx(res.x, rel=1e-5)
    assert s == pytest.approx(1.7, rel=0.03)  # the data were drawn with 1.7 alpha


def test_coverage_scale_makes_the_90_interval_exact_and_generalizes():
    y, mu, alpha, beta = _ggd_data(seed=2)
    before = cal.coverage(y, mu, 0.9, alpha=alpha, beta=beta)
    assert before < 0.8
    sc = cal.fit_sigma_scaling(y, mu, alpha, beta, method="coverage")
    assert cal.coverage(y, mu, 0.9, alpha=sc.apply(alpha), beta=beta) == pytest.approx(
        0.9, abs=1 / y.size + 1e-12
    )
    y2, mu2, a2, b2 = _ggd_data(seed=3)  # fitted on one set, evaluated on another
    assert cal.coverage(y2, mu2, 0.9, alpha=sc.apply(a2), beta=b2) == pytest.approx(0.9, abs=0.01)


def test_per_region_factors_recover_region_scales_and_round_trip():
    rng = np.random.default_rng(4)
    shape = (4, 64, 64)
    mu, alpha, beta = np.zeros(shape), np.full(shape, 0.5), np.full(shape, 1.5)
    lung = np.zeros(shape, bool)
    lung[:, :, :32] = True
    regions = {"lung": lung, "soft_tissue": ~lung}
    scale = np.where(lung, 2.0, 0.5)
    y = stats.gennorm.rvs(beta, scale=alpha * scale, random_state=rng)
    sc = cal.fit_sigma_scaling(y, mu, alpha, beta, regions=regions, method="nll")
    assert sc.per_region["lung"] == pytest.approx(2.0, rel=0.03)
    assert sc.per_region["soft_tissue"] == pytest.approx(0.5, rel=0.03)
    back = cal.recalibrator_from_dict(json.loads(json.dumps(sc.to_dict())))
    assert back == sc
    np.testing.assert_allclose(
        back.apply(alpha, regions), alpha * np.where(lung, 2.0, 0.5), rtol=0.03
    )
    with pytest.raises(ValueError, match="regions"):
        back.apply(alpha)


def test_isotonic_recalibration_fixes_a_miscalibrated_pit_on_new_data():
    y, mu, alpha, beta = _ggd_data(seed=5)
    u = cal.pit(y, mu, alpha=alpha, beta=beta)
    iso = cal.fit_isotonic(u)
    y2, mu2, a2, b2 = _ggd_data(seed=6)
    u2 = cal.pit(y2, mu2, alpha=a2, beta=b2)
    p, before = cal.observed_coverage(np.abs(2 * u2 - 1), levels=21)
    _, after = cal.observed_coverage(iso.central_pit(u2), levels=21)
    assert np.max(np.abs(before - p)) > 0.15
    assert np.max(np.abs(after - p)) < 0.015
    lo, hi = iso.interval(0.9, mu2, a2, b2)
    assert np.mean((y2 >= lo) & (y2 <= hi)) == pytest.approx(0.9, abs=0.01)
    back = cal.recalibrator_from_dict(json.loads(json.dumps(iso.to_dict())))
    np.testing.assert_array_equal(back.table, iso.table)
    np.testing.assert_allclose(
        back.inverse(back(np.array([0.2, 0.5, 0.8]))), [0.2, 0.5, 0.8], atol=2e-3
    )


def test_from_dict_refuses_the_wrong_kind():
    with pytest.raises(ValueError, match="kind"):
        cal.SigmaScaling.from_dict({"kind": "isotonic", "table": [0, 1]})
    with pytest.raises(ValueError, match="unknown kind"):
        cal.recalibrator_from_dict({"kind": "temperature"})
