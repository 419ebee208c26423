"""darkfield_nb.calibration metrics: the Gaussian case against uncertainty-toolbox on the same
arrays, the GGD case against scipy.stats.gennorm, and known answers (oracle sigma, samples
from the predicted distribution, halved sigma)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from darkfield_nb import calibration as cal
from darkfield_nb.labels import BONE, CABLE, HEART, LUNG, PACEMAKER

uct = pytest.importorskip("uncertainty_toolbox")


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(0)
    n = 4000
    mu = rng.normal(size=n)
    sigma = rng.uniform(0.2, 2.0, size=n)
    y = mu + 1.3 * sigma * rng.standard_normal(n)  # over-confident by 1.3
    return y, mu, sigma


def test_gaussian_calibration_errors_match_uncertainty_toolbox(gaussian):
    y, mu, sigma = gaussian
    mine = cal.calibration_errors(y, mu, sigma=sigma)
    ref_ma = uct.metrics_calibration.miscalibration_area(mu, sigma, y)
    ref_mace = uct.metrics_calibration.mean_absolute_calibration_error(mu, sigma, y)
    ref_rms = uct.metrics_calibration.root_mean_squared_calibration_error(mu, sigma, y)
    assert mine["miscalibration_area"] == pytest.approx(ref_ma, abs=1e-6)
    assert mine["mace"] == pytest.approx(ref_mace, abs=1e-6)
    assert mine["rmsce"] == pytest.approx(ref_rms, abs=1e-6)
    assert mine["miscalibration_area"] > 0.05  # sigma too small by 1.3: clearly miscalibrated


def test_gaussian_coverage_curve_matches_uncertainty_toolbox(gaussian):
    y, mu, sigma = gaussian
    p, obs = cal.coverage_curve(y, mu, sigma=sigma, levels=100)
    ref_p, ref_obs = uct.metrics_calibration.get_proportion_lists_vectorized(mu, sigma, y)
    np.testing.assert_allclose(p, ref_p, atol=1e-12)
    np.testing.assert_allclose(obs, ref_obs, atol=1e-6)


def test_gaussian_nll_and_sharpness_match_uncertainty_toolbox(gaussian):
    y, mu, sigma = gaussian
    assert cal.nll_gaussian(y, mu, sigma) == pytest.approx(
        uct.metrics_scoring_rule.nll_gaussian(mu, sigma, y), abs=1e-6
    )
    assert cal.sharpness(sigma) == pytest.approx(uct.metrics_calibration.sharpness(sigma), abs=1e-6)


def test_image_shaped_and_masked_equal_flat(gaussian):
    y, mu, sigma = gaussian
    shape = (4, 25, 40)
    mask = np.random.default_rng(1).random(shape) < 0.6
    flat = [a.reshape(shape)[mask] for a in (y, mu, sigma)]
    assert cal.miscalibration_area(
        *(a.reshape(shape) for a in (y, mu)), sigma=sigma.reshape(shape), mask=mask
    ) == pytest.approx(
        uct.metrics_calibration.miscalibration_area(flat[1], flat[2], flat[0]), abs=1e-6
    )
    with pytest.raises(ValueError, match="mask shape"):
        cal.coverage(y, mu, sigma=sigma, mask=mask)


def test_ggd_pit_nll_width_match_scipy_gennorm():
    rng = np.random.default_rng(2)
    n = 3000
    mu, alpha, beta = rng.normal(size=n), rng.uniform(0.1, 2, n), rng.uniform(0.5, 3.0, n)
    y = mu + rng.standard_t(4, n)
    ref = stats.gennorm(beta, loc=mu, scale=alpha)
    np.testing.assert_allclose(cal.pit(y, mu, alpha=alpha, beta=beta), ref.cdf(y), atol=1e-10)
    np.testing.assert_allclose(
        cal.central_pit(y, mu, alpha=alpha, beta=beta), np.abs(2 * ref.cdf(y) - 1), atol=1e-10
    )
    assert cal.nll_ggd(y, mu, alpha, beta) == pytest.approx(-ref.logpdf(y).mean(), rel=1e-10)
    lo, hi = ref.ppf(0.05), ref.ppf(0.95)
    assert cal.interval_width(0.9, alpha=alpha, beta=beta) == pytest.approx(
        np.mean(hi - lo), rel=1e-8
    )
    inside = np.mean((y >= lo) & (y <= hi))
    assert cal.coverage(y, mu, 0.9, alpha=alpha, beta=beta) == pytest.approx(inside, abs=1e-9)


def test_gaussian_pit_and_width_match_scipy_norm():
    rng = np.random.default_rng(3)
    mu, sigma = rng.normal(size=500), rng.uniform(0.5, 2, 500)
    y = rng.normal(size=500)
    np.testing.assert_allclose(cal.pit(y, mu, sigma=sigma), stats.norm.cdf(y, mu, sigma))
    width = np.mean(stats.norm.ppf(0.95, mu, sigma) - stats.norm.ppf(0.05, mu, sigma))
    assert cal.interval_width(0.9, sigma=sigma) == pytest.approx(width, rel=1e-10)


def test_ggd_with_beta_2_is_the_gaussian():
    """GGD(mu, alpha, 2) is N(mu, alpha^2 / 2): every metric must agree with the Gaussian's."""
    rng = np.random.default_rng(4)
    mu, sigma = rng.normal(size=2000), rng.uniform(0.5, 2, 2000)
    y = mu + sigma * rng.standard_t(5, 2000)
    alpha = cal.predictive_alpha(sigma, 2.0)
    np.testing.assert_allclose(alpha, sigma * np.sqrt(2), rtol=1e-12)
    g = cal.calibration_errors(y, mu, sigma=sigma)
    h = cal.calibration_errors(y, mu, alpha=alpha, beta=np.full_like(alpha, 2.0))
    assert g["miscalibration_area"] == pytest.approx(h["miscalibration_area"], abs=1e-9)
    assert cal.nll_gaussian(y, mu, sigma) == pytest.approx(cal.nll_ggd(y, mu, alpha, 2.0))


