"""Generalized-Gaussian moments and Monte Carlo dropout.

GGD(mu, alpha, beta): density beta / (2 alpha Gamma(1/beta)) exp(-(|y - mu| / alpha)^beta).

* variance  alpha^2 Gamma(3/beta) / Gamma(1/beta)
* CDF       F(y) = 1/2 + sign(r)/2 * P(1/beta, (|r| / alpha)^beta),  r = y - mu,
            P the regularized lower incomplete gamma function
* quantile  y_p = mu + sign(p - 1/2) alpha [P^-1(1/beta, |2p - 1|)]^(1/beta)
* sampling  |r| / alpha = G^(1/beta), G ~ Gamma(1/beta, 1), with a random sign

Epistemic uncertainty by Monte Carlo dropout (Gal & Ghahramani 2016): T stochastic passes with
only the dropout layers active give means mu_t and GGD parameters (alpha_t, beta_t); then

    mean           = (1/T) sum_t mu_t
    aleatoric^2    = (1/T) sum_t Var_GGD(alpha_t, beta_t)
    epistemic^2    = (1/T) sum_t (mu_t - mean)^2          (population variance of the T means)
    total^2        = aleatoric^2 + epistemic^2
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import special
from torch import nn

from .losses import ggd_loss
from .models import ProgressiveGenerator, StageOutput

Array = Any  # torch.Tensor | np.ndarray | float


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

    ``kind`` "exact" is maximum likelihood (:func:`darkfield_nb.losses.ggd_nll`); "surrogate"
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
        loss = ggd_loss(y, mu_t, *params(), kind=kind)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        alpha, beta = params()
        loss = float(ggd_loss(y, mu_t, alpha, beta, kind=kind))
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
        loss = ggd_loss(
            y[:, None],
            torch.tensor(mu, dtype=torch.float64),
            a[None, :],
            bi.expand(len(a))[None, :],
            kind=kind,
            reduction="none",
        )
        out[i] = loss.mean(0).numpy()
    return out


# ----------------------------------------------------------------------------- MC dropout
@dataclass
class MCDropoutResult:
    """Monte Carlo dropout summary; every map has x's shape (B, 1, H, W).

    mean: average predicted dark-field; aleatoric, epistemic, total: standard deviations
    (total^2 = aleatoric^2 + epistemic^2); alpha, beta: averages of the GGD parameters over the
    passes; samples: the T per-pass means (T, B, 1, H, W) when asked for (``keep_samples``).
    """

    mean: torch.Tensor
    aleatoric: torch.Tensor
    epistemic: torch.Tensor
    total: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    n_samples: int
    samples: torch.Tensor | None = None


def _is_dropout(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.dropout._DropoutNd)


@contextlib.contextmanager
def mc_dropout_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every module is in eval mode except dropout layers (train mode, so
    they sample masks); normalization layers use their running/eval behaviour. Every module's
    mode is restored on exit."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for m in model.modules():
            if _is_dropout(m):
                m.train()
        yield model
    finally:
        for m, mode in saved:
            m.training = mode


class _Accumulator:
    """Chan et al.'s parallel mean/variance over chunks of passes, in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = self.m2 = self.ale = self.alpha = self.beta = None
        self.samples: list[torch.Tensor] = []

    def add(self, out: StageOutput, c: int, keep: bool) -> None:
        b = out.mu.shape[0] // c
        mu = out.mu.reshape(c, b, *out.mu.shape[1:]).double()
        var = ggd_variance(out.alpha.double(), out.beta.double()).reshape(mu.shape)
        alpha = out.alpha.reshape(mu.shape).double()
        beta = out.beta.reshape(mu.shape).double()
        c_mean = mu.mean(0)
        c_m2 = ((mu - c_mean) ** 2).sum(0)
        if keep:
            self.samples.append(out.mu.reshape(mu.shape))
        if self.n == 0:
            self.n, self.mean, self.m2 = c, c_mean, c_m2
            self.ale, self.alpha, self.beta = var.sum(0), alpha.sum(0), beta.sum(0)
            return
        n = self.n + c
        delta = c_mean - self.mean
        self.mean = self.mean + delta * (c / n)
        self.m2 = self.m2 + c_m2 + delta**2 * (self.n * c / n)
        self.ale, self.alpha, self.beta = (
            self.ale + var.sum(0),
            self.alpha + alpha.sum(0),
            self.beta + beta.sum(0),
        )
        self.n = n

    def result(self, dtype: torch.dtype) -> MCDropoutResult:
        ale = self.ale / self.n
        epi = self.m2 / self.n
        samples = torch.cat(self.samples, 0) if self.samples else None
        return MCDropoutResult(
            mean=self.mean.to(dtype),
            aleatoric=ale.sqrt().to(dtype),
            epistemic=epi.sqrt().to(dtype),
            total=(ale + epi).sqrt().to(dtype),
            alpha=(self.alpha / self.n).to(dtype),
            beta=(self.beta / self.n).to(dtype),
            n_samples=self.n,
            samples=samples,
        )


