"""Generalized-Gaussian (GGD) math: the bottom of the stack, imported by models, losses,
uncertainty, calibration and viz.

GGD(mu, alpha, beta), location mu, scale alpha > 0, shape beta > 0:

* density   p(y) = beta / (2 alpha Gamma(1/beta)) exp(-(|y - mu| / alpha)^beta)
* NLL       (|y - mu| / alpha)^beta - log(beta) + log(2 alpha) + lgamma(1/beta)
* variance  alpha^2 Gamma(3/beta) / Gamma(1/beta)   (beta = 2: Gaussian, sigma = alpha/sqrt 2;
            beta = 1: Laplacian with scale alpha; beta < 1: heavier tails)
* CDF       F(y) = 1/2 + sign(r)/2 * P(1/beta, (|r| / alpha)^beta),  r = y - mu,
            P the regularized lower incomplete gamma function
* quantile  y_p = mu + sign(p - 1/2) alpha [P^-1(1/beta, |2p - 1|)]^(1/beta)
* sampling  |r| / alpha = G^(1/beta), G ~ Gamma(1/beta, 1), with a random sign

Functions accept torch tensors, NumPy arrays or floats and return a tensor when any argument
is a tensor, else a NumPy array (a float for scalars). The reference is
``scipy.stats.gennorm(beta, loc=mu, scale=alpha)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import special

Array = Any  # torch.Tensor | np.ndarray | float


# ----------------------------------------------------------------------------- elementwise NLL
def _log_abs_residual(target: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """log|y - mu| with |y - mu| floored at the dtype's smallest normal number, so that the
    log is finite and so are the gradients at r = 0."""
    r = (target - mu).abs()
    return torch.log(r.clamp_min(torch.finfo(r.dtype).tiny))


def ggd_nll_map(
    target: torch.Tensor, mu: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """Exact GGD negative log-likelihood per element.

    NLL = (|y - mu| / alpha)^beta - log(beta) + log(2 alpha) + lgamma(1/beta),
    with the power computed in log space, exp(beta * (log|y - mu| - log alpha)), and |y - mu|
    floored at ``torch.finfo(dtype).tiny``. Equals ``-scipy.stats.gennorm(beta, loc=mu,
    scale=alpha).logpdf(y)``.
    """
    log_alpha = torch.log(alpha)
    power = torch.exp(beta * (_log_abs_residual(target, mu) - log_alpha))
    return power - torch.log(beta) + math.log(2.0) + log_alpha + torch.lgamma(1.0 / beta)


def ggd_surrogate_nll_map(
    target: torch.Tensor, mu: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """The linearised "GGD loss" of the UP-GAN reference code per element (comparison only).

    L = (|y - mu| / alpha) * beta - log(beta) + log(alpha) + lgamma(1/beta)

    (a product where the likelihood has a power, and no log 2). Minimizing over alpha gives
    alpha = beta E|r| and L = 1 + log E|r| + lgamma(1/beta), which is minimal where Gamma is,
    at 1/beta = 1.4616..., i.e. beta = 0.6842 whatever the data: its beta carries no
    information about the residual distribution, and the implied sigma is mis-scaled.
    """
    nll = (target - mu).abs() / alpha * beta - torch.log(beta) + torch.log(alpha)
    return nll + torch.lgamma(1.0 / beta)


GGD_KINDS = {"exact": ggd_nll_map, "surrogate": ggd_surrogate_nll_map}


def ggd_loss_map(
    target: torch.Tensor,
    mu: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    kind: str = "exact",
) -> torch.Tensor:
    """:func:`ggd_nll_map` (``kind="exact"``) or :func:`ggd_surrogate_nll_map` ("surrogate")."""
    if kind not in GGD_KINDS:
        raise ValueError(f"ggd_loss: kind={kind!r} must be 'exact' or 'surrogate'")
    return GGD_KINDS[kind](target, mu, alpha, beta)


# ----------------------------------------------------------------------------- GGD moments
def _t(v: Array, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if like is not None:
        return torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return torch.as_tensor(np.asarray(v, dtype=np.float64))


def _first_tensor(*args: Array) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def _back(out: torch.Tensor, *args: Array) -> Array:
    """Return a tensor if any input was one, else a numpy array (or float for scalars)."""
    if _first_tensor(*args) is not None:
        return out
    arr = out.numpy()
    return float(arr) if arr.ndim == 0 else arr


def ggd_variance(alpha: Array, beta: Array) -> Array:
    """Var = alpha^2 Gamma(3/beta) / Gamma(1/beta), via exp(lgamma(3/beta) - lgamma(1/beta))."""
    like = _first_tensor(alpha, beta)
    a, b = _t(alpha, like), _t(beta, like)
    return _back(a**2 * torch.exp(torch.lgamma(3.0 / b) - torch.lgamma(1.0 / b)), alpha, beta)


def ggd_std(alpha: Array, beta: Array) -> Array:
    """sigma = alpha sqrt(Gamma(3/beta) / Gamma(1/beta)); beta = 2 gives alpha / sqrt(2)."""
    like = _first_tensor(alpha, beta)
    a, b = _t(alpha, like), _t(beta, like)
    return _back(a * torch.exp(0.5 * (torch.lgamma(3.0 / b) - torch.lgamma(1.0 / b))), alpha, beta)


def ggd_kurtosis(beta: Array) -> Array:
    """Excess kurtosis Gamma(5/beta) Gamma(1/beta) / Gamma(3/beta)^2 - 3 (0 for beta = 2, 3 for
    beta = 1; heavier tails as beta falls below 1)."""
    b = _t(beta, _first_tensor(beta))
    out = torch.exp(torch.lgamma(5 / b) + torch.lgamma(1 / b) - 2 * torch.lgamma(3 / b)) - 3
    return _back(out, beta)


def ggd_tail_probability(k: Array, beta: Array) -> Array:
    """P(|y - mu| > k sigma) = 1 - P(1/beta, (k sigma / alpha)^beta), with
    sigma / alpha = sqrt(Gamma(3/beta) / Gamma(1/beta)): independent of alpha."""
    like = _first_tensor(k, beta)
    k_, b = _t(k, like), _t(beta, like)
    ratio = torch.exp(0.5 * (torch.lgamma(3 / b) - torch.lgamma(1 / b)))
    out = torch.special.gammaincc(1 / b, (k_ * ratio) ** b)
    return _back(out, k, beta)


def ggd_pixel_summary(sigma: float, betas: Array, p: float = 0.95) -> list[dict[str, float]]:
    """What (alpha, beta) mean for one pixel with standard deviation ``sigma``, per beta:
    the scale alpha giving that sigma, the excess kurtosis, the tail probabilities
    P(|r| > 2 sigma) and P(|r| > 3 sigma), and the half-width of the central p-interval."""
    rows = []
    for beta in np.atleast_1d(np.asarray(betas, dtype=float)):
        alpha = sigma / float(ggd_std(1.0, beta))
        rows.append(
            {
                "beta": float(beta),
                "alpha": alpha,
                "sigma": sigma,
                "excess_kurtosis": float(ggd_kurtosis(beta)),
                "p_beyond_2sigma": float(ggd_tail_probability(2.0, beta)),
                "p_beyond_3sigma": float(ggd_tail_probability(3.0, beta)),
                f"halfwidth_{round(100 * p)}": float(ggd_quantile((1 + p) / 2, 0.0, alpha, beta)),
            }
        )
    return rows


def ggd_cdf(y: Array, mu: Array, alpha: Array, beta: Array) -> Array:
    """F(y) = 1/2 + sign(y - mu)/2 * P(1/beta, (|y - mu| / alpha)^beta)."""
    like = _first_tensor(y, mu, alpha, beta)
    y_, m, a, b = (_t(v, like) for v in (y, mu, alpha, beta))
    r = y_ - m
    z = torch.exp(b * (torch.log(r.abs().clamp_min(torch.finfo(r.dtype).tiny)) - torch.log(a)))
    out = 0.5 + 0.5 * torch.sign(r) * torch.special.gammainc(1.0 / b, z)
    return _back(out, y, mu, alpha, beta)


def ggd_quantile(p: Array, mu: Array, alpha: Array, beta: Array) -> Array:
    """y_p = mu + sign(p - 1/2) alpha [P^-1(1/beta, |2p - 1|)]^(1/beta).

    Uses ``scipy.special.gammaincinv`` (torch lacks it): tensors go through NumPy on the CPU and
    come back with the dtype and device of the first tensor argument.
    """
    like = _first_tensor(p, mu, alpha, beta)
    arrs = [
        v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, float)
        for v in (p, mu, alpha, beta)
    ]
    p_, m, a, b = np.broadcast_arrays(*arrs)
    if np.any((p_ < 0) | (p_ > 1)):
        raise ValueError("ggd_quantile: probabilities p must lie in [0, 1]")
    g = special.gammaincinv(1.0 / b, np.abs(2.0 * p_ - 1.0))
    out = m + np.sign(p_ - 0.5) * a * g ** (1.0 / b)
    if like is not None:
        return torch.as_tensor(out, dtype=like.dtype, device=like.device)
    return float(out) if out.ndim == 0 else out


def ggd_interval(p: float, mu: Array, alpha: Array, beta: Array) -> tuple[Array, Array]:
    """Central p-interval (lower, upper) = (quantile((1 - p)/2), quantile((1 + p)/2))."""
    if not 0 < p < 1:
        raise ValueError(f"ggd_interval: p={p} must be in (0, 1)")
    return (ggd_quantile((1 - p) / 2, mu, alpha, beta), ggd_quantile((1 + p) / 2, mu, alpha, beta))


def ggd_sample(
    mu: Array,
    alpha: Array,
    beta: Array,
    n: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Draw samples: mu + s alpha G^(1/beta), G ~ Gamma(1/beta, 1), s = +-1 with equal odds.

    Shape: the broadcast shape of the parameters, with a leading ``n`` if given.
    ``seed`` makes the draw reproducible without touching the global RNG state.
    """
    like = _first_tensor(mu, alpha, beta)
    m, a, b = (_t(v, like) for v in (mu, alpha, beta))
    m, a, b = torch.broadcast_tensors(m, a, b)
    if n is not None:
        m, a, b = (v.expand(n, *v.shape) for v in (m, a, b))
    devices = [m.device] if m.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        g = torch.distributions.Gamma(1.0 / b, torch.ones_like(b)).sample()
        sign = torch.where(torch.rand_like(m) < 0.5, -1.0, 1.0).to(m.dtype)
    return m + sign * a * g ** (1.0 / b)


