"""Tests for darkfield_nb.uncertainty.

References: scipy.stats.gennorm (std, var, cdf, ppf, fit), a Kolmogorov-Smirnov test of samples
against gennorm.cdf, and for MC dropout: the deterministic forward (rate 0), the naive
"run everything T times" strategy with the same seed (prefix sharing must not change numbers),
torch's population variance of the kept per-pass means, and forward hooks recording modes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from darkfield_nb.models import GeneratorConfig, build_generator
from darkfield_nb.uncertainty import (
    fit_ggd,
    ggd_cdf,
    ggd_interval,
    ggd_kurtosis,
    ggd_pixel_summary,
    ggd_quantile,
    ggd_sample,
    ggd_std,
    ggd_tail_probability,
    ggd_variance,
    mc_dropout_mode,
    mc_dropout_predict,
    nll_grid,
)

SMALL = dict(base_width=4, depth=2)


def _params(n: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(0.2, 0.5, n),
        rng.normal(0.2, 0.2, n),
        rng.uniform(1e-3, 1.0, n),
        np.r_[0.3, 8.0, rng.uniform(0.3, 8.0, n - 2)],
    )


def test_moments_match_gennorm():
    """std and variance equal scipy.stats.gennorm(beta, scale=alpha).std() / .var()."""
    _, _, alpha, beta = _params()
    ref = stats.gennorm(beta, scale=alpha)
    np.testing.assert_allclose(ggd_std(alpha, beta), ref.std(), rtol=1e-10)
    np.testing.assert_allclose(ggd_variance(alpha, beta), ref.var(), rtol=1e-10)
    t = ggd_std(torch.tensor(alpha), torch.tensor(beta))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), ref.std(), rtol=1e-10)
    assert ggd_std(np.sqrt(2.0), 2.0) == pytest.approx(1.0)  # Gaussian: alpha / sqrt(2)


def test_kurtosis_tails_and_pixel_summary_match_gennorm():
    """Excess kurtosis equals gennorm.stats(moments="k"); P(|r| > k sigma) equals 2 gennorm.sf;
    the summary's alpha reproduces sigma and its 95 % half-width is gennorm.ppf(0.975)."""
    betas = np.array([0.3, 0.5, 1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(
        ggd_kurtosis(betas), stats.gennorm.stats(betas, moments="k"), rtol=1e-8, atol=1e-12
    )
    ref = stats.gennorm(betas)
    for k in (1.0, 2.0, 3.0):
        np.testing.assert_allclose(
            ggd_tail_probability(k, betas), 2 * ref.sf(k * ref.std()), rtol=1e-8, atol=1e-300
        )
    rows = ggd_pixel_summary(0.05, betas)
    for row in rows:
        dist = stats.gennorm(row["beta"], scale=row["alpha"])
        assert dist.std() == pytest.approx(0.05, rel=1e-10)
        assert row["halfwidth_95"] == pytest.approx(dist.ppf(0.975), rel=1e-8)


def test_cdf_and_quantile_match_gennorm():
    """cdf equals gennorm.cdf, quantile equals gennorm.ppf, and cdf(quantile(p)) = p."""
    y, mu, alpha, beta = _params()
    ref = stats.gennorm(beta, loc=mu, scale=alpha)
    got = ggd_cdf(*(torch.tensor(v) for v in (y, mu, alpha, beta))).numpy()
    np.testing.assert_allclose(got, ref.cdf(y), rtol=1e-9, atol=1e-12)
    p = np.random.default_rng(1).uniform(0.001, 0.999, len(y))
    q = ggd_quantile(p, mu, alpha, beta)
    np.testing.assert_allclose(q, ref.ppf(p), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(ggd_cdf(q, mu, alpha, beta), p, rtol=1e-7, atol=1e-10)
    lo, hi = ggd_interval(0.9, torch.zeros(3), torch.ones(3), torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(
        ggd_cdf(hi, 0.0, 1.0, torch.tensor([0.5, 1, 2])) - 0.5, torch.full((3,), 0.45)
    )
    assert (lo == -hi).all()


@pytest.mark.parametrize("beta", [0.5, 2.0, 6.0])
def test_samples_follow_gennorm(beta):
    """50k samples: KS test against gennorm.cdf does not reject; mean and std match."""
    s = ggd_sample(torch.tensor(0.1, dtype=torch.float64), 0.3, beta, n=50_000, seed=3).numpy()
    ref = stats.gennorm(beta, loc=0.1, scale=0.3)
    assert stats.kstest(s, ref.cdf).pvalue > 1e-3
    assert s.mean() == pytest.approx(0.1, abs=4 * ref.std() / np.sqrt(len(s)))
    assert s.std() == pytest.approx(ref.std(), rel=0.03)
    again = ggd_sample(torch.tensor(0.1, dtype=torch.float64), 0.3, beta, n=50_000, seed=3)
    assert np.array_equal(s, again.numpy())


def test_fit_ggd_matches_scipy_fit():
    """Maximum likelihood with loc fixed at 0 agrees with scipy.stats.gennorm.fit(floc=0)."""
    r = stats.gennorm(1.5, scale=0.2).rvs(20_000, random_state=np.random.default_rng(7))
    b_ref, _, a_ref = stats.gennorm.fit(r, floc=0)
    fit = fit_ggd(r)
    assert fit.beta == pytest.approx(b_ref, rel=1e-3)
    assert fit.alpha == pytest.approx(a_ref, rel=1e-3)
    grid = nll_grid(r, [fit.alpha * 0.8, fit.alpha, fit.alpha * 1.2], [fit.beta])
    assert grid.shape == (1, 3) and grid[0, 1] < grid[0, 0] and grid[0, 1] < grid[0, 2]
    assert grid[0, 1] == pytest.approx(fit.loss, rel=1e-6)


# ----------------------------------------------------------------------------- MC dropout
def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    return devs


@pytest.mark.parametrize("device", _devices())
def test_mc_dropout_rate_zero_is_deterministic(device):
    """Reference: the deterministic forward in eval mode. Epistemic exactly 0, mean equal."""
    torch.manual_seed(0)
    g = build_generator(GeneratorConfig(dropout=0.0, **SMALL)).to(device)
    x = torch.randn(2, 1, 37, 53, device=device)
    res = mc_dropout_predict(g, x, samples=5)
    with torch.no_grad():
        det = g.eval()(x)[-1]
    assert torch.equal(res.epistemic, torch.zeros_like(res.epistemic))
    assert torch.equal(res.mean, det.mu)
    torch.testing.assert_close(res.aleatoric, ggd_std(det.alpha, det.beta))
    torch.testing.assert_close(res.total, res.aleatoric)


def _as_if_trained(g):
    """Residual stages start with a zero mean head (their dropout cannot move mu yet); give
    the heads random weights, as training would, so dropout shows in the mean."""
    for stage in g.stages:
        torch.nn.init.normal_(stage.head_mu.weight, std=0.1)
    return g


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("where", ["last", "all"])
def test_mc_dropout_positive_and_decomposition(device, where):
    """Rate > 0: epistemic > 0 at every pixel (odd size 37 x 53), equals the population std of
    the kept per-pass means, and total^2 = aleatoric^2 + epistemic^2."""
    torch.manual_seed(0)
    g = _as_if_trained(build_generator(GeneratorConfig(dropout=0.2, dropout_stages=where, **SMALL)))
    g = g.to(device)
    x = torch.randn(2, 1, 37, 53, device=device)
    res = mc_dropout_predict(g, x, samples=8, seed=0, keep_samples=True)
    assert res.mean.shape == res.epistemic.shape == res.total.shape == x.shape
    assert res.samples.shape == (8, *x.shape)
    assert (res.epistemic > 0).all()
    ref = res.samples.double().std(0, unbiased=False).float()
    torch.testing.assert_close(res.epistemic, ref, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(res.mean, res.samples.double().mean(0).float())
    torch.testing.assert_close(res.total**2, res.aleatoric**2 + res.epistemic**2)
    # stage 0 has no dropout when it sits only in the last stage
    res0 = mc_dropout_predict(g, x, samples=4, stage=0)
    assert (res0.epistemic == 0).all() == (where == "last")


@pytest.mark.parametrize("where", ["last", "all", [1]])
@pytest.mark.parametrize("conditioning", ["concat", "attention"])
def test_prefix_sharing_gives_identical_numbers(where, conditioning):
    """Reference: strategy "repeat" (the whole network on T stacked copies) with the same seed:
    the shared prefix draws no random numbers, so the masks and results are identical; also
    with chunking. Reruns with the seed are bitwise reproducible and leave the global RNG alone."""
    torch.manual_seed(1)
    cfg = GeneratorConfig(dropout=0.3, dropout_stages=where, conditioning=conditioning, **SMALL)
    g = _as_if_trained(build_generator(cfg))
    x = torch.randn(2, 1, 21, 18)
    state = torch.get_rng_state()
    for chunk in (None, 3):
        a = mc_dropout_predict(g, x, samples=7, seed=11, chunk=chunk)
        b = mc_dropout_predict(g, x, samples=7, seed=11, chunk=chunk, strategy="repeat")
        for name in ("mean", "aleatoric", "epistemic", "total", "alpha", "beta"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
        again = mc_dropout_predict(g, x, samples=7, seed=11, chunk=chunk)
        assert torch.equal(a.epistemic, again.epistemic)
    assert torch.equal(state, torch.get_rng_state())
    other = mc_dropout_predict(g, x, samples=7, seed=12)
    assert not torch.equal(other.epistemic, a.epistemic)


def test_prefix_runs_once():
    """With dropout only in the last stage, stages 0 and 1 and stage 2's encoder run once on
    batch B; stage 2's decoder runs on T * B."""
    g = build_generator(GeneratorConfig(**SMALL))
    calls: dict[str, list[int]] = {"s0": [], "s1": [], "enc2": [], "dec2": []}
    g.stages[0].register_forward_hook(lambda m, i, o: calls["s0"].append(i[0].shape[0]))
    g.stages[1].register_forward_hook(lambda m, i, o: calls["s1"].append(i[0].shape[0]))
    g.stages[2].down[0].register_forward_hook(lambda m, i, o: calls["enc2"].append(i[0].shape[0]))
    g.stages[2].head_mu.register_forward_hook(lambda m, i, o: calls["dec2"].append(i[0].shape[0]))
    mc_dropout_predict(g, torch.randn(3, 1, 16, 16), samples=20)
    assert calls == {"s0": [3], "s1": [3], "enc2": [3], "dec2": [60]}


def test_batched_matches_loop_statistically():
    """Reference: the naive loop of T separate passes. Different masks, same distribution: the
    image-averaged epistemic std agrees within 15 % and the image-averaged means agree within
    4 standard errors of the Monte Carlo estimate."""
    torch.manual_seed(2)
    g = build_generator(GeneratorConfig(n_stages=1, dropout=0.3, **SMALL))
    x = torch.randn(1, 1, 16, 16)
    a = mc_dropout_predict(g, x, samples=120, seed=0, keep_samples=True)
    b = mc_dropout_predict(g, x, samples=120, seed=1, strategy="loop", keep_samples=True)
    assert a.epistemic.mean().item() == pytest.approx(b.epistemic.mean().item(), rel=0.15)
    # two-sample z statistic of the image-averaged prediction, per-pass values as the sample
    ma, mb = a.samples.mean(dim=(1, 2, 3, 4)), b.samples.mean(dim=(1, 2, 3, 4))
    z = (ma.mean() - mb.mean()) / torch.sqrt(ma.var() / len(ma) + mb.var() / len(mb))
    assert abs(z.item()) < 4


def test_only_dropout_in_train_mode_and_modes_restored():
    """Forward hooks record modes during MC: BatchNorm in eval (running stats untouched),
    dropout in train; afterwards every module has its previous mode again."""
    g = build_generator(GeneratorConfig(norm="batch", dropout_stages="all", **SMALL))
    g.trainable_stage(2)
    g.train()
    before = {name: m.training for name, m in g.named_modules()}
    stats_before = [b.clone() for b in g.buffers()]
    seen = {"norm": set(), "drop": set()}
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, i, o: seen["norm"].add(mod.training))
        if isinstance(m, nn.Dropout2d):
            m.register_forward_hook(lambda mod, i, o: seen["drop"].add(mod.training))
    res = mc_dropout_predict(g, torch.randn(2, 1, 16, 16), samples=4)
    assert seen == {"norm": {False}, "drop": {True}}
    assert (res.epistemic > 0).any()
    assert {name: m.training for name, m in g.named_modules()} == before
    assert all(torch.equal(a, b) for a, b in zip(stats_before, g.buffers(), strict=True))
    with mc_dropout_mode(g):
        assert not g.stages[2].training and g.stages[2].drop[0].training
    assert g.stages[2].training and not g.stages[0].training