STRATEGIES = ("batched", "repeat", "loop")
# Pixels per batched call when ``chunk`` is automatic. On a CPU, small chunks win (measured at
# 256 x 256: 4 passes per call cost 3.7x a forward pass for T = 20, 20 per call 6.9x, from memory
# traffic); a GPU wants large batches.
PIXEL_BUDGET = {"cpu": 2**18, "cuda": 2**22}
PIXEL_BUDGET_OTHER = 2**20


def mc_dropout_predict(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 20,
    seed: int | None = None,
    stage: int = -1,
    chunk: int | None = None,
    strategy: str = "batched",
    keep_samples: bool = False,
) -> MCDropoutResult:
    """Monte Carlo dropout prediction of stage ``stage`` (0-based, -1 the last) for x (B, C, H, W).

    Only dropout modules are switched to training mode (:func:`mc_dropout_mode`); every mode is
    restored afterwards. Strategies (all give the same distribution; "batched" and "repeat"
    give identical numbers for the same seed and chunk):

    * "batched" (default): the deterministic prefix (stages before the first stage with dropout,
      and that stage's encoder) runs once; the rest runs on ``chunk`` copies stacked along the
      batch. Needs a :class:`~darkfield_nb.models.ProgressiveGenerator`.
    * "repeat": the whole network on the stacked copies (no prefix sharing).
    * "loop": ``samples`` separate forward passes (the naive reference).

    ``chunk``: passes per batched call; None picks the largest with at most
    ``PIXEL_BUDGET[device type]`` pixels per call (4 passes at 256 x 256 on a CPU, 64 on CUDA).
    ``seed``: reproducible masks without touching the global RNG state.
    Without any active dropout the model runs once and the epistemic map is exactly zero.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"mc_dropout_predict: strategy={strategy!r} must be one of {STRATEGIES}")
    if samples < 1:
        raise ValueError(f"mc_dropout_predict: samples={samples} must be >= 1")
    if x.ndim != 4:
        raise ValueError(f"mc_dropout_predict: x of shape {tuple(x.shape)}; expected (B, C, H, W)")
    n_total = getattr(getattr(model, "config", None), "n_stages", None)
    if n_total is None and strategy == "batched":
        raise ValueError("mc_dropout_predict: strategy='batched' needs a ProgressiveGenerator")
    if n_total is not None:
        if not -n_total <= stage < n_total:
            raise ValueError(f"mc_dropout_predict: stage={stage} out of range for {n_total} stages")
        stage %= n_total
        n_run = stage + 1
    else:
        n_run = None
    b, _, h, w = x.shape
    if chunk is None:
        budget = PIXEL_BUDGET.get(x.device.type, PIXEL_BUDGET_OTHER)
        chunk = max(1, min(samples, budget // max(1, b * h * w)))
    chunk = max(1, min(int(chunk), samples))

    def forward(inp: torch.Tensor) -> StageOutput:
        outs = model(inp, n_stages=n_run) if n_run is not None else model(inp)
        return outs[stage]

    active = any(_is_dropout(m) and m.p > 0 for m in model.modules())
    if isinstance(model, ProgressiveGenerator):
        active = model.first_dropout_stage(stage) is not None

    acc = _Accumulator()
    devices = [x.device] if x.device.type == "cuda" else []
    with (
        mc_dropout_mode(model),
        torch.no_grad(),
        torch.random.fork_rng(devices=devices, enabled=seed is not None),
    ):
        if seed is not None:
            torch.manual_seed(seed)
        if not active:
            out = forward(x)
            acc.add(out, 1, keep_samples)
            res = acc.result(x.dtype)
            res.n_samples = samples
            if keep_samples:
                res.samples = res.samples.expand(samples, *res.samples.shape[1:])
            return res
        if strategy == "loop":
            for _ in range(samples):
                acc.add(forward(x), 1, keep_samples)
        else:
            prefix = model.mc_prefix(x, stage) if strategy == "batched" else None
            done = 0
            while done < samples:
                c = min(chunk, samples - done)
                if prefix is not None:
                    out = model.mc_suffix(prefix, c, stage)
                else:
                    out = forward(x.repeat(c, 1, 1, 1))
                acc.add(out, c, keep_samples)
                done += c
    return acc.result(x.dtype)


def epistemic_share(result: MCDropoutResult) -> torch.Tensor:
    """Fraction of the predictive variance that is epistemic: epistemic^2 / total^2 (0..1)."""
    return (
        result.epistemic**2
        / result.total.clamp_min(math.sqrt(torch.finfo(result.total.dtype).tiny)) ** 2
    )
