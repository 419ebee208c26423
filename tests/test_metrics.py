"""Metrics against scikit-image's reference implementations and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkfield_nb import metrics

skm = pytest.importorskip("skimage.metrics")


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 0.6, (48, 40))
    # smooth structure plus noise so SSIM is neither 0 nor 1
    yy, xx = np.mgrid[:48, :40]
    target = 0.3 + 0.2 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.02 * rng.normal(size=(48, 40))
    prediction = target + 0.05 * rng.normal(size=target.shape)
    return target, prediction


def test_mse_and_psnr_match_skimage(pair):
    target, prediction = pair
    assert metrics.mse(target, prediction) == pytest.approx(
        skm.mean_squared_error(target, prediction), abs=1e-10
    )
    assert metrics.psnr(target, prediction, data_range=1.0) == pytest.approx(
        skm.peak_signal_noise_ratio(target, prediction, data_range=1.0), abs=1e-4
    )


@pytest.mark.parametrize("data_range", [0.6, 1.0, 2.0])
def test_ssim_matches_skimage(pair, data_range):
    target, prediction = pair
    ours = metrics.ssim(target, prediction, data_range=data_range)
    ref = skm.structural_similarity(target, prediction, data_range=data_range)
    assert ours == pytest.approx(ref, abs=1e-4)


def test_ssim_map_matches_skimage_full_map_interior(pair):
    target, prediction = pair
    _, ref_map = skm.structural_similarity(target, prediction, data_range=1.0, full=True)
    ours = metrics.ssim_map(target, prediction, data_range=1.0).numpy()
    np.testing.assert_allclose(ours, ref_map[3:-3, 3:-3], atol=1e-6)


def test_batched_tensors_give_one_value_per_image(pair):
    target, prediction = pair
    t = torch.tensor(np.stack([target, target]), dtype=torch.float32)[:, None]
    p = torch.tensor(np.stack([prediction, target]), dtype=torch.float32)[:, None]
    values = metrics.ssim(t, p, data_range=1.0)
    assert values.shape == (2, 1)
    assert values[1, 0].item() == pytest.approx(1.0, abs=1e-6)  # identical images: SSIM 1
    assert values[0, 0].item() == pytest.approx(
        skm.structural_similarity(target, prediction, data_range=1.0), abs=1e-4
    )


def test_masked_metrics_use_only_masked_pixels():
    # hand-computed: errors of 0.1 inside the mask, 1.0 outside
    target = np.zeros((20, 20))
    prediction = np.full((20, 20), 1.0)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    prediction[mask] = 0.1
    assert metrics.mse(target, prediction, mask=mask) == pytest.approx(0.01)
    assert metrics.psnr(target, prediction, data_range=1.0, mask=mask) == pytest.approx(20.0)
    # SSIM inside the mask equals skimage's full map averaged over the same interior pixels
    rng = np.random.default_rng(1)
    a, b = rng.random((20, 20)), rng.random((20, 20))
    _, full = skm.structural_similarity(a, b, data_range=1.0, full=True)
    expected = full[3:-3, 3:-3][mask[3:-3, 3:-3]].mean()
    assert metrics.ssim(a, b, data_range=1.0, mask=mask) == pytest.approx(expected, abs=1e-6)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="shape"):
        metrics.mse(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="data_range"):
        metrics.psnr(np.zeros((4, 4)), np.ones((4, 4)), data_range=0)
    with pytest.raises(ValueError, match="mask selects no pixel"):
        metrics.mse(np.zeros((4, 4)), np.ones((4, 4)), mask=np.zeros((4, 4)))


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 0.01, size=60)
    mean, low, high = metrics.bootstrap_ci(values, n_boot=4000, seed=1)
    ref = stats.bootstrap(
        (values,), np.mean, n_resamples=4000, method="percentile", random_state=2
    ).confidence_interval
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    # two independent Monte Carlo estimates of the same quantiles agree within 10% of the width
    width = ref.high - ref.low
    assert abs(low - ref.low) < 0.1 * width and abs(high - ref.high) < 0.1 * width


def test_bootstrap_ci_of_constant_values_is_a_point():
    assert metrics.bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)


def test_bootstrap_ci_is_seeded_and_matches_the_normal_closed_form():
    # for the mean of n values the bootstrap distribution is close to normal with standard
    # error s / sqrt(n) (s the population-style sd of the sample): the 95 % percentile interval
    # is about mean -+ 1.96 s / sqrt(n)
    rng = np.random.default_rng(7)
    values = rng.normal(1.0, 0.2, size=400)
    a = metrics.bootstrap_ci(values, n_boot=8000, seed=5)
    assert a == metrics.bootstrap_ci(values, n_boot=8000, seed=5)  # same seed, same interval
    assert a != metrics.bootstrap_ci(values, n_boot=8000, seed=6)
    half = 1.959964 * values.std() / np.sqrt(values.size)
    mean, low, high = a
    assert low == pytest.approx(mean - half, abs=0.1 * half)
    assert high == pytest.approx(mean + half, abs=0.1 * half)


def test_bootstrap_ci_of_one_value_is_that_value():
    assert metrics.bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)
