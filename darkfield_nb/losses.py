"""Losses with one calling convention.

Every loss takes tensors of a common broadcastable shape, typically (B, 1, H, W): the target y
(physical D units), the predicted mean mu and the distribution parameters, and a
``reduction``: "mean" (average over all elements, the default), "sum", or "none" (the
element-wise loss, broadcast shape).

Generalized Gaussian (GGD) with location mu, scale alpha > 0, shape beta > 0:

    p(y) = beta / (2 alpha Gamma(1/beta)) * exp(-(|y - mu| / alpha)^beta)
    NLL  = (|y - mu| / alpha)^beta - log(beta) + log(2 alpha) + lgamma(1/beta)

beta = 2 is a Gaussian with sigma = alpha / sqrt(2), beta = 1 a Laplacian with scale alpha.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ggd import ggd_nll_map, ggd_surrogate_nll_map

REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: torch.Tensor, reduction: str, name: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{name}: reduction={reduction!r} must be one of {REDUCTIONS}")


GGD_MAPS = {"exact": ggd_nll_map, "surrogate": ggd_surrogate_nll_map}


def ggd_nll(
    target: torch.Tensor,
    mu: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Exact generalized-Gaussian NLL, reduced (:func:`darkfield_nb.ggd.ggd_nll_map`):
    (|y - mu| / alpha)^beta - log(beta) + log(2 alpha) + lgamma(1/beta)."""
    return ggd_loss(target, mu, alpha, beta, reduction=reduction)


def ggd_loss(
    target: torch.Tensor,
    mu: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    *,
    kind: str = "exact",
    reduction: str = "mean",
) -> torch.Tensor:
    """A GGD NLL per pixel (``GGD_MAPS[kind]``), reduced:

    - ``kind="exact"``: :func:`darkfield_nb.ggd.ggd_nll_map`,
      (|y - mu| / alpha)^beta - log(beta) + log(2 alpha) + lgamma(1/beta);
    - ``kind="surrogate"``: the UP-GAN linearised surrogate
      (:func:`darkfield_nb.ggd.ggd_surrogate_nll_map`),
      (|y - mu| / alpha) * beta - log(beta) + log(alpha) + lgamma(1/beta); comparison only
      (its minimiser is not the true beta, ``tests/test_losses.py``)."""
    if kind not in GGD_MAPS:
        raise ValueError(f"ggd_loss: kind={kind!r} must be one of {tuple(GGD_MAPS)}")
    name = "ggd_nll" if kind == "exact" else f"ggd_loss(kind={kind!r})"
    return _reduce(GGD_MAPS[kind](target, mu, alpha, beta), reduction, name)


def adversarial_loss(
    logits: torch.Tensor, target_is_real: bool, kind: str = "lsgan", reduction: str = "mean"
) -> torch.Tensor:
    """GAN loss on discriminator logits (any shape, e.g. PatchGAN (B, 1, h, w)).

    lsgan: (D - t)^2 with t = 1 for real, 0 for fake (Mao et al. 2017).
    bce:   -[t log sigmoid(D) + (1 - t) log(1 - sigmoid(D))], computed from logits.
    For the generator step call it with ``target_is_real=True`` on the fake's logits.
    """
    t = torch.full_like(logits, 1.0 if target_is_real else 0.0)
    if kind == "lsgan":
        loss = (logits - t) ** 2
    elif kind == "bce":
        loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    else:
        raise ValueError(f"adversarial_loss: kind={kind!r} must be 'lsgan' or 'bce'")
    return _reduce(loss, reduction, "adversarial_loss")


def uncertainty_weighted_l1(
    target: torch.Tensor, mu: torch.Tensor, weight: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """L1 weighted per pixel: w * |y - mu|, with w treated as a constant (detached).

    Meant for the attention variant, with w the normalized sigma of the previous stage
    (``ProgressiveGenerator.attention_map``, mean ~1), so that the loss leans toward regions
    the previous stage found uncertain.
    """
    loss = weight.detach() * (target - mu).abs()
    return _reduce(loss, reduction, "uncertainty_weighted_l1")