def test_samples_from_the_predicted_ggd_are_calibrated():
    """y drawn from GGD(mu, alpha, beta): observed coverage = p within sampling error."""
    rng = np.random.default_rng(5)
    n = 40_000
    mu, alpha, beta = rng.normal(size=n), rng.uniform(0.1, 1, n), rng.uniform(0.6, 3, n)
    y = stats.gennorm.rvs(beta, loc=mu, scale=alpha, random_state=rng)
    p, obs = cal.coverage_curve(y, mu, alpha=alpha, beta=beta, levels=21)
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(obs - p) <= 4 * se + 1e-12)
    u = cal.pit(y, mu, alpha=alpha, beta=beta)
    assert stats.kstest(u, "uniform").pvalue > 0.001
    assert cal.miscalibration_area(y, mu, alpha=alpha, beta=beta) < 0.01


def test_halved_sigma_is_over_confident():
    rng = np.random.default_rng(6)
    n = 20_000
    mu, alpha, beta = np.zeros(n), rng.uniform(0.2, 1, n), rng.uniform(0.8, 2.5, n)
    y = stats.gennorm.rvs(beta, loc=mu, scale=alpha, random_state=rng)
    c90 = cal.coverage(y, mu, 0.9, alpha=alpha / 2, beta=beta)
    assert c90 < 0.75  # far below the nominal 0.90
    p, obs = cal.coverage_curve(y, mu, alpha=alpha / 2, beta=beta, levels=11)
    assert np.all(obs[1:-1] < p[1:-1])  # below the diagonal at every inner level


def test_ence_uce_by_hand():
    """Four pixels, two equal-count bins: sigma (1, 1 | 2, 2), errors (0, 2 | 2, 2).
    Bin 1: RMV 1, RMSE sqrt(2); bin 2: RMV 2, RMSE 2. ENCE = (|1 - sqrt 2| / 1 + 0) / 2;
    UCE = 1/2 |2 - 1| + 1/2 |4 - 4| = 0.5."""
    sigma = np.array([1.0, 1.0, 2.0, 2.0])
    y = np.array([0.0, 2.0, 2.0, -2.0])
    mu = np.zeros(4)
    assert cal.ence(y, mu, sigma, n_bins=2) == pytest.approx((np.sqrt(2) - 1) / 2)
    assert cal.uce(y, mu, sigma, n_bins=2) == pytest.approx(0.5)
    assert cal.uce(y, mu, sigma, n_bins=2, binning="uniform") == pytest.approx(0.5)


def test_ence_small_for_calibrated_large_for_halved():
    rng = np.random.default_rng(7)
    sigma = rng.uniform(0.1, 3, 50_000)
    y = sigma * rng.standard_normal(sigma.size)
    assert cal.ence(y, 0.0 * y, sigma) < 0.05
    assert cal.ence(y, 0.0 * y, sigma / 2) == pytest.approx(1.0, abs=0.1)  # RMSE = 2 RMV


def test_spearman_against_scipy_and_per_image():
    rng = np.random.default_rng(8)
    sigma = rng.uniform(size=(3, 20, 20))
    err = sigma * rng.standard_normal(sigma.shape)
    ref = stats.spearmanr(sigma.ravel(), np.abs(err).ravel()).statistic
    assert cal.spearman(sigma, err) == pytest.approx(ref)
    per = cal.spearman_per_image(sigma, err)
    for i in range(3):
        assert per[i] == pytest.approx(stats.spearmanr(sigma[i].ravel(), np.abs(err[i]).ravel())[0])


