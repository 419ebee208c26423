"""Tests for darkfield_nb.losses.

References: scipy.stats.gennorm / norm / laplace log-densities, the closed forms of the
Gaussian and Laplace special cases, the analytic optimum of the UP-GAN surrogate
(beta = 1 / argmin Gamma = 0.6842), and maximum-likelihood fits to samples of known law.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from darkfield_nb.losses import (
    adversarial_loss,
    ggd_loss,
    ggd_nll,
    uncertainty_weighted_l1,
)

BETA_MIN, BETA_MAX = 0.3, 8.0


def _random_params(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.normal(0.2, 0.3, n)
    mu = rng.normal(0.2, 0.2, n)
    alpha = rng.uniform(1e-3, 1.0, n)
    beta = rng.uniform(BETA_MIN, BETA_MAX, n)
    return y, mu, alpha, beta


def test_ggd_nll_matches_scipy_gennorm():
    """Reference: -scipy.stats.gennorm(beta, loc=mu, scale=alpha).logpdf(y), float64."""
    y, mu, alpha, beta = _random_params(5000)
    # include the exact bounds of beta
    beta[:2] = [BETA_MIN, BETA_MAX]
    ref = -stats.gennorm(beta, loc=mu, scale=alpha).logpdf(y)
    t = [torch.tensor(v) for v in (y, mu, alpha, beta)]
    got = ggd_nll(*t, reduction="none").numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-5)
    assert float(ggd_nll(*t)) == pytest.approx(ref.mean(), rel=1e-10)
    assert float(ggd_nll(*t, reduction="sum")) == pytest.approx(ref.sum(), rel=1e-10)


def test_ggd_nll_finite_gradients_at_bounds_and_zero_residual():
    """Gradients wrt mu, alpha, beta are finite for r = 0 (exactly), tiny r, and at beta bounds,
    in float32 (the training dtype) and float64."""
    for dtype in (torch.float32, torch.float64):
        r = torch.tensor([0.0, 0.0, 1e-30, 1e-8, 0.5, 0.5, 0.0, 2.0], dtype=dtype)
        beta = torch.tensor([BETA_MIN, BETA_MAX] * 4, dtype=dtype, requires_grad=True)
        alpha = torch.tensor([1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1.0, 1.0, 1e-3], dtype=dtype)
        alpha.requires_grad_(True)
        mu = torch.zeros_like(r, requires_grad=True)
        loss = ggd_nll(r, mu, alpha, beta, reduction="sum")
        loss.backward()
        assert torch.isfinite(loss)
        for g in (mu.grad, alpha.grad, beta.grad):
            assert torch.isfinite(g).all(), g


def test_gaussian_and_laplace_are_special_cases():
    """Closed forms: beta = 2, alpha = sqrt(2) sigma is N(mu, sigma^2); beta = 1 is
    Laplace(mu, alpha); both checked against scipy.stats too."""
    y, mu, alpha, _ = _random_params(1000, seed=1)
    y, mu, alpha = (torch.tensor(v) for v in (y, mu, alpha))
    sigma = alpha
    g_ggd = ggd_nll(y, mu, math.sqrt(2) * sigma, torch.full_like(y, 2.0), reduction="none")
    # Gaussian NLL with all constants: (y - mu)^2 / (2 sigma^2) + log(sigma) + log(2 pi) / 2
    g_ref = 0.5 * ((y - mu) / sigma) ** 2 + torch.log(sigma) + 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(g_ggd, g_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        g_ref.numpy(), -stats.norm(mu.numpy(), sigma.numpy()).logpdf(y.numpy()), rtol=1e-12
    )
    l_ggd = ggd_nll(y, mu, alpha, torch.ones_like(y), reduction="none")
    # Laplace NLL with all constants: |y - mu| / b + log(2 b)
    l_ref = (y - mu).abs() / alpha + torch.log(2.0 * alpha)
    torch.testing.assert_close(l_ggd, l_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        l_ref.numpy(), -stats.laplace(mu.numpy(), alpha.numpy()).logpdf(y.numpy()), rtol=1e-12
    )


def _fit_constant(residuals: np.ndarray, kind: str) -> tuple[float, float, float]:
    """Fit constant (alpha, beta), mu = 0 known, by LBFGS on the mean loss in float64.
    Returns (alpha, beta, sigma) with sigma the implied GGD standard deviation."""
    y = torch.tensor(residuals)
    zero = torch.zeros(())
    a = torch.zeros((), dtype=torch.float64, requires_grad=True)  # log alpha
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)  # logit of beta in bounds
    opt = torch.optim.LBFGS(
        [a, b],
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def params():
        return a.exp(), BETA_MIN + (BETA_MAX - BETA_MIN) * torch.sigmoid(b)

    def closure():
        opt.zero_grad()
        alpha, beta = params()
        loss = ggd_loss(y, zero, alpha, beta, kind=kind)
        loss.backward()
        return loss

    opt.step(closure)
    alpha, beta = (float(v.detach()) for v in params())
    sigma = alpha * math.sqrt(math.gamma(3 / beta) / math.gamma(1 / beta))
    return alpha, beta, sigma


@pytest.mark.parametrize(
    "law, beta_true",
    [("laplace", 1.0), ("gaussian", 2.0)],
)
def test_exact_nll_recovers_shape_surrogate_does_not(law, beta_true):
    """Reference: the generating law. 200k residuals, sigma_true = 0.05.

    Exact NLL: beta within 5 % of the truth (1 Laplace, 2 Gaussian), sigma within 5 %.
    Surrogate (UP-GAN): beta lands at 1/argmin Gamma = 0.6842 for both laws (analytic optimum),
    so its beta says nothing about the data; the teaching point of notebook 02.
    """
    rng = np.random.default_rng(42)
    sigma_true = 0.05
    if law == "laplace":
        r = rng.laplace(0.0, sigma_true / math.sqrt(2), 200_000)
    else:
        r = rng.normal(0.0, sigma_true, 200_000)
    _, beta, sigma = _fit_constant(r, "exact")
    assert beta == pytest.approx(beta_true, rel=0.05)
    assert sigma == pytest.approx(sigma_true, rel=0.05)
    _, beta_s, sigma_s = _fit_constant(r, "surrogate")
    beta_star = (
        1.0 / optimize.minimize_scalar(lambda z: math.lgamma(z), bounds=(1, 2), method="bounded").x
    )
    assert beta_star == pytest.approx(0.6842, abs=1e-3)
    assert beta_s == pytest.approx(beta_star, abs=0.01)
    # and its implied sigma is mis-scaled by more than 50 %
    assert abs(sigma_s / sigma_true - 1) > 0.5


def test_surrogate_closed_form():
    """Hand-computed: |r| = 0.5, alpha = 0.25, beta = 2: 2*2 - log 2 + log 0.25 + lgamma(0.5)."""
    got = ggd_loss(
        torch.tensor(0.5),
        torch.tensor(0.0),
        torch.tensor(0.25),
        torch.tensor(2.0),
        kind="surrogate",
    )
    want = 4.0 - math.log(2) + math.log(0.25) + math.lgamma(0.5)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_adversarial_losses():
    """LSGAN against (D - t)^2 by hand; BCE against -log sigmoid / -log(1 - sigmoid)."""
    logits = torch.tensor([[-2.0, 0.0], [0.5, 3.0]])
    assert float(adversarial_loss(logits, True)) == pytest.approx(((logits - 1) ** 2).mean().item())
    assert float(adversarial_loss(logits, False, reduction="sum")) == pytest.approx(
        (logits**2).sum().item()
    )
    s = 1 / (1 + np.exp(-logits.numpy()))
    assert float(adversarial_loss(logits, True, kind="bce")) == pytest.approx(
        float(-np.log(s).mean()), rel=1e-6
    )
    assert float(adversarial_loss(logits, False, kind="bce")) == pytest.approx(
        float(-np.log(1 - s).mean()), rel=1e-6
    )
    with pytest.raises(ValueError, match="kind"):
        adversarial_loss(logits, True, kind="wgan")


def test_uncertainty_weighted_l1_and_reductions():
    """Hand-computed: weights (1, 2, 0) times |r| (1, 0.5, 3) -> (1, 1, 0); weight is detached."""
    y = torch.tensor([1.0, 0.5, 3.0])
    mu = torch.zeros(3, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 0.0], requires_grad=True)
    loss = uncertainty_weighted_l1(y, mu, w, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([1.0, 1.0, 0.0]))
    uncertainty_weighted_l1(y, mu, w).backward()
    assert w.grad is None
    torch.testing.assert_close(mu.grad, torch.tensor([-1.0, -2.0, 0.0]) / 3)
    with pytest.raises(ValueError, match="reduction"):
        ggd_nll(y, y, y, y, reduction="avg")
