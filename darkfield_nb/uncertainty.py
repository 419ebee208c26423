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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .ggd import (
    GGDFit,
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
    nll_grid,
)
from .models import ProgressiveGenerator, StageOutput

Array = Any  # torch.Tensor | np.ndarray | float

# The GGD functions live in darkfield_nb.ggd; DESIGN section 9 names them here too.
__all__ = [
    "GGDFit",
    "MCDropoutResult",
    "MCMaps",
    "fit_ggd",
    "ggd_cdf",
    "ggd_interval",
    "ggd_kurtosis",
    "ggd_pixel_summary",
    "ggd_quantile",
    "ggd_sample",
    "ggd_std",
    "ggd_tail_probability",
    "ggd_variance",
    "mc_dropout_mode",
    "mc_dropout_predict",
    "nll_grid",
]


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

    def image_maps(self, index: int = 0) -> dict[str, np.ndarray]:
        """The maps of image ``index`` as (H, W) float32 NumPy arrays, keyed ``mu`` (the mean),
        ``aleatoric``, ``epistemic``, ``total``, ``alpha`` and ``beta``."""
        maps = {
            "mu": self.mean,
            "aleatoric": self.aleatoric,
            "epistemic": self.epistemic,
            "total": self.total,
            "alpha": self.alpha,
            "beta": self.beta,
        }
        return {k: t[index, 0].float().cpu().numpy() for k, t in maps.items()}


@dataclass
class MCMaps:
    """NumPy maps that MC dropout predicts for one image (H, W) or a stack (N, H, W), as
    :meth:`MCDropoutResult.image_maps` gives them: ``mu`` the mean, ``aleatoric`` /
    ``epistemic`` / ``total`` standard deviations (total^2 = aleatoric^2 + epistemic^2) and
    ``beta`` the mean GGD shape over the passes. The base of the records that keep such maps
    beside their input and target (``calibration.Predictions``, ``severity.SweepCase``)."""

    mu: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    total: np.ndarray
    beta: np.ndarray


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
