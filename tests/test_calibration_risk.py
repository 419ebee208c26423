"""Risk-controlling prediction sets: the Hoeffding and Bentkus bounds against values computed
by hand (closed forms and independent root finding), lambda_hat's definition, and validity by
simulation over random calibration/test partitions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import optimize, special, stats

from darkfield_nb import calibration as cal


@pytest.mark.parametrize("n,delta", [(10, 0.1), (50, 0.05), (1000, 0.1)])
def test_zero_empirical_risk_closed_forms(n, delta):
    """R_hat = 0: h1(0, R) = -log(1 - R), so exp(-n h1) = (1 - R)^n = delta gives
    R+ = 1 - delta^(1/n); Bentkus e (1 - R)^n = delta gives 1 - (delta/e)^(1/n) (looser), so
    the HB bound is Hoeffding's."""
    assert cal.hoeffding_ucb(0.0, n, delta) == pytest.approx(1 - delta ** (1 / n), rel=1e-9)
    assert cal.bentkus_ucb(0.0, n, delta) == pytest.approx(
        1 - (delta / math.e) ** (1 / n), rel=1e-9
    )
    assert cal.hb_ucb(0.0, n, delta) == pytest.approx(1 - delta ** (1 / n), rel=1e-9)


@pytest.mark.parametrize("r_hat", [0.03, 0.1, 0.37])
def test_hoeffding_against_brentq_on_the_formula(r_hat):
    n, delta = 40, 0.1

    def f(r):
        h = r_hat * math.log(r_hat / r) + (1 - r_hat) * math.log((1 - r_hat) / (1 - r))
        return math.exp(-n * h) - delta

    expected = optimize.brentq(f, r_hat + 1e-12, 1 - 1e-12, xtol=1e-14)
    assert cal.hoeffding_ucb(r_hat, n, delta) == pytest.approx(expected, abs=1e-9)


def test_bentkus_by_hand_polynomial():
    """n = 10, R_hat = 0.1: ceil(n R_hat) = 1, so e [(1 - R)^10 + 10 R (1 - R)^9] = delta."""
    n, delta = 10, 0.1

    def f(r):
        return math.e * ((1 - r) ** 10 + 10 * r * (1 - r) ** 9) - delta

    expected = optimize.brentq(f, 0.1, 1 - 1e-12, xtol=1e-14)
    assert cal.bentkus_ucb(0.1, n, delta) == pytest.approx(expected, abs=1e-9)
    # R_hat = 0.15: ceil(1.5) = 2 adds the k = 2 term 45 R^2 (1 - R)^8
    expected2 = optimize.brentq(
        lambda r: math.e * stats.binom.cdf(2, 10, r) - delta, 0.15, 1 - 1e-12, xtol=1e-14
    )
    assert cal.bentkus_ucb(0.15, n, delta) == pytest.approx(expected2, abs=1e-9)


def test_hb_is_the_smaller_bound_and_monotone():
    r = np.linspace(0, 0.5, 51)
    hb = cal.hb_ucb(r, 100, 0.1)
    np.testing.assert_array_equal(
        hb, np.minimum(cal.hoeffding_ucb(r, 100, 0.1), cal.bentkus_ucb(r, 100, 0.1))
    )
    assert np.all(hb >= r) and np.all(np.diff(hb) >= -1e-12)
    assert np.all(cal.hb_ucb(r, 1000, 0.1) <= hb)  # more images, tighter bound


def test_h1_is_the_bernoulli_kl():
    a, b = 0.2, 0.35
    assert cal.h1(a, b) == pytest.approx(special.rel_entr(a, b) + special.rel_entr(1 - a, 1 - b))


def test_needed_lambda_and_risk_curves_by_hand():
    y = np.array([[[1.0, -1.0, 0.0, 3.0]]])
    mu = np.zeros_like(y)
    need = cal.needed_lambda(y, mu, q_lo=2.0, q_hi=1.0)
    np.testing.assert_allclose(need, [[[1.0, 0.5, 0.0, 3.0]]])
    risks = cal.risk_curves(need, [0.0, 0.5, 1.0, 2.9, 3.0])
    np.testing.assert_allclose(risks, [[0.75, 0.5, 0.25, 0.25, 0.0]])


def _synthetic_risks(n_images, lambdas, seed):
    """Per-image loss curves: image i's pixels need lambda ~ s_i |N(0, 1)|, with s_i spread,
    so L_i(lambda) = P(|Z| > lambda / s_i) = erfc(lambda / (s_i sqrt 2))."""
    rng = np.random.default_rng(seed)
    s = rng.lognormal(0.0, 0.4, n_images)
    return special.erfc(lambdas[None, :] / (s[:, None] * np.sqrt(2)))


def test_lambda_hat_follows_the_definition():
    lambdas = np.linspace(0, 6, 601)
    risks = _synthetic_risks(300, lambdas, 0)
    res = cal.rcps_lambda(risks, lambdas, alpha=0.1, delta=0.1)
    assert np.all(res.ucb[res.index :] < 0.1)
    assert res.ucb[res.index - 1] >= 0.1  # one step lower would not qualify
    np.testing.assert_allclose(res.ucb, cal.hb_ucb(risks.mean(0), 300, 0.1))
    # a non-monotone bound: the infimum must stay above the last failure
    bumpy = risks.copy()
    bumpy[:, 500] = 0.5
    assert cal.rcps_lambda(bumpy, lambdas).index == 501
    none = cal.rcps_lambda(np.ones((5, 3)), np.array([0.0, 1.0, 2.0]))
    assert math.isinf(none.lambda_hat) and none.index == -1
    rc = cal.RCPSCalibration(none.lambda_hat, 0.1, 0.1, 5)
    assert json.dumps(rc.to_dict())  # strict JSON even for an infinite lambda
    assert math.isinf(cal.recalibrator_from_dict(rc.to_dict()).lambda_hat)


def test_rcps_is_valid_over_random_partitions():
    """200 partitions of 2000 synthetic images (500 calibration, 1500 test): the share with test
    risk above alpha must be at most delta, within simulation error (3 binomial SEs)."""
    alpha = delta = 0.1
    lambdas = np.linspace(0, 6, 301)
    risks = _synthetic_risks(2000, lambdas, 1)
    out = cal.rcps_validity(
        risks, lambdas, n_cal=500, alpha=alpha, delta=delta, n_partitions=200, seed=0
    )
    assert out["violation_rate"] <= delta + 3 * math.sqrt(delta * (1 - delta) / 200)
    assert np.all(np.isfinite(out["lambda_hat"]))
    # not trivially valid: the test risk sits close to alpha, not at zero
    assert 0.05 < np.mean(out["test_risk"]) < alpha