# ----------------------------------------------------------------------------- GGD fits
@dataclass
class GGDFit:
    """Constant GGD fitted to residuals: scale alpha, shape beta, implied std sigma, mean loss."""

    alpha: float
    beta: float
    sigma: float
    loss: float


def fit_ggd(
    residuals: Array,
    kind: str = "exact",
    mu: float = 0.0,
    beta_bounds: tuple[float, float] = (0.3, 8.0),
) -> GGDFit:
    """Fit one (alpha, beta) to residuals by minimizing the mean loss (LBFGS, float64).

    ``kind`` "exact" is maximum likelihood (:func:`ggd_nll_map`); "surrogate"
    minimizes the UP-GAN linearised loss, whose optimum is beta = 0.6842 for any data.
    Parameterization: alpha = exp(a), beta = lo + (hi - lo) sigmoid(b); mu is held fixed.
    """
    y = torch.as_tensor(np.asarray(residuals, dtype=np.float64).ravel())
    if y.numel() < 2 or not torch.isfinite(y).all():
        raise ValueError("fit_ggd: residuals must hold at least 2 finite values")
    lo, hi = beta_bounds
    scale = float((y - mu).abs().mean().clamp_min(1e-12))
    a = torch.tensor(math.log(scale), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    mu_t = torch.tensor(mu, dtype=torch.float64)
    opt = torch.optim.LBFGS(
        [a, b],
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def params() -> tuple[torch.Tensor, torch.Tensor]:
        return a.exp(), lo + (hi - lo) * torch.sigmoid(b)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ggd_loss_map(y, mu_t, *params(), kind=kind).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        alpha, beta = params()
        loss = float(ggd_loss_map(y, mu_t, alpha, beta, kind=kind).mean())
    return GGDFit(float(alpha), float(beta), float(ggd_std(alpha, beta)), loss)


def nll_grid(
    residuals: Array, alphas: Array, betas: Array, kind: str = "exact", mu: float = 0.0
) -> np.ndarray:
    """Mean loss of constant (alpha, beta) over the residuals on a grid.

    Returns shape (len(betas), len(alphas)).
    """
    y = torch.as_tensor(np.asarray(residuals, dtype=np.float64).ravel())
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float64))
    b = torch.as_tensor(np.asarray(betas, dtype=np.float64))
    out = np.empty((len(b), len(a)))
    for i, bi in enumerate(b):
        loss = ggd_loss_map(
            y[:, None],
            torch.tensor(mu, dtype=torch.float64),
            a[None, :],
            bi.expand(len(a))[None, :],
            kind=kind,
        )
        out[i] = loss.mean(0).numpy()
    return out