def test_sparsification_oracle_sigma_gives_zero_ause():
    rng = np.random.default_rng(9)
    mu = rng.normal(size=(2, 30, 30))
    y = mu + rng.standard_t(3, mu.shape)
    for metric in ("mae", "rmse"):
        s = cal.sparsification(np.abs(y - mu), y, mu, metric=metric)
        assert s.ause == pytest.approx(0.0, abs=1e-12)
        assert s.aurg > 0
        assert s.model[0] == pytest.approx(1.0) and np.allclose(s.random, 1.0)


def test_sparsification_by_hand_and_random_sigma():
    """Errors 4, 3, 2, 1 and sigma ranking them 1, 2, 3, 4 (the worst order); fractions 0, 0.5,
    unnormalized MAE: at f = 0.5 the model removes errors 1, 2 (mean of the rest 3.5), the
    oracle removes 4, 3 (1.5); trapezoids over the two fractions."""
    err = np.array([4.0, 3.0, 2.0, 1.0])
    sigma = np.array([1.0, 2.0, 3.0, 4.0])
    s = cal.sparsification(sigma, err, np.zeros(4), fractions=[0.0, 0.5], normalize=False)
    np.testing.assert_allclose(s.model, [2.5, 3.5])  # removed sigma 4, 3 -> errors 1, 2 gone
    np.testing.assert_allclose(s.oracle, [2.5, 1.5])
    assert s.ause == pytest.approx(0.5 * 0.5 * ((2.5 - 2.5) + (3.5 - 1.5)))
    assert s.aurg == pytest.approx(0.5 * 0.5 * (0 + (2.5 - 3.5)))
    assert s.ause_over_random == pytest.approx(s.ause / (0.5 * 2.5))
    rng = np.random.default_rng(10)
    e = np.abs(rng.standard_normal(100_000))
    rand = cal.sparsification(rng.uniform(size=e.size), e, 0 * e)
    assert abs(rand.aurg) < 0.02  # an uninformative sigma is no better than random


def test_region_masks_partition():
    mask = np.zeros((1, 8, 8), np.int32)
    mask[0, 2:6, 2:4] = LUNG
    mask[0, 3, 3] = LUNG | BONE
    mask[0, 2:6, 5] = BONE
    mask[0, 6, 5] = HEART
    mask[0, 4, 2] = LUNG | PACEMAKER
    mask[0, 7, 7] = CABLE
    x = np.full(mask.shape, 0.8)
    x[0, 0, :] = 0.0  # dark unlabeled strip on the border: air
    x[0, 4, 4] = 0.0  # dark unlabeled pixel enclosed by the body: soft tissue
    r = cal.region_masks(mask, x)
    total = sum(v.astype(int) for v in r.values())
    assert np.all(total == 1)
    assert r["device"][0, 4, 2] and r["device"][0, 7, 7]
    assert r["lung"][0, 3, 3] and not r["bone"][0, 3, 3]
    assert r["bone"][0, 3, 5] and r["soft_tissue"][0, 6, 5]
    assert r["air"][0, 0].all() and r["air"].sum() == 8
    assert r["soft_tissue"][0, 4, 4]
    assert not cal.region_masks(mask)["air"].any()


def test_summary_pools_regions_by_pixel_count():
    """Regions partition the pixels, so pooled coverage and NLL are the pixel-weighted means of
    the regions'; the pooled Spearman is scipy's on all pixels."""
    rng = np.random.default_rng(11)
    shape = (2, 40, 40)
    mu, alpha, beta = np.zeros(shape), rng.uniform(0.2, 1, shape), rng.uniform(0.8, 2.5, shape)
    y = stats.gennorm.rvs(beta, scale=1.2 * alpha, random_state=rng)
    lung = np.zeros(shape, bool)
    lung[:, :25] = True
    out = cal.calibration_summary(y, mu, alpha, beta, {"lung": lung, "bone": ~lung})
    w = np.array([out["lung"]["pixels"], out["bone"]["pixels"]]) / y.size
    for key in ("coverage_90", "nll_ggd"):
        pooled = w[0] * out["lung"][key] + w[1] * out["bone"][key]
        assert out["all"][key] == pytest.approx(pooled, rel=1e-9)
    sigma = stats.gennorm(beta, scale=alpha).std()
    ref = stats.spearmanr(sigma.ravel(), np.abs(y).ravel()).statistic
    assert out["all"]["spearman"] == pytest.approx(ref)
