"""Input handling shared by the calibration functions: any array-likes (NumPy, torch, floats)
of one shape, an optional boolean mask, flattened to float64 pixel vectors; the keyword
arguments that name a predictive distribution (:class:`PredictiveKw`) and their one check."""

from __future__ import annotations

from typing import Any

import numpy as np
from typing_extensions import TypedDict

ArrayLike = Any  # np.ndarray | torch.Tensor | float


class DistributionKw(TypedDict, total=False):
    """Each pixel's predictive distribution, by keyword; arrays of the target's shape (or
    broadcastable to it), NumPy or torch. Give either

    * ``sigma``: the standard deviation of a Gaussian N(mu, sigma^2), or
    * ``alpha`` and ``beta``: the scale (> 0) and shape (> 0) of a generalized Gaussian
      GGD(mu, alpha, beta) (:mod:`darkfield_nb.ggd`),

    never both. A key given as None counts as not given."""

    sigma: ArrayLike | None
    alpha: ArrayLike | None
    beta: ArrayLike | None


class PredictiveKw(DistributionKw, total=False):
    """:class:`DistributionKw` (``sigma``, or ``alpha`` and ``beta``) plus ``mask``: an optional
    boolean array of the target's shape selecting the pixels to use (None: every pixel)."""

    mask: ArrayLike | None


def check_distribution(
    name: str, given: dict[str, Any], keys: type = PredictiveKw
) -> dict[str, ArrayLike]:
    """Check the keyword arguments ``given`` to function ``name`` against the TypedDict
    ``keys`` and return the distribution they name: ``{"sigma": s}`` (Gaussian) or
    ``{"alpha": a, "beta": b}`` (GGD), in that order.

    Raises TypeError naming the function, the unknown keys and the allowed ones (as Python does
    for a misspelled keyword), and ValueError unless exactly one of the two kinds is given."""
    allowed = tuple(keys.__annotations__)
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise TypeError(
            f"{name}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}"
        )
    sigma, alpha, beta = (given.get(k) for k in ("sigma", "alpha", "beta"))
    if sigma is not None and alpha is None and beta is None:
        return {"sigma": sigma}
    if sigma is None and alpha is not None and beta is not None:
        return {"alpha": alpha, "beta": beta}
    raise ValueError(f"{name}: give either sigma (Gaussian) or alpha and beta (GGD)")


def as_numpy(a: ArrayLike) -> np.ndarray:
    """A float64 NumPy copy of ``a`` (torch tensors are detached and moved to the CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def pixels(
    *arrays: ArrayLike, mask: ArrayLike | None = None, name: str = "calibration"
) -> list[np.ndarray]:
    """Broadcast ``arrays`` to one shape and return their selected pixels as 1-D float64
    vectors: all pixels, or those where ``mask`` (boolean, that shape) is true. Raises when
    shapes do not broadcast, when nothing is selected, or when a value is not finite."""
    arrs = [as_numpy(a) for a in arrays]
    try:
        arrs = list(np.broadcast_arrays(*arrs))
    except ValueError as err:
        shapes = [a.shape for a in arrs]
        raise ValueError(f"{name}: array shapes {shapes} do not broadcast") from err
    if mask is not None:
        m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
        if m.dtype != bool:
            raise ValueError(f"{name}: mask must be boolean, got {m.dtype}")
        if m.shape != arrs[0].shape:
            raise ValueError(f"{name}: mask shape {m.shape} != array shape {arrs[0].shape}")
        arrs = [a[m] for a in arrs]
    else:
        arrs = [a.ravel() for a in arrs]
    if arrs[0].size == 0:
        raise ValueError(f"{name}: no pixels selected (empty array or all-false mask)")
    for a in arrs:
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: arrays hold NaN or Inf")
    return arrs
